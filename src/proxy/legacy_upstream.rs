//! The bridge's other direction: Streamable HTTP clients in front of an upstream that speaks
//! only the legacy HTTP+SSE transport (`transport = "sse"`).
//!
//! A client's `initialize` (a `POST {prefix}/mcp` without `Mcp-Session-Id`) opens a session:
//! the gateway opens the upstream's `GET {upstream}/sse`, waits for its `endpoint` event,
//! posts the message there and answers the client with the response that comes back on the
//! stream, naming a session id of its own. From then on each client request is posted to the
//! upstream's endpoint and answered with the response whose JSON-RPC id matches; progress
//! notifications for it (by `progressToken`) come first when the client accepts an event
//! stream. Everything else the upstream sends goes to the client's `GET {prefix}/mcp`
//! stream, or waits for it (at most [`QUEUE`] messages). `DELETE` ends the session and closes
//! the upstream stream; so does a session left idle for [`IDLE`].
//!
//! A request with no response within `server.read_timeout_secs` is answered with a JSON-RPC
//! error. Sessions belong to the client that opened them; another gets `404`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use http::{Method, header};
use parking_lot::Mutex;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use url::Url;

use super::inbound::{Caller, Client};
use super::replay::ReplayBody;
use super::{headers, jsonrpc, reply, stream};
use crate::gateway::Shared;
use crate::route::Route;
use crate::token::TokenSource;

/// Messages for the client's `GET` stream that wait for it, or for it to read.
pub(crate) const QUEUE: usize = 256;

/// A session with no request and no open `GET` stream for this long is closed.
const IDLE: Duration = Duration::from_secs(30 * 60);

/// How long the upstream has to announce its endpoint on a new stream.
const ENDPOINT_WAIT: Duration = Duration::from_secs(10);

const SESSION_ID: &str = "mcp-session-id";

/// The sessions of Streamable HTTP clients bridged to legacy upstreams.
#[derive(Debug, Default)]
pub(crate) struct LegacySessions {
    sessions: Mutex<HashMap<String, Arc<LegacySession>>>,
}

impl LegacySessions {
    /// Sessions open right now.
    pub(crate) fn len(&self) -> usize {
        self.sessions.lock().len()
    }

    fn remove(&self, id: &str) -> Option<Arc<LegacySession>> {
        self.sessions.lock().remove(id)
    }
}

/// Where the messages of one waiting request go: its progress notifications, then its
/// response.
#[derive(Debug)]
struct Pending {
    progress_token: Option<Value>,
    answers: mpsc::UnboundedSender<Value>,
}

#[derive(Debug)]
struct LegacySession {
    id: String,
    route: Arc<Route>,
    owner: Client,
    /// Where this session's upstream token comes from: its owner's.
    tokens: Arc<dyn TokenSource>,
    /// The upstream's message endpoint, from its `endpoint` event.
    endpoint: Url,
    /// Requests waiting for their response, by JSON-RPC id (as JSON text).
    pending: Mutex<HashMap<String, Pending>>,
    /// The client's `GET` stream, when one is open.
    listener: Mutex<Option<mpsc::Sender<Value>>>,
    /// Messages for the `GET` stream while none is open.
    backlog: Mutex<VecDeque<Value>>,
    last_used: Mutex<Instant>,
    /// Set to why the session ended.
    end: watch::Sender<Option<String>>,
}

impl LegacySession {
    fn touch(&self) {
        *self.last_used.lock() = Instant::now();
    }

    /// Ends the session: its reader closes the upstream stream and leaves the registry,
    /// the client's stream ends, and requests still waiting learn that no answer will come.
    fn finish(&self, reason: String) {
        self.end.send_if_modified(|end| {
            let first = end.is_none();
            if first {
                *end = Some(reason);
            }
            first
        });
        self.pending.lock().clear();
    }

    fn ended(&self) -> bool {
        self.end.borrow().is_some()
    }

    /// Routes one message from the upstream: to the request it answers or reports progress
    /// on, else to the client's `GET` stream.
    fn dispatch(&self, mut message: Value) {
        for plugin in &self.route.plugins {
            plugin.response_message(&mut message);
        }
        let is_response = message.get("method").is_none() && message.get("id").is_some();
        if is_response {
            let key = message["id"].to_string();
            if let Some(pending) = self.pending.lock().remove(&key) {
                let _ = pending.answers.send(message);
                return;
            }
        } else if message["method"] == "notifications/progress" {
            let token = &message["params"]["progressToken"];
            let pending = self.pending.lock();
            let waiting = pending
                .values()
                .find(|p| p.progress_token.as_ref() == Some(token));
            if let Some(waiting) = waiting {
                let _ = waiting.answers.send(message);
                return;
            }
        }
        self.to_listener(message);
    }

    fn to_listener(&self, message: Value) {
        let listener = self.listener.lock().clone();
        let Some(listener) = listener else {
            return self.queue(message);
        };
        match listener.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.finish("the client reads its stream too slowly".to_owned());
            }
            Err(mpsc::error::TrySendError::Closed(message)) => self.queue(message),
        }
    }

    fn queue(&self, message: Value) {
        let mut backlog = self.backlog.lock();
        if backlog.len() == QUEUE {
            backlog.pop_front();
            tracing::warn!(route = %self.route.name, "a bridged session's stream is not open: its oldest waiting message was dropped");
        }
        backlog.push_back(message);
    }
}

/// Answers a Streamable HTTP request on a route whose upstream speaks only the legacy
/// transport; `None` when the request is not for the MCP endpoint.
pub(crate) async fn handle(
    session: &mut Session,
    shared: &Arc<Shared>,
    route: &Arc<Route>,
    rest: &str,
    caller: Caller,
    rpc_method: &mut Option<&'static str>,
) -> pingora::Result<Option<u16>> {
    if !route.bridges_streamable() || rest != "/mcp" {
        return Ok(None);
    }
    let request = session.req_header();
    let method = request.method.clone();
    let id = request
        .headers
        .get(SESSION_ID)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let known = id.as_deref().map(|id| {
        shared
            .legacy_sessions
            .sessions
            .lock()
            .get(id)
            .filter(|s| s.owner == caller.client && s.route.name == route.name && !s.ended())
            .cloned()
    });
    let status = match (method, known) {
        (Method::POST, None) => open(session, shared, route, caller, rpc_method).await?,
        (Method::POST, Some(Some(bridged))) => post(session, shared, bridged, rpc_method).await?,
        (Method::GET, Some(Some(bridged))) => listen(session, shared, bridged).await?,
        (Method::DELETE, Some(Some(bridged))) => {
            shared.legacy_sessions.remove(&bridged.id);
            bridged.finish("the client ended the session".to_owned());
            respond(session, 200, None, None).await?
        }
        (Method::GET | Method::DELETE, None) => {
            let body = reply::error_body("missing_session", "send the Mcp-Session-Id of a session");
            reply::json(session, 400, &body).await?
        }
        (_, Some(None)) => {
            let body = reply::error_body(
                "unknown_session",
                "no such session for this client: initialize a new one",
            );
            reply::json(session, 404, &body).await?
        }
        _ => respond(session, 405, None, None).await?,
    };
    Ok(Some(status))
}

/// `initialize`: opens the upstream stream, then handles the message as in a session.
async fn open(
    session: &mut Session,
    shared: &Arc<Shared>,
    route: &Arc<Route>,
    caller: Caller,
    rpc_method: &mut Option<&'static str>,
) -> pingora::Result<u16> {
    let Some(message) = read_message(session, route).await? else {
        let body = reply::error_body("invalid_json", "the message is not JSON");
        return reply::json(session, 400, &body).await;
    };
    *rpc_method = jsonrpc::method_label(&message);
    if message["method"] != "initialize" {
        let body = reply::error_body(
            "missing_session",
            "send Mcp-Session-Id, or initialize a session first",
        );
        return reply::json(session, 400, &body).await;
    }
    let (end, _) = watch::channel(None);
    let bridged = match connect(shared, route, caller, end).await {
        Ok(bridged) => bridged,
        Err(text) => {
            let answer = jsonrpc::error_answer(&message, -32603, &text).unwrap_or_default();
            return reply::json(session, 502, &answer).await;
        }
    };
    shared
        .legacy_sessions
        .sessions
        .lock()
        .insert(bridged.id.clone(), Arc::clone(&bridged));
    exchange(session, shared, &bridged, message, true).await
}

/// Opens the upstream's legacy stream and reads its endpoint; starts the session's reader.
async fn connect(
    shared: &Arc<Shared>,
    route: &Arc<Route>,
    caller: Caller,
    end: watch::Sender<Option<String>>,
) -> Result<Arc<LegacySession>, String> {
    let failed = |cause: String| format!("route '{}': {cause}", route.name);
    let url = route.upstream_url("/sse", None);
    let mut request =
        RequestHeader::build(Method::GET, super::path_and_query(&url).as_bytes(), None)
            .map_err(|e| failed(e.to_string()))?;
    let _ = request.insert_header(header::ACCEPT, "text/event-stream");
    let upstream = super::bridge::send_request(shared, route, &*caller.tokens, request, None)
        .await
        .map_err(|failure| failure.text(shared, route))?;
    let status = upstream.response_header().map(|r| r.status.as_u16());
    if status != Some(200) {
        // What an `auto` route learnt was wrong: it has neither transport there.
        route
            .no_streamable
            .store(false, std::sync::atomic::Ordering::Relaxed);
        return Err(failed(format!(
            "the upstream's legacy endpoint answered {}",
            status.unwrap_or_default()
        )));
    }
    let mut events = Box::pin(super::bridge::body_stream(upstream).eventsource());
    let endpoint = tokio::time::timeout(ENDPOINT_WAIT, async {
        while let Some(Ok(event)) = events.next().await {
            if event.event == "endpoint" {
                return url.join(event.data.trim()).ok();
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .ok_or_else(|| failed("the upstream announced no message endpoint".to_owned()))?;
    let bridged = Arc::new(LegacySession {
        id: oauth2::CsrfToken::new_random().secret().clone(),
        route: Arc::clone(route),
        owner: caller.client,
        tokens: caller.tokens,
        endpoint,
        pending: Mutex::new(HashMap::new()),
        listener: Mutex::new(None),
        backlog: Mutex::new(VecDeque::new()),
        last_used: Mutex::new(Instant::now()),
        end,
    });
    let (reader_shared, reader) = (Arc::clone(shared), Arc::clone(&bridged));
    let mut ended = bridged.end.subscribe();
    tokio::spawn(async move {
        let mut idle = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                () = session_ended(&mut ended) => break,
                event = events.next() => match event {
                    Some(Ok(event)) => {
                        let is_message = event.event.is_empty() || event.event == "message";
                        if let Some(message) = is_message
                            .then(|| serde_json::from_str::<Value>(&event.data).ok())
                            .flatten()
                        {
                            reader.dispatch(message);
                        }
                    }
                    _ => break,
                },
                _ = idle.tick() => {
                    let listening = reader.listener.lock().as_ref().is_some_and(|l| !l.is_closed());
                    if !listening && reader.last_used.lock().elapsed() > IDLE {
                        break;
                    }
                }
            }
        }
        reader_shared.legacy_sessions.remove(&reader.id);
        reader.finish("the upstream stream ended".to_owned());
    });
    Ok(bridged)
}

/// A message in an open session.
async fn post(
    session: &mut Session,
    shared: &Arc<Shared>,
    bridged: Arc<LegacySession>,
    rpc_method: &mut Option<&'static str>,
) -> pingora::Result<u16> {
    let Some(message) = read_message(session, &bridged.route).await? else {
        let body = reply::error_body("invalid_json", "the message is not JSON");
        return reply::json(session, 400, &body).await;
    };
    *rpc_method = jsonrpc::method_label(&message);
    exchange(session, shared, &bridged, message, false).await
}

/// Posts `message` upstream; for a request, answers with its response.
async fn exchange(
    session: &mut Session,
    shared: &Arc<Shared>,
    bridged: &Arc<LegacySession>,
    message: Value,
    opening: bool,
) -> pingora::Result<u16> {
    bridged.touch();
    let route = &bridged.route;
    let is_request = message.get("method").is_some() && message.get("id").is_some();
    if route.inspects_messages {
        let call = crate::plugin::Call {
            route: &route.name,
            client: &bridged.owner,
        };
        let answer = route
            .plugins
            .iter()
            .find_map(|plugin| plugin.request_message(&call, &message));
        if let Some(answer) = answer {
            return respond(session, 200, Some(&bridged.id), Some(&answer)).await;
        }
    }
    let (answers, mut answered) = mpsc::unbounded_channel();
    if is_request {
        let pending = Pending {
            progress_token: message["params"]["_meta"].get("progressToken").cloned(),
            answers,
        };
        bridged
            .pending
            .lock()
            .insert(message["id"].to_string(), pending);
    }
    let sent = send_message(shared, bridged, &message).await;
    if let Err(text) = sent {
        bridged.pending.lock().remove(&message["id"].to_string());
        if opening {
            shared.legacy_sessions.remove(&bridged.id);
            bridged.finish(text.clone());
        }
        return match jsonrpc::error_answer(&message, -32603, &text) {
            Some(answer) => respond(session, 200, Some(&bridged.id), Some(&answer)).await,
            None => {
                let body = reply::error_body("upstream_failed", text);
                reply::json(session, 502, &body).await
            }
        };
    }
    if !is_request {
        return respond(session, 202, Some(&bridged.id), None).await;
    }
    let streams = headers::accepts_event_stream(session.req_header());
    let deadline = Instant::now() + shared_read_timeout(shared);
    let timed_out = || {
        jsonrpc::error_answer(
            &message,
            -32001,
            &format!(
                "route '{}': no answer from the upstream within {} s (server.read_timeout_secs)",
                route.name,
                shared_read_timeout(shared).as_secs()
            ),
        )
    };
    if !streams {
        // JSON only: progress has nowhere to go; wait for the response.
        let answer = loop {
            let next = tokio::select! {
                next = tokio::time::timeout_at(deadline, answered.recv()) => next,
                // The client left: nobody waits for the answer any more.
                _ = session.read_body_or_idle(true) => break None,
            };
            match next {
                Ok(Some(answer)) if answer.get("method").is_none() => break Some(answer),
                Ok(Some(_progress)) => continue,
                Ok(None) => break None,
                Err(_) => break timed_out(),
            }
        };
        bridged.pending.lock().remove(&message["id"].to_string());
        let answer = answer.or_else(|| {
            jsonrpc::error_answer(
                &message,
                -32603,
                "the upstream session ended before answering",
            )
        });
        return respond(session, 200, Some(&bridged.id), answer.as_ref()).await;
    }
    let mut response = ResponseHeader::build(200, Some(4))?;
    response.insert_header(header::CONTENT_TYPE, "text/event-stream")?;
    response.insert_header(SESSION_ID, bridged.id.as_str())?;
    headers::prepare_downstream(&mut response);
    route.filter_response(&mut response);
    session
        .write_response_header(Box::new(response), false)
        .await?;
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout_at(deadline, answered.recv()) => next,
            _ = session.read_body_or_idle(true) => break,
        };
        let (event, last) = match next {
            Ok(Some(message)) => {
                let last = message.get("method").is_none();
                (Some(message), last)
            }
            Ok(None) => (
                jsonrpc::error_answer(
                    &message,
                    -32603,
                    "the upstream session ended before answering",
                ),
                true,
            ),
            Err(_) => (timed_out(), true),
        };
        if let Some(event) = event {
            let bytes = Bytes::from(format!("event: message\ndata: {event}\n\n"));
            if session
                .write_response_body(Some(bytes), false)
                .await
                .is_err()
            {
                break;
            }
        }
        if last {
            break;
        }
    }
    bridged.pending.lock().remove(&message["id"].to_string());
    let _ = session.write_response_body(Some(Bytes::new()), true).await;
    Ok(200)
}

fn shared_read_timeout(shared: &Shared) -> Duration {
    shared.routing().config.server.read_timeout
}

/// Posts one message to the upstream's endpoint; it answers on the stream.
async fn send_message(
    shared: &Arc<Shared>,
    bridged: &LegacySession,
    message: &Value,
) -> Result<(), String> {
    let route = &bridged.route;
    let target = super::path_and_query(&bridged.endpoint);
    let mut request =
        RequestHeader::build(Method::POST, target.as_bytes(), None).map_err(|e| e.to_string())?;
    let _ = request.insert_header(header::CONTENT_TYPE, "application/json");
    let body = Bytes::from(message.to_string());
    let mut upstream =
        super::bridge::send_request(shared, route, &*bridged.tokens, request, Some(body))
            .await
            .map_err(|failure| failure.text(shared, route))?;
    let status = upstream.response_header().map_or(0, |r| r.status.as_u16());
    upstream.shutdown().await;
    match status {
        200..=299 => Ok(()),
        404 => {
            shared.legacy_sessions.remove(&bridged.id);
            bridged.finish("the upstream forgot the session".to_owned());
            Err(format!(
                "route '{}': the upstream ended the session",
                route.name
            ))
        }
        status => Err(format!(
            "route '{}': the upstream answered {status}",
            route.name
        )),
    }
}

/// The client's `GET` stream: the upstream's own messages, until either side ends.
async fn listen(
    session: &mut Session,
    shared: &Arc<Shared>,
    bridged: Arc<LegacySession>,
) -> pingora::Result<u16> {
    if !headers::accepts_event_stream(session.req_header()) {
        return respond(session, 405, Some(&bridged.id), None).await;
    }
    let _slot = match shared.streams.enter(bridged.owner.clone()) {
        Ok(slot) => slot,
        Err(exceeded) => {
            return stream::too_many_streams(session, shared, &bridged.route, exceeded).await;
        }
    };
    let (sender, mut messages) = mpsc::channel(QUEUE);
    for waiting in bridged.backlog.lock().drain(..) {
        let _ = sender.try_send(waiting);
    }
    *bridged.listener.lock() = Some(sender);
    let mut response = ResponseHeader::build(200, Some(4))?;
    response.insert_header(header::CONTENT_TYPE, "text/event-stream")?;
    response.insert_header(SESSION_ID, bridged.id.as_str())?;
    headers::prepare_downstream(&mut response);
    bridged.route.filter_response(&mut response);
    session
        .write_response_header(Box::new(response), false)
        .await?;
    let _open = shared.metrics.stream_opened(&bridged.route.name);
    let keepalive = shared.keepalive.unwrap_or(Duration::from_secs(86_400));
    let mut ended = bridged.end.subscribe();
    let mut closing = shared.closing.subscribe();
    loop {
        tokio::select! {
            message = messages.recv() => {
                let Some(message) = message else { break };
                let bytes = Bytes::from(format!("event: message\ndata: {message}\n\n"));
                if session.write_response_body(Some(bytes), false).await.is_err() {
                    break;
                }
            }
            () = tokio::time::sleep(keepalive) => {
                let comment = Bytes::from_static(b": keepalive\n\n");
                if session.write_response_body(Some(comment), false).await.is_err() {
                    break;
                }
            }
            () = session_ended(&mut ended) => break,
            () = stream::closed(&mut closing) => break,
            _ = session.read_body_or_idle(true) => break,
        }
    }
    bridged.touch();
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        session.write_response_body(Some(Bytes::new()), true),
    )
    .await;
    Ok(200)
}

async fn session_ended(ended: &mut watch::Receiver<Option<String>>) {
    if ended.wait_for(Option::is_some).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn read_message(session: &mut Session, route: &Route) -> pingora::Result<Option<Value>> {
    let mut body = ReplayBody::with_limit(route.max_body_bytes);
    let Some(bytes) = body.complete(session).await else {
        return pingora::Error::e_explain(
            pingora::ErrorType::ReadError,
            "the request body was cut short or is over routes.max_body_bytes",
        );
    };
    Ok(serde_json::from_slice::<Value>(&bytes)
        .ok()
        .filter(Value::is_object))
}

/// A response with the session's id, and a JSON body when there is one.
async fn respond(
    session: &mut Session,
    status: u16,
    id: Option<&str>,
    body: Option<&Value>,
) -> pingora::Result<u16> {
    let mut response = ResponseHeader::build(status, Some(4))?;
    if let Some(id) = id {
        response.insert_header(SESSION_ID, id)?;
    }
    let bytes = body.map(|body| Bytes::from(body.to_string()));
    if bytes.is_some() {
        response.insert_header(header::CONTENT_TYPE, "application/json")?;
    }
    response.insert_header(header::CONTENT_LENGTH, bytes.as_ref().map_or(0, Bytes::len))?;
    session
        .write_response_header(Box::new(response), bytes.is_none())
        .await?;
    if let Some(bytes) = bytes {
        session.write_response_body(Some(bytes), true).await?;
    }
    Ok(status)
}
