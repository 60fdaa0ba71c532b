//! `Prefer: wait=N` (RFC 7240), the waiting-poll request, and its `Preference-Applied` answer.

use http::HeaderName;

/// The request header.
pub(crate) const PREFER: HeaderName = HeaderName::from_static("prefer");
/// The answer's header when a wait was honoured.
pub(crate) const PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");

/// The first well-formed `wait` preference among the `Prefer` header values, in seconds.
/// Malformed preferences are ignored, as the RFC asks.
pub(crate) fn requested_wait<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<u64> {
    values
        .into_iter()
        .flat_map(|v| v.split(','))
        .filter_map(|pref| {
            let pref = pref.split(';').next()?.trim();
            let (name, value) = pref.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            value.parse::<u64>().ok()
        })
        .next()
}

/// The `Preference-Applied` value for an honoured wait of `secs` seconds.
pub(crate) fn applied(secs: u64) -> String {
    format!("wait={secs}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefer_wait_parsing() {
        let w = |v: &[&str]| requested_wait(v.iter().copied());
        assert_eq!(w(&["wait=10"]), Some(10));
        assert_eq!(w(&["respond-async, wait=5"]), Some(5));
        assert_eq!(w(&["WAIT = 7 ; x=y"]), Some(7));
        assert_eq!(w(&["wait=\"3\""]), Some(3));
        assert_eq!(w(&["wait=-1", "wait=2"]), Some(2));
        assert_eq!(w(&["wait=abc"]), None);
        assert_eq!(w(&["wait=99999999999999999999999"]), None);
        assert_eq!(w(&["handling=lenient"]), None);
        assert_eq!(w(&[]), None);
    }
}
