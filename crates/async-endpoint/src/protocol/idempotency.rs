//! The `Idempotency-Key` request header (IETF httpapi draft `idempotency-key-header`, as Stripe
//! uses it) on a start: parsing, and the digests a backend stores instead of the key.
//!
//! The draft makes the value an RFC 8941 sf-string (`"…"`, with `\"` and `\\` as the only
//! escapes); clients in the wild also send a bare token (`Idempotency-Key: 4f0c…`). Both forms
//! of one key are the same key. After unquoting, a key is 1 to [`MAX_KEY_LEN`] bytes, each
//! visible ASCII (0x21–0x7E: no spaces, no control characters, nothing outside ASCII).

use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};

/// The request header.
pub(crate) const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Most bytes in a key, after unquoting.
pub(crate) const MAX_KEY_LEN: usize = 255;

/// What a request's `Idempotency-Key` header says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum KeyHeader {
    /// No header.
    #[default]
    Absent,
    /// One well-formed key (unquoted).
    Key(String),
    /// Present but unusable: malformed quoting, empty, too long, a byte outside visible ASCII,
    /// or more than one header. A start answers 400; a poll ignores it.
    Malformed,
}

impl KeyHeader {
    /// The `Idempotency-Key` among `headers`.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Self {
        let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
        match (values.next(), values.next()) {
            (None, _) => KeyHeader::Absent,
            (Some(value), None) => match parse(value.as_bytes()) {
                Some(key) => KeyHeader::Key(key),
                None => KeyHeader::Malformed,
            },
            // Two keys for one start: which one would the client mean?
            (Some(_), Some(_)) => KeyHeader::Malformed,
        }
    }
}

/// The key in one header value, or `None` when it is not a well-formed key.
pub(crate) fn parse(value: &[u8]) -> Option<String> {
    // Optional whitespace around a field value is not part of it (RFC 9110, 5.5).
    let value = trim_ows(value);
    let key = match value.first() {
        Some(b'"') => unquote(&value[1..])?,
        _ => value.to_vec(),
    };
    let valid = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key.iter().all(|b| (0x21..=0x7e).contains(b));
    // Only visible ASCII, so this is UTF-8.
    valid.then(|| String::from_utf8(key).ok()).flatten()
}

/// The body of an sf-string after its opening quote, up to the closing quote that must end it.
fn unquote(rest: &[u8]) -> Option<Vec<u8>> {
    let mut key = Vec::with_capacity(rest.len());
    let mut bytes = rest.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(&escaped @ (b'"' | b'\\')) => key.push(escaped),
                _ => return None,
            },
            // The closing quote: nothing may follow it.
            b'"' => return bytes.next().is_none().then_some(key),
            // sf-string characters (RFC 8941, 3.3.3); the key check refuses the space later.
            0x20..=0x7e => key.push(b),
            _ => return None,
        }
    }
    // No closing quote.
    None
}

/// `value` without leading and trailing spaces and tabs.
fn trim_ows(value: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !ows(b)).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
    &value[start..end]
}

/// The form a backend indexes a key under: a hex SHA-256 of task, owner and key, each
/// length-prefixed (and the owner marked present or absent), so neither tasks nor owners share
/// keys and the store never holds the client's text.
pub(crate) fn scoped(task: &str, owner: Option<&str>, key: &str) -> String {
    let mut digest = Sha256::new();
    digest.update(b"async-endpoint idempotency-key v1\0");
    frame(&mut digest, task.as_bytes());
    match owner {
        None => digest.update([0]),
        Some(owner) => {
            digest.update([1]);
            frame(&mut digest, owner.as_bytes());
        }
    }
    frame(&mut digest, key.as_bytes());
    hex(&digest.finalize())
}

/// Hex SHA-256 of a start's params (JSON): a key reused with other params is refused.
pub(crate) fn params_digest(params: &str) -> String {
    hex(&Sha256::digest(params.as_bytes()))
}

fn frame(digest: &mut Sha256, field: &[u8]) {
    digest.update((field.len() as u64).to_be_bytes());
    digest.update(field);
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]])
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn quoted_and_bare_forms_are_one_key() {
        let key = Some("4f0c-9b7e".to_owned());
        assert_eq!(parse(b"4f0c-9b7e"), key);
        assert_eq!(parse(b"\"4f0c-9b7e\""), key);
        assert_eq!(parse(b"  \"4f0c-9b7e\"\t"), key);
        assert_eq!(parse(br#""a\"b\\c""#).as_deref(), Some(r#"a"b\c"#));
        assert_eq!(parse(br#"a"b\c"#).as_deref(), Some(r#"a"b\c"#));
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in [
            &b""[..],
            b"   ",
            b"\"\"",
            b"a b",
            b"\"a b\"",
            b"\"abc",
            b"\"abc\"x",
            b"\"a\\nb\"",
            b"\"a\\\"",
            "cl\u{e9}".as_bytes(),
            b"a\x7fb",
            b"a\x00b",
        ] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(parse(&[b'k'; MAX_KEY_LEN]).is_some());
        assert_eq!(parse(&[b'k'; MAX_KEY_LEN + 1]), None);
        let mut quoted = vec![b'"'];
        quoted.extend([b'k'; MAX_KEY_LEN]);
        quoted.push(b'"');
        assert!(parse(&quoted).is_some(), "quotes do not count");
    }

    #[test]
    fn one_header_at_most() {
        let mut headers = HeaderMap::new();
        assert_eq!(KeyHeader::from_headers(&headers), KeyHeader::Absent);
        headers.append(IDEMPOTENCY_KEY, HeaderValue::from_static("k1"));
        assert_eq!(
            KeyHeader::from_headers(&headers),
            KeyHeader::Key("k1".into())
        );
        headers.append(IDEMPOTENCY_KEY, HeaderValue::from_static("k1"));
        assert_eq!(KeyHeader::from_headers(&headers), KeyHeader::Malformed);
    }

    #[test]
    fn scopes_never_collide_across_tasks_or_owners() {
        let all = [
            scoped("t", None, "k"),
            scoped("t", Some(""), "k"),
            scoped("t", Some("a"), "k"),
            scoped("t", Some("b"), "k"),
            scoped("u", None, "k"),
            scoped("t", None, "k2"),
            // Length prefixes keep field boundaries apart.
            scoped("ta", Some("b"), "k"),
            scoped("t", Some("ab"), "k"),
        ];
        for (i, a) in all.iter().enumerate() {
            assert_eq!(a.len(), 64);
            assert!(!all[..i].contains(a), "{a} twice");
        }
        assert_eq!(scoped("t", Some("a"), "k"), scoped("t", Some("a"), "k"));
        assert_eq!(params_digest("{}"), params_digest("{}"));
        assert_ne!(params_digest("{}"), params_digest("[]"));
        assert_eq!(
            params_digest(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
