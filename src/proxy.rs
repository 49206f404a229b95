//! The data plane: pingora's [`ProxyHttp`] phases for MCP traffic.
//!
//! Small `POST`s to routes that need nothing but a token reach the upstream through the
//! [`lane`] before pingora sees the connection; what follows is the path of every other
//! request.
//!
//! Each request is matched against the route table in `request_filter`. Control-plane paths
//! and unknown paths are answered right there. A `GET` that asks for an event stream (the
//! legacy `/sse` stream, or Streamable HTTP's listening stream) is relayed by
//! [`stream::relay`], which rewrites the legacy `endpoint` event and keeps idle streams
//! alive. A small `POST` (the bulk of Streamable HTTP and legacy message traffic) is read
//! whole and sent by [`stream::send_whole`] in one write over a kept connection
//! ([`exchange`]), its answer relayed chunk by chunk or event by event. Everything else
//! (larger or chunked bodies, `DELETE`) goes through pingora's own proxy loop, which streams
//! bodies chunk by chunk both ways.

pub(crate) mod bridge;
pub(crate) mod downstream;
pub(crate) mod exchange;
pub(crate) mod headers;
pub(crate) mod inbound;
pub(crate) mod jsonrpc;
pub(crate) mod lane;
pub(crate) mod legacy;
pub(crate) mod legacy_upstream;
pub(crate) mod origin;
pub(crate) mod owners;
pub(crate) mod replay;
pub(crate) mod reply;
pub(crate) mod sse;
pub(crate) mod stream;
pub(crate) mod streams;
pub(crate) mod upstream;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use url::Url;

use crate::control::Plane;
use crate::gateway::{InflightGuard, Shared};
use crate::oauth::users::Principal;
use crate::proxy::inbound::{Caller, Inbound};
use crate::route::{Destination, Route};
use crate::token::{AccessToken, TokenError, TokenSource};
use inbound::Client;
use replay::ReplayBody;

/// The JSON-RPC error code of a request a plugin refused (in the range JSON-RPC leaves to
/// servers; 429 in its last digits, for the HTTP status it comes with).
const REFUSED_BY_PLUGIN: i64 = -32029;
/// The gateway's pingora application.
#[derive(Debug)]
pub(crate) struct GatewayProxy {
    shared: Arc<Shared>,
}

impl GatewayProxy {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

/// Per-request state carried between phases.
#[derive(Debug)]
pub(crate) struct RequestCtx {
    started: Instant,
    route: Option<Arc<Route>>,
    upstream_url: Option<Url>,
    token: Option<AccessToken>,
    /// Where the request's upstream token comes from: the route's source, or in per-user
    /// mode the caller's own.
    tokens: Option<Arc<dyn TokenSource>>,
    /// The request body so far, on OAuth routes, for a resend after a refused token.
    replay: Option<ReplayBody>,
    /// The upstream refused the route's token (401): the gateway refreshes it and sends
    /// the request once more itself, invisibly to the client.
    token_refused: bool,
    /// Why the route has no token, when that turned out only after the request began.
    sign_in: Option<TokenError>,
    /// Set when the gateway answered the request itself.
    answered: Option<u16>,
    /// The JSON-RPC method of the body, for the metrics; sniffed from the first chunk.
    rpc_method: Option<&'static str>,
    body_seen: bool,
    /// Body bytes read so far, against the route's limit.
    body_bytes: u64,
    body_too_large: bool,
    /// The allow-listed cross-origin `Origin` to answer CORS for.
    cors: Option<String>,
    /// Who the caller is, once it is let in.
    client: Option<Client>,
    /// The start of the body, for plugins that read its JSON-RPC requests.
    kept_body: Option<bytes::BytesMut>,
    /// The request's span (at `debug`): route, method, JSON-RPC method, status, elapsed.
    span: tracing::Span,
    _inflight: InflightGuard,
}

#[async_trait]
impl ProxyHttp for GatewayProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            route: None,
            upstream_url: None,
            token: None,
            tokens: None,
            replay: None,
            token_refused: false,
            sign_in: None,
            answered: None,
            rpc_method: None,
            body_seen: false,
            body_bytes: 0,
            body_too_large: false,
            cors: None,
            client: None,
            kept_body: None,
            span: tracing::Span::none(),
            _inflight: self.shared.inflight.enter(),
        }
    }

    /// Decides where the request goes; returns `true` when the gateway answered it itself.
    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        if self
            .shared
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            // `Connection: close`: the client's next request opens a connection, which
            // reaches the process taking over (or another replica).
            session.set_keepalive(None);
        }
        let path = session.req_header().uri.path().to_owned();
        ctx.span = tracing::debug_span!(
            "request",
            method = %session.req_header().method,
            route = tracing::field::Empty,
            rpc_method = tracing::field::Empty,
            status = tracing::field::Empty,
            elapsed_ms = tracing::field::Empty,
        );
        if let Some(status) = self.guard_origin(session, ctx).await? {
            ctx.answered = Some(status);
            return Ok(true);
        }
        if self.shared.routing().config.server.learn_public_url
            && let Some(url) = forwarded_public_url(session.req_header())
        {
            self.shared.learn_public_url(url).await;
        }
        if self.on_admin_listener(session) {
            // Only the admin API, metrics and health live there; nothing is proxied.
            let status = crate::control::serve(session, &self.shared, Plane::Admin).await?;
            ctx.answered = Some(status);
            return Ok(true);
        }
        let routing = self.shared.routing();
        let status = match routing.table.lookup(&path) {
            Destination::Control => {
                let plane = match self.shared.admin_listener {
                    Some(_) => Plane::Public,
                    None => Plane::Both,
                };
                crate::control::serve(session, &self.shared, plane).await?
            }
            Destination::NotFound => self.not_found(session, &path).await?,
            Destination::Route(route, rest) => {
                let route = Arc::clone(route);
                let rest = rest.to_owned();
                match self
                    .prepare(session, ctx, &routing.inbound, route, &rest)
                    .await?
                {
                    Some(status) => status,
                    None => return Ok(false),
                }
            }
        };
        ctx.answered = Some(status);
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .as_ref()
            .ok_or_else(|| Error::new(ErrorType::InternalError))?;
        let peer =
            route.upstream.peer(false).await.map_err(|e| {
                Error::because(ErrorType::ConnectNoRoute, "resolving the upstream", e)
            })?;
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let (Some(route), Some(url)) = (&ctx.route, &ctx.upstream_url) else {
            return Error::e_explain(ErrorType::InternalError, "request without a route");
        };
        let uri = path_and_query(url).parse::<http::Uri>().map_err(|e| {
            Error::because(ErrorType::InternalError, "building the upstream URI", e)
        })?;
        upstream_request.set_uri(uri);
        headers::prepare_upstream(upstream_request, route, ctx.token.as_ref())
            .map_err(|e| Error::because(ErrorType::InternalError, "token is not a valid header", e))
    }

    /// Keeps a copy of an OAuth route's request body on its way upstream, for a resend.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if let Some(chunk) = body.as_ref() {
            ctx.body_bytes += chunk.len() as u64;
            let limit = ctx
                .route
                .as_ref()
                .map_or(u64::MAX, |route| route.max_body_bytes);
            if ctx.body_bytes > limit {
                ctx.body_too_large = true;
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body too large");
            }
        }
        if let Some(replay) = &mut ctx.replay {
            replay.keep(body.as_ref(), end_of_stream);
        }
        if let (Some(kept), Some(chunk)) = (&mut ctx.kept_body, body.as_ref()) {
            let room = crate::plugin::MAX_KEPT_BODY.saturating_sub(kept.len());
            kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        if !ctx.body_seen
            && let Some(chunk) = body.as_ref().filter(|chunk| !chunk.is_empty())
        {
            ctx.body_seen = true;
            ctx.rpc_method = jsonrpc::sniff_method(chunk);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        headers::prepare_downstream(upstream_response);
        if let Some(route) = &ctx.route {
            if let (Some(owners), Some(client)) = (&route.session_owners, &ctx.client) {
                owners.note_response(upstream_response, client);
            }
            route.set_upstream_unreachable(false);
            route.filter_response(upstream_response);
        }
        if let Some(allowed) = &ctx.cors {
            origin::add_cors(upstream_response, allowed);
        }
        Ok(())
    }

    /// Catches the upstream's 401 on an OAuth route before the client sees it: the request
    /// ends here, and [`Self::fail_to_proxy`] refreshes the token and sends it once more.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if let Some(route) = &ctx.route {
            learn_transport(route, session.req_header(), upstream_response);
        }
        let oauth = ctx
            .route
            .as_ref()
            .is_some_and(|route| route.tokens.kind() == "oauth");
        if upstream_response.status == http::StatusCode::FORBIDDEN && oauth {
            return self.check_scope(upstream_response, ctx);
        }
        if upstream_response.status != http::StatusCode::UNAUTHORIZED || !oauth {
            return Ok(());
        }
        ctx.token_refused = true;
        Error::e_explain(ErrorType::HTTPStatus(401), "upstream refused the token")
    }

    /// Pingora retries only idempotent requests whose body it could replay, and never one
    /// whose token was refused: the gateway resends that one itself.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        let replayable = !session.as_ref().retry_buffer_truncated();
        if ctx.token_refused || !session.req_header().method.is_idempotent() || !replayable {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        if ctx.body_too_large {
            let status = match &ctx.route {
                Some(route) => self.body_too_large(session, route).await.unwrap_or(0),
                None => 0,
            };
            return FailToProxy {
                error_code: status,
                can_reuse_downstream: false,
            };
        }
        if ctx.token_refused {
            let status = self.resend(session, ctx).await.unwrap_or(0);
            return FailToProxy {
                error_code: status,
                can_reuse_downstream: false,
            };
        }
        if let Some(error) = ctx.sign_in.take() {
            let status = match ctx.route.clone() {
                Some(route) => {
                    let body = self.replayed_message(session, ctx).await;
                    self.answer_no_token(session, &route, &error, body)
                        .await
                        .unwrap_or(0)
                }
                None => 0,
            };
            return FailToProxy {
                error_code: status,
                can_reuse_downstream: false,
            };
        }
        let status = match e.esource() {
            pingora::ErrorSource::Upstream => {
                let route = ctx.route.as_ref().map_or("", |route| route.name.as_str());
                stream::upstream_error_reply(session, &self.shared, route, e).await
            }
            pingora::ErrorSource::Downstream => match e.etype() {
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            _ => 500,
        };
        if (status == 400 || status == 500) && session.response_written().is_none() {
            let body =
                reply::error_body("gateway_error", "the gateway could not handle this request");
            let _ = reply::json(session, status, &body).await;
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    /// A client that hangs up is not an error of the gateway's; `logging` notes it at debug.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        client_went_away(error)
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut RequestCtx) {
        downstream::request_done(session.as_downstream().stream());
        let status = ctx
            .answered
            .or_else(|| session.response_written().map(|r| r.status.as_u16()))
            .unwrap_or(0);
        let route = ctx.route.as_ref().map_or("-", |route| route.name.as_str());
        let elapsed_ms = ctx.started.elapsed().as_millis() as u64;
        let method = &session.req_header().method;
        if let Some(route) = &ctx.route {
            let seconds = ctx.started.elapsed().as_secs_f64();
            let bytes = (session.body_bytes_read(), session.body_bytes_sent());
            let rpc_method = ctx.rpc_method.unwrap_or("none");
            self.shared.metrics.request_done(
                &route.name,
                method,
                rpc_method,
                status,
                seconds,
                bytes,
            );
        }
        let method = method.as_str();
        if let Some(route) = &ctx.route
            && !route.plugins.is_empty()
        {
            let calls = ctx
                .kept_body
                .as_ref()
                .map(|body| crate::plugin::RpcCall::parse_all(body))
                .unwrap_or_default();
            let unknown = Client::Unknown;
            let finished = crate::plugin::Finished {
                route: &route.name,
                client: ctx.client.as_ref().unwrap_or(&unknown),
                status,
                elapsed: ctx.started.elapsed(),
                calls: &calls,
            };
            for plugin in &route.plugins {
                plugin.logging(&finished);
            }
        }
        let span = &ctx.span;
        span.record("status", status);
        span.record("elapsed_ms", elapsed_ms);
        if let Some(rpc_method) = ctx.rpc_method {
            span.record("rpc_method", rpc_method);
        }
        match error {
            Some(error) if client_went_away(error) => {
                tracing::debug!(parent: span, route, method, elapsed_ms, "client closed the connection")
            }
            Some(error) if status >= 500 || status == 0 => {
                tracing::warn!(
                    parent: span,
                    route,
                    method,
                    status,
                    elapsed_ms,
                    error = error.etype().as_str(),
                    "request failed"
                )
            }
            _ => tracing::debug!(parent: span, route, method, status, elapsed_ms, "request"),
        }
    }
}

impl GatewayProxy {
    /// Refuses a foreign `Host` or `Origin` (and answers an allowed CORS preflight); `None`
    /// lets the request go on.
    async fn guard_origin(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Option<u16>> {
        let refusal = match self.shared.origins.check(session.req_header()) {
            origin::Verdict::Allowed { cors } => {
                ctx.cors = cors;
                None
            }
            origin::Verdict::ForeignHost(host) => Some(reply::error_body(
                "forbidden_host",
                format!(
                    "this gateway does not serve the host '{host}' (DNS rebinding protection); \
                     if it is yours, add it to server.allowed_hosts"
                ),
            )),
            origin::Verdict::ForeignOrigin(origin) => Some(reply::error_body(
                "forbidden_origin",
                format!(
                    "requests from the web origin '{origin}' are refused; to let a browser-based \
                     MCP client there in, add it to server.allowed_origins"
                ),
            )),
        };
        if let Some(body) = refusal {
            tracing::debug!(parent: &ctx.span, "refused a request from a foreign host or origin");
            return reply::json(session, 403, &body).await.map(Some);
        }
        let request = session.req_header();
        let preflight = request.method == http::Method::OPTIONS
            && request
                .headers
                .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD);
        match &ctx.cors {
            Some(allowed) if preflight => {
                let response = origin::preflight_response(allowed)?;
                session
                    .write_response_header(Box::new(response), true)
                    .await?;
                Ok(Some(204))
            }
            _ => Ok(None),
        }
    }

    /// Whether the request came in on the admin listener.
    fn on_admin_listener(&self, session: &Session) -> bool {
        let local = session.server_addr().and_then(|addr| addr.as_inet());
        is_admin_listener(&self.shared, local)
    }

    /// A 403 that says `insufficient_scope`: recorded for the next sign-in, and answered in
    /// the client's terms; any other 403 passes through.
    fn check_scope(&self, response: &ResponseHeader, ctx: &mut RequestCtx) -> pingora::Result<()> {
        let (Some(route), Some(scope)) = (&ctx.route, insufficient_scope(response)) else {
            return Ok(());
        };
        tracing::info!(parent: &ctx.span, route = %route.name, %scope, "upstream asks for more scope; the next sign-in requests it");
        ctx.sign_in = ctx
            .tokens
            .as_ref()
            .and_then(|tokens| tokens.scope_required(&scope));
        match ctx.sign_in {
            Some(_) => Error::e_explain(ErrorType::HTTPStatus(403), "insufficient scope"),
            None => Ok(()),
        }
    }

    /// Sends a request whose token the upstream refused once more, with a refreshed token and
    /// the body kept by [`ReplayBody`]; returns the status sent to the client. A second
    /// refusal means the route needs sign-in. A body too large to keep is not resent: the
    /// client is asked to send the request again, which then goes out with the new token.
    async fn resend(&self, session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<u16> {
        let (Some(route), Some(url), Some(tokens)) = (
            ctx.route.clone(),
            ctx.upstream_url.clone(),
            ctx.tokens.clone(),
        ) else {
            return Error::e_explain(ErrorType::InternalError, "request without a route");
        };
        if let Some(refused) = &ctx.token {
            tokens.refused(refused).await;
        }
        let body = match &mut ctx.replay {
            Some(replay) => replay.complete(session).await,
            None => None,
        };
        let message = body
            .as_ref()
            .and_then(|body| jsonrpc::parse_request(session.req_header(), body));
        let Some(body) = body else {
            return self.refreshed_without_resend(session, &route).await;
        };
        let token = match tokens.bearer().await {
            Ok(token) => token,
            Err(error) => return self.answer_no_token(session, &route, &error, message).await,
        };
        let request = stream::WholeRequest {
            url: &url,
            token: token.as_ref(),
            body,
            cors: ctx.cors.as_deref(),
            client: ctx.client.as_ref(),
            tokens: Some(tokens.as_ref()),
        };
        match stream::send_whole(session, &self.shared, &route, request).await? {
            stream::Sent::Relayed(status) => return Ok(status),
            stream::Sent::ScopeRequired(error) => {
                return self.answer_no_token(session, &route, &error, message).await;
            }
            stream::Sent::TokenRefused => {}
        }
        tracing::warn!(parent: &ctx.span, route = %route.name, "upstream refused a refreshed token; the route needs sign-in");
        let error = match tokens.give_up("the upstream refused the refreshed token") {
            Err(error) => error,
            Ok(()) => {
                let message = format!("route '{}': the upstream refused the token", route.name);
                let body = reply::error_body("unauthorized", message);
                return reply::json(session, 401, &body).await;
            }
        };
        self.answer_no_token(session, &route, &error, message).await
    }

    /// Answers a request whose body is over the route's limit.
    async fn body_too_large(&self, session: &mut Session, route: &Route) -> pingora::Result<u16> {
        self.shared.metrics.limited(&route.name, "body_size");
        if session.response_written().is_some() {
            return Ok(0);
        }
        let message = format!(
            "route '{}' accepts request bodies up to {} bytes (routes.max_body_bytes)",
            route.name, route.max_body_bytes
        );
        let mut body = reply::error_body("body_too_large", message);
        body["route"] = route.name.clone().into();
        reply::json(session, 413, &body).await
    }

    /// Answers a request whose body was too large to keep for a resend: the token has been
    /// refreshed, and the client is asked to send the request again.
    async fn refreshed_without_resend(
        &self,
        session: &mut Session,
        route: &Route,
    ) -> pingora::Result<u16> {
        let message = format!(
            "route '{}': the upstream refused the token and the request was too large to resend; \
             the token has been refreshed: send the request again",
            route.name
        );
        let mut body = reply::error_body("token_refreshed", message);
        body["route"] = route.name.clone().into();
        reply::json(session, 503, &body).await
    }

    /// The JSON-RPC message of a request already on its way upstream, from its kept body.
    async fn replayed_message(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Option<serde_json::Value> {
        let body = ctx.replay.as_mut()?.complete(session).await?;
        jsonrpc::parse_request(session.req_header(), &body)
    }

    /// Checks the caller and fetches the route's token; answers here when the request cannot
    /// go on, or when it is an event stream (relayed by [`stream::relay`]).
    async fn prepare(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        inbound: &Inbound,
        route: Arc<Route>,
        rest: &str,
    ) -> pingora::Result<Option<u16>> {
        if !inbound.allows(session.req_header(), &route.api_keys) {
            let body = reply::error_body(
                "unauthorized",
                "this gateway requires an API key: send it as 'Authorization: Bearer <key>'",
            );
            return reply::json(session, 401, &body).await.map(Some);
        }
        ctx.route = Some(Arc::clone(&route));
        ctx.span.record("route", route.name.as_str());
        let principal = route.per_user.as_ref().and_then(|_| {
            Principal::from_headers(&session.req_header().headers, &route.identity_headers)
        });
        let Some(tokens) = route.tokens_for(principal.as_ref()).await else {
            return self.nobody_named(session, &route).await.map(Some);
        };
        ctx.tokens = Some(Arc::clone(&tokens));
        if let Some(principal) = &principal {
            // In per-user mode the caller is the person, whatever key or address they use.
            let client = Client::of_principal(principal);
            if self.foreign_session(session, &route, &client) {
                let body = reply::error_body(
                    "unknown_session",
                    "no such session for this client: initialize a new one",
                );
                return reply::json(session, 404, &body).await.map(Some);
            }
            ctx.client = Some(client);
        }
        // Only plugins need to know who the caller is (a key's digest costs a hash).
        if !route.plugins.is_empty() {
            if ctx.client.is_none() {
                ctx.client = Some(inbound.client(session));
            }
            if route.keeps_body {
                ctx.kept_body = Some(bytes::BytesMut::new());
            }
            if let Some(status) = self.run_plugins(session, ctx, &route).await? {
                return Ok(Some(status));
            }
        }
        let declared = headers::declared_length(session.req_header());
        if declared.is_some_and(|length| length > route.max_body_bytes) {
            return self.body_too_large(session, &route).await.map(Some);
        }
        if is_oauth_discovery(rest) {
            // A client that found the upstream's OAuth metadata would try to sign in to it
            // itself, and then send tokens the gateway must not forward.
            let body = reply::error_body(
                "not_found",
                "this gateway signs in to the upstream itself: MCP clients need no OAuth here",
            );
            return reply::json(session, 404, &body).await.map(Some);
        }
        if route.bridges_legacy() || route.bridges_streamable() {
            // Bridge sessions belong to a client, so here the caller matters.
            let caller = Self::caller(session, ctx, inbound, &tokens);
            let cors = ctx.cors.as_deref();
            let method = &mut ctx.rpc_method;
            let bridged = if route.bridges_streamable() {
                legacy_upstream::handle(session, &self.shared, &route, rest, caller, method).await?
            } else {
                bridge::handle(session, &self.shared, &route, rest, caller, cors, method).await?
            };
            if bridged.is_some() {
                return Ok(bridged);
            }
        }
        let token = match tokens.bearer().await {
            Ok(token) => token,
            Err(error) => {
                let message = jsonrpc::request_body(session).await;
                ctx.rpc_method = message.as_ref().and_then(jsonrpc::method_label);
                keep_message(ctx, message.as_ref());
                return self
                    .answer_no_token(session, &route, &error, message)
                    .await
                    .map(Some);
            }
        };
        let url = route.upstream_url(rest, session.req_header().uri.query());
        if route.tokens.kind() == "oauth" {
            ctx.replay = Some(ReplayBody::default());
        }
        if is_event_stream_get(session.req_header()) {
            let cors = ctx.cors.as_deref();
            // A legacy stream on an `auto` route finds out whether the upstream has one.
            let probe = rest == "/sse" && route.transport == crate::config::Transport::Auto;
            let caller = Self::caller(session, ctx, inbound, &tokens);
            let request = stream::StreamRequest {
                url: &url,
                caller: &caller,
                token: token.as_ref(),
                cors,
                probe_legacy: probe,
            };
            let relayed = stream::relay(session, &self.shared, &route, request).await?;
            if let Some(status) = relayed {
                return Ok(Some(status));
            }
            route
                .no_legacy
                .store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(route = %route.name, "the upstream has no legacy SSE endpoint: legacy clients are bridged to its Streamable HTTP endpoint");
            let status = bridge::serve_stream(session, &self.shared, &route, caller, cors).await?;
            return Ok(Some(status));
        }
        ctx.upstream_url = Some(url);
        ctx.token = token;
        let request = session.req_header();
        let post = request.method == http::Method::POST;
        if (route.inspects_messages && post) || exchange::is_small_post(request) {
            return self.send_whole(session, ctx, &route).await.map(Some);
        }
        Ok(None)
    }

    /// Whether the request names a Streamable HTTP session that someone else opened on this
    /// per-user route; a `DELETE` of the caller's own session forgets it.
    fn foreign_session(&self, session: &Session, route: &Route, client: &Client) -> bool {
        let Some(owners) = &route.session_owners else {
            return false;
        };
        let request = session.req_header();
        let Some(id) = request.headers.get(owners::SESSION_ID) else {
            return false;
        };
        if owners.belongs_to_another(id.as_bytes(), client) {
            return true;
        }
        if request.method == http::Method::DELETE {
            owners.forget(id.as_bytes());
        }
        false
    }

    /// Who the request comes from, for the sessions and streams it opens.
    fn caller(
        session: &Session,
        ctx: &RequestCtx,
        inbound: &Inbound,
        tokens: &Arc<dyn TokenSource>,
    ) -> Caller {
        Caller {
            client: ctx
                .client
                .clone()
                .unwrap_or_else(|| inbound.client(session)),
            tokens: Arc::clone(tokens),
        }
    }

    /// Answers a request to a per-user route that names nobody: the proxy in front did not
    /// say who the caller is, so there is no one's token to use.
    async fn nobody_named(&self, session: &mut Session, route: &Route) -> pingora::Result<u16> {
        let headers = route
            .identity_headers
            .iter()
            .map(http::HeaderName::as_str)
            .collect::<Vec<_>>()
            .join(" or ");
        let message = format!(
            "route '{}' uses each person's own sign-in, and this request does not say whose: \
             it must come through the authenticating proxy that sets {headers}",
            route.name
        );
        let mut body = reply::error_body("unauthorized", message);
        body["route"] = route.name.clone().into();
        reply::json(session, 401, &body).await
    }

    /// Reads a `POST`'s whole body and sends it upstream in one write
    /// ([`stream::send_whole`]); on a route whose plugins read messages, they see it first
    /// and may answer it themselves. Returns the status sent to the client.
    async fn send_whole(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Arc<Route>,
    ) -> pingora::Result<u16> {
        let mut replay = ReplayBody::with_limit(route.max_body_bytes);
        let Some(body) = replay.complete(session).await else {
            if replay.too_large() {
                return self.body_too_large(session, route).await;
            }
            return Error::e_explain(ErrorType::ReadError, "the client left mid-body");
        };
        if route.inspects_messages {
            if let Some(status) = self.answer_by_plugin(session, ctx, route, &body).await? {
                return Ok(status);
            }
        } else {
            ctx.rpc_method = jsonrpc::sniff_method(&body);
            if let Some(kept) = &mut ctx.kept_body {
                let room = crate::plugin::MAX_KEPT_BODY.saturating_sub(kept.len());
                kept.extend_from_slice(&body[..body.len().min(room)]);
            }
        }
        let Some(url) = ctx.upstream_url.clone() else {
            return Error::e_explain(ErrorType::InternalError, "request without a route");
        };
        let request = stream::WholeRequest {
            url: &url,
            token: ctx.token.as_ref(),
            body: body.clone(),
            cors: ctx.cors.as_deref(),
            client: ctx.client.as_ref(),
            tokens: ctx.tokens.as_deref(),
        };
        match stream::send_whole(session, &self.shared, route, request).await? {
            stream::Sent::Relayed(status) => Ok(status),
            // The upstream refused the token: refreshed and sent once more.
            stream::Sent::TokenRefused => {
                ctx.replay = Some(replay);
                self.resend(session, ctx).await
            }
            stream::Sent::ScopeRequired(error) => {
                let message = jsonrpc::parse_request(session.req_header(), &body);
                self.answer_no_token(session, route, &error, message).await
            }
        }
    }

    /// Lets the route's plugins read the request's JSON-RPC message; `Some` with the status
    /// when one of them answered it itself.
    async fn answer_by_plugin(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        body: &[u8],
    ) -> pingora::Result<Option<u16>> {
        let Some(message) = jsonrpc::parse_request(session.req_header(), body) else {
            return Ok(None);
        };
        ctx.rpc_method = jsonrpc::method_label(&message);
        keep_message(ctx, Some(&message));
        let unknown = Client::Unknown;
        let call = crate::plugin::Call {
            route: &route.name,
            client: ctx.client.as_ref().unwrap_or(&unknown),
        };
        let Some(answer) = route
            .plugins
            .iter()
            .find_map(|plugin| plugin.request_message(&call, &message))
        else {
            return Ok(None);
        };
        tracing::debug!(route = %route.name, "a plugin answered the request itself");
        // A legacy client reads its answers from its stream, not from the POST.
        let request = session.req_header();
        let endpoint = match request.uri.query() {
            Some(query) => format!("{}?{query}", request.uri.path()),
            None => request.uri.path().to_owned(),
        };
        if self.shared.legacy.deliver(&endpoint, &answer) {
            return reply::json(session, 202, &serde_json::json!({}))
                .await
                .map(Some);
        }
        reply::json(session, 200, &answer).await.map(Some)
    }

    /// Runs the route's plugins' `request_filter`; answers with the first refusal.
    async fn run_plugins(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
    ) -> pingora::Result<Option<u16>> {
        let unknown = Client::Unknown;
        let call = crate::plugin::Call {
            route: &route.name,
            client: ctx.client.as_ref().unwrap_or(&unknown),
        };
        let Some(refusal) = route.plugins.iter().find_map(|p| p.request_filter(&call)) else {
            return Ok(None);
        };
        self.shared.metrics.limited(&route.name, refusal.code);
        tracing::debug!(route = %route.name, code = refusal.code, "a plugin refused the request");
        // A JSON-RPC request gets its refusal as a JSON-RPC error with its own id.
        let message = jsonrpc::request_body(session).await;
        ctx.rpc_method = message.as_ref().and_then(jsonrpc::method_label);
        keep_message(ctx, message.as_ref());
        let body = message
            .as_ref()
            .and_then(|m| jsonrpc::error_answer(m, REFUSED_BY_PLUGIN, &refusal.message))
            .unwrap_or_else(|| reply::error_body(refusal.code, refusal.message.clone()));
        reply::json_with(session, refusal.status, &body, refusal.retry_after)
            .await
            .map(Some)
    }

    /// Tells the client that the route has no token for it, and where to sign in. `message`
    /// is the request's JSON-RPC body, if it has one.
    async fn answer_no_token(
        &self,
        session: &mut Session,
        route: &Route,
        error: &TokenError,
        message: Option<serde_json::Value>,
    ) -> pingora::Result<u16> {
        tracing::debug!(route = %route.name, reason = %error, "no upstream token");
        // A JSON-RPC request gets a JSON-RPC answer the client shows to its user (and a tool
        // call a tool result the model can read); anything else gets a plain JSON error.
        if let Some(message) = message
            && let Some(answer) = jsonrpc::sign_in_answer(&message, &error.to_string())
        {
            return reply::json(session, 200, &answer).await;
        }
        let (status, body) = reply::no_token(&route.name, error);
        reply::json(session, status, &body).await
    }

    async fn not_found(&self, session: &mut Session, path: &str) -> pingora::Result<u16> {
        let routing = self.shared.routing();
        let prefixes: Vec<&str> = routing.table.routes().map(|r| r.prefix.as_str()).collect();
        let mut body = reply::error_body("not_found", format!("no route serves {path}"));
        body["routes"] = prefixes.into();
        reply::json(session, 404, &body).await
    }
}

/// Whether `local`, the address a connection came in on, is the admin listener's.
pub(crate) fn is_admin_listener(shared: &Shared, local: Option<&std::net::SocketAddr>) -> bool {
    let Some(admin) = shared.admin_listener else {
        return false;
    };
    local.is_some_and(|local| {
        local.port() == admin.port() && (admin.ip().is_unspecified() || local.ip() == admin.ip())
    })
}

/// Keeps a body the gateway read itself for the plugins that want it, as it reads them.
fn keep_message(ctx: &mut RequestCtx, message: Option<&serde_json::Value>) {
    if let (Some(kept), Some(message)) = (&mut ctx.kept_body, message) {
        kept.extend_from_slice(message.to_string().as_bytes());
    }
}

/// Whether `error` only says that the client closed its connection.
fn client_went_away(error: &Error) -> bool {
    *error.esource() == pingora::ErrorSource::Downstream
        && matches!(
            error.etype(),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
        )
}

/// A `GET` for an event stream: relayed by the gateway's own stream loop.
/// `https://{X-Forwarded-Host}/`, as Databricks Apps' proxy names the app to the browser;
/// `None` without the header or with anything but a plain host and port in it.
fn forwarded_public_url(request: &RequestHeader) -> Option<Url> {
    let value = request.headers.get("x-forwarded-host")?.to_str().ok()?;
    let host = value.split(',').next()?.trim();
    let plain = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    if !plain {
        return None;
    }
    let url = Url::parse(&format!("https://{host}/")).ok()?;
    (url.host_str().is_some() && url.path() == "/").then_some(url)
}

/// Whether `rest` asks for OAuth or OpenID discovery metadata, at the root of the route or
/// appended to a path (as RFC 8414 and RFC 9728 allow).
pub(crate) fn is_oauth_discovery(rest: &str) -> bool {
    const DISCOVERY: &[&str] = &[
        "oauth-protected-resource",
        "oauth-authorization-server",
        "openid-configuration",
    ];
    rest.split("/.well-known/").skip(1).any(|tail| {
        DISCOVERY
            .iter()
            .any(|name| tail == *name || tail.starts_with(&format!("{name}/")))
    })
}

/// On an `auto` route, a session-opening `POST {prefix}/mcp` that the upstream answers with
/// 404 or 405 shows it has no Streamable HTTP endpoint: later ones are bridged to its legacy
/// endpoint. This client gets the answer as it is, which tells a client that can to fall
/// back to the legacy transport itself, as the MCP specification has clients do.
pub(crate) fn learn_transport(route: &Route, request: &RequestHeader, response: &ResponseHeader) {
    let rest = request
        .uri
        .path()
        .strip_prefix(route.prefix.trim_end_matches('/'));
    let opening = request.method == http::Method::POST
        && !request.headers.contains_key("mcp-session-id")
        && rest == Some("/mcp");
    learn_transport_from(route, opening, response.status.as_u16());
}

/// [`learn_transport`] once the request is known to be a session-opening `POST` to
/// `{prefix}/mcp` (`opening`) and the upstream answered with `status`.
pub(crate) fn learn_transport_from(route: &Route, opening: bool, status: u16) {
    let opening = opening && route.transport == crate::config::Transport::Auto;
    if opening && matches!(status, 404 | 405) && !route.bridges_streamable() {
        route
            .no_streamable
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(route = %route.name, "the upstream has no Streamable HTTP endpoint: Streamable HTTP clients are bridged to its legacy endpoint from now on");
    }
}

/// The scope a `403` asks for in its `insufficient_scope` bearer challenge (RFC 6750 §3.1).
pub(crate) fn insufficient_scope(response: &ResponseHeader) -> Option<String> {
    if response.status != http::StatusCode::FORBIDDEN {
        return None;
    }
    response
        .headers
        .get_all(http::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(crate::oauth::discovery::parse_bearer_challenge)
        .filter(|challenge| challenge.error.as_deref() == Some("insufficient_scope"))
        .and_then(|challenge| challenge.scope)
}

fn is_event_stream_get(request: &RequestHeader) -> bool {
    request.method == http::Method::GET && headers::accepts_event_stream(request)
}

/// The origin-form request target for `url`.
pub(crate) fn path_and_query(url: &Url) -> String {
    match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    }
}
