//! Property tests for every parser a client reaches: request ids, tokens, the `Prefer` header,
//! the `Idempotency-Key` header and the extraction of id and token from the query string and
//! headers.
//!
//! These stand in for `cargo fuzz` targets: they run on the stable toolchain in every
//! `cargo test`, so CI exercises them on each change. Each property states what must hold for
//! *any* input: no panic, only genuine credentials accepted, and nothing smuggled past the rules.

use std::str::FromStr;

use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

use crate::axum::{call, requested_wait};
use crate::protocol::RequestId;
use crate::protocol::idempotency::{self, KeyHeader, MAX_KEY_LEN};
use crate::protocol::token::{Claims, Keyring, TOKEN_LEN, TokenError};
use crate::protocol::{Call, MAX_CREDENTIAL_LEN, one};

const KEY: &[u8] = b"proptest-key-proptest-key-proptest-key";
const OLD_KEY: &[u8] = b"proptest-old-key-proptest-old-key-!!";
const OTHER_KEY: &[u8] = b"proptest-not-configured-key-0123456789";

fn is_lower_hex_32(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Strings that look like ids more often than chance would make them: hex-ish, near 32 long.
fn id_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9a-f]{32}",
        "[0-9a-fA-F]{30,34}",
        "[0-9a-z]{32}",
        ".{0,40}",
        any::<String>(),
    ]
}

/// Strings that look like tokens: base64url-ish, near 55 long, and anything else.
fn token_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_-]{55}",
        "A[A-Za-z0-9_-]{52,56}",
        "[A-Za-z0-9+/=_-]{50,60}",
        ".{0,80}",
        any::<String>(),
    ]
}

/// Every well-formed key: 1 to 255 bytes of visible ASCII.
fn valid_key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[\\x21-\\x7e]{1,40}",
        "[\\x21-\\x7e]{240,255}",
        "[\"\\\\a]{1,8}",
    ]
}

/// The draft's form of `key`: an sf-string, with `"` and `\` escaped.
fn quoted(key: &str) -> String {
    let mut out = String::from("\"");
    for c in key.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn owner() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(".{0,12}")
}

fn task_name() -> impl Strategy<Value = String> {
    "[a-z_]{1,10}"
}

fn claims<'a>(id: &'a RequestId, task: &'a str, owner: &'a Option<String>) -> Claims<'a> {
    Claims {
        id,
        task,
        owner: owner.as_deref(),
    }
}

fn parts(uri: &str, headers: &[(&'static str, HeaderValue)]) -> Option<Parts> {
    let mut builder = Request::builder().uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, value.clone());
    }
    builder.body(()).ok().map(|r| r.into_parts().0)
}

/// Writes `value` into a query string, percent-encoding each byte (or not) as `encode` says.
/// Bytes that a query cannot carry raw are always encoded.
fn query_value(value: &str, encode: &[bool]) -> String {
    let mut out = String::new();
    for (i, b) in value.bytes().enumerate() {
        let raw_ok = b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' || b == b'~';
        if raw_ok && !encode.get(i).copied().unwrap_or(false) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The seed every run uses, so CI checks the same 1,000 cases per property each time.
const SEED: u64 = 0xA5E1_D0C5_F00D_0001;

/// 1,000 cases from a fixed seed. `PROPTEST_RNG_SEED=<u64>` replays another seed and
/// `PROPTEST_RNG_SEED=random` draws a new one (printed, so it can be replayed). Failing cases
/// proptest finds are saved under `proptest-regressions/` (commit them) and run first on every
/// run after.
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::with_cases(1000);
    match std::env::var("PROPTEST_RNG_SEED").as_deref().map(str::trim) {
        Ok("random") => {
            let seed = crate::RequestId::random().as_bytes()[..8]
                .iter()
                .fold(0u64, |a, &b| a << 8 | u64::from(b));
            eprintln!("proptests: seed {seed}; replay with PROPTEST_RNG_SEED={seed}");
            config.rng_seed = RngSeed::Fixed(seed);
        }
        // A number: proptest has read it from the environment already.
        Ok(_) => {}
        Err(_) => config.rng_seed = RngSeed::Fixed(SEED),
    }
    config
}

proptest! {
    #![proptest_config(config())]

    // ---------------------------------------------------------------- ids

    #[test]
    fn id_parse_never_panics_and_accepts_exactly_32_lower_hex(s in id_like()) {
        let parsed = RequestId::from_str(&s);
        prop_assert_eq!(parsed.is_ok(), is_lower_hex_32(&s), "{:?}", s);
        if let Ok(id) = parsed {
            prop_assert_eq!(id.to_string(), s);
        }
    }

    #[test]
    fn id_display_parse_round_trip(bytes in any::<[u8; 16]>()) {
        let id = RequestId::from_bytes(bytes);
        let text = id.to_string();
        prop_assert!(is_lower_hex_32(&text));
        prop_assert_eq!(RequestId::from_str(&text), Ok(id));
    }

    #[test]
    fn id_single_char_mutation_is_another_id_or_rejected(
        bytes in any::<[u8; 16]>(),
        at in 0usize..32,
        with in any::<char>(),
    ) {
        let id = RequestId::from_bytes(bytes);
        let mut chars: Vec<char> = id.to_string().chars().collect();
        prop_assume!(chars[at] != with);
        chars[at] = with;
        let mutated: String = chars.into_iter().collect();
        match RequestId::from_str(&mutated) {
            Ok(other) => {
                prop_assert!(with.is_ascii_digit() || ('a'..='f').contains(&with));
                prop_assert_ne!(other, id);
            }
            Err(_) => prop_assert!(!is_lower_hex_32(&mutated)),
        }
    }

    // ---------------------------------------------------------------- tokens

    #[test]
    fn token_verify_never_panics_and_never_accepts_arbitrary_text(
        token in token_like(),
        id in any::<[u8; 16]>(),
        task in task_name(),
        owner in owner(),
        now in any::<u64>(),
    ) {
        let ring = Keyring::new(KEY, &[OLD_KEY.to_vec()]);
        let id = RequestId::from_bytes(id);
        // A random string is genuine with probability 2^-256: any acceptance is a bug.
        prop_assert_eq!(ring.verify(&token, &claims(&id, &task, &owner), now), Err(TokenError::Invalid));
    }

    #[test]
    fn genuine_token_passes_only_for_its_claims_and_before_expiry(
        id in any::<[u8; 16]>(),
        other_id in any::<[u8; 16]>(),
        task in task_name(),
        other_task in task_name(),
        owner in owner(),
        other_owner in owner(),
        expires_at in 1u64..=u64::MAX,
        now in any::<u64>(),
        old in any::<bool>(),
    ) {
        let ring = Keyring::new(KEY, &[OLD_KEY.to_vec()]);
        let signer = if old { Keyring::new(OLD_KEY, &[]) } else { ring.clone() };
        let id = RequestId::from_bytes(id);
        let token = signer.sign(&claims(&id, &task, &owner), expires_at);
        prop_assert_eq!(token.len(), TOKEN_LEN);
        let expected = if now < expires_at { Ok(()) } else { Err(TokenError::Expired) };
        prop_assert_eq!(ring.verify(&token, &claims(&id, &task, &owner), now), expected);

        let other_id = RequestId::from_bytes(other_id);
        let same = other_id == id && other_task == task && other_owner == owner;
        let for_other = ring.verify(&token, &claims(&other_id, &other_task, &other_owner), now);
        if same {
            prop_assert_eq!(for_other, expected);
        } else {
            // Never Expired either: expiry is revealed only to the genuine holder.
            prop_assert_eq!(for_other, Err(TokenError::Invalid));
        }
        // A key that is not configured never verifies.
        let stranger = Keyring::new(OTHER_KEY, &[]);
        prop_assert_eq!(stranger.verify(&token, &claims(&id, &task, &owner), now), Err(TokenError::Invalid));
    }

    #[test]
    fn any_single_byte_mutation_of_a_genuine_token_fails(
        id in any::<[u8; 16]>(),
        task in task_name(),
        owner in owner(),
        expires_at in any::<u64>(),
        now in any::<u64>(),
        at in 0usize..TOKEN_LEN,
        with in any::<u8>(),
    ) {
        let ring = Keyring::new(KEY, &[OLD_KEY.to_vec()]);
        let id = RequestId::from_bytes(id);
        let c = claims(&id, &task, &owner);
        let token = ring.sign(&c, expires_at);
        let mut bytes = token.clone().into_bytes();
        prop_assume!(bytes[at] != with);
        bytes[at] = with;
        // A byte that breaks UTF-8 cannot reach `verify` as text; the extractor turns such
        // header values into "\0" and percent-decoding into U+FFFD. Check what can arrive.
        let mutated = String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        prop_assert_ne!(&mutated, &token);
        prop_assert_eq!(ring.verify(&mutated, &c, now), Err(TokenError::Invalid));
    }

    #[test]
    fn truncated_or_extended_genuine_tokens_fail(
        id in any::<[u8; 16]>(),
        cut in 0usize..TOKEN_LEN,
        extra in "[A-Za-z0-9_-]{1,8}",
    ) {
        let ring = Keyring::new(KEY, &[]);
        let id = RequestId::from_bytes(id);
        let c = claims(&id, "t", &None);
        let token = ring.sign(&c, u64::MAX);
        prop_assert_eq!(ring.verify(&token[..cut], &c, 0), Err(TokenError::Invalid));
        prop_assert_eq!(ring.verify(&format!("{token}{extra}"), &c, 0), Err(TokenError::Invalid));
        prop_assert_eq!(ring.verify(&format!("{extra}{token}"), &c, 0), Err(TokenError::Invalid));
    }

    // ---------------------------------------------------------------- Prefer

    #[test]
    fn prefer_never_panics_on_any_header_bytes(values in proptest::collection::vec(any::<Vec<u8>>(), 0..4)) {
        let mut headers = HeaderMap::new();
        for v in &values {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                headers.append("prefer", v);
            }
        }
        let _ = requested_wait(&headers);
    }

    #[test]
    fn prefer_finds_the_first_well_formed_wait(
        prefs in proptest::collection::vec(
            prop_oneof![
                // (text, Some(n)) when the preference is a well-formed wait.
                (any::<u64>(), "[wW][aA][iI][tT]", " {0,2}", " {0,2}", any::<bool>(), proptest::option::of("[a-z]{1,5}=[a-z0-9]{0,5}"))
                    .prop_map(|(n, name, sp1, sp2, quoted, param)| {
                        let value = if quoted { format!("\"{n}\"") } else { n.to_string() };
                        let param = param.map(|p| format!(";{p}")).unwrap_or_default();
                        (format!("{sp1}{name}{sp2}={sp2}{value}{sp1}{param}"), Some(n))
                    }),
                ("(wait=(-[0-9]{1,3}|[a-z]{1,4}|)|wait|respond-async|handling=(strict|lenient)|return=minimal|x[a-z]{0,5}=[0-9]{1,3})")
                    .prop_map(|s| (s, None)),
                "[1-9][0-9]{20,24}".prop_map(|digits| (format!("wait={digits}"), None)),
            ],
            0..6,
        ),
        split_at in any::<prop::sample::Index>(),
    ) {
        let expected = prefs.iter().find_map(|(_, n)| *n);
        // Spread the list over one or two Prefer headers; order is kept either way.
        let texts: Vec<&str> = prefs.iter().map(|(t, _)| t.as_str()).collect();
        let mut headers = HeaderMap::new();
        if !texts.is_empty() {
            let k = split_at.index(texts.len() + 1);
            for part in [&texts[..k], &texts[k..]] {
                if !part.is_empty() {
                    headers.append("prefer", HeaderValue::from_str(&part.join(", ")).unwrap());
                }
            }
        }
        prop_assert_eq!(requested_wait(&headers), expected, "{:?}", texts);
    }

    // ---------------------------------------------------------------- id/token extraction

    #[test]
    fn extraction_never_panics_on_any_query_or_headers(
        query in "([a-z_]{0,20}(=[A-Za-z0-9%+&=._~-]{0,70})?&?){0,6}",
        id_header in proptest::option::of(any::<Vec<u8>>()),
        token_header in proptest::option::of(any::<Vec<u8>>()),
    ) {
        let mut headers = Vec::new();
        if let Some(v) = id_header.and_then(|v| HeaderValue::from_bytes(&v).ok()) {
            headers.push(("async-request-id", v));
        }
        if let Some(v) = token_header.and_then(|v| HeaderValue::from_bytes(&v).ok()) {
            headers.push(("async-request-token", v));
        }
        if let Some(p) = parts(&format!("/p?{query}"), &headers) {
            // The only credentials that can come out are values that went in.
            if let Call::Poll { id, token } = call(&p) {
                prop_assert!(id.len() <= MAX_CREDENTIAL_LEN && token.len() <= MAX_CREDENTIAL_LEN);
                prop_assert!(!id.is_empty() && !token.is_empty());
            }
        }
    }

    #[test]
    fn genuine_credentials_survive_every_placement_and_encoding(
        id in any::<[u8; 16]>(),
        id_places in (any::<bool>(), 0usize..3),
        token_places in (any::<bool>(), 0usize..3),
        encode in proptest::collection::vec(any::<bool>(), 64),
        pad in " {0,3}",
        noise in proptest::option::of("[a-z]{1,8}=[a-z0-9%]{0,8}"),
    ) {
        let id = RequestId::from_bytes(id).to_string();
        let token = Keyring::new(KEY, &[]).sign(
            &Claims { id: &RequestId::from_str(&id).unwrap(), task: "t", owner: None },
            u64::MAX,
        );
        // Each credential: in a header or not, and 0..3 times (same value) in the query; at
        // least once somewhere.
        let (id_header, id_query) = id_places;
        let (token_header, token_query) = token_places;
        prop_assume!(id_header || id_query > 0);
        prop_assume!(token_header || token_query > 0);
        let mut pairs = Vec::new();
        if let Some(noise) = &noise {
            pairs.push(noise.clone());
        }
        for _ in 0..id_query {
            pairs.push(format!("async_request_id={}", query_value(&id, &encode)));
        }
        for _ in 0..token_query {
            pairs.push(format!("async_request_token={}", query_value(&token, &encode)));
        }
        let mut headers = Vec::new();
        if id_header {
            headers.push(("async-request-id", HeaderValue::from_str(&format!("{pad}{id}{pad}")).unwrap()));
        }
        if token_header {
            headers.push(("async-request-token", HeaderValue::from_str(&format!("{pad}{token}{pad}")).unwrap()));
        }
        let p = parts(&format!("/p?{}", pairs.join("&")), &headers).unwrap();
        match call(&p) {
            Call::Poll { id: got_id, token: got_token } => {
                prop_assert_eq!(got_id, id);
                prop_assert_eq!(got_token, token);
            }
            _ => prop_assert!(false, "genuine credentials were not extracted"),
        }
    }

    #[test]
    fn a_second_different_value_anywhere_is_malformed(
        id in "[0-9a-f]{32}",
        token in "[A-Za-z0-9_-]{55}",
        other in "[A-Za-z0-9_.~-]{1,60}",
        which in any::<bool>(),
        genuine_in_header in any::<bool>(),
        other_in_header in any::<bool>(),
        other_first in any::<bool>(),
    ) {
        // The second value must differ from the first after the header trim.
        let (name_h, name_q, genuine) = if which {
            ("async-request-id", "async_request_id", &id)
        } else {
            ("async-request-token", "async_request_token", &token)
        };
        prop_assume!(other != *genuine);
        let mut headers: Vec<(&'static str, HeaderValue)> = Vec::new();
        let mut pairs: Vec<String> = Vec::new();
        // The credential not under test, in the query.
        if which {
            pairs.push(format!("async_request_token={token}"));
        } else {
            pairs.push(format!("async_request_id={id}"));
        }
        let mut put = |value: &str, in_header: bool| {
            if in_header {
                headers.push((name_h, HeaderValue::from_str(value).unwrap()));
            } else {
                pairs.push(format!("{name_q}={value}"));
            }
        };
        if other_first {
            put(&other, other_in_header);
            put(genuine, genuine_in_header);
        } else {
            put(genuine, genuine_in_header);
            put(&other, other_in_header);
        }
        let p = parts(&format!("/p?{}", pairs.join("&")), &headers).unwrap();
        prop_assert!(matches!(call(&p), Call::Malformed), "two different values must never pick one");
    }

    #[test]
    fn a_lone_credential_or_an_oversized_one_is_malformed(
        value in "[A-Za-z0-9_-]{1,128}",
        long in "[A-Za-z0-9_-]{129,400}",
        id_alone in any::<bool>(),
        in_header in any::<bool>(),
    ) {
        let (h, q) = if id_alone {
            ("async-request-id", "async_request_id")
        } else {
            ("async-request-token", "async_request_token")
        };
        let lone = if in_header {
            parts("/p", &[(h, HeaderValue::from_str(&value).unwrap())])
        } else {
            parts(&format!("/p?{q}={value}"), &[])
        };
        prop_assert!(matches!(call(&lone.unwrap()), Call::Malformed));
        let oversized = parts(
            &format!("/p?async_request_id={long}&async_request_token={value}"),
            &[],
        );
        prop_assert!(matches!(call(&oversized.unwrap()), Call::Malformed));
    }

    #[test]
    fn non_ascii_header_values_never_become_credentials(
        bytes in proptest::collection::vec(0x80u8..=0xff, 1..40),
        id in "[0-9a-f]{32}",
    ) {
        let v = HeaderValue::from_bytes(&bytes).unwrap();
        let p = parts(
            &format!("/p?async_request_id={id}"),
            &[("async-request-token", v)],
        )
        .unwrap();
        // Either the value is refused outright, or it stands in for an impossible credential:
        // never a poll whose token is the raw bytes read some other way.
        if let Call::Poll { token, .. } = call(&p) {
            prop_assert_eq!(token, "\u{0}");
        }
    }

    // ---------------------------------------------------------------- Idempotency-Key

    #[test]
    fn idempotency_key_quoted_and_bare_forms_are_one_key(key in valid_key()) {
        prop_assert_eq!(idempotency::parse(quoted(&key).as_bytes()), Some(key.clone()));
        // A bare key cannot start with a quote (that is the quoted form); any other can be bare.
        if !key.starts_with('"') {
            prop_assert_eq!(idempotency::parse(key.as_bytes()), Some(key.clone()));
        }
        // Padding with whitespace is not part of the value.
        prop_assert_eq!(idempotency::parse(format!(" \t{} ", quoted(&key)).as_bytes()), Some(key));
    }

    #[test]
    fn idempotency_key_with_a_byte_outside_visible_ascii_is_refused(
        key in valid_key(),
        at in any::<prop::sample::Index>(),
        byte in prop_oneof![0u8..=0x20, 0x7fu8..=0xff],
        quote in any::<bool>(),
    ) {
        // Between two visible bytes, so no trimming of edge whitespace can drop it.
        let at = at.index(key.len() + 1);
        let mut bytes = b"x".to_vec();
        bytes.extend_from_slice(&key.as_bytes()[..at]);
        bytes.push(byte);
        bytes.extend_from_slice(&key.as_bytes()[at..]);
        bytes.push(b'x');
        let value = if quote {
            let mut v = vec![b'"'];
            for b in bytes {
                if b == b'"' || b == b'\\' {
                    v.push(b'\\');
                }
                v.push(b);
            }
            v.push(b'"');
            v
        } else {
            bytes
        };
        prop_assert_eq!(idempotency::parse(&value), None);
    }

    #[test]
    fn idempotency_key_length_is_bounded(len in 0usize..600, quote in any::<bool>()) {
        let key = "k".repeat(len);
        let value = if quote { quoted(&key) } else { key.clone() };
        let expected = (1..=MAX_KEY_LEN).contains(&len).then_some(key);
        prop_assert_eq!(idempotency::parse(value.as_bytes()), expected);
    }

    #[test]
    fn idempotency_key_parse_never_panics_and_keeps_only_visible_ascii(
        values in proptest::collection::vec(any::<Vec<u8>>(), 0..3),
    ) {
        for v in &values {
            if let Some(key) = idempotency::parse(v) {
                prop_assert!((1..=MAX_KEY_LEN).contains(&key.len()));
                prop_assert!(key.bytes().all(|b| (0x21..=0x7e).contains(&b)));
            }
        }
        let mut headers = HeaderMap::new();
        for v in &values {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                headers.append("idempotency-key", v);
            }
        }
        let parsed = KeyHeader::from_headers(&headers);
        match headers.get_all("idempotency-key").iter().count() {
            0 => prop_assert_eq!(parsed, KeyHeader::Absent),
            1 => prop_assert!(parsed != KeyHeader::Absent),
            _ => prop_assert_eq!(parsed, KeyHeader::Malformed),
        }
    }

    #[test]
    fn one_keeps_the_single_nonempty_value(values in proptest::collection::vec("[a-c]{0,2}", 0..6)) {
        let nonempty: Vec<&String> = values.iter().filter(|v| !v.is_empty()).collect();
        let expected = match nonempty.first() {
            None => Ok(None),
            Some(first) if nonempty.iter().all(|v| v == first) => Ok(Some((*first).clone())),
            Some(_) => Err(()),
        };
        prop_assert_eq!(one(values.into_iter()), expected);
    }
}

#[test]
fn empty_credentials_start_a_new_request() {
    // Empty values are skipped (a form with blank fields): that is a start, not a poll.
    let p = parts("/p?async_request_id=&async_request_token=", &[]).unwrap();
    assert!(matches!(call(&p), Call::Start));
}
