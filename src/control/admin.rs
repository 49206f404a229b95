//! The admin API under `/admin/api/`: JSON for operators and for the CLI.
//!
//! - `GET  /admin/api/routes`: every route's [`RouteStatus`];
//! - `GET  /admin/api/routes/{route}`: one route's;
//! - `POST /admin/api/routes/{route}/refresh`: refresh the route's tokens now;
//! - `POST /admin/api/routes/{route}/clear`: sign the route out (`?registration=true` also
//!   forgets the client registration, so the next sign-in registers afresh);
//! - `GET  /admin/api/process`: this process's id, version and start time (what the
//!   `upgrade` command watches for);
//! - `POST /admin/api/reload`: read gateway.toml again and put its routes in force (422 with
//!   every error when it does not load, and the running routes stay).
//!
//! Callers on loopback may use it without a token unless `[admin] allow_loopback = false`;
//! anyone else needs `Authorization: Bearer <admin token>`, compared in constant time. No
//! answer ever carries a credential.

use std::net::SocketAddr;
use std::sync::Arc;

use http::Method;
use pingora::proxy::Session;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::status::RouteStatus;
use super::{SlotRefusal, slot_for};
use crate::config::{AdminConfig, BearerSource};
use crate::gateway::Shared;
use crate::oauth::OAuthRoute;
use crate::oauth::users::Principal;
use crate::proxy::reply;
use crate::secret::Secret;

/// Who may use the admin API.
#[derive(Debug)]
pub(crate) struct AdminAuth {
    /// SHA-256 of the admin token, so that comparing takes the same time for any guess.
    token_hash: Option<[u8; 32]>,
    allow_loopback: bool,
}

impl AdminAuth {
    /// Reads the admin token, if the configuration names one.
    pub(crate) fn new(config: &AdminConfig) -> std::io::Result<Self> {
        let token = match &config.token {
            None => None,
            Some(BearerSource::Env(name)) => std::env::var(name).ok().map(Secret::new),
            Some(BearerSource::File(path)) => Some(Secret::new(std::fs::read_to_string(path)?)),
        };
        let token_hash = token
            .map(|token| token.expose().trim().to_owned())
            .filter(|token| !token.is_empty())
            .map(|token| Sha256::digest(token.as_bytes()).into());
        Ok(Self {
            token_hash,
            allow_loopback: config.allow_loopback,
        })
    }

    /// Whether the caller at `client` with `request`'s headers may use the admin API.
    fn allows(&self, client: Option<SocketAddr>, request: &pingora::http::RequestHeader) -> bool {
        if self.allow_loopback && client.is_some_and(|addr| addr.ip().is_loopback()) {
            return true;
        }
        let (Some(known), Some(given)) = (&self.token_hash, crate::proxy::inbound::bearer(request))
        else {
            return false;
        };
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        known.ct_eq(&given).into()
    }

    /// What a refused caller is told to do.
    fn refusal(&self) -> &'static str {
        if self.token_hash.is_some() {
            "the admin API needs 'Authorization: Bearer <admin token>'"
        } else {
            "the admin API is open to loopback callers only; set [admin] token_env or token_file \
             to use it from elsewhere"
        }
    }
}

/// Answers a request under `/admin/api/`; `rest` is the path after it.
pub(crate) async fn serve(
    session: &mut Session,
    shared: &Shared,
    rest: &[&str],
) -> pingora::Result<u16> {
    let client = session
        .client_addr()
        .and_then(|addr| addr.as_inet())
        .copied();
    if !shared.admin.allows(client, session.req_header()) {
        let body = reply::error_body("unauthorized", shared.admin.refusal());
        return reply::json(session, 401, &body).await;
    }
    let method = session.req_header().method.clone();
    match (&method, rest) {
        (&Method::GET, ["routes"]) => {
            let routes = RouteStatus::all(shared, None);
            reply::json(session, 200, &json!({ "routes": routes })).await
        }
        (&Method::GET, ["routes", name]) => match route_status(shared, name, person(session)) {
            Some(status) => reply::json(session, 200, &to_json(&status)).await,
            None => no_route(session, name).await,
        },
        (&Method::POST, ["routes", name, "refresh"]) => refresh(session, shared, name).await,
        (&Method::POST, ["routes", name, "clear"]) => clear(session, shared, name).await,
        (&Method::POST, ["reload"]) => reload(session, shared).await,
        (&Method::GET, ["process"]) => {
            let body = json!({
                "pid": std::process::id(),
                "version": env!("CARGO_PKG_VERSION"),
                "started_at": shared.started_at,
            });
            reply::json(session, 200, &body).await
        }
        _ => {
            let path = session.req_header().uri.path().to_owned();
            let body = reply::error_body(
                "not_found",
                format!("{method} {path} is not part of the admin API"),
            );
            reply::json(session, 404, &body).await
        }
    }
}

fn route_status(shared: &Shared, name: &str, person: Option<Principal>) -> Option<RouteStatus> {
    let routing = shared.routing();
    Some(RouteStatus::of(
        &routing,
        routing.route(name)?,
        person.as_ref(),
    ))
}

/// The person an admin call on a per-user route is about: `?principal=`.
fn person(session: &Session) -> Option<Principal> {
    let query = session.req_header().uri.query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "principal")
        .and_then(|(_, value)| Principal::new(&value))
}

/// The slot an admin call acts on, or the answer saying why there is none.
async fn admin_slot(
    session: &mut Session,
    shared: &Shared,
    name: &str,
) -> Result<Arc<OAuthRoute>, pingora::Result<u16>> {
    if route_status(shared, name, None).is_none() {
        return Err(no_route(session, name).await);
    }
    let person = person(session);
    match slot_for(shared, name, person.as_ref()).await {
        Ok(slot) => Ok(slot),
        Err(SlotRefusal::NoOAuthRoute) => Err(not_oauth(session, name).await),
        Err(SlotRefusal::NobodyNamed) => {
            let body = reply::error_body(
                "principal_required",
                format!(
                    "route '{name}' keeps a sign-in per person: name one with \
                     ?principal=<their identity>"
                ),
            );
            Err(reply::json(session, 400, &body).await)
        }
    }
}

fn to_json(status: &RouteStatus) -> serde_json::Value {
    serde_json::to_value(status).unwrap_or_default()
}

async fn no_route(session: &mut Session, name: &str) -> pingora::Result<u16> {
    let body = reply::error_body("not_found", format!("there is no route named '{name}'"));
    reply::json(session, 404, &body).await
}

async fn not_oauth(session: &mut Session, name: &str) -> pingora::Result<u16> {
    let body = reply::error_body(
        "not_oauth",
        format!("route '{name}' does not sign in with OAuth, so it has no tokens to manage"),
    );
    reply::json(session, 409, &body).await
}

async fn refresh(session: &mut Session, shared: &Shared, name: &str) -> pingora::Result<u16> {
    let route = match admin_slot(session, shared, name).await {
        Ok(route) => route,
        Err(answered) => return answered,
    };
    let person = || route.principal().cloned();
    match route.refresh_now().await {
        Ok(()) => {
            tracing::info!(route = name, principal = %route.principal_hash(), "tokens refreshed on request");
            let status = route_status(shared, name, person());
            reply::json(
                session,
                200,
                &status.map(|s| to_json(&s)).unwrap_or_default(),
            )
            .await
        }
        Err(error) => {
            let (code, http_status) = match route_status(shared, name, person()) {
                Some(status) if status.needs_sign_in() => ("needs_sign_in", 409),
                _ => ("refresh_failed", 502),
            };
            let mut body = reply::error_body(code, format!("route '{name}': {error}"));
            body["route"] = name.into();
            body["sign_in_url"] = route.sign_in_url.clone().into();
            reply::json(session, http_status, &body).await
        }
    }
}

async fn reload(session: &mut Session, shared: &Shared) -> pingora::Result<u16> {
    match crate::gateway::reload::reload(shared).await {
        Ok(reloaded) => {
            let body = serde_json::to_value(&reloaded).unwrap_or_default();
            reply::json(session, 200, &body).await
        }
        Err(error) => {
            let (status, code) = error.status();
            let body = reply::error_body(code, error.to_string());
            reply::json(session, status, &body).await
        }
    }
}

async fn clear(session: &mut Session, shared: &Shared, name: &str) -> pingora::Result<u16> {
    let route = match admin_slot(session, shared, name).await {
        Ok(route) => route,
        Err(answered) => return answered,
    };
    let registration = session.req_header().uri.query().is_some_and(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .any(|(key, value)| key == "registration" && value == "true")
    });
    match route.clear(registration).await {
        Ok(()) => {
            tracing::info!(route = name, principal = %route.principal_hash(), registration, "signed out on request");
            let status = route_status(shared, name, route.principal().cloned());
            reply::json(
                session,
                200,
                &status.map(|s| to_json(&s)).unwrap_or_default(),
            )
            .await
        }
        Err(error) => {
            let body = reply::error_body("store_error", format!("route '{name}': {error}"));
            reply::json(session, 500, &body).await
        }
    }
}
