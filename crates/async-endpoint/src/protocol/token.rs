//! Request tokens: an HMAC-SHA256 over the request id, the task name, the owner and the expiry.
//!
//! Layout (before base64url without padding): `version (1) ‖ expiry, unix seconds, big endian (8) ‖
//! HMAC-SHA256 (32)`. The MAC input frames every field with its length, so no two different
//! (id, task, owner, expiry) tuples share an input.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::RequestId;

type HmacSha256 = Hmac<Sha256>;

const VERSION: u8 = 1;
const RAW_LEN: usize = 1 + 8 + 32;
/// Length of an encoded token; anything else is rejected before decoding.
pub(crate) const TOKEN_LEN: usize = 55;
/// The shortest secret `build()` accepts.
pub(crate) const MIN_SECRET_LEN: usize = 32;

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// Malformed, forged, tampered, or for another request, task or owner. Clients get 404.
    Invalid,
    /// Genuine but past its expiry. Clients get 410.
    Expired,
}

/// What a token binds.
pub(crate) struct Claims<'a> {
    pub(crate) id: &'a RequestId,
    pub(crate) task: &'a str,
    pub(crate) owner: Option<&'a str>,
}

/// The signing key and the keys still accepted for verification (key rotation).
#[derive(Clone)]
pub(crate) struct Keyring {
    current: HmacSha256,
    old: Vec<HmacSha256>,
}

impl Keyring {
    /// Keys must be at least [`MIN_SECRET_LEN`] bytes; the builder checks that first.
    pub(crate) fn new(current: &[u8], old: &[Vec<u8>]) -> Self {
        // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
        #[allow(clippy::expect_used)]
        let mac = |k: &[u8]| HmacSha256::new_from_slice(k).expect("HMAC takes any key length");
        Keyring {
            current: mac(current),
            old: old.iter().map(|k| mac(k)).collect(),
        }
    }

    /// A token for `claims` that expires at `expires_at` (unix seconds).
    pub(crate) fn sign(&self, claims: &Claims<'_>, expires_at: u64) -> String {
        let mut raw = [0u8; RAW_LEN];
        raw[0] = VERSION;
        raw[1..9].copy_from_slice(&expires_at.to_be_bytes());
        let tag = mac(self.current.clone(), claims, expires_at)
            .finalize()
            .into_bytes();
        raw[9..].copy_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Checks `token` against `claims` in constant time with every key; expiry is only looked at
    /// once the MAC is genuine, so a forged token never learns anything from a 410.
    pub(crate) fn verify(
        &self,
        token: &str,
        claims: &Claims<'_>,
        now_secs: u64,
    ) -> Result<(), TokenError> {
        if token.len() != TOKEN_LEN {
            return Err(TokenError::Invalid);
        }
        let mut raw = [0u8; RAW_LEN];
        match URL_SAFE_NO_PAD.decode_slice(token, &mut raw) {
            Ok(RAW_LEN) => {}
            _ => return Err(TokenError::Invalid),
        }
        if raw[0] != VERSION {
            return Err(TokenError::Invalid);
        }
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&raw[1..9]);
        let expires_at = u64::from_be_bytes(exp);
        let tag = &raw[9..];
        let genuine = std::iter::once(&self.current)
            .chain(&self.old)
            // `verify_slice` compares in constant time (it uses `subtle` underneath).
            .any(|key| {
                mac(key.clone(), claims, expires_at)
                    .verify_slice(tag)
                    .is_ok()
            });
        if !genuine {
            return Err(TokenError::Invalid);
        }
        if now_secs >= expires_at {
            return Err(TokenError::Expired);
        }
        Ok(())
    }
}

fn mac(mut m: HmacSha256, claims: &Claims<'_>, expires_at: u64) -> HmacSha256 {
    m.update(b"async-endpoint token v1\0");
    m.update(claims.id.as_bytes());
    m.update(&expires_at.to_be_bytes());
    frame(&mut m, claims.task.as_bytes());
    match claims.owner {
        None => m.update(&[0]),
        Some(owner) => {
            m.update(&[1]);
            frame(&mut m, owner.as_bytes());
        }
    }
    m
}

fn frame(m: &mut HmacSha256, field: &[u8]) {
    m.update(&(field.len() as u64).to_be_bytes());
    m.update(field);
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const OLD: &[u8] = b"fedcba9876543210fedcba9876543210";

    fn claims<'a>(id: &'a RequestId, task: &'a str, owner: Option<&'a str>) -> Claims<'a> {
        Claims { id, task, owner }
    }

    #[test]
    fn round_trip_and_binding() {
        let ring = Keyring::new(KEY, &[]);
        let id = RequestId::random();
        let other = RequestId::random();
        let t = ring.sign(&claims(&id, "task", Some("alice")), 1_000);
        assert_eq!(t.len(), TOKEN_LEN);
        assert_eq!(
            ring.verify(&t, &claims(&id, "task", Some("alice")), 999),
            Ok(())
        );
        for bad in [
            claims(&other, "task", Some("alice")),
            claims(&id, "other", Some("alice")),
            claims(&id, "task", Some("bob")),
            claims(&id, "task", None),
            claims(&id, "task", Some("")),
        ] {
            assert_eq!(ring.verify(&t, &bad, 999), Err(TokenError::Invalid));
        }
        assert_eq!(
            ring.verify(&t, &claims(&id, "task", Some("alice")), 1_000),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn tampering_is_invalid_not_expired() {
        let ring = Keyring::new(KEY, &[]);
        let id = RequestId::random();
        let c = claims(&id, "task", None);
        let t = ring.sign(&c, 10);
        // Push the expiry into the future by rewriting it: the MAC no longer matches.
        let mut raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
        raw[8] = 0xff;
        let forged = URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(ring.verify(&forged, &c, 100), Err(TokenError::Invalid));
        for junk in ["", "x", &t[1..], &format!("{t}A"), &"A".repeat(TOKEN_LEN)] {
            assert_eq!(ring.verify(junk, &c, 0), Err(TokenError::Invalid));
        }
    }

    #[test]
    fn rotation_accepts_old_keys_and_signs_with_new() {
        let id = RequestId::random();
        let c = claims(&id, "task", None);
        let old_token = Keyring::new(OLD, &[]).sign(&c, 10);
        let rotated = Keyring::new(KEY, &[OLD.to_vec()]);
        assert_eq!(rotated.verify(&old_token, &c, 0), Ok(()));
        let new_token = rotated.sign(&c, 10);
        assert_eq!(Keyring::new(KEY, &[]).verify(&new_token, &c, 0), Ok(()));
        assert_eq!(
            Keyring::new(OLD, &[]).verify(&new_token, &c, 0),
            Err(TokenError::Invalid)
        );
    }
}
