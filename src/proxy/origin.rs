//! DNS-rebinding and cross-origin protection, for every request on every listener, before
//! anything else looks at it.
//!
//! A web page the user has open can make the browser send requests to the gateway: either
//! under a hostname of the attacker's that resolves to 127.0.0.1 (DNS rebinding), or
//! straight to `http://localhost:8000` from its own origin. The first carries a foreign
//! `Host`, the second a foreign `Origin`; both are refused with 403.
//!
//! - `Host` must be a name the gateway serves: `localhost`, the host of `public_url`, or one
//!   of `server.allowed_hosts`. An IP literal is accepted when it is a loopback address or
//!   when the gateway listens on every address (a literal cannot be rebound; the `Origin`
//!   rule still applies to it). On Databricks Apps, whose proxy sets `Host`, only
//!   `server.allowed_hosts` is enforced, when given.
//! - `Origin`, when present, must be the request's own origin (the gateway's page posting
//!   its forms) or one of `server.allowed_origins`. For those the gateway answers CORS:
//!   preflights itself, and `Access-Control-Allow-Origin` plus the MCP headers a browser
//!   client must read on every proxied response. Without an allow-list there is no CORS.

use http::header;
use pingora::http::{RequestHeader, ResponseHeader};

/// Request headers a browser-based MCP client may send cross-origin.
const CORS_ALLOW_HEADERS: &str = "content-type, accept, authorization, mcp-session-id, \
     mcp-protocol-version, last-event-id, mcp-method, mcp-name";
/// Response headers such a client must be able to read.
const CORS_EXPOSE_HEADERS: &str = "mcp-session-id, mcp-protocol-version";

/// Which `Host` and `Origin` values the gateway accepts.
#[derive(Debug, Clone)]
pub(crate) struct OriginPolicy {
    /// Lowercase host names (no port) the gateway answers to.
    hosts: Vec<String>,
    /// Listening on every address: any IP literal names this machine.
    any_ip: bool,
    /// Check `Host` at all (not behind a platform proxy that sets it, unless told to).
    check_host: bool,
    /// Lowercase origins allowed cross-origin, as `scheme://host[:port]`.
    origins: Vec<String>,
}

/// What [`OriginPolicy::check`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Go on; `cors` is the allow-listed cross-origin `Origin` to answer CORS for.
    Allowed {
        cors: Option<String>,
    },
    ForeignHost(String),
    ForeignOrigin(String),
}

impl OriginPolicy {
    /// The policy for a gateway listening on `listen` at `public_url`.
    pub(crate) fn new(
        listen: std::net::SocketAddr,
        public_url: &url::Url,
        allowed_hosts: &[String],
        allowed_origins: &[String],
        behind_platform_proxy: bool,
    ) -> Self {
        let mut hosts = vec!["localhost".to_owned()];
        if let Some(host) = public_url.host_str() {
            hosts.push(host.trim_matches(['[', ']']).to_ascii_lowercase());
        }
        hosts.extend(allowed_hosts.iter().map(|host| host.to_ascii_lowercase()));
        Self {
            hosts,
            any_ip: listen.ip().is_unspecified(),
            check_host: !behind_platform_proxy || !allowed_hosts.is_empty(),
            origins: allowed_origins
                .iter()
                .map(|origin| origin.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        }
    }

    /// Judges a request by its `Host` and `Origin`.
    pub(crate) fn check(&self, request: &RequestHeader) -> Verdict {
        let host = request_host(request);
        if self.check_host
            && let Some(host) = &host
            && !self.host_allowed(host)
        {
            return Verdict::ForeignHost(host.clone());
        }
        let Some(origin) = request
            .headers
            .get(header::ORIGIN)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).to_ascii_lowercase())
        else {
            return Verdict::Allowed { cors: None };
        };
        if host.is_some_and(|host| same_origin(&origin, &host)) {
            return Verdict::Allowed { cors: None };
        }
        if self.origins.contains(&origin) {
            return Verdict::Allowed { cors: Some(origin) };
        }
        Verdict::ForeignOrigin(origin)
    }

    /// Whether a request with this `Host` and no `Origin` goes on, as [`OriginPolicy::check`]
    /// would judge it.
    pub(crate) fn admits_host(&self, host: &str) -> bool {
        !self.check_host || self.host_allowed(&host.trim().to_ascii_lowercase())
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host);
        if let Ok(ip) = name.parse::<std::net::IpAddr>() {
            return ip.is_loopback() || self.any_ip || self.hosts.iter().any(|h| h == name);
        }
        self.hosts.iter().any(|allowed| allowed == name)
    }
}

/// The `Host` header, or the request target's authority (HTTP/2), lowercase with its port.
fn request_host(request: &RequestHeader) -> Option<String> {
    request
        .headers
        .get(header::HOST)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .or_else(|| request.uri.authority().map(|a| a.as_str().to_owned()))
        .map(|host| host.trim().to_ascii_lowercase())
}

/// `host[:port]` without the port, and an IPv6 literal without its brackets.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(name, _)| name)
}

/// Whether `origin` (`scheme://host[:port]`) names the same host and port as `host`.
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    let with_port = |text: &str| -> String {
        let has_port = text
            .rsplit_once(':')
            .is_some_and(|(name, port)| !name.ends_with('[') && !port.contains(']'));
        if has_port {
            text.to_owned()
        } else {
            format!("{text}:{default_port}")
        }
    };
    with_port(authority) == with_port(host)
}

/// The answer to a CORS preflight from the allow-listed `origin`.
pub(crate) fn preflight_response(origin: &str) -> pingora::Result<ResponseHeader> {
    let mut response = ResponseHeader::build(204, Some(6))?;
    response.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin)?;
    response.insert_header(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        "GET, POST, DELETE, OPTIONS",
    )?;
    response.insert_header(header::ACCESS_CONTROL_ALLOW_HEADERS, CORS_ALLOW_HEADERS)?;
    response.insert_header(header::ACCESS_CONTROL_MAX_AGE, "600")?;
    response.insert_header(header::VARY, "Origin")?;
    response.insert_header(header::CONTENT_LENGTH, 0)?;
    Ok(response)
}

/// Marks a proxied response readable by the allow-listed `origin`.
pub(crate) fn add_cors(response: &mut ResponseHeader, origin: &str) {
    let _ = response.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    let _ = response.insert_header(header::ACCESS_CONTROL_EXPOSE_HEADERS, CORS_EXPOSE_HEADERS);
    let _ = response.append_header(header::VARY, "Origin");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(listen: &str, origins: &[&str], platform: bool) -> OriginPolicy {
        let public = url::Url::parse("https://mcp.example.com/").expect("url");
        let origins: Vec<String> = origins.iter().map(|o| (*o).to_owned()).collect();
        OriginPolicy::new(
            listen.parse().expect("addr"),
            &public,
            &["gw.internal".to_owned()],
            &origins,
            platform,
        )
    }

    fn request(host: Option<&str>, origin: Option<&str>) -> RequestHeader {
        let mut request = RequestHeader::build("POST", b"/mcp", None).expect("request");
        if let Some(host) = host {
            request.insert_header("host", host).expect("host");
        }
        if let Some(origin) = origin {
            request.insert_header("origin", origin).expect("origin");
        }
        request
    }

    #[test]
    fn hosts_the_gateway_serves_pass_and_others_do_not() {
        let local = policy("127.0.0.1:8000", &[], false);
        for host in [
            "localhost:8000",
            "LOCALHOST",
            "127.0.0.1:8000",
            "[::1]:8000",
            "mcp.example.com",
            "gw.internal:9000",
        ] {
            assert_eq!(
                local.check(&request(Some(host), None)),
                Verdict::Allowed { cors: None },
                "{host}"
            );
        }
        for host in ["evil.example.com", "evil.example.com:8000", "10.0.0.5:8000"] {
            assert_eq!(
                local.check(&request(Some(host), None)),
                Verdict::ForeignHost(host.to_owned()),
                "{host}"
            );
        }
        let everywhere = policy("0.0.0.0:8000", &[], false);
        assert!(matches!(
            everywhere.check(&request(Some("10.0.0.5:8000"), None)),
            Verdict::Allowed { .. }
        ));
        assert!(matches!(
            everywhere.check(&request(Some("evil.example.com"), None)),
            Verdict::ForeignHost(_)
        ));
        let platform = policy("0.0.0.0:8000", &[], true);
        let behind = OriginPolicy::new(
            "0.0.0.0:8000".parse().expect("addr"),
            &url::Url::parse("http://localhost:8000").expect("url"),
            &[],
            &[],
            true,
        );
        assert!(matches!(
            behind.check(&request(Some("app-123.databricksapps.com"), None)),
            Verdict::Allowed { .. }
        ));
        assert!(matches!(
            platform.check(&request(Some("app-123.databricksapps.com"), None)),
            Verdict::ForeignHost(_)
        ));
    }

    #[test]
    fn an_origin_must_be_the_requests_own_or_allow_listed() {
        let policy = policy("127.0.0.1:8000", &["http://localhost:6274"], false);
        let host = Some("localhost:8000");
        assert_eq!(
            policy.check(&request(host, Some("http://localhost:8000"))),
            Verdict::Allowed { cors: None }
        );
        assert_eq!(
            policy.check(&request(Some("localhost"), Some("http://localhost"))),
            Verdict::Allowed { cors: None }
        );
        assert_eq!(
            policy.check(&request(host, Some("http://localhost:6274"))),
            Verdict::Allowed {
                cors: Some("http://localhost:6274".into())
            }
        );
        for origin in ["https://evil.example", "http://localhost:3000", "null"] {
            assert_eq!(
                policy.check(&request(host, Some(origin))),
                Verdict::ForeignOrigin(origin.to_owned()),
                "{origin}"
            );
        }
        assert_eq!(
            policy.check(&request(host, Some("https://localhost:8000"))),
            Verdict::Allowed { cors: None },
            "same host and port"
        );
    }
}
