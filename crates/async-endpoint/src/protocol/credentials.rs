//! Where a poll's id and token come from: the `async_request_id` / `async_request_token` query
//! (or form) parameters, the original gem's way, or the `Async-Request-Id` /
//! `Async-Request-Token` headers, the JS client's way (keeping tokens out of URLs and logs).

use std::borrow::Cow;

use http::HeaderName;

/// Header carrying the request id on polls (the JS client's way).
pub const ID_HEADER: HeaderName = HeaderName::from_static("async-request-id");
/// Header carrying the request token on polls.
pub const TOKEN_HEADER: HeaderName = HeaderName::from_static("async-request-token");
/// Query/form parameter carrying the request id (the original gem's way).
pub const ID_PARAM: &str = "async_request_id";
/// Query/form parameter carrying the request token.
pub const TOKEN_PARAM: &str = "async_request_token";

/// Longest id/token value looked at (ids are 32 bytes, tokens 55); anything longer is malformed.
pub(crate) const MAX_CREDENTIAL_LEN: usize = 128;

/// What the client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Call {
    /// No credentials: start a new request.
    Start,
    /// Credentials: read the request they name.
    Poll {
        /// The id as sent (parsed by the engine).
        id: String,
        /// The token as sent.
        token: String,
    },
    /// Credentials that cannot be genuine (half present, repeated with different values, …).
    Malformed,
}

impl Call {
    /// Finds id and token among a request's header values (`None` for a value that is not
    /// visible ASCII) and its query string. Repeats must agree.
    pub(crate) fn parse<'a>(
        id_headers: impl Iterator<Item = Option<&'a str>>,
        token_headers: impl Iterator<Item = Option<&'a str>>,
        query: &str,
    ) -> Call {
        // No query (the JS client's way, and every start): nothing to parse.
        let from_query = |name: &'static str| {
            (!query.is_empty())
                .then(|| form_urlencoded::parse(query.as_bytes()))
                .into_iter()
                .flatten()
                .filter(move |(k, _)| k == name)
                .map(|(_, v)| v)
        };
        // Values are borrowed while they are compared; only the one found is copied.
        let header = |v: Option<&'a str>| match v {
            Some(v) => Cow::Borrowed(v.trim()),
            // Not visible ASCII: can never be a genuine id or token.
            None => Cow::Borrowed("\u{0}"),
        };
        let id = one(id_headers.map(header).chain(from_query(ID_PARAM)));
        let token = one(token_headers.map(header).chain(from_query(TOKEN_PARAM)));
        match (id, token) {
            (Ok(None), Ok(None)) => Call::Start,
            (Ok(Some(id)), Ok(Some(token))) => Call::Poll {
                id: id.into_owned(),
                token: token.into_owned(),
            },
            _ => Call::Malformed,
        }
    }
}

/// The one non-empty value among `values`; repeats must agree. `Err` when they do not, or a value
/// is longer than any genuine credential.
pub(crate) fn one<S: AsRef<str>>(values: impl Iterator<Item = S>) -> Result<Option<S>, ()> {
    let mut found: Option<S> = None;
    for value in values {
        let text = value.as_ref();
        if text.is_empty() {
            continue;
        }
        if text.len() > MAX_CREDENTIAL_LEN {
            return Err(());
        }
        match &found {
            Some(previous) if previous.as_ref() != text => return Err(()),
            Some(_) => {}
            None => found = Some(value),
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_rules() {
        let s = |v: &[&str]| one(v.iter().map(|s| s.to_string()));
        assert_eq!(s(&[]), Ok(None));
        assert_eq!(s(&["", ""]), Ok(None));
        assert_eq!(s(&["a", "a"]), Ok(Some("a".into())));
        assert_eq!(s(&["a", "", "a"]), Ok(Some("a".into())));
        assert_eq!(s(&["a", "b"]), Err(()));
        assert_eq!(s(&[&"x".repeat(500)]), Err(()));
    }
}
