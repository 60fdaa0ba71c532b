//! Request ids: 128 random bits, written as 32 lowercase hex digits.

use std::fmt;

/// The opaque id of one async request: 128 bits from the operating system's CSPRNG.
///
/// ```
/// use async_endpoint::RequestId;
///
/// let id = RequestId::random();
/// let text = id.to_string();
/// assert_eq!(text.len(), 32);
/// assert_eq!(text.parse::<RequestId>().unwrap(), id);
/// assert!("not-an-id".parse::<RequestId>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId([u8; 16]);

/// The text was not 32 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed request id")]
pub struct ParseIdError;

/// `N` bytes from the operating system's CSPRNG (ids here, the per-process token key in
/// `keys.rs`).
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The OS random source failing is not something a request can cause or recover from.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    bytes
}

impl RequestId {
    /// A fresh random id.
    pub fn random() -> Self {
        RequestId(random_bytes())
    }

    /// The id's raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Builds an id from raw bytes (for backends that store ids in binary form).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        RequestId(bytes)
    }

    /// The 32 lowercase hex digits, without a formatter (every poll writes the id once or twice:
    /// the body, a backend's key).
    pub(crate) fn hex(&self) -> [u8; 32] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(b >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
        }
        out
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.hex();
        // Hex digits are ASCII.
        f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({self})")
    }
}

impl std::str::FromStr for RequestId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.as_bytes();
        if s.len() != 32 {
            return Err(ParseIdError);
        }
        let mut out = [0u8; 16];
        for (i, pair) in s.chunks_exact(2).enumerate() {
            out[i] = (hex(pair[0])? << 4) | hex(pair[1])?;
        }
        Ok(RequestId(out))
    }
}

fn hex(c: u8) -> Result<u8, ParseIdError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(ParseIdError),
    }
}

impl serde::Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_what_the_formatter_writes_and_parses_back() {
        let mut ids = vec![RequestId([0; 16]), RequestId([0xff; 16])];
        ids.extend((0..100).map(|_| RequestId::random()));
        for id in ids {
            let formatted: String = id.0.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(id.to_string(), formatted);
            assert_eq!(std::str::from_utf8(&id.hex()).unwrap(), formatted);
            assert_eq!(formatted.parse::<RequestId>().unwrap(), id);
        }
    }
}
