//! Header rules at the gateway's two edges.
//!
//! Toward the upstream: the client's credentials, cookies, `Origin` and hop-by-hop headers
//! never pass, nor the identity and token headers an authenticating proxy in front adds
//! (an upstream is a third party, and the platform's user token is a credential); the
//! route's token and static headers are added; streams ask for no
//! compression. Toward the client: hop-by-hop headers and the upstream's own OAuth challenge
//! are dropped, and event streams are marked so that no intermediary buffers them. Every MCP
//! header (`Mcp-Session-Id`, `MCP-Protocol-Version`, `Last-Event-ID`, `Mcp-Method`, …)
//! passes both ways untouched because nothing here names it.

use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

use crate::route::Route;
use crate::token::AccessToken;

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the proxy-specific ones.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// Client headers that must never reach an upstream.
const CLIENT_ONLY: &[HeaderName] = &[header::AUTHORIZATION, header::COOKIE, header::ORIGIN];

/// What an authenticating proxy in front adds about the caller: Databricks Apps' headers,
/// the platform user's own token among them, and those of the common OAuth proxies. A
/// route's `headers` may still set one of these names on purpose.
const FORWARDED_IDENTITY: &[&str] = &[
    "x-forwarded-email",
    "x-forwarded-user",
    "x-forwarded-preferred-username",
    "x-forwarded-groups",
    "x-forwarded-access-token",
    "x-auth-request-email",
    "x-auth-request-user",
    "x-auth-request-preferred-username",
    "x-auth-request-groups",
    "x-auth-request-access-token",
];

/// Whether the client asked for an event stream.
pub(crate) fn accepts_event_stream(request: &RequestHeader) -> bool {
    request
        .headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("text/event-stream"))
}

/// The body length a request declares in `Content-Length`, when it is a number.
pub(crate) fn declared_length(request: &RequestHeader) -> Option<u64> {
    request
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse().ok())
}

/// Whether a response is an event stream.
pub(crate) fn is_event_stream(response: &ResponseHeader) -> bool {
    response
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().starts_with("text/event-stream"))
}

/// Whether a client header, named in any case, never reaches the upstream of `route`:
/// hop-by-hop headers (the `Connection` header may list more), credentials, cookies,
/// `Origin`, and what an authenticating proxy in front says about the caller.
pub(crate) fn stays_behind(name: &str, route: &Route) -> bool {
    let named = |known: &str| name.eq_ignore_ascii_case(known);
    HOP_BY_HOP.iter().copied().any(named)
        || CLIENT_ONLY.iter().any(|known| named(known.as_str()))
        || FORWARDED_IDENTITY.iter().copied().any(named)
        || route
            .identity_headers
            .iter()
            .any(|known| named(known.as_str()))
}

/// Whether an upstream response header, named in any case, never reaches the client:
/// hop-by-hop headers (the `Connection` header may list more) and the upstream's OAuth
/// challenge.
pub(crate) fn held_back(name: &str) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|known| name.eq_ignore_ascii_case(known))
        || name.eq_ignore_ascii_case(header::WWW_AUTHENTICATE.as_str())
}

/// What marks an event-stream response so that no intermediary buffers or transforms it.
pub(crate) const EVENT_STREAM_MARKS: [(&str, &str); 2] = [
    ("cache-control", "no-cache, no-transform"),
    ("x-accel-buffering", "no"),
];

/// Turns a copy of the client's request header into the upstream's.
pub(crate) fn prepare_upstream(
    request: &mut RequestHeader,
    route: &Route,
    token: Option<&AccessToken>,
) -> Result<(), http::header::InvalidHeaderValue> {
    let stays_behind = |name: &HeaderName| stays_behind(name.as_str(), route);
    for name in leaving(&request.headers, stays_behind) {
        request.remove_header(&name);
    }
    let _ = request.insert_header(header::HOST, route.upstream.host_header());
    for (name, value) in &route.extra_headers {
        let _ = request.insert_header(name.clone(), value.clone());
    }
    if let Some(token) = token {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.secret()))?;
        value.set_sensitive(true);
        let _ = request.insert_header(header::AUTHORIZATION, value);
    }
    if accepts_event_stream(request) {
        let _ = request.insert_header(header::ACCEPT_ENCODING, "identity");
    }
    for plugin in &route.plugins {
        plugin.upstream_request_filter(request);
    }
    Ok(())
}

/// Turns the upstream's response header into the client's.
pub(crate) fn prepare_downstream(response: &mut ResponseHeader) {
    // A client that saw the upstream's challenge would start its own OAuth flow against the
    // upstream and then send us tokens we must not forward.
    let challenge = |name: &HeaderName| name == header::WWW_AUTHENTICATE;
    for name in leaving(&response.headers, challenge) {
        response.remove_header(&name);
    }
    if is_event_stream(response) {
        response.remove_header(&header::CONTENT_LENGTH);
        for (name, value) in EVENT_STREAM_MARKS {
            let _ = response.insert_header(name, value);
        }
    }
}

/// The headers present that must not cross: the hop-by-hop ones, including any the
/// `Connection` header names, and those `also` picks. One pass over what is there, so a
/// message without any of them costs no removal at all.
fn leaving(headers: &http::HeaderMap, also: impl Fn(&HeaderName) -> bool) -> Vec<HeaderName> {
    let listed = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| headers.contains_key(name));
    let mut names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| HOP_BY_HOP.contains(&name.as_str()) || also(name))
        .cloned()
        .collect();
    for name in listed {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_listed_headers_are_hop_by_hop_too() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert("mcp-session-id", HeaderValue::from_static("abc"));
        let names = leaving(&headers, |_| false);
        assert!(names.contains(&HeaderName::from_static("x-secret-hop")));
        assert!(names.contains(&header::CONNECTION));
        assert!(!names.contains(&HeaderName::from_static("mcp-session-id")));
    }

    #[test]
    fn event_stream_responses_are_marked_unbuffered() {
        let mut response = ResponseHeader::build(200, None).expect("header");
        response
            .insert_header("content-type", "text/event-stream; charset=utf-8")
            .expect("insert");
        response
            .insert_header("www-authenticate", "Bearer x")
            .expect("insert");
        prepare_downstream(&mut response);
        assert_eq!(response.headers["cache-control"], "no-cache, no-transform");
        assert_eq!(response.headers["x-accel-buffering"], "no");
        assert!(response.headers.get("www-authenticate").is_none());
    }
}
