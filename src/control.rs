//! The control plane: the gateway's own pages, answered before any route is considered.
//!
//! `GET /` lists the routes, their sign-in status and the endpoint each gives MCP clients;
//! `/auth/{route}/start` begins a sign-in and `/oauth/callback` ends it (one callback for
//! every route); `POST /auth/{route}/clear` signs a route out; `/healthz` says the process is
//! up; `/readyz` says whether it takes traffic (not while draining for shutdown); `/metrics`
//! is the Prometheus exposition. Other reserved paths are the gateway's too and answer 404
//! here rather than ever reaching an upstream.

pub(crate) mod admin;
mod pages;
pub(crate) mod rate;
mod sign_in;
pub(crate) mod status;
mod ui;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, header};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::json;

use crate::gateway::Shared;
use crate::oauth::OAuthRoute;
use crate::oauth::users::Principal;
use crate::proxy::reply;
use subtle::ConstantTimeEq;

/// Which of the gateway's pages a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plane {
    /// The only listener: every page.
    Both,
    /// The main listener when an admin listener exists: all but the admin API and metrics.
    Public,
    /// The admin listener: the admin API, metrics and health.
    Admin,
}

/// Answers a request for a reserved path; returns the status sent.
pub(crate) async fn serve(
    session: &mut Session,
    shared: &Shared,
    plane: Plane,
) -> pingora::Result<u16> {
    let path = session.req_header().uri.path().to_owned();
    let method = session.req_header().method.clone();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let admin_path = matches!(segments.as_slice(), ["metrics"] | ["admin", ..]);
    let health_path = matches!(segments.as_slice(), ["healthz"] | ["readyz"]);
    let elsewhere = match plane {
        Plane::Both => None,
        Plane::Public if admin_path => Some("served on the gateway's admin listener"),
        Plane::Admin if !admin_path && !health_path => {
            Some("not served on the admin listener, which has only /admin/api, /metrics and health")
        }
        Plane::Public | Plane::Admin => None,
    };
    if let Some(reason) = elsewhere {
        let body = reply::error_body("not_found", format!("{path} is {reason}"));
        return reply::json(session, 404, &body).await;
    }
    let limited = matches!(
        segments.as_slice(),
        ["auth", _, "start" | "clear" | "refresh"] | ["oauth", "callback"] | ["admin", ..]
    );
    if limited && let Some(wait) = rate_limited(session, shared) {
        return too_many(session, shared, wait).await;
    }
    match (&method, segments.as_slice()) {
        (&Method::GET, [""]) => index(session, shared).await,
        (&Method::GET, _) if path == ui::SCRIPT_PATH => script(session).await,
        (&Method::GET, ["healthz"]) => reply::json(session, 200, &json!({ "status": "ok" })).await,
        (&Method::GET, ["readyz"]) => readiness(session, shared).await,
        (&Method::GET, ["metrics"]) => metrics(session, shared).await,
        (&Method::GET, ["auth", route, "start"]) => sign_in::start(session, shared, route).await,
        (&Method::POST, ["auth", route, "clear"]) => sign_out(session, shared, route).await,
        (&Method::POST, ["auth", route, "refresh"]) => refresh(session, shared, route).await,
        (&Method::GET, ["oauth", "callback"]) => sign_in::callback(session, shared).await,
        (_, ["admin", "api", rest @ ..]) => admin::serve(session, shared, rest).await,
        (&Method::GET, _) if let Some(document) = metadata_document(shared, &path) => {
            reply::json(session, 200, &document).await
        }
        _ => {
            let body =
                reply::error_body("not_found", format!("{path} is not a page of this gateway"));
            reply::json(session, 404, &body).await
        }
    }
}

/// How long the caller must wait, when it has used up its share of the limited doors.
fn rate_limited(session: &Session, shared: &Shared) -> Option<std::time::Duration> {
    let client = session.client_addr()?.as_inet()?.ip();
    shared
        .control_rate
        .check(client, std::time::Instant::now())
        .err()
}

async fn too_many(
    session: &mut Session,
    shared: &Shared,
    wait: std::time::Duration,
) -> pingora::Result<u16> {
    shared.metrics.limited("-", "rate");
    let seconds = wait.as_secs().max(1);
    let body = reply::error_body(
        "rate_limited",
        format!("too many sign-in or admin requests from this address; try again in {seconds} s"),
    );
    let retry_after = seconds.to_string();
    let headers = [
        (header::CONTENT_TYPE, "application/json"),
        (header::RETRY_AFTER, retry_after.as_str()),
        (header::CACHE_CONTROL, "no-store"),
    ];
    respond(session, 429, &headers, Bytes::from(body.to_string())).await
}

/// The UI page, or for a client that asks for JSON, the same as JSON.
async fn index(session: &mut Session, shared: &Shared) -> pingora::Result<u16> {
    let viewer = viewer(session, shared);
    if let Some(viewer) = &viewer {
        // Someone's first visit since start: read their sign-ins from the store.
        for route in shared.routing().oauth.values() {
            route.user(viewer).await;
        }
    }
    let routes = status::RouteStatus::all(shared, viewer.as_ref());
    if wants_json(session) {
        let body = json!({
            "gateway": "mcp-u2m-gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "routes": routes,
        });
        return reply::json(session, 200, &body).await;
    }
    html(session, 200, &ui::index(&routes, shared.csrf.expose())).await
}

/// Whether the client prefers JSON to HTML (a script rather than a browser).
fn wants_json(session: &Session) -> bool {
    let accept = session
        .req_header()
        .headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    accept.contains("application/json") && !accept.contains("text/html")
}

async fn script(session: &mut Session) -> pingora::Result<u16> {
    let headers = [
        (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
        (header::CACHE_CONTROL, "public, max-age=3600"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    respond(
        session,
        200,
        &headers,
        Bytes::from_static(ui::SCRIPT.as_bytes()),
    )
    .await
}

async fn readiness(session: &mut Session, shared: &Shared) -> pingora::Result<u16> {
    let draining = shared.draining.load(Ordering::Relaxed);
    // A route that needs sign-in is ready: that is a person's to-do, not a fault, and
    // taking the gateway out of a load balancer would not help anyone sign in.
    let routes: Vec<_> = status::RouteStatus::all(shared, None)
        .into_iter()
        .map(|route| {
            json!({
                "name": route.name,
                "ready": !draining,
                "auth": route.auth,
                "sign_in": route.sign_in.map(|sign_in| sign_in.state),
                "upstream_unreachable": route.upstream_unreachable,
            })
        })
        .collect();
    let (status, state) = if draining {
        (503, "draining")
    } else {
        (200, "ready")
    };
    reply::json(
        session,
        status,
        &json!({ "status": state, "routes": routes }),
    )
    .await
}

async fn metrics(session: &mut Session, shared: &Shared) -> pingora::Result<u16> {
    let now = status::unix_now() as i64;
    for (name, route) in &shared.routing().oauth {
        // A per-user route reports the soonest expiry among the people signed in.
        let slots = match route.users() {
            Some(users) => users.all(),
            None => vec![Arc::clone(route)],
        };
        let expires_at = slots
            .iter()
            .filter(|slot| slot.status() == crate::oauth::SlotStatus::SignedIn)
            .filter_map(|slot| slot.tokens()?.expires_at)
            .reduce(f64::min);
        let left = expires_at.map(|at| at as i64 - now);
        shared.metrics.token_expiry(name, left);
    }
    let bridged = shared.bridges.len() + shared.legacy_sessions.len();
    shared.metrics.bridge_sessions(bridged);
    let headers = [(header::CONTENT_TYPE, "text/plain; version=0.0.4")];
    respond(session, 200, &headers, Bytes::from(shared.metrics.render())).await
}

/// The Client ID Metadata Document served at `path`, if a route's `client_metadata_url`
/// points at this gateway there.
fn metadata_document(shared: &Shared, path: &str) -> Option<serde_json::Value> {
    let ours = shared.public_url().origin();
    shared.routing().oauth.values().find_map(|route| {
        let url = route.client_metadata_url.as_ref()?;
        (url.origin() == ours && url.path() == path)
            .then(|| crate::oauth::registration::metadata_document(route))
            .flatten()
    })
}

/// Who is looking, when a proxy in front names people (`server.trusted_identity_header`).
fn viewer(session: &Session, shared: &Shared) -> Option<Principal> {
    let routing = shared.routing();
    let identity_headers = &routing.config.server.identity_headers;
    Principal::from_headers(&session.req_header().headers, identity_headers)
}

/// Why a page or an admin call cannot act on a route's sign-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotRefusal {
    /// No OAuth route has that name.
    NoOAuthRoute,
    /// The route is per-user and the request names nobody.
    NobodyNamed,
}

/// The sign-in a request acts on: the route's, or on a per-user route `principal`'s own.
pub(crate) async fn slot_for(
    shared: &Shared,
    name: &str,
    principal: Option<&Principal>,
) -> Result<Arc<OAuthRoute>, SlotRefusal> {
    let route = shared
        .routing()
        .oauth_route(name)
        .cloned()
        .ok_or(SlotRefusal::NoOAuthRoute)?;
    if !route.is_per_user() {
        return Ok(route);
    }
    let principal = principal.ok_or(SlotRefusal::NobodyNamed)?;
    route.user(principal).await.ok_or(SlotRefusal::NobodyNamed)
}

/// The viewer's own sign-in on route `name`, or the page that says why there is none.
async fn own_slot(
    session: &mut Session,
    shared: &Shared,
    name: &str,
) -> Result<Arc<OAuthRoute>, pingora::Result<u16>> {
    let viewer = viewer(session, shared);
    match slot_for(shared, name, viewer.as_ref()).await {
        Ok(slot) => Ok(slot),
        Err(SlotRefusal::NoOAuthRoute) => Err(no_oauth_route(session, name).await),
        Err(SlotRefusal::NobodyNamed) => {
            let message = format!(
                "each person signs in to route '{name}' for themselves, and this request does \
                 not say who you are: open this page through the proxy that signs you in"
            );
            Err(html(session, 401, &pages::failed(Some(name), &message)).await)
        }
    }
}

/// Signs a route out, from the UI's form.
async fn sign_out(session: &mut Session, shared: &Shared, name: &str) -> pingora::Result<u16> {
    if let Some(refused) = refuse_forged(session, shared).await {
        return refused;
    }
    let route = match own_slot(session, shared, name).await {
        Ok(route) => route,
        Err(answered) => return answered,
    };
    match route.sign_out().await {
        Ok(()) => {
            tracing::info!(route = %route.name, principal = %route.principal_hash(), "signed out");
            redirect(session, 303, "/").await
        }
        Err(error) => {
            let page = pages::failed(Some(&route.name), &error.to_string());
            html(session, 500, &page).await
        }
    }
}

/// Refreshes a route's tokens now, from the UI's form.
async fn refresh(session: &mut Session, shared: &Shared, name: &str) -> pingora::Result<u16> {
    if let Some(refused) = refuse_forged(session, shared).await {
        return refused;
    }
    let route = match own_slot(session, shared, name).await {
        Ok(route) => route,
        Err(answered) => return answered,
    };
    match route.refresh_now().await {
        Ok(()) => redirect(session, 303, &format!("/#route-{}", route.name)).await,
        Err(error) => {
            tracing::warn!(route = %route.name, %error, "refresh on request failed");
            let message = format!("the refresh failed: {error}");
            html(session, 502, &pages::failed(Some(&route.name), &message)).await
        }
    }
}

async fn no_oauth_route(session: &mut Session, name: &str) -> pingora::Result<u16> {
    let page = pages::failed(None, &format!("there is no OAuth route named '{name}'"));
    html(session, 404, &page).await
}

/// Answers a state-changing form post that did not come from the gateway's own page: one
/// from another origin, or without the page's CSRF token. `None` lets the post go on.
async fn refuse_forged(session: &mut Session, shared: &Shared) -> Option<pingora::Result<u16>> {
    let from_our_page = same_origin(session, shared) && csrf_matches(session, shared).await;
    if from_our_page {
        return None;
    }
    tracing::warn!("refused a form post without the page's CSRF token or from another origin");
    let message = "this request did not come from the gateway's own page; open the page and \
                   use its buttons";
    let page = pages::failed(None, message);
    Some(html(session, 403, &page).await)
}

/// Whether the form body carries the gateway's CSRF token.
async fn csrf_matches(session: &mut Session, shared: &Shared) -> bool {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = session.read_request_body().await {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_FORM_BODY {
            return false;
        }
    }
    url::form_urlencoded::parse(&body)
        .find(|(key, _)| key == "csrf")
        .is_some_and(|(_, value)| {
            value
                .as_bytes()
                .ct_eq(shared.csrf.expose().as_bytes())
                .into()
        })
}

/// Form posts of the UI are a few dozen bytes.
const MAX_FORM_BODY: usize = 8 * 1024;

fn same_origin(session: &Session, shared: &Shared) -> bool {
    let Some(origin) = session.req_header().headers.get(header::ORIGIN) else {
        return true;
    };
    let ours = shared.public_url().origin().ascii_serialization();
    origin.to_str().is_ok_and(|origin| origin == ours)
}

/// A page of the gateway's, with the headers that keep it from being framed, sniffed,
/// cached or leaking its URL onward, and a CSP that allows no inline script.
async fn html(session: &mut Session, status: u16, page: &str) -> pingora::Result<u16> {
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; \
             form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    ];
    respond(session, status, &headers, Bytes::from(page.to_owned())).await
}

async fn redirect(session: &mut Session, status: u16, location: &str) -> pingora::Result<u16> {
    let headers = [
        (header::LOCATION, location),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    respond(session, status, &headers, Bytes::new()).await
}

/// Writes a whole response: `headers`, the body's length, the body.
async fn respond(
    session: &mut Session,
    status: u16,
    headers: &[(header::HeaderName, &str)],
    body: Bytes,
) -> pingora::Result<u16> {
    let mut response = ResponseHeader::build(status, Some(headers.len() + 1))?;
    for (name, value) in headers {
        response.insert_header(name.clone(), *value)?;
    }
    response.insert_header(header::CONTENT_LENGTH, body.len())?;
    session
        .write_response_header(Box::new(response), false)
        .await?;
    session.write_response_body(Some(body), true).await?;
    Ok(status)
}
