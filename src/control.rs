//! The control plane: the gateway's own pages, answered before any route is considered.
//!
//! `GET /` lists the routes, their sign-in status and the endpoint each gives MCP clients;
//! `/auth/{route}/start` begins a sign-in and `/oauth/callback` ends it (one callback for
//! every route); `POST /auth/{route}/clear` signs a route out; `/healthz` says the process is
//! up; `/readyz` says whether it takes traffic (not while draining for shutdown); `/metrics`
//! is the Prometheus exposition. Other reserved paths are the gateway's too and answer 404
//! here rather than ever reaching an upstream.

mod pages;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, header};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::json;

use crate::gateway::Shared;
use crate::oauth::{OAuthRoute, SlotStatus};
use crate::proxy::reply;

/// Answers a request for a reserved path; returns the status sent.
pub(crate) async fn serve(session: &mut Session, shared: &Shared) -> pingora::Result<u16> {
    let path = session.req_header().uri.path().to_owned();
    let method = session.req_header().method.clone();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, [""]) => reply::json(session, 200, &index(shared)).await,
        (&Method::GET, ["healthz"]) => reply::json(session, 200, &json!({ "status": "ok" })).await,
        (&Method::GET, ["readyz"]) => readiness(session, shared).await,
        (&Method::GET, ["metrics"]) => metrics(session, shared).await,
        (&Method::GET, ["auth", route, "start"]) => start_sign_in(session, shared, route).await,
        (&Method::POST, ["auth", route, "clear"]) => sign_out(session, shared, route).await,
        (&Method::GET, ["oauth", "callback"]) => callback(session, shared).await,
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

/// The routes, with their sign-in status and the URL to give MCP clients per transport.
fn index(shared: &Shared) -> serde_json::Value {
    let base = shared.public_url.as_str().trim_end_matches('/');
    let routes: Vec<_> = shared
        .routes
        .routes()
        .map(|route| {
            let prefix = route.prefix.trim_end_matches('/');
            let mut entry = json!({
                "route": route.describe(),
                "streamable_http": format!("{base}{prefix}/mcp"),
                "sse": format!("{base}{prefix}/sse"),
            });
            if let Some(oauth) = shared.oauth.get(&route.name) {
                entry["sign_in"] = sign_in_status(oauth);
            }
            entry
        })
        .collect();
    json!({ "gateway": "mcp-u2m-gateway", "version": env!("CARGO_PKG_VERSION"), "routes": routes })
}

fn sign_in_status(route: &OAuthRoute) -> serde_json::Value {
    match route.status() {
        SlotStatus::SignedIn => json!({
            "status": "signed_in",
            "expires_at": route.tokens().and_then(|tokens| tokens.expires_at),
            "scope": route.tokens().and_then(|tokens| tokens.scope),
        }),
        SlotStatus::NeedsSignIn { reason } => json!({
            "status": "needs_sign_in",
            "reason": reason,
            "sign_in_url": route.sign_in_url,
        }),
    }
}

async fn readiness(session: &mut Session, shared: &Shared) -> pingora::Result<u16> {
    let draining = shared.draining.load(Ordering::Relaxed);
    let routes: Vec<_> = shared
        .routes
        .routes()
        .map(|route| route.describe())
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
    let body = Bytes::from(shared.metrics.render());
    let mut response = ResponseHeader::build(200, Some(3))?;
    response.insert_header(header::CONTENT_TYPE, "text/plain; version=0.0.4")?;
    response.insert_header(header::CONTENT_LENGTH, body.len())?;
    session
        .write_response_header(Box::new(response), false)
        .await?;
    session.write_response_body(Some(body), true).await?;
    Ok(200)
}

/// The Client ID Metadata Document served at `path`, if a route's `client_metadata_url`
/// points at this gateway there.
fn metadata_document(shared: &Shared, path: &str) -> Option<serde_json::Value> {
    let ours = shared.public_url.origin();
    shared.oauth.values().find_map(|route| {
        let url = route.client_metadata_url.as_ref()?;
        (url.origin() == ours && url.path() == path)
            .then(|| crate::oauth::registration::metadata_document(route))
            .flatten()
    })
}

fn oauth_route<'a>(shared: &'a Shared, name: &str) -> Option<&'a Arc<OAuthRoute>> {
    shared.oauth.get(name)
}

async fn start_sign_in(session: &mut Session, shared: &Shared, name: &str) -> pingora::Result<u16> {
    let Some(route) = oauth_route(shared, name) else {
        let page = pages::failed(None, &format!("there is no OAuth route named '{name}'"));
        return html(session, 404, &page).await;
    };
    match shared.flows.start(route).await {
        Ok(url) => {
            shared.metrics.sign_in(&route.name, "started");
            redirect(session, 302, url.as_str()).await
        }
        Err(error) => {
            tracing::warn!(route = %route.name, %error, "sign-in could not start");
            html(
                session,
                502,
                &pages::failed(Some(&route.name), &error.to_string()),
            )
            .await
        }
    }
}

async fn callback(session: &mut Session, shared: &Shared) -> pingora::Result<u16> {
    let params: HashMap<String, String> = session
        .req_header()
        .uri
        .query()
        .map(|query| {
            url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    match shared.flows.complete(&params).await {
        Ok(done) => {
            shared.metrics.sign_in(&done.route, "completed");
            html(
                session,
                200,
                &pages::signed_in(&done.route, done.scope.as_deref()),
            )
            .await
        }
        Err(error) => {
            let route = error.route().map(str::to_owned);
            tracing::warn!(route = route.as_deref().unwrap_or("-"), %error, "sign-in failed");
            shared
                .metrics
                .sign_in(route.as_deref().unwrap_or("-"), "failed");
            html(
                session,
                400,
                &pages::failed(route.as_deref(), &error.to_string()),
            )
            .await
        }
    }
}

/// Signs a route out. Only a same-origin form may do so: a request whose `Origin` is another
/// site is refused, so a page elsewhere cannot sign people out.
async fn sign_out(session: &mut Session, shared: &Shared, name: &str) -> pingora::Result<u16> {
    if !same_origin(session, shared) {
        let body = reply::error_body("forbidden", "cross-site requests may not change sign-ins");
        return reply::json(session, 403, &body).await;
    }
    let Some(route) = oauth_route(shared, name) else {
        let body = reply::error_body(
            "not_found",
            format!("there is no OAuth route named '{name}'"),
        );
        return reply::json(session, 404, &body).await;
    };
    match route.sign_out().await {
        Ok(()) => {
            tracing::info!(route = %route.name, "signed out");
            redirect(session, 303, "/").await
        }
        Err(error) => {
            let body = reply::error_body("store_error", error.to_string());
            reply::json(session, 500, &body).await
        }
    }
}

fn same_origin(session: &Session, shared: &Shared) -> bool {
    let Some(origin) = session.req_header().headers.get(header::ORIGIN) else {
        return true;
    };
    let ours = shared.public_url.origin().ascii_serialization();
    origin.to_str().is_ok_and(|origin| origin == ours)
}

async fn html(session: &mut Session, status: u16, page: &str) -> pingora::Result<u16> {
    let body = Bytes::from(page.to_owned());
    let mut response = ResponseHeader::build(status, Some(6))?;
    response.insert_header(header::CONTENT_TYPE, "text/html; charset=utf-8")?;
    response.insert_header(header::CONTENT_LENGTH, body.len())?;
    response.insert_header(header::CACHE_CONTROL, "no-store")?;
    response.insert_header("x-frame-options", "DENY")?;
    response.insert_header("referrer-policy", "no-referrer")?;
    response.insert_header(
        "content-security-policy",
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    )?;
    session
        .write_response_header(Box::new(response), false)
        .await?;
    session.write_response_body(Some(body), true).await?;
    Ok(status)
}

async fn redirect(session: &mut Session, status: u16, location: &str) -> pingora::Result<u16> {
    let mut response = ResponseHeader::build(status, Some(4))?;
    response.insert_header(header::LOCATION, location)?;
    response.insert_header(header::CONTENT_LENGTH, 0)?;
    response.insert_header(header::CACHE_CONTROL, "no-store")?;
    response.insert_header("referrer-policy", "no-referrer")?;
    session
        .write_response_header(Box::new(response), false)
        .await?;
    session
        .write_response_body(Some(Bytes::new()), true)
        .await?;
    Ok(status)
}
