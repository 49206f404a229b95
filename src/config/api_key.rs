//! Inbound API keys, stored as SHA-256 hashes so that the config file never holds a key
//! a client could use. Clients send the key itself as `Authorization: Bearer <key>`; the
//! listener hashes it and compares the digest with [`ApiKeyHash::as_bytes`].

use std::fmt;

const SCHEME: &str = "sha256:";

/// The SHA-256 hash of one accepted API key.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ApiKeyHash([u8; 32]);

impl ApiKeyHash {
    /// Parses `sha256:` followed by 64 hex digits of either case.
    pub(crate) fn parse(text: &str) -> Option<ApiKeyHash> {
        let hex = text.strip_prefix(SCHEME)?.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
            *byte = hex_value(pair[0])? << 4 | hex_value(pair[1])?;
        }
        Some(ApiKeyHash(bytes))
    }

    /// The hash of a key as a client presents it.
    #[cfg(test)]
    pub(crate) fn of_key(key: &str) -> ApiKeyHash {
        use sha2::Digest as _;
        ApiKeyHash(sha2::Sha256::digest(key.as_bytes()).into())
    }

    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Only the first four hex digits: enough to tell keys apart in a log, short enough to
/// keep lines tidy.
impl fmt::Debug for ApiKeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeyHash({SCHEME}{:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // printf %s "secret" | sha256sum
    const SECRET_HASH: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

    #[test]
    fn parses_lowercase_and_uppercase_hex() {
        let lower = ApiKeyHash::parse(&format!("sha256:{SECRET_HASH}"));
        let upper = ApiKeyHash::parse(&format!("sha256:{}", SECRET_HASH.to_uppercase()));
        assert!(lower.is_some());
        assert_eq!(lower, upper);
    }

    #[test]
    fn rejects_missing_scheme_wrong_length_and_non_hex() {
        assert_eq!(ApiKeyHash::parse(SECRET_HASH), None);
        assert_eq!(
            ApiKeyHash::parse(&format!("sha256:{}", &SECRET_HASH[2..])),
            None
        );
        assert_eq!(ApiKeyHash::parse(&format!("sha256:{SECRET_HASH}00")), None);
        let non_hex = format!("sha256:zz{}", &SECRET_HASH[2..]);
        assert_eq!(ApiKeyHash::parse(&non_hex), None);
        assert_eq!(ApiKeyHash::parse(&format!("SHA256:{SECRET_HASH}")), None);
    }

    #[test]
    fn parsed_hash_is_the_digest_of_the_key() {
        let hash = ApiKeyHash::parse(&format!("sha256:{SECRET_HASH}")).expect("valid hash");
        assert_eq!(hash, ApiKeyHash::of_key("secret"));
        assert_ne!(hash, ApiKeyHash::of_key("secret "));
        assert_eq!(hash.as_bytes()[..2], [0x2b, 0xb8]);
    }

    #[test]
    fn debug_shows_only_four_hex_digits() {
        let hash = ApiKeyHash::parse(&format!("sha256:{SECRET_HASH}")).expect("valid hash");
        assert_eq!(format!("{hash:?}"), "ApiKeyHash(sha256:2bb8…)");
    }
}
