//! The two ends of a sign-in as the browser sees them: `GET /auth/{route}/start` and
//! `GET /oauth/callback`.
//!
//! The start page sends the browser to the authorization server with a cookie that binds
//! the flow to that browser; the callback completes the flow only when the cookie comes
//! back, so a callback link someone else started (login CSRF) is refused. A cookie belongs
//! to the host the browser used, and the callback arrives at the public URL's host, so a
//! start requested under another name for the gateway (`127.0.0.1` for `localhost`) first
//! moves the browser to the public URL.

use bytes::Bytes;
use http::header;
use pingora::proxy::Session;
use url::Url;

use super::{html, own_slot, pages, redirect, respond, viewer};
use crate::gateway::Shared;
use crate::oauth::flow::{self, CallbackParams};

/// Marks a start that the gateway itself redirected to the public URL, so that a proxy in
/// front which rewrites `Host` cannot make it redirect in a loop.
const CANONICAL_MARK: &str = "canonical=1";

pub(super) async fn start(
    session: &mut Session,
    shared: &Shared,
    name: &str,
) -> pingora::Result<u16> {
    let route = match own_slot(session, shared, name).await {
        Ok(route) => route,
        Err(answered) => return answered,
    };
    let redirected = session.req_header().uri.query() == Some(CANONICAL_MARK);
    if !redirected && !on_public_host(session, &shared.public_url()) {
        let location = format!("{}?{CANONICAL_MARK}", route.sign_in_url);
        return redirect(session, 302, &location).await;
    }
    match shared.flows.start(&route).await {
        Ok(started) => {
            shared.metrics.sign_in(&route.name, "started");
            let callback = &route.redirect_uri;
            let cookie = BindingCookie {
                name: &started.binding.name,
                value: started.binding.value.expose(),
                path: callback.path(),
                max_age: shared.flows.lifetime().as_secs(),
                secure: callback.scheme() == "https",
            };
            let cookie = cookie.to_string();
            let headers = [
                (header::LOCATION, started.authorize_url.as_str()),
                (header::SET_COOKIE, cookie.as_str()),
                (header::CACHE_CONTROL, "no-store"),
                (header::REFERRER_POLICY, "no-referrer"),
            ];
            respond(session, 302, &headers, Bytes::new()).await
        }
        Err(error) => {
            tracing::warn!(route = %route.name, %error, "sign-in could not start");
            let page = pages::failed(Some(&route.name), &error.to_string());
            html(session, 502, &page).await
        }
    }
}

pub(super) async fn callback(session: &mut Session, shared: &Shared) -> pingora::Result<u16> {
    let query = session.req_header().uri.query().unwrap_or_default();
    let result = match CallbackParams::parse(query) {
        Ok(params) => {
            let cookie = params
                .state()
                .and_then(|state| cookie(session, &flow::binding_cookie_name(state)));
            let principal = viewer(session, shared);
            let routing = shared.routing();
            let handover = flow::Handover {
                store: routing.store.as_ref(),
                routes: &routing.oauth,
            };
            shared
                .flows
                .complete(&params, cookie.as_deref(), principal.as_ref(), handover)
                .await
        }
        Err(error) => Err(error),
    };
    match result {
        Ok(done) => {
            shared.metrics.sign_in(&done.route, "completed");
            // A reload that replaced the route meanwhile: the one in force reads the new
            // tokens from the store (they are its own when the slot is the same).
            let current = shared.routing().oauth_route(&done.route).cloned();
            let current = match (current, done.signed_in.principal()) {
                (Some(route), Some(principal)) => route.users().and_then(|u| u.get(principal)),
                (current, _) => current,
            };
            if let Some(current) = current.filter(|c| !std::sync::Arc::ptr_eq(c, &done.signed_in)) {
                current.load().await;
            }
            let page = pages::signed_in(&done.route, done.scope.as_deref());
            html(session, 200, &page).await
        }
        Err(error) => {
            let route = error.route().map(str::to_owned);
            let label = route.as_deref().unwrap_or("-");
            tracing::warn!(route = label, %error, "sign-in failed");
            shared.metrics.sign_in(label, "failed");
            let page = pages::failed(route.as_deref(), &error.to_string());
            // A store the replicas share that cannot be reached is the gateway's trouble.
            let status = match error {
                flow::CallbackError::SharedStore { .. } => 503,
                _ => 400,
            };
            html(session, status, &page).await
        }
    }
}

/// The binding cookie's `Set-Cookie` value: sent only to the callback, never to scripts,
/// with the top-level redirect from the authorization server (`Lax`), for the sign-in's
/// lifetime, and over https only when the callback is https.
struct BindingCookie<'a> {
    name: &'a str,
    value: &'a str,
    path: &'a str,
    max_age: u64,
    secure: bool,
}

impl std::fmt::Display for BindingCookie<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            name,
            value,
            path,
            max_age,
            secure,
        } = self;
        write!(
            f,
            "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax"
        )?;
        if *secure {
            f.write_str("; Secure")?;
        }
        Ok(())
    }
}

/// The value of the cookie `name` in the request's `Cookie` headers.
fn cookie(session: &Session, name: &str) -> Option<String> {
    session
        .req_header()
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then(|| value.to_owned())
        })
}

/// Whether the browser reached the gateway under the public URL's host and port, as `Host`
/// (or a proxy's `X-Forwarded-Host`) says.
fn on_public_host(session: &Session, public_url: &Url) -> bool {
    let request = session.req_header();
    let named = |value: Option<&str>| value.is_some_and(|host| same_authority(host, public_url));
    let forwarded = request
        .headers
        .get("x-forwarded-host")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(',').next());
    let host = request
        .uri
        .authority()
        .map(|authority| authority.as_str())
        .or_else(|| {
            let value = request.headers.get(header::HOST)?;
            value.to_str().ok()
        });
    named(host) || named(forwarded)
}

/// Whether `host` (`name` or `name:port`, as in a `Host` header) is the URL's host and port.
fn same_authority(host: &str, url: &Url) -> bool {
    let host = host.trim();
    let Some(expected) = url.host_str() else {
        return false;
    };
    let default_port = if url.scheme() == "https" { 443 } else { 80 };
    let (name, port) = match host.rsplit_once(':') {
        Some((name, digits)) if !name.ends_with(':') && digits.parse::<u16>().is_ok() => {
            (name, digits.parse::<u16>().ok())
        }
        _ => (host, Some(default_port)),
    };
    name.eq_ignore_ascii_case(expected) && port == url.port_or_known_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binding_cookie_is_http_only_lax_and_secure_over_https() {
        let mut cookie = BindingCookie {
            name: "n",
            value: "v",
            path: "/oauth/callback",
            max_age: 600,
            secure: false,
        };
        assert_eq!(
            cookie.to_string(),
            "n=v; Path=/oauth/callback; Max-Age=600; HttpOnly; SameSite=Lax"
        );
        cookie.secure = true;
        assert!(cookie.to_string().ends_with("; SameSite=Lax; Secure"));
    }

    #[test]
    fn hosts_compare_by_name_and_port_with_the_scheme_default() {
        let url = Url::parse("http://localhost:8000/").expect("url");
        assert!(same_authority("localhost:8000", &url));
        assert!(same_authority("LocalHost:8000", &url));
        assert!(!same_authority("127.0.0.1:8000", &url));
        assert!(!same_authority("localhost:8001", &url));
        assert!(!same_authority("localhost", &url));

        let https = Url::parse("https://gw.example.com/").expect("url");
        assert!(same_authority("gw.example.com", &https));
        assert!(same_authority("gw.example.com:443", &https));
        assert!(!same_authority("gw.example.com:8443", &https));

        let v6 = Url::parse("http://[::1]:8000/").expect("url");
        assert!(same_authority("[::1]:8000", &v6));
        assert!(!same_authority("[::1]", &v6));
    }
}
