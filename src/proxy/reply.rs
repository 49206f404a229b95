//! Responses the gateway writes itself: JSON errors a person can act on.
//!
//! Every error body names what went wrong and, where there is one, the route; none carries a
//! credential. Upstream failures are classified so that a timeout is a 504 and anything else
//! that kept us from an answer is a 502.

use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorType};
use serde_json::json;

use crate::token::TokenError;

/// The headers of every JSON response the gateway writes itself, besides its length.
const JSON_HEADERS: [(&str, &str); 6] = [
    ("content-type", "application/json"),
    ("cache-control", "no-store"),
    // Never rendered as a page, framed, or read as anything but JSON.
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    ("referrer-policy", "no-referrer"),
];

/// A complete HTTP/1.1 JSON response, as [`json`] writes it, for a connection the gateway
/// writes to itself.
pub(crate) fn json_wire(status: u16, body: &serde_json::Value) -> Vec<u8> {
    use std::fmt::Write;

    let body = body.to_string();
    let mut wire = status_line(status, None);
    let _ = write!(wire, "content-length: {}\r\n", body.len());
    for (name, value) in JSON_HEADERS {
        let _ = write!(wire, "{name}: {value}\r\n");
    }
    wire.push_str("\r\n");
    wire.push_str(&body);
    wire.into_bytes()
}

/// An HTTP/1.1 status line with its line ending: the status's standard reason phrase, else
/// `reason` (an upstream's own, for a status the standard has none for).
pub(crate) fn status_line(status: u16, reason: Option<&str>) -> String {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|status| status.canonical_reason())
        .or(reason)
        .unwrap_or_default();
    format!("HTTP/1.1 {status} {reason}\r\n")
}

/// Writes a complete JSON response; the returned status is for logging.
pub(crate) async fn json(
    session: &mut Session,
    status: u16,
    body: &serde_json::Value,
) -> pingora::Result<u16> {
    json_with(session, status, body, None).await
}

/// [`json`] with a `Retry-After`, in whole seconds and at least one.
pub(crate) async fn json_with(
    session: &mut Session,
    status: u16,
    body: &serde_json::Value,
    retry_after: Option<std::time::Duration>,
) -> pingora::Result<u16> {
    let body = Bytes::from(body.to_string());
    let mut response = ResponseHeader::build(status, Some(9))?;
    if let Some(wait) = retry_after {
        response.insert_header(header::RETRY_AFTER, wait.as_secs().max(1))?;
    }
    response.insert_header(header::CONTENT_LENGTH, body.len())?;
    for (name, value) in JSON_HEADERS {
        response.insert_header(name, value)?;
    }
    session
        .write_response_header(Box::new(response), false)
        .await?;
    session.write_response_body(Some(body), true).await?;
    Ok(status)
}

/// A JSON error body: a stable machine-readable code and a sentence for people.
pub(crate) fn error_body(code: &str, message: impl Into<String>) -> serde_json::Value {
    json!({ "error": code, "message": message.into() })
}

/// The answer to a request on a route without a usable token: 401 with the sign-in URL when
/// a person must sign in, 503 when a refresh is failing for now.
pub(crate) fn no_token(route: &str, error: &TokenError) -> (u16, serde_json::Value) {
    let (status, code) = match error {
        TokenError::NeedsSignIn { .. } => (401, "needs_sign_in"),
        TokenError::InsufficientScope { .. } => (403, "insufficient_scope"),
        _ => (503, "token_unavailable"),
    };
    let mut body = error_body(code, error.to_string());
    body["route"] = route.into();
    if let TokenError::NeedsSignIn { sign_in_url, .. }
    | TokenError::InsufficientScope { sign_in_url, .. } = error
    {
        body["sign_in_url"] = sign_in_url.clone().into();
    }
    (status, body)
}

/// What went wrong talking to an upstream, as a status and a sentence.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct UpstreamFailure {
    pub(crate) status: u16,
    pub(crate) code: &'static str,
    pub(crate) cause: String,
}

/// Classifies a pingora error that happened between us and the upstream.
pub(crate) fn upstream_failure(error: &Error) -> UpstreamFailure {
    let (status, code, what) = match error.etype() {
        ErrorType::ConnectTimedout => (504, "upstream_timeout", "connecting timed out"),
        ErrorType::ReadTimedout => (504, "upstream_timeout", "no response in time"),
        ErrorType::WriteTimedout => (504, "upstream_timeout", "sending the request timed out"),
        ErrorType::ConnectRefused => (502, "upstream_unreachable", "connection refused"),
        ErrorType::ConnectNoRoute => (502, "upstream_unreachable", "no route to host"),
        ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::InvalidCert
        | ErrorType::HandshakeError => (502, "upstream_tls_error", "TLS handshake failed"),
        ErrorType::ConnectionClosed => (502, "upstream_closed", "connection closed early"),
        ErrorType::InvalidHTTPHeader | ErrorType::H1Error | ErrorType::H2Error => {
            (502, "upstream_bad_response", "invalid HTTP response")
        }
        _ => (502, "upstream_error", "request failed"),
    };
    let cause = match root_cause(error) {
        Some(detail) => format!("{what}: {detail}"),
        None => what.to_owned(),
    };
    UpstreamFailure {
        status,
        code,
        cause,
    }
}

/// The innermost cause's text, which says what the OS or TLS library saw.
fn root_cause(error: &Error) -> Option<String> {
    let mut cause: &(dyn std::error::Error + 'static) = error.cause.as_deref()?;
    while let Some(next) = cause.source() {
        cause = next;
    }
    Some(cause.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_504_and_refusals_502() {
        let timeout = Error::new(ErrorType::ConnectTimedout);
        assert_eq!(upstream_failure(&timeout).status, 504);
        let refused = Error::because(
            ErrorType::ConnectRefused,
            "connect",
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        );
        let failure = upstream_failure(&refused);
        assert_eq!(failure.status, 502);
        assert_eq!(failure.code, "upstream_unreachable");
        assert!(
            failure.cause.starts_with("connection refused"),
            "{}",
            failure.cause
        );
    }
}
