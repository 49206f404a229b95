//! The gateway's own relay for long-lived event streams (`GET` with
//! `Accept: text/event-stream`): the legacy HTTP+SSE stream and Streamable HTTP's listening
//! stream.
//!
//! Pingora's proxy loop only wakes up when bytes arrive, so these streams get a loop of their
//! own that can also speak when the upstream is silent. It forwards each complete event the
//! moment it arrives, rewrites the legacy `endpoint` event so that clients post back through
//! the gateway, writes a keepalive comment when the stream has been idle for the configured
//! interval (only between events), and ends the upstream stream as soon as the client goes
//! away. There is no total timeout.
//!
//! The same loop relays the response to a request that the gateway sends with its whole
//! body itself ([`send_whole`]): a small `POST`, one the route's plugins read, or one sent
//! again after the upstream refused the route's token and it was refreshed.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use pingora::{Error, ErrorType};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use url::Url;

use super::headers;
use super::inbound::{Caller, Client};
use super::legacy::{LegacyStreams, Registration};
use super::reply;
use super::sse::{EndpointRewriter, SseScanner};
use super::streams::Exceeded;
use crate::gateway::Shared;
use crate::route::Route;
use crate::token::{AccessToken, TokenError, TokenSource};

/// The comment written to a stream that has been idle for the keepalive interval.
const KEEPALIVE: &[u8] = b": keepalive\n\n";

/// An event-stream request to relay: where it goes, for whom, and how.
#[derive(Debug)]
pub(crate) struct StreamRequest<'a> {
    pub(crate) url: &'a Url,
    pub(crate) caller: &'a Caller,
    /// The token taken for the first try.
    pub(crate) token: Option<&'a AccessToken>,
    /// The allow-listed cross-origin `Origin` to answer CORS for.
    pub(crate) cors: Option<&'a str>,
    /// An upstream answer of 404 or 405 is not relayed: the caller learns that the upstream
    /// has no legacy stream, and bridges the client instead.
    pub(crate) probe_legacy: bool,
}

/// Relays one event-stream request; returns the status sent to the client, or `None` when
/// a probe found no legacy stream.
pub(crate) async fn relay(
    session: &mut Session,
    shared: &Shared,
    route: &Route,
    request: StreamRequest<'_>,
) -> pingora::Result<Option<u16>> {
    let StreamRequest {
        url,
        caller,
        token,
        cors,
        probe_legacy,
    } = request;
    let tokens = &caller.tokens;
    // Counted from before the upstream is asked, so a burst cannot overshoot the bound.
    let _slot = match shared.streams.enter(caller.client.clone()) {
        Ok(slot) => slot,
        Err(exceeded) => {
            return too_many_streams(session, shared, route, exceeded)
                .await
                .map(Some);
        }
    };
    let mut upstream = match open(session, shared, route, url, token, None).await {
        Ok(upstream) => upstream,
        Err(error) => {
            return Ok(Some(
                upstream_error_reply(session, shared, &route.name, &error).await,
            ));
        }
    };
    if refused(&upstream, route) {
        // The same one-retry rule as for other requests: refresh, then ask once more.
        upstream.shutdown().await;
        if let Some(token) = token {
            tokens.refused(token).await;
        }
        let token = match tokens.bearer().await {
            Ok(token) => token,
            Err(error) => return no_token(session, route, &error).await.map(Some),
        };
        upstream = match open(session, shared, route, url, token.as_ref(), None).await {
            Ok(upstream) => upstream,
            Err(error) => {
                return Ok(Some(
                    upstream_error_reply(session, shared, &route.name, &error).await,
                ));
            }
        };
        if refused(&upstream, route) {
            let reason = "the upstream refused the refreshed token";
            if let Err(error) = tokens.give_up(reason) {
                upstream.shutdown().await;
                return no_token(session, route, &error).await.map(Some);
            }
        }
    }
    let status = upstream
        .response_header()
        .map(|header| header.status.as_u16());
    if probe_legacy && matches!(status, Some(404 | 405)) {
        upstream.shutdown().await;
        return Ok(None);
    }
    relay_response(
        session,
        shared,
        route,
        url,
        upstream,
        shared.keepalive,
        cors,
    )
    .await
    .map(Some)
}

/// A request the gateway sends upstream itself with its whole body: a small `POST`, one
/// whose message the route's plugins read, or one sent again after the upstream refused its
/// token.
#[derive(Debug)]
pub(crate) struct WholeRequest<'a> {
    pub(crate) url: &'a Url,
    pub(crate) token: Option<&'a AccessToken>,
    pub(crate) body: Bytes,
    /// The allow-listed cross-origin `Origin` to answer CORS for.
    pub(crate) cors: Option<&'a str>,
    /// Who is asking: on a per-user route, the owner of a session the upstream opens.
    pub(crate) client: Option<&'a Client>,
    /// Where the token came from, which can ask for more scope at the next sign-in.
    pub(crate) tokens: Option<&'a dyn TokenSource>,
}

/// What became of a [`WholeRequest`].
#[derive(Debug)]
pub(crate) enum Sent {
    /// The upstream's answer (or the gateway's, when the upstream failed) was relayed to the
    /// client with this status.
    Relayed(u16),
    /// The upstream refused the token (401 on an OAuth route); the client has no answer yet.
    TokenRefused,
    /// The upstream wants more scope than the token carries (403 `insufficient_scope` on an
    /// OAuth route), and the next sign-in asks for it; the client has no answer yet.
    ScopeRequired(TokenError),
}

/// Sends a request with its whole body in one write and relays the response, chunk by chunk
/// or event by event. A refused token or a missing scope is left to the caller.
pub(crate) async fn send_whole(
    session: &mut Session,
    shared: &Shared,
    route: &Route,
    request: WholeRequest<'_>,
) -> pingora::Result<Sent> {
    let WholeRequest {
        url,
        token,
        body,
        cors,
        client,
        tokens,
    } = request;
    let header = upstream_request(session.req_header(), url)?;
    let mut upstream = match send_request(shared, route, header, token, Some(body), false).await {
        Ok(upstream) => upstream,
        Err(error) => {
            let status = upstream_error_reply(session, shared, &route.name, &error).await;
            return Ok(Sent::Relayed(status));
        }
    };
    let Some(response) = upstream.response_header() else {
        return Error::e_explain(ErrorType::InternalError, "upstream response header missing");
    };
    super::learn_transport(route, session.req_header(), response);
    if refused(&upstream, route) {
        upstream.shutdown().await;
        return Ok(Sent::TokenRefused);
    }
    let more_scope = (route.tokens.kind() == "oauth")
        .then(|| super::insufficient_scope(response))
        .flatten();
    if let Some(error) = more_scope.and_then(|scope| tokens?.scope_required(&scope)) {
        tracing::info!(route = %route.name, "upstream asks for more scope; the next sign-in requests it");
        upstream.shutdown().await;
        return Ok(Sent::ScopeRequired(error));
    }
    if let (Some(owners), Some(client)) = (&route.session_owners, client) {
        owners.note_response(response, client);
    }
    // A request-scoped stream carries the upstream's own events; it gets no keepalives.
    relay_response(session, shared, route, url, upstream, None, cors)
        .await
        .map(Sent::Relayed)
}

/// Answers a stream past a bound: 503 when the gateway is full, 429 when the client is.
pub(crate) async fn too_many_streams(
    session: &mut Session,
    shared: &Shared,
    route: &Route,
    exceeded: Exceeded,
) -> pingora::Result<u16> {
    let (status, limit, message) = match exceeded {
        Exceeded::Gateway { max } => (
            503,
            "streams",
            format!(
                "the gateway relays {max} event streams at most (server.max_streams) and all \
                 are open; try again shortly"
            ),
        ),
        Exceeded::Client { max } => (
            429,
            "client_streams",
            format!(
                "this client already has {max} event streams open, the most one client may \
                 (server.max_streams_per_client); close one first"
            ),
        ),
    };
    shared.metrics.limited(&route.name, limit);
    let body = reply::error_body("too_many_streams", message);
    reply::json(session, status, &body).await
}

/// Writes the upstream's response header to the client, then its body event by event (or
/// chunk by chunk when it is not an event stream) until either side ends.
async fn relay_response(
    session: &mut Session,
    shared: &Shared,
    route: &Route,
    url: &Url,
    mut upstream: HttpSession,
    keepalive: Option<Duration>,
    cors: Option<&str>,
) -> pingora::Result<u16> {
    let Some(mut response) = upstream.response_header().cloned() else {
        return Error::e_explain(ErrorType::InternalError, "upstream response header missing");
    };
    let status = response.status.as_u16();
    route.set_upstream_unreachable(false);
    let event_stream = headers::is_event_stream(&response);
    headers::prepare_downstream(&mut response);
    route.filter_response(&mut response);
    if let Some(allowed) = cors {
        super::origin::add_cors(&mut response, allowed);
    }
    if route.inspects_messages && !event_stream && is_json(&response) {
        return relay_json_message(session, route, upstream, response).await;
    }
    session
        .write_response_header(Box::new(response), false)
        .await?;

    // Only an event stream can carry a legacy `endpoint` event to rewrite.
    let rewriter = event_stream.then(|| {
        EndpointRewriter::new(
            url.clone(),
            route.upstream.base_url().clone(),
            &route.prefix,
        )
    });
    let mut pump = Pump {
        scanner: event_stream.then(SseScanner::new),
        rewriter,
        keepalive: keepalive.filter(|_| event_stream),
        route,
        legacy: &shared.legacy,
        answers: None,
        queued: Vec::new(),
        closing: shared.closing.subscribe(),
        close_at_boundary: false,
    };
    let _open = event_stream.then(|| shared.metrics.stream_opened(&route.name));
    let end = pump.run(session, &mut upstream).await;
    match &end {
        StreamEnd::UpstreamFailed(error) => {
            tracing::warn!(route = %route.name, error = error.as_str(), "upstream stream failed")
        }
        end => tracing::debug!(route = %route.name, ?end, "response relayed"),
    }
    match end {
        StreamEnd::UpstreamFinished => super::exchange::release(&route.upstream, upstream).await,
        // A stream the client left is never kept: closing it tells the upstream. Whatever
        // the client sent instead of waiting is not the start of a request to read.
        StreamEnd::ClientGone => {
            upstream.shutdown().await;
            session.set_keepalive(None);
        }
        _ => upstream.shutdown().await,
    }
    Ok(status)
}

/// Why a relayed stream ended.
#[derive(Debug)]
enum StreamEnd {
    UpstreamFinished,
    /// The gateway is stopping: the stream ended between events, for the client to
    /// reconnect.
    Closed,
    UpstreamFailed(ErrorType),
    ClientGone,
}

struct Pump<'a> {
    scanner: Option<SseScanner>,
    /// Present with the scanner.
    rewriter: Option<EndpointRewriter>,
    keepalive: Option<Duration>,
    /// Whose plugins may read and change the stream's messages.
    route: &'a Route,
    legacy: &'a Arc<LegacyStreams>,
    /// The gateway's own answers to this legacy stream's client, once it is registered.
    answers: Option<(mpsc::Receiver<Bytes>, Registration)>,
    /// Answers waiting for the end of the upstream event being relayed.
    queued: Vec<Bytes>,
    /// Turns true at the end of a drain.
    closing: tokio::sync::watch::Receiver<bool>,
    /// The drain ended in the middle of an event: end after it.
    close_at_boundary: bool,
}

/// Returns once the gateway closes its streams (never, if the signal goes away).
pub(crate) async fn closed(closing: &mut tokio::sync::watch::Receiver<bool>) {
    if closing.wait_for(|closing| *closing).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The next answer for a registered legacy stream; never, for any other stream.
async fn next_answer(answers: &mut Option<(mpsc::Receiver<Bytes>, Registration)>) -> Bytes {
    match answers {
        Some((receiver, _)) => match receiver.recv().await {
            Some(answer) => answer,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

impl Pump<'_> {
    async fn run(&mut self, session: &mut Session, upstream: &mut HttpSession) -> StreamEnd {
        let far_future = Instant::now() + Duration::from_secs(86_400 * 365);
        let mut next_keepalive = self
            .keepalive
            .map_or(far_future, |every| Instant::now() + every);
        let mut closing = self.closing.clone();
        loop {
            // The upstream first: once a plain response is relayed whole, the client may send
            // its next request at once, and the end of the upstream body, already known, must
            // win over reading that request's first byte as if the client were leaving.
            tokio::select! {
                biased;
                chunk = upstream.read_response_body() => {
                    let end = match chunk {
                        Ok(Some(chunk)) => self.forward(session, &chunk).await,
                        Ok(None) => return self.finish(session).await,
                        Err(error) => Some(StreamEnd::UpstreamFailed(error.etype().clone())),
                    };
                    if let Some(end) = end {
                        return end;
                    }
                    if self.close_at_boundary && self.at_boundary() {
                        return self.close(session).await;
                    }
                    if let Some(every) = self.keepalive {
                        next_keepalive = Instant::now() + every;
                    }
                }
                _ = sleep_until(next_keepalive), if self.keepalive.is_some() => {
                    let every = self.keepalive.unwrap_or_default();
                    next_keepalive = Instant::now() + every;
                    if self.scanner.as_ref().is_some_and(SseScanner::at_event_boundary)
                        && write(session, Bytes::from_static(KEEPALIVE)).await.is_err()
                    {
                        return StreamEnd::ClientGone;
                    }
                }
                answer = next_answer(&mut self.answers) => {
                    self.queued.push(answer);
                    if self.write_queued(session).await.is_err() {
                        return StreamEnd::ClientGone;
                    }
                }
                () = closed(&mut closing), if !self.close_at_boundary => {
                    if self.at_boundary() {
                        return self.close(session).await;
                    }
                    self.close_at_boundary = true;
                }
                _ = session.read_body_or_idle(true) => return StreamEnd::ClientGone,
            }
        }
    }

    fn at_boundary(&self) -> bool {
        self.scanner
            .as_ref()
            .is_none_or(SseScanner::at_event_boundary)
    }

    /// Ends the response cleanly, after any answers still queued.
    async fn close(&mut self, session: &mut Session) -> StreamEnd {
        let _ = self.write_queued(session).await;
        let _ = session.write_response_body(Some(Bytes::new()), true).await;
        StreamEnd::Closed
    }

    /// Writes the gateway's own answers, once no upstream event is half relayed.
    async fn write_queued(&mut self, session: &mut Session) -> pingora::Result<()> {
        if !self.at_boundary() {
            return Ok(());
        }
        for answer in std::mem::take(&mut self.queued) {
            write(session, answer).await?;
        }
        Ok(())
    }

    /// Forwards what the scanner releases from `chunk`; `Some` when the stream must end.
    async fn forward(&mut self, session: &mut Session, chunk: &Bytes) -> Option<StreamEnd> {
        let (rewriter, route) = (self.rewriter.as_ref(), self.route);
        let mut endpoint = None;
        let out = match &mut self.scanner {
            Some(scanner) if route.inspects_messages => scanner.feed_messages(
                chunk,
                |data| {
                    endpoint = rewriter.and_then(|rewriter| rewriter.rewrite(data));
                    endpoint.clone()
                },
                |data| route.filter_message(data),
            ),
            Some(scanner) => scanner.feed(chunk, |data| {
                rewriter.and_then(|rewriter| rewriter.rewrite(data))
            }),
            None => chunk.clone(),
        };
        // The gateway may answer this client's messages itself: it must know the stream.
        if let Some(endpoint) = endpoint {
            self.answers = Some(self.legacy.register(endpoint));
        }
        if !out.is_empty() && write(session, out).await.is_err() {
            return Some(StreamEnd::ClientGone);
        }
        if !self.queued.is_empty() && self.write_queued(session).await.is_err() {
            return Some(StreamEnd::ClientGone);
        }
        None
    }

    async fn finish(&mut self, session: &mut Session) -> StreamEnd {
        let rest = self
            .scanner
            .as_mut()
            .map(SseScanner::finish)
            .unwrap_or_default();
        let _ = session.write_response_body(Some(rest), true).await;
        StreamEnd::UpstreamFinished
    }
}

/// The largest JSON response the gateway reads whole for plugins that read messages.
const MAX_JSON_MESSAGE: usize = 16 * 1024 * 1024;

fn is_json(response: &ResponseHeader) -> bool {
    response
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().starts_with("application/json"))
}

/// Relays a JSON response whole, after the route's plugins have read (and maybe changed)
/// the message. A body too large to read whole is not relayed: a plugin that filters what
/// clients see must not be bypassed by size.
async fn relay_json_message(
    session: &mut Session,
    route: &Route,
    mut upstream: HttpSession,
    mut response: ResponseHeader,
) -> pingora::Result<u16> {
    let status = response.status.as_u16();
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = upstream.read_response_body().await? {
        if body.len() + chunk.len() > MAX_JSON_MESSAGE {
            upstream.shutdown().await;
            let message = format!(
                "route '{}': the upstream's answer is over {MAX_JSON_MESSAGE} bytes, more than \
                 the route's plugins read",
                route.name
            );
            let body = reply::error_body("response_too_large", message);
            return reply::json(session, 502, &body).await;
        }
        body.extend_from_slice(&chunk);
    }
    super::exchange::release(&route.upstream, upstream).await;
    let body = match std::str::from_utf8(&body)
        .ok()
        .and_then(|text| route.filter_message(text))
    {
        Some(changed) => Bytes::from(changed),
        None => body.freeze(),
    };
    response.remove_header(&http::header::TRANSFER_ENCODING);
    response.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    session
        .write_response_header(Box::new(response), false)
        .await?;
    session.write_response_body(Some(body), true).await?;
    Ok(status)
}

/// Whether the upstream answered an OAuth route's stream with 401.
pub(crate) fn refused(upstream: &HttpSession, route: &Route) -> bool {
    route.tokens.kind() == "oauth"
        && upstream
            .response_header()
            .is_some_and(|header| header.status == http::StatusCode::UNAUTHORIZED)
}

async fn no_token(
    session: &mut Session,
    route: &Route,
    error: &TokenError,
) -> pingora::Result<u16> {
    let (status, body) = reply::no_token(&route.name, error);
    reply::json(session, status, &body).await
}

async fn write(session: &mut Session, bytes: Bytes) -> pingora::Result<()> {
    session.write_response_body(Some(bytes), false).await
}

/// Connects to the upstream, sends the request (with `body`, the whole of it, if any) and
/// reads the response header.
async fn open(
    session: &Session,
    shared: &Shared,
    route: &Route,
    url: &Url,
    token: Option<&AccessToken>,
    body: Option<Bytes>,
) -> pingora::Result<HttpSession> {
    let request = upstream_request(session.req_header(), url)?;
    open_request(shared, route, request, token, body).await
}

/// Sends `request` (a copy of the client's, or one the gateway made) upstream, with the
/// route's headers and `token`, and reads the response header. The response may be a
/// long-lived stream: there is no read timeout.
pub(crate) async fn open_request(
    shared: &Shared,
    route: &Route,
    request: RequestHeader,
    token: Option<&AccessToken>,
    body: Option<Bytes>,
) -> pingora::Result<HttpSession> {
    send_request(shared, route, request, token, body, true).await
}

/// [`open_request`], with the read timeout of a plain response unless `streaming`.
pub(crate) async fn send_request(
    shared: &Shared,
    route: &Route,
    mut request: RequestHeader,
    token: Option<&AccessToken>,
    body: Option<Bytes>,
    streaming: bool,
) -> pingora::Result<HttpSession> {
    headers::prepare_upstream(&mut request, route, token)
        .map_err(|e| Error::because(ErrorType::InternalError, "token is not a valid header", e))?;
    // Whatever framing the client used, the body goes out in one piece with its length.
    request.remove_header(&http::header::TRANSFER_ENCODING);
    let body = body.unwrap_or_default();
    if body.is_empty() && !matches!(request.method, http::Method::POST | http::Method::PUT) {
        request.remove_header(&http::header::CONTENT_LENGTH);
    } else {
        request.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    }
    super::exchange::send(
        &shared.connector,
        &route.upstream,
        &request,
        &body,
        streaming,
    )
    .await
}

fn upstream_request(client: &RequestHeader, url: &Url) -> pingora::Result<RequestHeader> {
    let target = super::path_and_query(url);
    let mut request = RequestHeader::build(client.method.clone(), target.as_bytes(), None)?;
    for (name, value) in &client.headers {
        request.append_header(name.clone(), value.clone())?;
    }
    Ok(request)
}

/// Answers a request whose upstream failed before a response began; returns the status.
pub(crate) async fn upstream_error_reply(
    session: &mut Session,
    shared: &Shared,
    route: &str,
    error: &Error,
) -> u16 {
    let failure = upstream_failed(shared, route, error);
    if session.response_written().is_some() {
        // The client already has a response header; all we can do is end the stream.
        return 0;
    }
    let (status, body) = upstream_failure_answer(route, &failure);
    reply::json(session, status, &body)
        .await
        .unwrap_or_default()
}

/// Counts a failure between the gateway and a route's upstream, and marks the upstream
/// unreachable.
pub(crate) fn upstream_failed(
    shared: &Shared,
    route: &str,
    error: &Error,
) -> reply::UpstreamFailure {
    let failure = reply::upstream_failure(error);
    shared.metrics.upstream_error(route, failure.code);
    if let Some(route) = shared.routing().route(route) {
        route.set_upstream_unreachable(true);
    }
    failure
}

/// Logs an upstream failure that the client is told of, and the status and body it gets.
pub(crate) fn upstream_failure_answer(
    route: &str,
    failure: &reply::UpstreamFailure,
) -> (u16, serde_json::Value) {
    tracing::warn!(route, status = failure.status, cause = %failure.cause, "upstream failed");
    let mut body = reply::error_body(
        failure.code,
        format!("route '{route}': the upstream failed: {}", failure.cause),
    );
    body["route"] = route.into();
    (failure.status, body)
}
