//! A mock MCP upstream: a small in-process MCP server that stands in for a real
//! OAuth-protected one (Atlassian, Notion, a company's own) in the integration tests and in a
//! newcomer's first run of the gateway (`cargo run --example mock_upstream`).
//!
//! It speaks both MCP transports: Streamable HTTP (`POST`/`GET`/`DELETE {base}/mcp`, sessions
//! in `Mcp-Session-Id`) and the legacy one (`GET {base}/sse` announces a message endpoint,
//! `POST {base}/message?sessionId=ID` answers on that stream). It refuses any request without a
//! bearer token the way an OAuth-protected server does: either the static `token` option or an
//! access token from its own OAuth 2.1 authorization server on the same origin (discovery,
//! registration, authorize, token; see [`mock_oauth`]). It offers three tools
//! (`echo`, `slow_stream` with progress notifications, `whoami`), two raw SSE endpoints
//! (`/events`, `/silent`) and echoes any other request back as JSON, so tests can see exactly
//! what the gateway forwarded.
//!
//! Everything the server sees is recorded in [`MockState`] for assertions: each request with its
//! headers, the SSE streams open right now, the live Streamable HTTP sessions and, in
//! [`MockState::oauth`], what the authorization server saw and issued. The server
//! binds `127.0.0.1` on the caller's tokio runtime and stops when the [`MockUpstream`] is
//! dropped or shut down; stopping also ends every open SSE stream.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::stream::{self, BoxStream, Stream, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;

// An explicit path, so that the example including this file by path finds the module too.
#[path = "mock_oauth.rs"]
mod mock_oauth;

use mock_oauth::AuthServer;
// Each test binary, and the example, names a different few of these.
#[allow(unused_imports)]
pub use mock_oauth::{
    AsMetadataMode, ClientAuthMethod, OAuthState, PreregisteredClient, PrmMode, RecordedParams,
    RegisteredClient,
};

/// Protocol versions the mock accepts in `initialize`; the last one is offered otherwise.
const PROTOCOL_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// Where the legacy `endpoint` event tells clients to post their messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EndpointStyle {
    /// `{base_path}/message?sessionId=ID`, relative to the origin.
    #[default]
    Relative,
    /// `http://127.0.0.1:PORT{base_path}/message?sessionId=ID`.
    Absolute,
    /// `/messages/?session_id=ID` at the origin root, outside the base path (as some Python
    /// servers do); the mock serves that path too in this style.
    OriginRoot,
}

/// How a [`MockUpstream`] behaves; start from `MockOptions::default()`.
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// A bearer token always accepted, besides live access tokens the mock's AS issued.
    pub token: String,
    /// Prefix of every MCP route, such as `/v1`; empty for the origin root.
    pub base_path: String,
    /// The form of the URL announced on the legacy SSE stream.
    pub legacy_endpoint: EndpointStyle,
    /// Serve the legacy transport at all; without it `{base}/sse` answers 404, as
    /// Streamable-HTTP-only servers do.
    pub legacy: bool,
    /// Serve Streamable HTTP at all; without it `POST {base}/mcp` answers 404, as
    /// legacy-only servers do.
    pub streamable: bool,
    /// Answer Streamable HTTP POSTs with `application/json` when the client accepts it, rather
    /// than with an SSE stream. `slow_stream` calls stream whenever the client accepts SSE.
    pub json_responses: bool,

    // The authorization server.
    /// Where protected-resource metadata is served and whether a 401 points at it.
    pub prm: PrmMode,
    /// Where authorization-server metadata is served, if anywhere.
    pub as_metadata: AsMetadataMode,
    /// An `issuer` for the metadata other than the origin serving it.
    pub issuer_override: Option<String>,
    /// Refuse any authorize or token request carrying `resource` with `invalid_target`.
    /// Otherwise `resource`, when sent, must be the MCP endpoint's URL.
    pub reject_resource: bool,
    pub access_token_ttl: Duration,
    /// Issue a refresh token with every access token; each is single-use.
    pub issue_refresh_tokens: bool,
    pub scopes_supported: Vec<String>,
    /// `code_challenge_method`s accepted at `/authorize`.
    pub pkce_methods: Vec<String>,
    /// Answer every valid authorize request with `error=access_denied`.
    pub deny_authorization: bool,
    /// Show a consent page with an Approve button before approving, as a real
    /// authorization server would; otherwise every sign-in is approved at once.
    pub consent_page: bool,
    /// Put `iss` in authorization responses and advertise it (RFC 9207); `Some(issuer)`
    /// in [`MockOptions::iss_override`] sends another issuer's name instead.
    pub iss_in_responses: bool,
    pub iss_override: Option<String>,
    /// Advertise `iss` in authorization responses but leave it out, as a broken or
    /// impersonated server would.
    pub iss_promised_not_sent: bool,
    /// Clients known without registration.
    pub preregistered: Vec<PreregisteredClient>,
    /// Serve dynamic client registration at `/register`.
    pub dcr_enabled: bool,
    /// Advertise and accept Client ID Metadata Documents: a `client_id` that is an http(s)
    /// URL is fetched at authorization, and its `redirect_uris` decide.
    pub client_metadata_documents: bool,
    /// Make each `POST /token` wait this long; also settable with
    /// [`OAuthState::set_token_delay`].
    pub token_delay: Option<Duration>,
    /// `tools/list` answers this many tools a page, with `nextCursor` to the next page.
    pub tools_page_size: Option<usize>,
}

impl Default for MockOptions {
    fn default() -> Self {
        Self {
            token: "test-token".to_owned(),
            base_path: String::new(),
            legacy_endpoint: EndpointStyle::Relative,
            legacy: true,
            streamable: true,
            json_responses: true,
            prm: PrmMode::Header,
            as_metadata: AsMetadataMode::Oauth,
            issuer_override: None,
            reject_resource: false,
            access_token_ttl: Duration::from_secs(3600),
            issue_refresh_tokens: true,
            scopes_supported: ["mcp:read", "mcp:write", "mcp:admin", "offline_access"]
                .map(String::from)
                .into(),
            pkce_methods: vec!["S256".to_owned()],
            deny_authorization: false,
            consent_page: false,
            iss_in_responses: false,
            iss_override: None,
            iss_promised_not_sent: false,
            preregistered: Vec::new(),
            dcr_enabled: true,
            client_metadata_documents: false,
            token_delay: None,
            tools_page_size: None,
        }
    }
}

/// A running mock upstream. Dropping it stops the server and ends its SSE streams.
#[derive(Debug)]
pub struct MockUpstream {
    addr: SocketAddr,
    base_url: String,
    state: Arc<MockState>,
    stop: watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
}

impl MockUpstream {
    /// Starts a server on `127.0.0.1:0` and returns once it is listening.
    pub async fn start(options: MockOptions) -> Self {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::start_at(loopback, options)
            .await
            .expect("binding an ephemeral loopback port succeeds")
    }

    /// Starts a server on `addr`; used by the runnable example, which wants a fixed port.
    pub async fn start_at(addr: SocketAddr, options: MockOptions) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let base_path = normalize_base_path(&options.base_path);
        let state = Arc::new(MockState::default());
        let (stop, stopped) = watch::channel(false);
        let options = Arc::new(MockOptions {
            base_path,
            ..options
        });
        let origin = format!("http://{addr}");
        let app = App {
            state: state.clone(),
            auth: AuthServer::new(options.clone(), state.oauth.clone(), &origin),
            options,
            origin: Arc::from(origin),
            stopped,
        };
        let base_url = format!("{}{}", app.origin, app.options.base_path);
        let router = router(app.clone());

        // Stopping the listener alone would leave SSE responses running, which would keep
        // graceful shutdown waiting; every stream therefore also ends on the same signal.
        let server = axum::serve(listener, router).with_graceful_shutdown(app.stop_signal());
        let server = tokio::spawn(async move {
            let _ = server.await;
        });
        Ok(Self {
            addr,
            base_url,
            state,
            stop,
            server: Some(server),
        })
    }

    /// The socket address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` followed by the base path: what a gateway route points at.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `base_url()` followed by `/mcp`: the Streamable HTTP endpoint, and the resource the
    /// authorization server issues tokens for.
    pub fn mcp_url(&self) -> String {
        format!("{}/mcp", self.base_url)
    }

    /// What the server has seen so far.
    pub fn state(&self) -> Arc<MockState> {
        self.state.clone()
    }

    /// What the authorization server has seen and issued.
    pub fn oauth(&self) -> &OAuthState {
        self.state.oauth()
    }

    /// Stops the server and waits (up to five seconds) for its connections to close.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        let Some(mut server) = self.server.take() else {
            return;
        };
        let closed = tokio::time::timeout(Duration::from_secs(5), &mut server).await;
        if closed.is_err() {
            server.abort();
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        // Aborting the accept loop frees the port at once; the streams end on the signal.
        self.stop.send_replace(true);
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// One request as it reached the mock, before the bearer token was checked.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query string, exactly as received, such as `/v1/message?sessionId=ab12`.
    pub path: String,
    /// Every header in arrival order; names are lowercase.
    pub headers: Vec<(String, String)>,
}

impl RecordedRequest {
    /// The path without its query string.
    pub fn path_without_query(&self) -> &str {
        self.path.split('?').next().unwrap_or_default()
    }

    /// The first value of a header, whatever the case of `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Everything the mock records, for tests to assert on.
#[derive(Debug, Default)]
pub struct MockState {
    requests: Mutex<Vec<RecordedRequest>>,
    total_requests: AtomicUsize,
    open_streams: AtomicUsize,
    sessions: Mutex<HashSet<String>>,
    legacy_sessions: Mutex<HashMap<String, mpsc::UnboundedSender<Value>>>,
    oauth: Arc<OAuthState>,
    /// `tools/call` requests answered, by tool name, on either transport.
    tool_calls: Mutex<HashMap<String, usize>>,
    /// Notifications clients sent, on either transport, oldest first.
    notifications: Mutex<Vec<Value>>,
    /// The Streamable HTTP `GET` streams open, for messages the server sends on its own.
    listeners: Mutex<Vec<mpsc::UnboundedSender<Value>>>,
}

impl MockState {
    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.requests).clone()
    }

    /// The most recent request whose path (query string ignored) is `path`.
    pub fn last_request_to(&self, path: &str) -> Option<RecordedRequest> {
        lock(&self.requests)
            .iter()
            .rev()
            .find(|request| request.path_without_query() == path)
            .cloned()
    }

    /// How many requests have arrived, refused ones included.
    pub fn total_requests(&self) -> usize {
        self.total_requests.load(Ordering::SeqCst)
    }

    /// SSE response bodies of any endpoint that are still being streamed.
    pub fn open_streams(&self) -> usize {
        self.open_streams.load(Ordering::SeqCst)
    }

    /// Streamable HTTP sessions initialized and not yet deleted.
    pub fn live_sessions(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// The authorization server's records, and switches to provoke its failures.
    pub fn oauth(&self) -> &OAuthState {
        &self.oauth
    }

    /// How many `tools/call` requests of `tool` reached the mock.
    pub fn tool_calls(&self, tool: &str) -> usize {
        lock(&self.tool_calls).get(tool).copied().unwrap_or(0)
    }

    /// Sends `message` as the server's own on every stream that carries such messages: each
    /// Streamable HTTP session's `GET` stream and each legacy SSE stream.
    pub fn send_to_every_client(&self, message: &Value) {
        lock(&self.listeners).retain(|listener| listener.send(message.clone()).is_ok());
        for sender in lock(&self.legacy_sessions).values() {
            let _ = sender.send(message.clone());
        }
    }

    /// Forgets every Streamable HTTP session, as a restarted server would: requests naming
    /// one get 404.
    pub fn forget_sessions(&self) {
        lock(&self.sessions).clear();
    }

    /// The notifications named `method` that clients sent, oldest first.
    pub fn notifications(&self, method: &str) -> Vec<Value> {
        lock(&self.notifications)
            .iter()
            .filter(|message| message["method"] == method)
            .cloned()
            .collect()
    }

    fn note_notification(&self, body: &[u8]) {
        if let Ok(message) = serde_json::from_slice::<Value>(body)
            && message.get("method").is_some()
            && message.get("id").is_none()
        {
            lock(&self.notifications).push(message);
        }
    }

    fn note_call(&self, request: &RpcRequest) {
        if request.method == "tools/call"
            && let Some(name) = request.params["name"].as_str()
        {
            *lock(&self.tool_calls).entry(name.to_owned()).or_default() += 1;
        }
    }

    /// Waits until `open_streams()` equals `expected`; false if `within` passes first.
    /// A client disconnect reaches the server a moment after the client lets go.
    pub async fn wait_for_open_streams(&self, expected: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.open_streams() != expected {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    fn record(&self, request: &Request) {
        let headers = request
            .headers()
            .iter()
            .map(|(name, value)| (name.to_string(), lossy(value)))
            .collect();
        let path = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        lock(&self.requests).push(RecordedRequest {
            method: request.method().to_string(),
            path: path.to_owned(),
            headers,
        });
        self.total_requests.fetch_add(1, Ordering::SeqCst);
    }
}

/// A header value as text; a non-UTF-8 byte cannot make the record fail.
fn lossy(value: &HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

/// Locks a mutex even if a panicking test thread poisoned it; the data is only a record.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// --- Routing and the bearer check ---

/// What every handler shares.
#[derive(Clone)]
struct App {
    state: Arc<MockState>,
    auth: AuthServer,
    options: Arc<MockOptions>,
    /// `http://127.0.0.1:PORT`.
    origin: Arc<str>,
    stopped: watch::Receiver<bool>,
}

impl App {
    /// A 403 `insufficient_scope` when the request's token is one the AS issued without
    /// `mcp:admin` (the static token may do anything).
    fn lacks_admin_scope(&self, headers: &HeaderMap) -> Option<Response> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())?
            .strip_prefix("Bearer ")?;
        let scope = self.state.oauth().access_token_scope(token)?;
        if scope
            .split(' ')
            .any(|granted| granted == mock_oauth::ADMIN_SCOPE)
        {
            return None;
        }
        let challenge = format!(
            "Bearer error=\"insufficient_scope\", scope=\"{}\"",
            mock_oauth::ADMIN_SCOPE
        );
        let body = json!({"error": "insufficient_scope"});
        Some(
            (
                StatusCode::FORBIDDEN,
                [(header::WWW_AUTHENTICATE, challenge)],
                axum::Json(body),
            )
                .into_response(),
        )
    }

    /// Resolves when the server is told to stop (or its handle is gone).
    fn stop_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopped = self.stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    }
}

fn router(app: App) -> Router {
    let base = &app.options.base_path;
    let mut mcp = Router::new()
        .route(
            &format!("{base}/mcp"),
            post(post_mcp).get(get_mcp).delete(delete_mcp),
        )
        .route(&format!("{base}/sse"), get(legacy_sse))
        .route(&format!("{base}/message"), post(legacy_message))
        .route(&format!("{base}/events"), get(tick_events))
        .route(&format!("{base}/silent"), get(silent_stream));
    if app.options.legacy_endpoint == EndpointStyle::OriginRoot {
        mcp = mcp.route("/messages/", post(legacy_message));
    }
    mcp.fallback(echo_request)
        .with_state(app.clone())
        .merge(app.auth.clone().router())
        .layer(middleware::from_fn_with_state(app, record_and_authorize))
}

/// `/v1/` and `v1` both become `/v1`; `/` becomes empty.
fn normalize_base_path(raw: &str) -> String {
    let trimmed = raw.trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("/{trimmed}")
    }
}

/// Records every request, then lets through the authorization server's public endpoints and
/// requests carrying an accepted bearer token.
async fn record_and_authorize(State(app): State<App>, request: Request, next: Next) -> Response {
    app.state.record(&request);

    if AuthServer::is_public(request.uri().path()) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if presented.is_some_and(|token| app.auth.accepts_bearer(token)) {
        return next.run(request).await;
    }
    unauthorized(app.auth.challenge())
}

fn unauthorized(challenge: String) -> Response {
    let body = json!({
        "error": "invalid_token",
        "error_description": "missing or wrong bearer token",
    });
    let challenge = [(header::WWW_AUTHENTICATE, challenge)];
    (challenge, json_response(StatusCode::UNAUTHORIZED, body)).into_response()
}

/// Any path the mock does not serve: answers with what arrived, for routing and header tests.
/// Unknown discovery documents are missing, as on a real server.
async fn echo_request(request: Request) -> Response {
    if request.uri().path().starts_with("/.well-known/") {
        return json_response(StatusCode::NOT_FOUND, json!({"error": "not_found"}));
    }
    let (parts, body) = request.into_parts();
    let body_len = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_or(0, |bytes| bytes.len());
    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        let values: Vec<_> = parts.headers.get_all(name).iter().map(lossy).collect();
        headers.insert(name.to_string(), Value::String(values.join(", ")));
    }
    axum::Json(json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query().unwrap_or_default(),
        "headers": headers,
        "body_len": body_len,
    }))
    .into_response()
}

// --- Streamable HTTP: {base}/mcp ---

const SESSION_HEADER: &str = "mcp-session-id";

/// How a POST's answer is written, from the client's `Accept` header and the options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyFormat {
    Json,
    Sse,
}

async fn post_mcp(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    if !app.options.streamable {
        return StatusCode::NOT_FOUND.into_response();
    }
    app.state.note_notification(&body);
    let request = match Incoming::parse(&body) {
        Ok(Incoming::Request(request)) => request,
        Ok(Incoming::NotificationOrResponse) => {
            return match app.require_session(&headers) {
                Ok(_) => StatusCode::ACCEPTED.into_response(),
                Err(refusal) => refusal,
            };
        }
        Err(refusal) => return refusal,
    };

    // `initialize` opens a session; everything else must name a live one.
    let session = if request.method == "initialize" {
        let id = new_session_id();
        lock(&app.state.sessions).insert(id.clone());
        id
    } else {
        match app.require_session(&headers) {
            Ok(id) => id,
            Err(refusal) => return refusal,
        }
    };

    if request.is_tool_call("admin_echo")
        && let Some(refusal) = app.lacks_admin_scope(&headers)
    {
        return refusal;
    }
    let streams_progress = request.is_tool_call("slow_stream");
    let Some(format) = reply_format(&headers, app.options.json_responses, streams_progress) else {
        return StatusCode::NOT_ACCEPTABLE.into_response();
    };
    app.state.note_call(&request);
    let replies = respond(request, CallContext::new(&headers, &app.options));
    let response = match format {
        ReplyFormat::Sse => sse_response(&app, replies.map(|message| sse_message(&message))),
        ReplyFormat::Json => json_reply(replies).await,
    };
    ([(SESSION_HEADER, session)], response).into_response()
}

/// A silent stream for server-initiated messages; the mock never sends any.
async fn get_mcp(State(app): State<App>, headers: HeaderMap) -> Response {
    if !accepts(&headers, "text/event-stream") {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    match app.require_session(&headers) {
        Ok(_) => {
            let (sender, receiver) = mpsc::unbounded_channel();
            lock(&app.state.listeners).push(sender);
            let messages = UnboundedReceiverStream::new(receiver);
            sse_response(&app, messages.map(|message| sse_message(&message)))
        }
        Err(refusal) => refusal,
    }
}

async fn delete_mcp(State(app): State<App>, headers: HeaderMap) -> Response {
    match app.require_session(&headers) {
        Ok(id) => {
            lock(&app.state.sessions).remove(&id);
            StatusCode::OK.into_response()
        }
        Err(refusal) => refusal,
    }
}

impl App {
    /// The request's session id if it is live; otherwise 400 (none given) or 404 (unknown).
    #[allow(clippy::result_large_err)]
    fn require_session(&self, headers: &HeaderMap) -> Result<String, Response> {
        let Some(id) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
            return Err(rpc_refusal(
                StatusCode::BAD_REQUEST,
                "missing Mcp-Session-Id",
            ));
        };
        if lock(&self.state.sessions).contains(id) {
            Ok(id.to_owned())
        } else {
            Err(rpc_refusal(
                StatusCode::NOT_FOUND,
                "unknown or ended session",
            ))
        }
    }
}

/// SSE when progress is to be streamed, JSON when preferred and accepted, else what is accepted.
fn reply_format(headers: &HeaderMap, prefer_json: bool, streams: bool) -> Option<ReplyFormat> {
    let sse = accepts(headers, "text/event-stream");
    let json = accepts(headers, "application/json");
    match (sse, json) {
        (true, _) if streams => Some(ReplyFormat::Sse),
        (_, true) if prefer_json => Some(ReplyFormat::Json),
        (true, _) => Some(ReplyFormat::Sse),
        (false, true) => Some(ReplyFormat::Json),
        (false, false) => None,
    }
}

/// Whether `Accept` allows `mime`; a missing header accepts anything.
fn accepts(headers: &HeaderMap, mime: &str) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let accept = accept.to_ascii_lowercase();
    accept.contains(mime) || accept.contains("*/*")
}

/// Waits for the final JSON-RPC response; progress notifications have nowhere to go in JSON.
async fn json_reply(replies: BoxStream<'static, Value>) -> Response {
    let messages: Vec<Value> = replies.collect().await;
    match messages.into_iter().last() {
        Some(message) => axum::Json(message).into_response(),
        None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// A refusal with a JSON-RPC error body, as MCP servers send for transport-level problems.
fn rpc_refusal(status: StatusCode, message: &str) -> Response {
    json_response(status, rpc_error(Value::Null, -32600, message))
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// A fresh, unguessable-enough session id: 32 hex digits.
fn new_session_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let sequence = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut halves = [0u64; 2];
    for (salt, half) in (0u64..).zip(halves.iter_mut()) {
        // Each RandomState carries its own random keys, so the hash is unpredictable.
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(sequence);
        hasher.write_u64(salt);
        *half = hasher.finish();
    }
    format!("{:016x}{:016x}", halves[0], halves[1])
}

// --- Legacy HTTP+SSE: {base}/sse and {base}/message ---

/// Opens a legacy session: announces where to post, then relays that session's replies.
async fn legacy_sse(State(app): State<App>) -> Response {
    if !app.options.legacy {
        return StatusCode::NOT_FOUND.into_response();
    }
    let id = new_session_id();
    let (sender, receiver) = mpsc::unbounded_channel();
    lock(&app.state.legacy_sessions).insert(id.clone(), sender);

    // The endpoint event goes out in two pieces, split mid-line, so that a client's parser
    // must join partial lines rather than rely on one event per read.
    let mut head = Bytes::from(sse_event("endpoint", &legacy_endpoint(&app, &id)));
    let tail = head.split_off(head.len() / 2);
    let announce = stream::once(async move { head }).chain(stream::once(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        tail
    }));
    let replies = UnboundedReceiverStream::new(receiver).map(|message| sse_message(&message));
    sse_response(&app, announce.chain(replies))
}

fn legacy_endpoint(app: &App, id: &str) -> String {
    let base = &app.options.base_path;
    match app.options.legacy_endpoint {
        EndpointStyle::Relative => format!("{base}/message?sessionId={id}"),
        EndpointStyle::Absolute => format!("{}{base}/message?sessionId={id}", app.origin),
        EndpointStyle::OriginRoot => format!("/messages/?session_id={id}"),
    }
}

/// Accepts one message; the reply, with any progress, travels on the session's stream.
async fn legacy_message(
    State(app): State<App>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(id) = query.get("sessionId").or_else(|| query.get("session_id")) else {
        return rpc_refusal(StatusCode::BAD_REQUEST, "missing sessionId");
    };
    let Some(sender) = lock(&app.state.legacy_sessions).get(id).cloned() else {
        return rpc_refusal(StatusCode::NOT_FOUND, "unknown session");
    };
    if sender.is_closed() {
        // The client has gone; forget the session so later posts see 404 as well.
        lock(&app.state.legacy_sessions).remove(id);
        return rpc_refusal(StatusCode::NOT_FOUND, "session stream closed");
    }
    app.state.note_notification(&body);
    let request = match Incoming::parse(&body) {
        Ok(Incoming::Request(request)) => request,
        Ok(Incoming::NotificationOrResponse) => return StatusCode::ACCEPTED.into_response(),
        Err(refusal) => return refusal,
    };
    app.state.note_call(&request);
    let mut replies = respond(request, CallContext::new(&headers, &app.options));
    tokio::spawn(async move {
        while let Some(message) = replies.next().await {
            if sender.send(message).is_err() {
                break;
            }
        }
    });
    StatusCode::ACCEPTED.into_response()
}

// --- Raw SSE endpoints: {base}/events and {base}/silent ---

/// `n` tick events (ids 1..=n), one every `interval_ms`, each its own chunk; then the end.
/// A client resuming with `Last-Event-ID: k` gets the ticks after `k`.
async fn tick_events(
    State(app): State<App>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let count = query_number(&query, "n", 5);
    let interval = Duration::from_millis(query_number(&query, "interval_ms", 200));
    let resumed_after: u64 = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok()?.trim().parse().ok())
        .unwrap_or(0);
    let first = resumed_after + 1;
    let ticks = stream::unfold(first, move |i| async move {
        if i > count {
            return None;
        }
        if i > first {
            tokio::time::sleep(interval).await;
        }
        let event = format!("id: {i}\nevent: tick\ndata: {{\"i\":{i}}}\n\n");
        Some((Bytes::from(event), i + 1))
    });
    sse_response(&app, ticks)
}

/// SSE headers and then nothing, until the client leaves or the server stops.
async fn silent_stream(State(app): State<App>) -> Response {
    sse_response(&app, stream::pending())
}

fn query_number(query: &HashMap<String, String>, key: &str, default: u64) -> u64 {
    query
        .get(key)
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

// --- SSE plumbing ---

/// A streaming SSE response whose body counts as open until it is dropped and which ends when
/// the server stops.
fn sse_response(app: &App, events: impl Stream<Item = Bytes> + Send + 'static) -> Response {
    let body = CountedStream {
        inner: events.take_until(app.stop_signal()).boxed(),
        _open: OpenStream::new(app.state.clone()),
    };
    let headers = [
        (header::CONTENT_TYPE, "text/event-stream"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    (headers, Body::from_stream(body.map(Ok::<_, Infallible>))).into_response()
}

/// One SSE event with a single-line `data` field.
fn sse_event(event: &str, data: &str) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

/// A JSON-RPC message as an SSE `message` event, the form both MCP transports use.
fn sse_message(message: &Value) -> Bytes {
    Bytes::from(sse_event("message", &message.to_string()))
}

/// Holds one count in `MockState::open_streams` for as long as it lives.
struct OpenStream(Arc<MockState>);

impl OpenStream {
    fn new(state: Arc<MockState>) -> Self {
        state.open_streams.fetch_add(1, Ordering::SeqCst);
        Self(state)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body stream carrying its [`OpenStream`]: hyper drops the body when the stream
/// ends or the client disconnects, which releases the count.
struct CountedStream {
    inner: BoxStream<'static, Bytes>,
    _open: OpenStream,
}

impl Stream for CountedStream {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        self.inner.poll_next_unpin(cx)
    }
}

// --- JSON-RPC and the tools, shared by both transports ---

/// A parsed client message: either a request to answer or something to acknowledge.
enum Incoming {
    Request(RpcRequest),
    NotificationOrResponse,
}

struct RpcRequest {
    id: Value,
    method: String,
    params: Value,
}

impl Incoming {
    /// Parses one JSON-RPC message; batches and malformed bodies are refused with 400.
    #[allow(clippy::result_large_err)]
    fn parse(body: &[u8]) -> Result<Self, Response> {
        let Ok(Value::Object(mut message)) = serde_json::from_slice::<Value>(body) else {
            let error = rpc_error(Value::Null, -32700, "expected one JSON-RPC message object");
            return Err(json_response(StatusCode::BAD_REQUEST, error));
        };
        let (Some(id), Some(Value::String(method))) =
            (message.remove("id"), message.remove("method"))
        else {
            return Ok(Self::NotificationOrResponse);
        };
        let params = message.remove("params").unwrap_or(Value::Null);
        Ok(Self::Request(RpcRequest { id, method, params }))
    }
}

impl RpcRequest {
    fn is_tool_call(&self, tool: &str) -> bool {
        self.method == "tools/call" && self.params["name"] == tool
    }
}

/// What a tool may know about the request that called it.
struct CallContext {
    authorization: String,
    tools_page_size: Option<usize>,
}

impl CallContext {
    fn new(headers: &HeaderMap, options: &MockOptions) -> Self {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .map(lossy)
            .unwrap_or_default();
        Self {
            authorization,
            tools_page_size: options.tools_page_size,
        }
    }
}

/// The messages answering `request`, in order: any progress notifications, then the response.
fn respond(request: RpcRequest, context: CallContext) -> BoxStream<'static, Value> {
    if request.is_tool_call("slow_stream") {
        return slow_stream(request);
    }
    let reply = match dispatch(&request, &context) {
        Ok(result) => json!({"jsonrpc": "2.0", "id": request.id, "result": result}),
        Err((code, message)) => rpc_error(request.id, code, &message),
    };
    stream::once(async move { reply }).boxed()
}

fn dispatch(request: &RpcRequest, context: &CallContext) -> Result<Value, (i64, String)> {
    match request.method.as_str() {
        "initialize" => Ok(initialize_result(&request.params)),
        "ping" => Ok(json!({})),
        "tools/list" => Ok(tools_page(&request.params, context.tools_page_size)),
        "tools/call" => call_tool(&request.params, context),
        other => Err((-32601, format!("method not found: {other}"))),
    }
}

fn initialize_result(params: &Value) -> Value {
    let asked = params["protocolVersion"].as_str().unwrap_or_default();
    let latest = PROTOCOL_VERSIONS[PROTOCOL_VERSIONS.len() - 1];
    let version = PROTOCOL_VERSIONS
        .into_iter()
        .find(|v| *v == asked)
        .unwrap_or(latest);
    json!({
        "protocolVersion": version,
        "capabilities": {"tools": {}},
        "serverInfo": {"name": "mock-upstream", "version": env!("CARGO_PKG_VERSION")},
    })
}

/// One page of the tools: all of them, or `page_size` from the `cursor` (a position) on.
fn tools_page(params: &Value, page_size: Option<usize>) -> Value {
    let tools = tool_list();
    let (Some(size), Some(all)) = (page_size, tools.as_array()) else {
        return json!({"tools": tools});
    };
    let from: usize = params["cursor"]
        .as_str()
        .and_then(|cursor| cursor.parse().ok())
        .unwrap_or(0);
    let to = (from + size).min(all.len());
    let mut page = json!({"tools": all.get(from..to).unwrap_or_default()});
    if to < all.len() {
        page["nextCursor"] = to.to_string().into();
    }
    page
}

fn tool_list() -> Value {
    json!([
        {
            "name": "echo",
            "description": "Returns the given text.",
            "inputSchema": {
                "type": "object",
                "properties": {"text": {"type": "string"}},
                "required": ["text"],
            },
        },
        {
            "name": "slow_stream",
            "description": "Reports progress `steps` times, `interval_ms` apart, then finishes.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "steps": {"type": "integer", "minimum": 0, "default": 3},
                    "interval_ms": {"type": "integer", "minimum": 0, "default": 200},
                },
            },
        },
        {
            "name": "whoami",
            "description": "Returns the Authorization header this server received.",
            "inputSchema": {"type": "object", "properties": {}},
        },
        {
            "name": "admin_echo",
            "description": "Echoes `text`; needs the mcp:admin scope.",
            "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        },
    ])
}

fn call_tool(params: &Value, context: &CallContext) -> Result<Value, (i64, String)> {
    match params["name"].as_str().unwrap_or_default() {
        "echo" => match params["arguments"]["text"].as_str() {
            Some(text) => Ok(text_content(text)),
            None => Err((-32602, "echo needs a string argument `text`".to_owned())),
        },
        "whoami" => Ok(text_content(&context.authorization)),
        "admin_echo" => match params["arguments"]["text"].as_str() {
            Some(text) => Ok(text_content(&format!("admin: {text}"))),
            None => Err((
                -32602,
                "admin_echo needs a string argument `text`".to_owned(),
            )),
        },
        other => Err((-32602, format!("unknown tool: {other}"))),
    }
}

/// `slow_stream`: a progress notification per step (when the caller asked for progress by
/// sending a token), then the result.
fn slow_stream(request: RpcRequest) -> BoxStream<'static, Value> {
    let arguments = &request.params["arguments"];
    let steps = arguments["steps"].as_u64().unwrap_or(3);
    let interval = Duration::from_millis(arguments["interval_ms"].as_u64().unwrap_or(200));
    let token = request.params["_meta"]["progressToken"].clone();

    let progress = stream::unfold(1, move |step| {
        let token = token.clone();
        async move {
            if step > steps {
                return None;
            }
            tokio::time::sleep(interval).await;
            let notification = (!token.is_null()).then(|| {
                json!({
                    "jsonrpc": "2.0",
                    "method": "notifications/progress",
                    "params": {"progressToken": token, "progress": step, "total": steps},
                })
            });
            Some((notification, step + 1))
        }
    });
    let result = json!({
        "jsonrpc": "2.0",
        "id": request.id,
        "result": text_content(&format!("done after {steps} steps")),
    });
    progress
        .filter_map(|n| async move { n })
        .chain(stream::once(async move { result }))
        .boxed()
}

fn text_content(text: &str) -> Value {
    json!({"content": [{"type": "text", "text": text}], "isError": false})
}

fn rpc_error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}
