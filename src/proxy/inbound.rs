//! Inbound authentication: who may use the gateway's routes.
//!
//! When the gateway has API keys configured, every proxied request must carry one as
//! `Authorization: Bearer <key>`. Only SHA-256 hashes of keys are kept, and they are compared
//! in constant time. The key never travels further: the proxy replaces `Authorization` with
//! the route's own upstream token.

use http::header;
use pingora::http::RequestHeader;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ApiKeyHash;

/// The gateway's accepted API keys, as hashes; empty means no key is required.
#[derive(Debug, Default)]
pub(crate) struct Inbound {
    keys: Vec<ApiKeyHash>,
}

impl Inbound {
    pub(crate) fn new(keys: Vec<ApiKeyHash>) -> Self {
        Self { keys }
    }

    /// Whether `request` may use a route.
    pub(crate) fn allows(&self, request: &RequestHeader) -> bool {
        if self.keys.is_empty() {
            return true;
        }
        let Some(key) = bearer(request) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        // Check every key, so that timing says nothing about which one matched.
        self.keys.iter().fold(0u8, |found, known| {
            found | known.as_bytes().ct_eq(&digest).unwrap_u8()
        }) == 1
    }
}

/// The credential of an `Authorization: Bearer` header.
pub(crate) fn bearer(request: &RequestHeader) -> Option<&str> {
    let value = request.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(authorization: Option<&str>) -> RequestHeader {
        let mut request = RequestHeader::build("POST", b"/mcp", None).expect("request");
        if let Some(value) = authorization {
            request
                .insert_header("authorization", value)
                .expect("header");
        }
        request
    }

    #[test]
    fn only_a_listed_key_is_allowed() {
        let hash = format!("sha256:{:x}", Sha256::digest(b"k-123"));
        let inbound = Inbound::new(vec![ApiKeyHash::parse(&hash).expect("hash")]);
        assert!(inbound.allows(&request(Some("Bearer k-123"))));
        assert!(inbound.allows(&request(Some("bearer k-123"))));
        assert!(!inbound.allows(&request(Some("Bearer k-124"))));
        assert!(!inbound.allows(&request(None)));
    }

    #[test]
    fn no_keys_means_open() {
        assert!(Inbound::default().allows(&request(None)));
    }
}
