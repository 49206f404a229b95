//! The control plane: the gateway's own pages, answered before any route is considered.
//!
//! `GET /` lists the routes and the endpoint each gives MCP clients; `/healthz` says the
//! process is up; `/readyz` says whether it takes traffic (not while draining for shutdown);
//! `/metrics` is the Prometheus exposition. Other reserved paths are the gateway's too and
//! answer 404 here rather than ever reaching an upstream.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::json;

use crate::gateway::Shared;
use crate::proxy::reply;

/// Answers a request for a reserved path; returns the status sent.
pub(crate) async fn serve(session: &mut Session, shared: &Shared) -> pingora::Result<u16> {
    let path = session.req_header().uri.path().to_owned();
    match path.as_str() {
        "/" => reply::json(session, 200, &index(shared)).await,
        "/healthz" => reply::json(session, 200, &json!({ "status": "ok" })).await,
        "/readyz" => readiness(session, shared).await,
        "/metrics" => metrics(session, shared).await,
        _ => {
            let body =
                reply::error_body("not_found", format!("{path} is not a page of this gateway"));
            reply::json(session, 404, &body).await
        }
    }
}

/// The routes, with the URL to give MCP clients for each transport.
fn index(shared: &Shared) -> serde_json::Value {
    let base = shared.public_url.as_str().trim_end_matches('/');
    let routes: Vec<_> = shared
        .routes
        .routes()
        .map(|route| {
            let prefix = route.prefix.trim_end_matches('/');
            json!({
                "route": route.describe(),
                "streamable_http": format!("{base}{prefix}/mcp"),
                "sse": format!("{base}{prefix}/sse"),
            })
        })
        .collect();
    json!({ "gateway": "mcp-u2m-gateway", "version": env!("CARGO_PKG_VERSION"), "routes": routes })
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
