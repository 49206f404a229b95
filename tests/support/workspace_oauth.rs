//! A mock Databricks workspace token endpoint (`POST /oidc/v1/token`) for the Lakebase
//! login tests: it answers the client-credentials grant of one service principal with the
//! token the test sets, so the test can make that token the database role's password.
//!
//! It checks what the workspace checks (HTTP Basic client credentials, `grant_type`,
//! `scope=all-apis`), counts the requests, and can be told to refuse them as a workspace
//! refuses a wrong secret: 401 with `invalid_client`. It binds 127.0.0.1:0 on the caller's
//! runtime and stops when dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Form, Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

pub const CLIENT_ID: &str = "7d2f-sp-client-id";
pub const CLIENT_SECRET: &str = "dose-WORKSPACE-SECRET-0815";

/// What the endpoint issues and what it saw.
#[derive(Debug)]
struct Endpoint {
    token: Mutex<String>,
    expires_in: u64,
    refuse: AtomicBool,
    requests: AtomicUsize,
}

/// A running mock token endpoint.
#[derive(Debug)]
pub struct WorkspaceOAuth {
    addr: SocketAddr,
    state: Arc<Endpoint>,
    server: tokio::task::JoinHandle<()>,
}

impl WorkspaceOAuth {
    /// Starts an endpoint issuing `token`, valid for `expires_in` seconds.
    pub async fn start(token: &str, expires_in: u64) -> Self {
        let state = Arc::new(Endpoint {
            token: Mutex::new(token.to_owned()),
            expires_in,
            refuse: AtomicBool::new(false),
            requests: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/oidc/v1/token", post(issue))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        Self {
            addr,
            state,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`, as `DATABRICKS_HOST` (loopback may use plain HTTP).
    pub fn host(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Issues `token` from now on.
    pub fn set_token(&self, token: &str) {
        *self
            .state
            .token
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = token.to_owned();
    }

    /// Refuses every request from now on, as for a wrong client secret.
    pub fn refuse(&self) {
        self.state.refuse.store(true, Ordering::SeqCst);
    }

    /// How many token requests arrived, refused ones included.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
}

impl Drop for WorkspaceOAuth {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn issue(
    State(state): State<Arc<Endpoint>>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> (StatusCode, Json<Value>) {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let field = |name: &str| {
        form.iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    if field("grant_type") != Some("client_credentials") || field("scope") != Some("all-apis") {
        let error = json!({ "error": "invalid_request" });
        return (StatusCode::BAD_REQUEST, Json(error));
    }
    let expected = format!("{CLIENT_ID}:{CLIENT_SECRET}");
    if state.refuse.load(Ordering::SeqCst) || basic_credentials(&headers) != Some(expected) {
        let error = json!({
            "error": "invalid_client",
            "error_description": "Client authentication failed",
        });
        return (StatusCode::UNAUTHORIZED, Json(error));
    }
    let token = state
        .token
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let body = json!({
        "access_token": token,
        "token_type": "Bearer",
        "scope": "all-apis",
        "expires_in": state.expires_in,
    });
    (StatusCode::OK, Json(body))
}

/// `id:secret` from `Authorization: Basic …`.
fn basic_credentials(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    String::from_utf8(BASE64.decode(encoded).ok()?).ok()
}
