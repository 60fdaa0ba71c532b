//! The token keys a builder ends up with: secure by default.
//!
//! - No `secret` and a backend that lives in this process (the in-memory default): a random key
//!   made at start-up. Tokens cannot outlive the process, and neither can its requests, so nothing
//!   is lost; and no secret is ever copied out of the docs into production.
//! - A backend other processes share (Redis, or any backend of the app's own): every process must
//!   verify the others' tokens, so the one key is required (read it from the environment).
//! - Secrets printed in this project's docs are refused: anyone who has read them could forge a
//!   token for any id they learn (Apache Superset's shipped `SECRET_KEY`, CVE-2023-27524).

use crate::engine::bad;
use crate::error::Error;
use crate::protocol::random_bytes;
use crate::protocol::token::{Keyring, MIN_SECRET_LEN};

/// Every secret this project's docs, examples and demo have ever printed. Never valid.
const DOCUMENTED_SECRETS: &[&[u8]] = &[
    b"at least 32 bytes of secret key material",
    b"the same 32+ byte secret in every process",
    b"async-endpoint demo secret: change me (32+ bytes)",
    &[7u8; 32],
];

/// Where the engine's requests live, as far as the keys are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sharing {
    /// Only this process reads its requests (the in-memory backend).
    ProcessLocal,
    /// Other processes may read them (Redis, or a backend the app supplied).
    Shared,
}

/// The keyring for `secret` (signs) and `old_secrets` (verify only), each ≥ 32 bytes and none of
/// them a documented example; without `secret`, a random key if the backend is process-local.
pub(crate) fn keyring(
    secret: Option<&[u8]>,
    old_secrets: &[Vec<u8>],
    sharing: Sharing,
) -> Result<Keyring, Error> {
    let too_short = |setting, len: usize| {
        bad(
            setting,
            format!("{len} bytes; at least {MIN_SECRET_LEN} are required"),
        )
    };
    let documented = |setting| {
        bad(
            setting,
            "this key is printed in async-endpoint's documentation, so anyone can forge tokens \
             with it: generate your own (e.g. `openssl rand -base64 32`) and read it from the \
             environment",
        )
    };
    if let Some(old) = old_secrets.iter().find(|s| s.len() < MIN_SECRET_LEN) {
        return Err(too_short("old_secret", old.len()));
    }
    if old_secrets.iter().any(|s| is_documented(s)) {
        return Err(documented("old_secret"));
    }
    let Some(secret) = secret else {
        return match sharing {
            Sharing::ProcessLocal if old_secrets.is_empty() => Ok(random()),
            Sharing::ProcessLocal => Err(bad(
                "old_secret",
                "set without `secret`: rotation needs the current key too",
            )),
            Sharing::Shared => Err(bad(
                "secret",
                "required with a backend other processes share: every process needs the same key \
                 of at least 32 bytes, read from the environment (e.g. \
                 `std::env::var(\"ASYNC_ENDPOINT_SECRET\")`)",
            )),
        };
    };
    if secret.len() < MIN_SECRET_LEN {
        return Err(too_short("secret", secret.len()));
    }
    if is_documented(secret) {
        return Err(documented("secret"));
    }
    Ok(Keyring::new(secret, old_secrets))
}

fn is_documented(secret: &[u8]) -> bool {
    DOCUMENTED_SECRETS.contains(&secret)
}

/// A fresh random key for this process only.
fn random() -> Keyring {
    let key: [u8; MIN_SECRET_LEN] = random_bytes();
    tracing::info!(
        "no `secret` set: tokens are signed with a random key of this process (fine for the \
         in-memory backend, whose requests live and die with the process)"
    );
    Keyring::new(&key, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(result: Result<Keyring, Error>) -> &'static str {
        match result {
            Err(Error::Config { setting, .. }) => setting,
            Err(other) => panic!("not a config error: {other}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn without_a_secret_only_a_process_local_backend_gets_a_random_key() {
        assert!(keyring(None, &[], Sharing::ProcessLocal).is_ok());
        assert_eq!(setting(keyring(None, &[], Sharing::Shared)), "secret");
        let old = vec![vec![1u8; 32]];
        assert_eq!(
            setting(keyring(None, &old, Sharing::ProcessLocal)),
            "old_secret"
        );
    }

    #[test]
    fn two_random_keys_differ() {
        let claims_id = crate::protocol::RequestId::random();
        let claims = crate::protocol::token::Claims {
            id: &claims_id,
            task: "t",
            owner: None,
        };
        let a = random().sign(&claims, u64::MAX);
        let b = random().sign(&claims, u64::MAX);
        assert_ne!(a, b);
    }

    #[test]
    fn documented_secrets_are_refused_by_name() {
        for secret in DOCUMENTED_SECRETS {
            for sharing in [Sharing::ProcessLocal, Sharing::Shared] {
                assert_eq!(setting(keyring(Some(secret), &[], sharing)), "secret");
            }
            let old = vec![secret.to_vec()];
            assert_eq!(
                setting(keyring(Some(&[1u8; 32]), &old, Sharing::Shared)),
                "old_secret"
            );
        }
        assert!(keyring(Some(&[1u8; 32]), &[], Sharing::Shared).is_ok());
    }

    #[test]
    fn short_keys_are_refused_by_name() {
        assert_eq!(
            setting(keyring(Some(&[1u8; 31]), &[], Sharing::Shared)),
            "secret"
        );
        let old = vec![vec![1u8; 5]];
        assert_eq!(
            setting(keyring(Some(&[1u8; 32]), &old, Sharing::Shared)),
            "old_secret"
        );
    }
}
