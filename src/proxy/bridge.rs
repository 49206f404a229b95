//! The transport bridge: legacy HTTP+SSE clients in front of an upstream that speaks only
//! Streamable HTTP (as Atlassian's has since it stopped serving `/v1/sse`).
//!
//! A client's `GET {prefix}/sse` opens a bridge session, held here: the gateway answers the
//! stream itself, announcing `{prefix}/message?sessionId=…` as the endpoint. Each message
//! the client posts there is answered `202` at once and sent upstream as a Streamable HTTP
//! `POST` to `{upstream}/mcp`, carrying the upstream's `Mcp-Session-Id` and protocol version
//! once the `initialize` exchange has named them. Whatever the upstream answers (a JSON
//! body, or an SSE stream with progress notifications first) is written to the client's
//! stream in the order it arrives; messages the upstream starts itself come from its `GET`
//! stream, opened after `initialize`.
//!
//! Until the client's `notifications/initialized` has gone through, its messages go upstream
//! one at a time, in the order they came, since a server may refuse a request that
//! overtakes the handshake; after that, requests run concurrently, so a cancellation is
//! never stuck behind the call it cancels.
//!
//! A session belongs to the client that opened it (its API key, trusted identity or
//! address); anyone else posting to it gets `404`. It ends when the client leaves (the
//! upstream session is then deleted), when the upstream forgets it (`404`), or when the
//! client reads too slowly to keep up with [`QUEUE`] messages: the gateway then ends the
//! stream instead of buffering without bound.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use http::{HeaderValue, Method, header};
use parking_lot::Mutex;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};

use super::inbound::{Caller, Client};
use super::replay::ReplayBody;
use super::{headers, jsonrpc, reply, stream};
use crate::gateway::Shared;
use crate::route::Route;
use crate::token::TokenSource;

/// Messages waiting for a client that reads too slowly; one more ends its session.
pub(crate) const QUEUE: usize = 256;

/// The largest JSON body read whole from the upstream.
const MAX_JSON_BODY: usize = 16 * 1024 * 1024;

/// How long the upstream's `GET` stream waits before it is opened again after it ended.
const RECONNECT: Duration = Duration::from_secs(1);

const TOO_SLOW: &str = "the client reads too slowly";

const SESSION_ID: &str = "mcp-session-id";
const PROTOCOL_VERSION: &str = "mcp-protocol-version";

/// The bridge sessions open on this gateway, by the id their clients post with.
#[derive(Debug, Default)]
pub(crate) struct Bridges {
    sessions: Mutex<HashMap<String, Arc<Bridge>>>,
}

impl Bridges {
    fn get(&self, id: &str) -> Option<Arc<Bridge>> {
        self.sessions.lock().get(id).cloned()
    }

    /// Sessions open right now.
    pub(crate) fn len(&self) -> usize {
        self.sessions.lock().len()
    }
}

/// One legacy client's session, bridged to one upstream Streamable HTTP session.
#[derive(Debug)]
struct Bridge {
    id: String,
    route: Arc<Route>,
    owner: Client,
    /// Where this session's upstream token comes from: its owner's.
    tokens: Arc<dyn TokenSource>,
    to_client: mpsc::Sender<Bytes>,
    /// The upstream's `Mcp-Session-Id` and the negotiated protocol version, once known.
    upstream_session: Mutex<Option<HeaderValue>>,
    protocol_version: Mutex<Option<HeaderValue>>,
    initialized: AtomicBool,
    /// Held while a message goes upstream before the handshake is over.
    order: tokio::sync::Mutex<()>,
    /// Set to why the session must end.
    end: watch::Sender<Option<String>>,
    /// The tasks that talk to the upstream for this session.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Bridge {
    /// Writes `message` to the client's stream, after the route's plugins read it.
    fn deliver(&self, mut message: Value) {
        for plugin in &self.route.plugins {
            plugin.response_message(&mut message);
        }
        let event = Bytes::from(format!("event: message\ndata: {message}\n\n"));
        if let Err(mpsc::error::TrySendError::Full(_)) = self.to_client.try_send(event) {
            self.finish(format!("{TOO_SLOW}: {QUEUE} messages were waiting for it"));
        }
    }

    /// Answers each request in `message` with a JSON-RPC error saying why it failed.
    fn fail(&self, message: &Value, text: &str) {
        if let Some(answer) = jsonrpc::error_answer(message, -32603, text) {
            self.deliver(answer);
        }
    }

    /// Ends the session: its stream closes, and messages posted to it from now on get 404.
    fn finish(&self, reason: String) {
        self.end.send_if_modified(|end| {
            let first = end.is_none();
            if first {
                *end = Some(reason);
            }
            first
        });
    }

    fn spawn(self: &Arc<Self>, task: impl Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task);
        self.tasks.lock().push(handle.abort_handle());
    }

    /// A request to the upstream's MCP endpoint with this session's headers.
    fn request(&self, method: Method, accept: &str) -> pingora::Result<RequestHeader> {
        let url = self.route.upstream_url("/mcp", None);
        let target = super::path_and_query(&url);
        let mut request = RequestHeader::build(method, target.as_bytes(), None)?;
        request.insert_header(header::ACCEPT, accept)?;
        if let Some(id) = self.upstream_session.lock().clone() {
            request.insert_header(SESSION_ID, id)?;
        }
        if let Some(version) = self.protocol_version.lock().clone() {
            request.insert_header(PROTOCOL_VERSION, version)?;
        }
        Ok(request)
    }
}

/// Removes a session when its client's stream ends, stops its tasks and deletes the
/// upstream session.
struct Registered {
    shared: Arc<Shared>,
    bridge: Arc<Bridge>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shared.bridges.sessions.lock().remove(&self.bridge.id);
        for task in self.bridge.tasks.lock().drain(..) {
            task.abort();
        }
        if self.bridge.upstream_session.lock().is_some() {
            let (shared, bridge) = (Arc::clone(&self.shared), Arc::clone(&self.bridge));
            tokio::spawn(async move {
                let Ok(request) = bridge.request(Method::DELETE, "application/json") else {
                    return;
                };
                if let Ok(mut upstream) =
                    send_request(&shared, &bridge.route, &*bridge.tokens, request, None).await
                {
                    upstream.shutdown().await;
                }
            });
        }
    }
}

/// Answers the request when it belongs to the bridge: a legacy stream on a route whose
/// upstream has no legacy endpoint, or a message posted to a bridge session.
pub(crate) async fn handle(
    session: &mut Session,
    shared: &Arc<Shared>,
    route: &Arc<Route>,
    rest: &str,
    caller: Caller,
    cors: Option<&str>,
    rpc_method: &mut Option<&'static str>,
) -> pingora::Result<Option<u16>> {
    let request = session.req_header();
    if request.method == Method::GET && rest == "/sse" && route.bridges_legacy() {
        return serve_stream(session, shared, route, caller, cors)
            .await
            .map(Some);
    }
    if request.method != Method::POST || rest != "/message" {
        return Ok(None);
    }
    let id = request.uri.query().and_then(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == "sessionId")
            .map(|(_, value)| value.into_owned())
    });
    let Some(bridge) = id.as_deref().and_then(|id| shared.bridges.get(id)) else {
        return Ok(None);
    };
    let over = bridge.end.borrow().is_some();
    if over || bridge.owner != caller.client || bridge.route.name != route.name {
        let body = reply::error_body(
            "unknown_session",
            "no such session for this client: open the event stream again",
        );
        return reply::json(session, 404, &body).await.map(Some);
    }
    post(session, shared, bridge, rpc_method).await.map(Some)
}

/// Serves a legacy client's event stream from a new bridge session, until either side ends.
pub(crate) async fn serve_stream(
    session: &mut Session,
    shared: &Arc<Shared>,
    route: &Arc<Route>,
    caller: Caller,
    cors: Option<&str>,
) -> pingora::Result<u16> {
    let _slot = match shared.streams.enter(caller.client.clone()) {
        Ok(slot) => slot,
        Err(exceeded) => return stream::too_many_streams(session, shared, route, exceeded).await,
    };
    let (to_client, mut from_upstream) = mpsc::channel(QUEUE);
    let (end, mut ended) = watch::channel(None);
    let bridge = Arc::new(Bridge {
        id: oauth2::CsrfToken::new_random().secret().clone(),
        route: Arc::clone(route),
        owner: caller.client,
        tokens: caller.tokens,
        to_client,
        upstream_session: Mutex::new(None),
        protocol_version: Mutex::new(None),
        initialized: AtomicBool::new(false),
        order: tokio::sync::Mutex::new(()),
        end,
        tasks: Mutex::new(Vec::new()),
    });
    shared
        .bridges
        .sessions
        .lock()
        .insert(bridge.id.clone(), Arc::clone(&bridge));
    let _registered = Registered {
        shared: Arc::clone(shared),
        bridge: Arc::clone(&bridge),
    };

    let mut response = ResponseHeader::build(200, Some(4))?;
    response.insert_header(header::CONTENT_TYPE, "text/event-stream")?;
    headers::prepare_downstream(&mut response);
    route.filter_response(&mut response);
    if let Some(allowed) = cors {
        super::origin::add_cors(&mut response, allowed);
    }
    session
        .write_response_header(Box::new(response), false)
        .await?;
    let prefix = route.prefix.trim_end_matches('/');
    let endpoint = format!(
        "event: endpoint\ndata: {prefix}/message?sessionId={}\n\n",
        bridge.id
    );
    session
        .write_response_body(Some(Bytes::from(endpoint)), false)
        .await?;
    let _open = shared.metrics.stream_opened(&route.name);
    tracing::debug!(route = %route.name, "bridge session opened");

    let keepalive = shared.keepalive;
    let far_future = Instant::now() + Duration::from_secs(86_400 * 365);
    let mut next_keepalive = keepalive.map_or(far_future, |every| Instant::now() + every);
    let mut closing = shared.closing.subscribe();
    let reason = loop {
        tokio::select! {
            event = from_upstream.recv() => {
                let Some(event) = event else { break "the session ended".to_owned() };
                // A client that stops reading blocks this write; the full queue ends it.
                tokio::select! {
                    reason = end_reason(&mut ended) => break reason,
                    written = session.write_response_body(Some(event), false) => {
                        if written.is_err() {
                            break "the client left".to_owned();
                        }
                    }
                }
            }
            _ = sleep_until(next_keepalive), if keepalive.is_some() => {
                next_keepalive = Instant::now() + keepalive.unwrap_or_default();
                let comment = Bytes::from_static(b": keepalive\n\n");
                if session.write_response_body(Some(comment), false).await.is_err() {
                    break "the client left".to_owned();
                }
            }
            reason = end_reason(&mut ended) => break reason,
            () = stream::closed(&mut closing) => break "the gateway is stopping".to_owned(),
            _ = session.read_body_or_idle(true) => break "the client left".to_owned(),
        }
    };
    if reason.starts_with(TOO_SLOW) {
        // Its socket is full: the response cannot be ended cleanly, only dropped.
        tracing::warn!(route = %route.name, reason, "bridge session dropped");
        return pingora::Error::e_explain(pingora::ErrorType::WriteError, reason);
    }
    tracing::debug!(route = %route.name, reason, "bridge session ended");
    let end = session.write_response_body(Some(Bytes::new()), true);
    let _ = tokio::time::timeout(Duration::from_secs(1), end).await;
    Ok(200)
}

/// Why the session must end, once something says so.
async fn end_reason(ended: &mut watch::Receiver<Option<String>>) -> String {
    let reason = ended
        .wait_for(Option::is_some)
        .await
        .map(|reason| reason.clone());
    match reason {
        Ok(reason) => reason.unwrap_or_default(),
        Err(_) => std::future::pending().await,
    }
}

/// Takes a message for a bridge session: `202`, and the answer comes on the stream.
async fn post(
    session: &mut Session,
    shared: &Arc<Shared>,
    bridge: Arc<Bridge>,
    rpc_method: &mut Option<&'static str>,
) -> pingora::Result<u16> {
    let route = &bridge.route;
    let mut body = ReplayBody::with_limit(route.max_body_bytes);
    let Some(bytes) = body.complete(session).await else {
        if body.too_large() {
            let message = format!(
                "route '{}' accepts request bodies up to {} bytes (routes.max_body_bytes)",
                route.name, route.max_body_bytes
            );
            let body = reply::error_body("body_too_large", message);
            return reply::json(session, 413, &body).await;
        }
        return pingora::Error::e_explain(pingora::ErrorType::ReadError, "the client left");
    };
    let Ok(message) = serde_json::from_slice::<Value>(&bytes) else {
        let body = reply::error_body("invalid_json", "the message is not JSON");
        return reply::json(session, 400, &body).await;
    };
    *rpc_method = jsonrpc::method_label(&message);
    if route.inspects_messages {
        let call = crate::plugin::Call {
            route: &route.name,
            client: &bridge.owner,
        };
        let answer = route
            .plugins
            .iter()
            .find_map(|plugin| plugin.request_message(&call, &message));
        if let Some(answer) = answer {
            bridge.deliver(answer);
            return reply::json(session, 202, &json!({})).await;
        }
    }
    let (task_shared, task_bridge) = (Arc::clone(shared), Arc::clone(&bridge));
    bridge.spawn(async move { forward(task_shared, task_bridge, message, bytes).await });
    reply::json(session, 202, &json!({})).await
}

/// Sends one client message upstream and writes what comes back to the client's stream.
async fn forward(shared: Arc<Shared>, bridge: Arc<Bridge>, message: Value, body: Bytes) {
    let method = message["method"].as_str().unwrap_or_default().to_owned();
    let in_order = !bridge.initialized.load(Ordering::Acquire);
    let order = if in_order {
        Some(bridge.order.lock().await)
    } else {
        None
    };
    let request = bridge
        .request(Method::POST, "application/json, text/event-stream")
        .and_then(|mut request| {
            request.insert_header(header::CONTENT_TYPE, "application/json")?;
            Ok(request)
        });
    let upstream = match request {
        Ok(request) => {
            send_request(&shared, &bridge.route, &*bridge.tokens, request, Some(body)).await
        }
        Err(error) => Err(Failure::Upstream(error)),
    };
    let mut upstream = match upstream {
        Ok(upstream) => upstream,
        Err(failure) => {
            bridge.fail(&message, &failure.text(&shared, &bridge.route));
            return;
        }
    };
    let Some(response) = upstream.response_header().cloned() else {
        return;
    };
    let status = response.status.as_u16();
    if method == "initialize" {
        *bridge.upstream_session.lock() = response.headers.get(SESSION_ID).cloned();
    }
    if method == "notifications/initialized" {
        bridge.initialized.store(true, Ordering::Release);
    }
    drop(order);
    if status == 404 && bridge.upstream_session.lock().is_some() {
        bridge.finish("the upstream ended the session".to_owned());
        return;
    }
    if !(200..300).contains(&status) {
        let text = error_text(&mut upstream).await;
        bridge.fail(
            &message,
            &format!(
                "route '{}': the upstream answered {status}: {text}",
                bridge.route.name
            ),
        );
        return;
    }
    let delivered = relay_messages(&bridge, upstream, &response).await;
    if method == "initialize" {
        let version = delivered
            .iter()
            .find_map(|message| message["result"]["protocolVersion"].as_str())
            .and_then(|version| HeaderValue::from_str(version).ok());
        *bridge.protocol_version.lock() = version;
        if bridge.upstream_session.lock().is_some() {
            let (shared, listener) = (Arc::clone(&shared), Arc::clone(&bridge));
            bridge.spawn(async move { listen(shared, listener).await });
        }
    }
}

/// Writes the messages of a response (a JSON body or an event stream) to the client's
/// stream; returns the `initialize` result among them, which the caller reads.
async fn relay_messages(
    bridge: &Bridge,
    mut upstream: HttpSession,
    response: &ResponseHeader,
) -> Vec<Value> {
    let mut results = Vec::new();
    if headers::is_event_stream(response) {
        let mut events = std::pin::pin!(body_stream(upstream).eventsource());
        while let Some(Ok(event)) = events.next().await {
            if let Some(message) = event_message(&event) {
                keep_result(&mut results, &message);
                bridge.deliver(message);
            }
        }
        return results;
    }
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = upstream.read_response_body().await {
        if body.len() + chunk.len() > MAX_JSON_BODY {
            upstream.shutdown().await;
            return results;
        }
        body.extend_from_slice(&chunk);
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(batch)) => {
            for message in batch {
                keep_result(&mut results, &message);
                bridge.deliver(message);
            }
        }
        Ok(message) if message.is_object() => {
            keep_result(&mut results, &message);
            bridge.deliver(message);
        }
        _ => {}
    }
    results
}

fn keep_result(results: &mut Vec<Value>, message: &Value) {
    if message.get("result").is_some() {
        results.push(message.clone());
    }
}

/// The JSON-RPC message an event carries, if it is one.
fn event_message(event: &eventsource_stream::Event) -> Option<Value> {
    let is_message = event.event.is_empty() || event.event == "message";
    is_message
        .then(|| serde_json::from_str::<Value>(&event.data).ok())
        .flatten()
        .filter(|message| message.is_object() || message.is_array())
}

/// The upstream's `GET` stream, for the messages it sends on its own: opened after
/// `initialize`, opened again (with `Last-Event-ID`) when it ends, until the session ends.
/// An upstream without one answers 405.
async fn listen(shared: Arc<Shared>, bridge: Arc<Bridge>) {
    let mut last_event_id: Option<String> = None;
    let mut failures = 0u32;
    loop {
        let request = bridge
            .request(Method::GET, "text/event-stream")
            .and_then(|mut request| {
                if let Some(id) = &last_event_id {
                    request.insert_header("last-event-id", id.as_str())?;
                }
                Ok(request)
            });
        let Ok(request) = request else { return };
        let opened = Instant::now();
        match send_request(&shared, &bridge.route, &*bridge.tokens, request, None).await {
            Ok(upstream) => {
                let Some(response) = upstream.response_header().cloned() else {
                    return;
                };
                match response.status.as_u16() {
                    200 if headers::is_event_stream(&response) => {
                        let mut events = std::pin::pin!(body_stream(upstream).eventsource());
                        while let Some(Ok(event)) = events.next().await {
                            if !event.id.is_empty() {
                                last_event_id = Some(event.id.clone());
                            }
                            if let Some(message) = event_message(&event) {
                                bridge.deliver(message);
                            }
                        }
                    }
                    404 => {
                        bridge.finish("the upstream ended the session".to_owned());
                        return;
                    }
                    // 405: no stream of its own; anything else: nothing to listen to.
                    _ => return,
                }
            }
            Err(failure) => {
                tracing::debug!(route = %bridge.route.name, cause = %failure.text(&shared, &bridge.route), "bridge listener failed");
            }
        }
        // A stream that lasted is reopened at once; one that keeps failing gives up.
        if opened.elapsed() < RECONNECT {
            failures += 1;
            if failures >= 5 {
                return;
            }
        } else {
            failures = 0;
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

/// Why a message could not be sent upstream.
pub(crate) enum Failure {
    Token(crate::token::TokenError),
    Upstream(Box<pingora::Error>),
}

impl Failure {
    /// What to tell the client; an upstream failure is counted too.
    pub(crate) fn text(&self, shared: &Shared, route: &Route) -> String {
        match self {
            Failure::Token(error) => reply::no_token(&route.name, error).1["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            Failure::Upstream(error) => {
                let failure = reply::upstream_failure(error);
                shared.metrics.upstream_error(&route.name, failure.code);
                route.set_upstream_unreachable(true);
                format!(
                    "route '{}': the upstream failed: {}",
                    route.name, failure.cause
                )
            }
        }
    }
}

/// Sends `request` with the route's token; after a refused token, refreshes it and sends
/// once more, as every proxied request does.
pub(crate) async fn send_request(
    shared: &Shared,
    route: &Route,
    tokens: &dyn TokenSource,
    request: RequestHeader,
    body: Option<Bytes>,
) -> Result<HttpSession, Failure> {
    let token = tokens.bearer().await.map_err(Failure::Token)?;
    let mut upstream =
        stream::open_request(shared, route, request.clone(), token.as_ref(), body.clone())
            .await
            .map_err(Failure::Upstream)?;
    if !stream::refused(&upstream, route) {
        route.set_upstream_unreachable(false);
        return Ok(upstream);
    }
    upstream.shutdown().await;
    if let Some(token) = &token {
        tokens.refused(token).await;
    }
    let token = tokens.bearer().await.map_err(Failure::Token)?;
    let mut upstream = stream::open_request(shared, route, request, token.as_ref(), body)
        .await
        .map_err(Failure::Upstream)?;
    if stream::refused(&upstream, route) {
        upstream.shutdown().await;
        let reason = "the upstream refused the refreshed token";
        tokens.give_up(reason).map_err(Failure::Token)?;
    }
    Ok(upstream)
}

/// The start of an error response's body, as text, for the client's error message.
async fn error_text(upstream: &mut HttpSession) -> String {
    let mut text = Vec::new();
    while let Ok(Some(chunk)) = upstream.read_response_body().await {
        text.extend_from_slice(&chunk);
        if text.len() >= 512 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&text[..text.len().min(512)])
        .trim()
        .to_owned();
    if text.is_empty() {
        "no details".to_owned()
    } else {
        text
    }
}

/// An upstream response body as a stream of chunks, for the SSE parser.
pub(crate) fn body_stream(
    upstream: HttpSession,
) -> impl futures_util::Stream<Item = Result<Bytes, Box<pingora::Error>>> {
    futures_util::stream::unfold(Some(upstream), |state| async move {
        let mut upstream = state?;
        match upstream.read_response_body().await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some(upstream))),
            Ok(None) => None,
            Err(error) => Some((Err(error), None)),
        }
    })
}
