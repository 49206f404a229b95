//! The data plane: pingora's [`ProxyHttp`] phases for MCP traffic.
//!
//! Each request is matched against the route table in `request_filter`. Control-plane paths
//! and unknown paths are answered right there. A `GET` that asks for an event stream (the
//! legacy `/sse` stream, or Streamable HTTP's listening stream) is relayed by
//! [`stream::relay`], which rewrites the legacy `endpoint` event and keeps idle streams
//! alive. Everything else (Streamable HTTP `POST`/`DELETE`, JSON and SSE responses alike)
//! goes through pingora's own proxy loop, which streams bodies chunk by chunk both ways.

pub(crate) mod headers;
pub(crate) mod inbound;
pub(crate) mod jsonrpc;
pub(crate) mod reply;
pub(crate) mod sse;
pub(crate) mod stream;
pub(crate) mod upstream;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use url::Url;

use crate::gateway::{InflightGuard, Shared};
use crate::route::{Destination, Route};
use crate::token::{AccessToken, TokenError};

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
    /// Where the upstream's rejection of our token stands for this request.
    rejection: Rejection,
    /// Why the route has no token, when that turned out only after the request began.
    sign_in: Option<TokenError>,
    /// Set when the gateway answered the request itself.
    answered: Option<u16>,
    _inflight: InflightGuard,
}

/// An OAuth route's token refused by the upstream (401) is refreshed and the request sent
/// once more, invisibly to the client; a second refusal is answered as "needs sign-in".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rejection {
    None,
    /// The upstream refused the token; the retry has not started yet.
    RetryPending,
    /// The request is on its retry with a refreshed token.
    Retried,
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
            rejection: Rejection::None,
            sign_in: None,
            answered: None,
            _inflight: self.shared.inflight.enter(),
        }
    }

    /// Decides where the request goes; returns `true` when the gateway answered it itself.
    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        let path = session.req_header().uri.path().to_owned();
        let status = match self.shared.routes.lookup(&path) {
            Destination::Control => crate::control::serve(session, &self.shared).await?,
            Destination::NotFound => self.not_found(session, &path).await?,
            Destination::Route(route, rest) => {
                let route = Arc::clone(route);
                let rest = rest.to_owned();
                match self.prepare(session, ctx, route, &rest).await? {
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
            .clone()
            .ok_or_else(|| Error::new(ErrorType::InternalError))?;
        if ctx.rejection == Rejection::RetryPending {
            ctx.rejection = Rejection::Retried;
            self.renew_token(&route, ctx).await?;
        }
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

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        headers::prepare_downstream(upstream_response);
        Ok(())
    }

    /// Catches the upstream's 401 on an OAuth route before the client sees it: the first
    /// one becomes a retry (with a refreshed token), a second one a "needs sign-in" answer.
    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
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
        match ctx.rejection {
            Rejection::None => {
                ctx.rejection = Rejection::RetryPending;
                let mut error =
                    Error::explain(ErrorType::HTTPStatus(401), "upstream refused the token");
                error.set_retry(true);
                Err(error)
            }
            _ => {
                let route = ctx.route.as_ref().map_or("", |route| route.name.as_str());
                tracing::warn!(
                    route,
                    "upstream refused a refreshed token; the route needs sign-in"
                );
                if let Some(route) = &ctx.route {
                    ctx.sign_in = route
                        .tokens
                        .give_up("the upstream refused the refreshed token")
                        .err();
                }
                Error::e_explain(
                    ErrorType::HTTPStatus(401),
                    "upstream refused the refreshed token",
                )
            }
        }
    }

    /// Keeps the retry that [`Self::upstream_response_filter`] asked for (pingora would
    /// otherwise refuse to retry a `POST`) as long as the request body could be replayed.
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
        if ctx.rejection == Rejection::RetryPending && replayable {
            e.set_retry(true);
        } else if !session.req_header().method.is_idempotent() || !replayable {
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
        if ctx.rejection == Rejection::RetryPending {
            // The body was too large to replay: refresh now and let the client send it again.
            let status = self.refused_without_retry(session, ctx).await;
            return FailToProxy {
                error_code: status,
                can_reuse_downstream: false,
            };
        }
        if let Some(error) = ctx.sign_in.take() {
            let status = match &ctx.route {
                Some(route) => self.no_token(session, route, &error).await.unwrap_or(0),
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
        let status = ctx
            .answered
            .or_else(|| session.response_written().map(|r| r.status.as_u16()))
            .unwrap_or(0);
        let route = ctx.route.as_ref().map_or("-", |route| route.name.as_str());
        let elapsed_ms = ctx.started.elapsed().as_millis() as u64;
        let method = &session.req_header().method;
        if let Some(route) = &ctx.route {
            let seconds = ctx.started.elapsed().as_secs_f64();
            self.shared
                .metrics
                .request_done(&route.name, method, status, seconds);
        }
        let method = method.as_str();
        match error {
            Some(error) if client_went_away(error) => {
                tracing::debug!(route, method, elapsed_ms, "client closed the connection")
            }
            Some(error) if status >= 500 || status == 0 => {
                tracing::warn!(
                    route,
                    method,
                    status,
                    elapsed_ms,
                    error = error.etype().as_str(),
                    "request failed"
                )
            }
            _ => tracing::debug!(route, method, status, elapsed_ms, "request"),
        }
    }
}

impl GatewayProxy {
    /// A 403 that says `insufficient_scope`: recorded for the next sign-in, and answered in
    /// the client's terms; any other 403 passes through.
    fn check_scope(&self, response: &ResponseHeader, ctx: &mut RequestCtx) -> pingora::Result<()> {
        let challenge = response
            .headers
            .get_all(http::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find_map(crate::oauth::discovery::parse_bearer_challenge);
        let Some(challenge) =
            challenge.filter(|c| c.error.as_deref() == Some("insufficient_scope"))
        else {
            return Ok(());
        };
        let (Some(route), Some(scope)) = (&ctx.route, challenge.scope) else {
            return Ok(());
        };
        tracing::info!(route = %route.name, %scope, "upstream asks for more scope; the next sign-in requests it");
        ctx.sign_in = route.tokens.scope_required(&scope);
        match ctx.sign_in {
            Some(_) => Error::e_explain(ErrorType::HTTPStatus(403), "insufficient scope"),
            None => Ok(()),
        }
    }

    /// Answers a request whose refused token could not be retried (its body was larger than
    /// pingora's replay buffer): the token is refreshed, and the client asked to send again.
    async fn refused_without_retry(&self, session: &mut Session, ctx: &mut RequestCtx) -> u16 {
        let Some(route) = ctx.route.clone() else {
            return 0;
        };
        if let Some(refused) = &ctx.token {
            route.tokens.refused(refused).await;
        }
        let message = format!(
            "route '{}': the upstream refused the token and the request was too large to resend; \
             the token has been refreshed: send the request again",
            route.name
        );
        let mut body = reply::error_body("token_refreshed", message);
        body["route"] = route.name.clone().into();
        reply::json(session, 503, &body).await.unwrap_or(0)
    }

    /// Replaces the token the upstream refused with a refreshed one.
    async fn renew_token(&self, route: &Route, ctx: &mut RequestCtx) -> pingora::Result<()> {
        if let Some(refused) = &ctx.token {
            route.tokens.refused(refused).await;
        }
        match route.tokens.bearer().await {
            Ok(token) => {
                ctx.token = token;
                Ok(())
            }
            Err(error) => {
                ctx.sign_in = Some(error);
                Error::e_explain(ErrorType::HTTPStatus(401), "no token after a refresh")
            }
        }
    }

    /// Checks the caller and fetches the route's token; answers here when the request cannot
    /// go on, or when it is an event stream (relayed by [`stream::relay`]).
    async fn prepare(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: Arc<Route>,
        rest: &str,
    ) -> pingora::Result<Option<u16>> {
        if !self.shared.inbound.allows(session.req_header()) {
            let body = reply::error_body(
                "unauthorized",
                "this gateway requires an API key: send it as 'Authorization: Bearer <key>'",
            );
            return reply::json(session, 401, &body).await.map(Some);
        }
        let token = match route.tokens.bearer().await {
            Ok(token) => token,
            Err(error) => return self.no_token(session, &route, &error).await.map(Some),
        };
        let url = route.upstream_url(rest, session.req_header().uri.query());
        ctx.route = Some(Arc::clone(&route));
        if is_event_stream_get(session.req_header()) {
            let status = stream::relay(session, &self.shared, &route, &url, token.as_ref()).await?;
            return Ok(Some(status));
        }
        ctx.upstream_url = Some(url);
        ctx.token = token;
        Ok(None)
    }

    async fn no_token(
        &self,
        session: &mut Session,
        route: &Route,
        error: &TokenError,
    ) -> pingora::Result<u16> {
        tracing::debug!(route = %route.name, reason = %error, "no upstream token");
        // A JSON-RPC request gets a JSON-RPC answer the client shows to its user (and a tool
        // call a tool result the model can read); anything else gets a plain JSON error.
        if let Some(message) = jsonrpc::request_body(session).await
            && let Some(answer) = jsonrpc::sign_in_answer(&message, &error.to_string())
        {
            return reply::json(session, 200, &answer).await;
        }
        let (status, body) = reply::no_token(&route.name, error);
        reply::json(session, status, &body).await
    }

    async fn not_found(&self, session: &mut Session, path: &str) -> pingora::Result<u16> {
        let prefixes: Vec<&str> = self
            .shared
            .routes
            .routes()
            .map(|r| r.prefix.as_str())
            .collect();
        let mut body = reply::error_body("not_found", format!("no route serves {path}"));
        body["routes"] = prefixes.into();
        reply::json(session, 404, &body).await
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
