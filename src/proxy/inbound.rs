//! Inbound authentication: who may use the gateway's routes, and who a caller is.
//!
//! When the gateway has API keys configured (`server.api_keys` for every route, a route's
//! own `api_keys` for that route alone), every proxied request must carry one as
//! `Authorization: Bearer <key>`, and a key for one route opens no other. Only SHA-256 hashes
//! of keys are kept, and they are compared in constant time. The key never travels further:
//! the proxy replaces `Authorization` with the route's own upstream token.
//!
//! For per-client limits a caller is a [`Client`]: the API key it presented, when the
//! gateway requires keys (so a client with a key is the same client from any address); the
//! identity a trusted proxy in front forwards (`server.trusted_identity_header`; on
//! Databricks Apps, where every request comes from the platform's proxy, its
//! `X-Forwarded-Email`); otherwise its address. Only a digest of a key or identity is kept.

use std::net::IpAddr;

use http::header;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
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
    /// The headers a trusted proxy names callers in, in order of preference.
    identity_headers: Vec<http::HeaderName>,
}

/// Who a request comes from, for per-client limits and the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Client {
    /// The first bytes of the SHA-256 of the client's API key or forwarded identity.
    Digest([u8; 8]),
    Address(IpAddr),
    /// No address (a Unix socket): all such clients are one.
    Unknown,
}

impl Client {
    /// The client a per-user route's caller is: their principal, whatever key or address
    /// they come with, so that nobody else can use their sessions.
    pub(crate) fn of_principal(principal: &crate::oauth::users::Principal) -> Self {
        Client::Digest(prefix(&Sha256::digest(principal.as_str().as_bytes())))
    }

    /// A short hex digest that tells clients apart in logs without naming them.
    pub(crate) fn hash(&self) -> String {
        let digest = match self {
            Client::Digest(digest) => *digest,
            Client::Address(ip) => prefix(&Sha256::digest(ip.to_string().as_bytes())),
            Client::Unknown => return "-".to_owned(),
        };
        digest.iter().map(|byte| format!("{byte:02x}")).collect()
    }
}

/// Who a request comes from, and the token source its upstream requests use: the route's,
/// or in per-user mode the caller's own.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) client: Client,
    pub(crate) tokens: std::sync::Arc<dyn crate::token::TokenSource>,
}

fn prefix(digest: &[u8]) -> [u8; 8] {
    let mut prefix = [0; 8];
    prefix.copy_from_slice(&digest[..8]);
    prefix
}

impl Inbound {
    /// `keys` for every route; `route_keys` whether any route has keys of its own;
    /// `identity_headers` the headers of a trusted proxy in front, if any.
    pub(crate) fn new(
        keys: Vec<ApiKeyHash>,
        route_keys: bool,
        identity_headers: Vec<http::HeaderName>,
    ) -> Self {
        let required = route_keys || !keys.is_empty();
        Self {
            keys,
            required,
            identity_headers,
        }
    }

    /// The client a request comes from (once [`Inbound::allows`] let it in).
    pub(crate) fn client(&self, session: &Session) -> Client {
        let request = session.req_header();
        let credential = if self.required {
            bearer(request)
        } else {
            self.identity_headers
                .iter()
                .find_map(|name| request.headers.get(name)?.to_str().ok())
        };
        if let Some(credential) = credential {
            return Client::Digest(prefix(&Sha256::digest(credential.as_bytes())));
        }
        match session.client_addr().and_then(|addr| addr.as_inet()) {
            Some(addr) => Client::Address(addr.ip()),
            None => Client::Unknown,
        }
    }

    /// Whether `request` may use the route whose own keys are `route_keys`.
    pub(crate) fn allows(&self, request: &RequestHeader, route_keys: &[ApiKeyHash]) -> bool {
        self.allows_key(bearer(request), route_keys)
    }

    /// Whether a request presenting `key` (the credential of its `Authorization: Bearer`)
    /// may use the route whose own keys are `route_keys`.
    pub(crate) fn allows_key(&self, key: Option<&str>, route_keys: &[ApiKeyHash]) -> bool {
        if !self.required {
            return true;
        }
        let Some(key) = key else {
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
    bearer_credential(request.headers.get(header::AUTHORIZATION)?.to_str().ok()?)
}

/// The credential of an `Authorization` header's value, when its scheme is `Bearer`.
pub(crate) fn bearer_credential(value: &str) -> Option<&str> {
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
        let inbound = Inbound::new(
            vec![ApiKeyHash::parse(&hash).expect("hash")],
            false,
            Vec::new(),
        );
        assert!(inbound.allows(&request(Some("Bearer k-123")), &[]));
        assert!(inbound.allows(&request(Some("bearer k-123")), &[]));
        assert!(!inbound.allows(&request(Some("Bearer k-124")), &[]));
        assert!(!inbound.allows(&request(None), &[]));
    }

    #[test]
    fn a_routes_own_key_opens_that_route_only() {
        let hash = format!("sha256:{:x}", Sha256::digest(b"route-key"));
        let own = [ApiKeyHash::parse(&hash).expect("hash")];
        let inbound = Inbound::new(Vec::new(), true, Vec::new());
        assert!(inbound.allows(&request(Some("Bearer route-key")), &own));
        assert!(!inbound.allows(&request(Some("Bearer route-key")), &[]));
        assert!(!inbound.allows(&request(None), &[]));
    }

    #[test]
    fn no_keys_means_open() {
        assert!(Inbound::default().allows(&request(None), &[]));
    }
}
