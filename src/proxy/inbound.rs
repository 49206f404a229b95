//! Inbound authentication: who may use the gateway's routes.
//!
//! When the gateway has API keys configured (`server.api_keys` for every route, a route's
//! own `api_keys` for that route alone), every proxied request must carry one as
//! `Authorization: Bearer <key>`, and a key for one route opens no other. Only SHA-256 hashes
//! of keys are kept, and they are compared in constant time. The key never travels further:
//! the proxy replaces `Authorization` with the route's own upstream token.

use http::header;
use pingora::http::RequestHeader;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ApiKeyHash;

/// The gateway's accepted API keys, as hashes.
#[derive(Debug, Default)]
pub(crate) struct Inbound {
    /// Keys good for every route.
    keys: Vec<ApiKeyHash>,
    /// Some key is configured somewhere, so every route needs one.
    required: bool,
}

impl Inbound {
    /// `keys` for every route; `route_keys` whether any route has keys of its own.
    pub(crate) fn new(keys: Vec<ApiKeyHash>, route_keys: bool) -> Self {
        let required = route_keys || !keys.is_empty();
        Self { keys, required }
    }

    /// Whether every request must carry a key.
    pub(crate) fn required(&self) -> bool {
        self.required
    }

    /// Whether `request` may use the route whose own keys are `route_keys`.
    pub(crate) fn allows(&self, request: &RequestHeader, route_keys: &[ApiKeyHash]) -> bool {
        if !self.required {
            return true;
        }
        let Some(key) = bearer(request) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        // Check every key, so that timing says nothing about which one matched.
        self.keys
            .iter()
            .chain(route_keys)
            .fold(0u8, |found, known| {
                found | known.as_bytes().ct_eq(&digest).unwrap_u8()
            })
            == 1
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
        let inbound = Inbound::new(vec![ApiKeyHash::parse(&hash).expect("hash")], false);
        assert!(inbound.allows(&request(Some("Bearer k-123")), &[]));
        assert!(inbound.allows(&request(Some("bearer k-123")), &[]));
        assert!(!inbound.allows(&request(Some("Bearer k-124")), &[]));
        assert!(!inbound.allows(&request(None), &[]));
    }

    #[test]
    fn a_routes_own_key_opens_that_route_only() {
        let hash = format!("sha256:{:x}", Sha256::digest(b"route-key"));
        let own = [ApiKeyHash::parse(&hash).expect("hash")];
        let inbound = Inbound::new(Vec::new(), true);
        assert!(inbound.allows(&request(Some("Bearer route-key")), &own));
        assert!(!inbound.allows(&request(Some("Bearer route-key")), &[]));
        assert!(!inbound.allows(&request(None), &[]));
    }

    #[test]
    fn no_keys_means_open() {
        assert!(Inbound::default().allows(&request(None), &[]));
    }
}
