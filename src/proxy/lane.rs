//! The fast lane: small `POST`s to plain routes, the bulk of MCP traffic, proxied without
//! pingora's HTTP machinery.
//!
//! Per request, pingora's downstream HTTP/1 session and proxy phases (boxed futures of
//! several kilobytes moved per phase, two header maps, a case map for each) cost several
//! times the gateway's own work, and more CPU than nginx spends on the whole request. So
//! each HTTP/1 connection starts here. The lane reads a request header itself, through the
//! [`GuardedStream`] (so the header deadline, size and idle limits hold), and takes the
//! request when it is a `POST` with a small declared length, with nothing unusual about
//! it, to a route whose token is all it needs. It writes the request to the upstream in one
//! write over a kept connection ([`exchange::deliver`]), and copies the answer to the client
//! as it arrives: the header rewritten by the same rules as on pingora's path, the body
//! byte for byte, so JSON and event streams alike flow without buffering. When the upstream
//! refuses the token, the lane has it refreshed and sends the request once more, as
//! pingora's path does.
//!
//! Anything else hands the connection to pingora, with the bytes read so far put back in
//! front of the stream, and pingora serves that request and every later one on the
//! connection: a `GET`, a `DELETE`, a control path, a cross-origin or `Connection: close`
//! request, a route with plugins, per-user tokens or a bridge, and a request that ends in
//! a sign-in: the route has no token, the upstream refused the refreshed one too, or it
//! wants more scope (pingora's path answers these in the client's terms).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use pingora::protocols::{GetSocketDigest, Stream};
use pingora::{Error, ErrorType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::downstream::GuardedStream;
use super::{exchange, headers, jsonrpc, reply, stream};
use crate::gateway::Shared;
use crate::route::{Destination, Route};

/// The most request or response header lines the lane reads; a request with more goes to
/// pingora, a response with more is refused as invalid.
const MAX_HEADERS: usize = 96;

/// The longest upstream response header accepted.
const MAX_RESPONSE_HEADER: usize = 64 * 1024;

/// How a connection left the lane.
#[derive(Debug)]
pub(crate) enum Exit {
    /// The connection is over.
    Closed,
    /// Pingora serves the rest of the connection, starting with these bytes.
    HandOver(Bytes),
}

/// The lane of one gateway.
#[derive(Debug)]
pub(crate) struct Lane {
    shared: Arc<Shared>,
}

/// A request the lane takes, as read from its header.
struct Taken {
    route: Arc<Route>,
    /// The header's length, and the body's after it.
    header_len: usize,
    body_len: usize,
    /// The upstream's request header so far: request line, `Host`, the client's headers that
    /// pass, the route's own; the token and the empty line are still to come.
    wire: BytesMut,
    /// A session-opening `POST {prefix}/mcp`, from which an `auto` route learns whether its
    /// upstream has a Streamable HTTP endpoint.
    opening: bool,
}

/// What the lane makes of the bytes read so far.
enum Verdict {
    /// The header is not complete yet.
    Partial,
    Take(Box<Taken>),
    /// Pingora serves this request.
    Pass,
}

/// How one request taken by the lane ended.
enum Done {
    /// Answered; the connection may carry the next request.
    KeepAlive,
    /// Answered as far as possible; the connection is over.
    Close,
    /// Not answered: pingora serves it (the bytes are back in the buffer).
    Pass,
}

impl Lane {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Serves the connection's requests for as long as the lane takes them.
    pub(crate) async fn serve(
        &self,
        stream: &mut GuardedStream,
        closing: &mut watch::Receiver<bool>,
    ) -> Exit {
        let local = stream
            .get_socket_digest()
            .and_then(|digest| digest.local_addr().and_then(|addr| addr.as_inet()).copied());
        if super::is_admin_listener(&self.shared, local.as_ref()) {
            return Exit::HandOver(Bytes::new());
        }
        let mut buf = BytesMut::with_capacity(4096);
        // For the upstream's answers, one request after another.
        let mut answers = BytesMut::with_capacity(8192);
        loop {
            if self.shared.draining.load(Ordering::Relaxed) {
                // Pingora's path closes each connection after its request while draining.
                return Exit::HandOver(buf.freeze());
            }
            let taken = loop {
                if !buf.is_empty() {
                    match self.judge(&buf) {
                        Verdict::Partial => {}
                        Verdict::Take(taken) => break taken,
                        Verdict::Pass => return Exit::HandOver(buf.freeze()),
                    }
                }
                let idle = buf.is_empty();
                match read_client(stream, &mut buf, idle, closing).await {
                    Some(_) => {}
                    None => return Exit::Closed,
                }
            };
            let whole = taken.header_len + taken.body_len;
            while buf.len() < whole {
                if read_client(stream, &mut buf, false, closing)
                    .await
                    .is_none()
                {
                    return Exit::Closed;
                }
            }
            match self.proxy(stream, &mut buf, &mut answers, *taken).await {
                Done::KeepAlive => stream.request_done(),
                Done::Close => return Exit::Closed,
                Done::Pass => return Exit::HandOver(buf.freeze()),
            }
        }
    }

    /// Reads the request header at the start of `buf`, and whether the lane takes it.
    fn judge(&self, buf: &[u8]) -> Verdict {
        let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut lines);
        let header_len = match request.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Verdict::Partial,
            // Pingora's path answers a malformed header, and one with too many lines.
            Err(_) => return Verdict::Pass,
        };
        match self.take(&request, header_len) {
            Some(taken) => Verdict::Take(Box::new(taken)),
            None => Verdict::Pass,
        }
    }

    /// The request as the lane sends it on, when the lane takes it.
    fn take(&self, request: &httparse::Request<'_, '_>, header_len: usize) -> Option<Taken> {
        if request.method != Some("POST") || request.version != Some(1) {
            return None;
        }
        let target = request.path?;
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target, None),
        };
        let routing = self.shared.routing();
        if routing.config.server.learn_public_url {
            return None;
        }
        let Destination::Route(route, rest) = routing.table.lookup(path) else {
            return None;
        };
        if !route.plain() || route.bridges_legacy() || route.bridges_streamable() {
            return None;
        }
        if super::is_oauth_discovery(rest) {
            return None;
        }

        let mut body_len = None;
        let mut host = None;
        let mut key = None;
        let mut event_stream = false;
        let mut session = false;
        for line in request.headers.iter() {
            let name = line.name;
            // Read as text only where the lane looks at a value; others pass as bytes.
            let value = || std::str::from_utf8(line.value).ok();
            if name.eq_ignore_ascii_case("content-length") {
                let length = content_length(value()?)?;
                if body_len.is_some_and(|known| known != length) {
                    return None;
                }
                body_len = Some(length);
            } else if name.eq_ignore_ascii_case("host") {
                host = Some(value()?);
            } else if name.eq_ignore_ascii_case("authorization") {
                key = super::inbound::bearer_credential(value()?);
            } else if name.eq_ignore_ascii_case("accept") {
                event_stream |= line.value.windows(17).any(|at| at == b"text/event-stream");
            } else if name.eq_ignore_ascii_case("mcp-session-id") {
                session = true;
            } else if name.eq_ignore_ascii_case("connection") {
                // Anything but a plain keep-alive (a close, a listed header) is pingora's.
                if !value()?.trim().eq_ignore_ascii_case("keep-alive") {
                    return None;
                }
            } else if ["transfer-encoding", "expect", "upgrade", "origin"]
                .iter()
                .any(|unusual| name.eq_ignore_ascii_case(unusual))
            {
                return None;
            }
        }
        let body_len = body_len?;
        if body_len > exchange::MAX_WHOLE_BODY || body_len > route.max_body_bytes {
            return None;
        }
        if !self.shared.origins.admits_host(host?)
            || !routing.inbound.allows_key(key, &route.api_keys)
        {
            return None;
        }

        let url = route.upstream_url(rest, query);
        let mut wire = BytesMut::with_capacity(header_len + 256);
        wire.put_slice(b"POST ");
        wire.put_slice(super::path_and_query(&url).as_bytes());
        wire.put_slice(b" HTTP/1.1\r\nhost: ");
        wire.put_slice(route.upstream.host_header().as_bytes());
        wire.put_slice(b"\r\n");
        for line in request.headers.iter() {
            let replaced = line.name.eq_ignore_ascii_case("host")
                || (event_stream && line.name.eq_ignore_ascii_case("accept-encoding"))
                || route
                    .extra_headers
                    .iter()
                    .any(|(name, _)| line.name.eq_ignore_ascii_case(name.as_str()));
            if replaced || headers::stays_behind(line.name, route) {
                continue;
            }
            put_header(&mut wire, line.name.as_bytes(), line.value);
        }
        for (name, value) in &route.extra_headers {
            put_header(&mut wire, name.as_str().as_bytes(), value.as_bytes());
        }
        if event_stream {
            put_header(&mut wire, b"accept-encoding", b"identity");
        }
        Some(Taken {
            route: Arc::clone(route),
            header_len,
            body_len: usize::try_from(body_len).ok()?,
            wire,
            opening: !session && rest == "/mcp",
        })
    }

    /// Sends a taken request (whole in `buf`) upstream and relays the answer.
    async fn proxy(
        &self,
        client: &mut GuardedStream,
        buf: &mut BytesMut,
        answers: &mut BytesMut,
        taken: Taken,
    ) -> Done {
        let Taken {
            route,
            header_len,
            body_len,
            mut wire,
            opening,
        } = taken;
        let started = Instant::now();
        let _inflight = self.shared.inflight.enter();
        let Ok(mut token) = route.tokens.bearer().await else {
            // Pingora's path tells the client where to sign in.
            return Done::Pass;
        };
        let request_len = header_len + body_len;
        let rpc_method = jsonrpc::sniff_method(&buf[header_len..request_len]).unwrap_or("none");
        let mut exchange = Exchange {
            shared: &self.shared,
            route: &route,
            started,
            // The same span, fields and log line as a request on pingora's path.
            span: tracing::debug_span!(
                "request",
                method = "POST",
                route = route.name.as_str(),
                rpc_method,
                status = tracing::field::Empty,
                elapsed_ms = tracing::field::Empty,
            ),
            rpc_method,
            body_len,
            sent: 0,
        };
        let oauth = route.tokens.kind() == "oauth";
        let header_part = wire.len();
        let mut refused = false;
        let (upstream, head) = loop {
            wire.truncate(header_part);
            if let Some(token) = &token {
                let value = token.secret();
                if !value
                    .bytes()
                    .all(|byte| byte == b'\t' || (b' '..=b'~').contains(&byte))
                {
                    // Not a valid header value; pingora's path reports it.
                    return Done::Pass;
                }
                wire.put_slice(b"authorization: Bearer ");
                wire.put_slice(value.as_bytes());
                wire.put_slice(b"\r\n");
            }
            wire.put_slice(b"\r\n");
            wire.put_slice(&buf[header_len..request_len]);
            let sent = exchange::deliver(&self.shared.connector, &route.upstream, &wire).await;
            let mut upstream = match sent {
                Ok(stream) => Upstream {
                    stream,
                    buf: {
                        answers.clear();
                        &mut *answers
                    },
                    timeout: Some(route.upstream.timeouts().read),
                },
                Err(error) => return exchange.failed(client, buf, request_len, &error).await,
            };
            let head = match upstream.read_head().await {
                Ok(head) => head,
                Err(error) => return exchange.failed(client, buf, request_len, &error).await,
            };
            route.set_upstream_unreachable(false);
            super::learn_transport_from(&route, opening, head.status);
            if !oauth || !head.refuses_token() {
                break (upstream, head);
            }
            if head.status == 403 || refused {
                // Pingora's path answers these in the client's terms: a tool result or
                // JSON-RPC error saying where to sign in.
                if refused {
                    tracing::warn!(parent: &exchange.span, route = %route.name, "upstream refused a refreshed token; the route needs sign-in");
                    let _ = route
                        .tokens
                        .give_up("the upstream refused the refreshed token");
                }
                return Done::Pass;
            }
            // Refreshed, and sent once more with the new token.
            refused = true;
            if let Some(token) = &token {
                route.tokens.refused(token).await;
            }
            token = match route.tokens.bearer().await {
                Ok(token) => token,
                Err(_) => return Done::Pass,
            };
        };
        buf.advance(request_len);
        exchange.relay(client, buf, upstream, head).await
    }
}

/// One request on its way: what its log line and metrics need.
struct Exchange<'a> {
    shared: &'a Shared,
    route: &'a Route,
    started: Instant,
    span: tracing::Span,
    rpc_method: &'static str,
    body_len: usize,
    /// Body bytes written to the client.
    sent: usize,
}

impl Exchange<'_> {
    /// Answers a request whose upstream failed before answering.
    async fn failed(
        &mut self,
        client: &mut GuardedStream,
        buf: &mut BytesMut,
        request_len: usize,
        error: &Error,
    ) -> Done {
        buf.advance(request_len);
        let name = &self.route.name;
        let failure = stream::upstream_failed(self.shared, name, error);
        let (status, body) = self
            .span
            .in_scope(|| stream::upstream_failure_answer(name, &failure));
        let written = write(client, &reply::json_wire(status, &body)).await;
        self.done(status, None);
        match written {
            Ok(()) => Done::KeepAlive,
            Err(_) => Done::Close,
        }
    }

    /// Writes the upstream's answer to the client as it arrives.
    async fn relay(
        mut self,
        client: &mut GuardedStream,
        buf: &mut BytesMut,
        mut upstream: Upstream<'_>,
        head: Head,
    ) -> Done {
        let Head {
            status,
            header_len,
            mut body,
            reusable,
            event_stream,
            downstream,
            wants_scope: _,
        } = head;
        upstream.buf.advance(header_len);
        if event_stream {
            // Events may be minutes apart; the stream ends when either side leaves.
            upstream.timeout = None;
        }
        let mut out = downstream;
        let mut progress = body.pass(upstream.buf, &mut out);
        self.sent += upstream.buf.len();
        upstream.buf.clear();
        let mut watching = true;
        loop {
            if write(client, &out).await.is_err() {
                self.done(status, Some("client closed the connection"));
                return Done::Close;
            }
            out.clear();
            match progress {
                Progress::Done { surplus } => {
                    if reusable && !surplus {
                        self.route.upstream.idle().put(upstream.stream);
                    }
                    self.done(status, None);
                    return if body.keeps_client() {
                        Done::KeepAlive
                    } else {
                        Done::Close
                    };
                }
                Progress::More => {}
            }
            // The upstream first: once the answer is whole, the client may send its next
            // request at once, and that must not look like a client leaving.
            tokio::select! {
                biased;
                read = upstream.read() => match read {
                    Ok(0) => match body.at_end(&mut out) {
                        true => progress = Progress::Done { surplus: true },
                        false => {
                            self.upstream_broke(status, "the upstream closed the connection mid-body");
                            return Done::Close;
                        }
                    },
                    Ok(_) => {
                        progress = body.pass(upstream.buf, &mut out);
                        self.sent += upstream.buf.len();
                        upstream.buf.clear();
                    }
                    Err(error) => {
                        self.upstream_broke(status, error.etype().as_str());
                        return Done::Close;
                    }
                },
                read = client.read_buf(buf), if watching => match read {
                    Ok(0) | Err(_) => {
                        self.done(status, Some("client closed the connection"));
                        return Done::Close;
                    }
                    // The next request, pipelined: it waits in the buffer.
                    Ok(_) => watching = false,
                },
            }
        }
    }

    /// The upstream failed after the client had its answer's header: ending the connection
    /// is all that tells the client.
    fn upstream_broke(&mut self, status: u16, cause: &str) {
        tracing::warn!(parent: &self.span, route = %self.route.name, cause, "upstream stream failed");
        self.done(status, None);
    }

    /// Records the request in the metrics and the log.
    fn done(&self, status: u16, client_gone: Option<&str>) {
        let route = self.route.name.as_str();
        let elapsed = self.started.elapsed();
        self.shared.metrics.request_done(
            route,
            &http::Method::POST,
            self.rpc_method,
            status,
            elapsed.as_secs_f64(),
            (self.body_len, self.sent),
        );
        let elapsed_ms = elapsed.as_millis() as u64;
        let span = &self.span;
        span.record("status", status);
        span.record("elapsed_ms", elapsed_ms);
        match client_gone {
            Some(what) => {
                tracing::debug!(parent: span, route, method = "POST", elapsed_ms, "{what}")
            }
            None => {
                tracing::debug!(parent: span, route, method = "POST", status, elapsed_ms, "request")
            }
        }
    }
}

/// Reads more of the client's bytes into `buf`; `None` when the connection is over: the
/// client left, the header guard refused it, or (while `idle`) the gateway is closing.
async fn read_client(
    client: &mut GuardedStream,
    buf: &mut BytesMut,
    idle: bool,
    closing: &mut watch::Receiver<bool>,
) -> Option<usize> {
    buf.reserve(4096);
    let read = if idle {
        tokio::select! {
            read = client.read_buf(buf) => read,
            _ = stream::closed(closing) => return None,
        }
    } else {
        client.read_buf(buf).await
    };
    match read {
        Ok(0) | Err(_) => None,
        Ok(read) => Some(read),
    }
}

/// Writes `bytes` to the client and sends them on at once.
async fn write(client: &mut GuardedStream, bytes: &[u8]) -> std::io::Result<()> {
    client.write_all(bytes).await?;
    client.flush().await
}

/// A `Content-Length` value: digits only (Rust's parser would also take a sign, which
/// another HTTP parser may read differently).
fn content_length(value: &str) -> Option<u64> {
    let digits = value.trim_matches([' ', '\t']);
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn put_header(wire: &mut BytesMut, name: &[u8], value: &[u8]) {
    wire.put_slice(name);
    wire.put_slice(b": ");
    wire.put_slice(value);
    wire.put_slice(b"\r\n");
}

/// The gateway's end of an upstream connection, with what was read from it.
struct Upstream<'a> {
    stream: Stream,
    buf: &'a mut BytesMut,
    /// For each read; none for an event stream.
    timeout: Option<Duration>,
}

impl Upstream<'_> {
    /// Reads more into the buffer: the number of bytes, 0 at the end of the stream.
    async fn read(&mut self) -> pingora::Result<usize> {
        self.buf.reserve(8192);
        let read = self.stream.read_buf(&mut *self.buf);
        let read = match self.timeout {
            Some(timeout) => match tokio::time::timeout(timeout, read).await {
                Ok(read) => read,
                Err(_) => return Error::e_explain(ErrorType::ReadTimedout, "reading the response"),
            },
            None => read.await,
        };
        read.map_err(|e| Error::because(ErrorType::ReadError, "reading the response", e))
    }

    /// Reads the response header (past any interim `1xx`), and the client's version of it.
    async fn read_head(&mut self) -> pingora::Result<Head> {
        loop {
            if !self.buf.is_empty() {
                match Head::parse(self.buf)? {
                    Some(Parsed::Interim(len)) => {
                        self.buf.advance(len);
                        continue;
                    }
                    Some(Parsed::Final(head)) => return Ok(head),
                    None if self.buf.len() > MAX_RESPONSE_HEADER => {
                        return Error::e_explain(
                            ErrorType::InvalidHTTPHeader,
                            "the response header is too long",
                        );
                    }
                    None => {}
                }
            }
            if self.read().await? == 0 {
                return Error::e_explain(
                    ErrorType::ConnectionClosed,
                    "the upstream closed the connection before answering",
                );
            }
        }
    }
}

/// An upstream response header, read.
struct Head {
    status: u16,
    header_len: usize,
    body: Body,
    /// The connection may carry another request once the body is read.
    reusable: bool,
    event_stream: bool,
    /// The response header for the client, complete with its empty line.
    downstream: BytesMut,
    /// `WWW-Authenticate` says `insufficient_scope`.
    wants_scope: bool,
}

enum Parsed {
    /// A `1xx` header of this length, to skip.
    Interim(usize),
    Final(Head),
}

impl Head {
    fn parse(bytes: &[u8]) -> pingora::Result<Option<Parsed>> {
        let invalid = |what: &'static str| Error::explain(ErrorType::InvalidHTTPHeader, what);
        let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut lines);
        let header_len = match response.parse(bytes) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(invalid("the response header is malformed")),
        };
        let status = response.code.unwrap_or_default();
        if (100..200).contains(&status) {
            if status == 101 {
                return Err(invalid("the upstream switched protocols unasked"));
            }
            return Ok(Some(Parsed::Interim(header_len)));
        }
        let mut length: Option<u64> = None;
        let mut chunked = None;
        let mut close = response.version != Some(1);
        let mut event_stream = false;
        let mut wants_scope = false;
        let mut listed: Vec<&str> = Vec::new();
        for line in response.headers.iter() {
            let value = std::str::from_utf8(line.value).unwrap_or_default();
            let name = line.name;
            if name.eq_ignore_ascii_case("content-length") {
                let parsed = content_length(value)
                    .ok_or_else(|| invalid("the response's Content-Length is not a number"))?;
                if length.is_some_and(|known| known != parsed) {
                    return Err(invalid("the response has two different lengths"));
                }
                length = Some(parsed);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                let last = value.rsplit(',').next().unwrap_or_default().trim();
                chunked = Some(last.eq_ignore_ascii_case("chunked"));
            } else if name.eq_ignore_ascii_case("connection") {
                for token in value.split(',').map(str::trim) {
                    close |= token.eq_ignore_ascii_case("close");
                    listed.push(token);
                }
            } else if name.eq_ignore_ascii_case("content-type") {
                event_stream = value.trim_start().starts_with("text/event-stream");
            } else if name.eq_ignore_ascii_case("www-authenticate") {
                wants_scope |= value.contains("insufficient_scope");
            }
        }
        let body = match (status, chunked, length) {
            (204 | 304, _, _) => Body::Empty,
            (_, Some(true), _) => Body::Chunked(Chunks::default()),
            (_, Some(false), _) => Body::Close,
            (_, None, Some(length)) => Body::Length(length),
            (_, None, None) => Body::Close,
        };
        // A length beside a transfer coding is a smuggling attempt or a broken server.
        let ambiguous = chunked.is_some() && length.is_some();
        let reusable = !close && !ambiguous && !matches!(body, Body::Close);

        let mut downstream = BytesMut::with_capacity(header_len + 128);
        downstream.put_slice(reply::status_line(status, response.reason).as_bytes());
        for line in response.headers.iter() {
            let name = line.name;
            let framing = ["content-length", "transfer-encoding"]
                .iter()
                .any(|framing| name.eq_ignore_ascii_case(framing));
            let marked = event_stream
                && headers::EVENT_STREAM_MARKS
                    .iter()
                    .any(|(mark, _)| name.eq_ignore_ascii_case(mark));
            let listed = listed.iter().any(|token| name.eq_ignore_ascii_case(token));
            if framing || marked || listed || headers::held_back(name) {
                continue;
            }
            put_header(&mut downstream, name.as_bytes(), line.value);
        }
        match &body {
            Body::Empty => {}
            Body::Length(length) => {
                downstream.put_slice(format!("content-length: {length}\r\n").as_bytes())
            }
            Body::Chunked(_) | Body::Close => {
                put_header(&mut downstream, b"transfer-encoding", b"chunked")
            }
        }
        if event_stream {
            for (name, value) in headers::EVENT_STREAM_MARKS {
                put_header(&mut downstream, name.as_bytes(), value.as_bytes());
            }
        }
        downstream.put_slice(b"\r\n");
        Ok(Some(Parsed::Final(Head {
            status,
            header_len,
            body,
            reusable,
            event_stream,
            downstream,
            wants_scope,
        })))
    }

    /// On an OAuth route: the upstream refused the token (401), or wants more scope than it
    /// carries (403 `insufficient_scope`, which pingora's path asks the upstream again and
    /// answers).
    fn refuses_token(&self) -> bool {
        self.status == 401 || (self.status == 403 && self.wants_scope)
    }
}

/// How far a body has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    More,
    /// The body is over; `surplus` when the upstream sent bytes past its end.
    Done {
        surplus: bool,
    },
}

/// A response body's framing, as it passes through.
#[derive(Debug)]
enum Body {
    /// No body at all (204, 304).
    Empty,
    /// This many bytes still to come.
    Length(u64),
    /// Chunked: passed on as it is, its framing read to find the end.
    Chunked(Chunks),
    /// Until the upstream closes: passed on in chunks of the client's connection.
    Close,
}

impl Body {
    /// Appends to `out` what of `data`, the next bytes from the upstream, goes to the client.
    fn pass(&mut self, data: &[u8], out: &mut BytesMut) -> Progress {
        match self {
            Body::Empty => Progress::Done {
                surplus: !data.is_empty(),
            },
            Body::Length(left) => {
                let take = data.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                out.put_slice(&data[..take]);
                *left -= take as u64;
                match *left {
                    0 => Progress::Done {
                        surplus: take < data.len(),
                    },
                    _ => Progress::More,
                }
            }
            Body::Chunked(chunks) => match chunks.scan(data) {
                Ok(Some(end)) => {
                    out.put_slice(&data[..end]);
                    Progress::Done {
                        surplus: end < data.len(),
                    }
                }
                Ok(None) => {
                    out.put_slice(data);
                    Progress::More
                }
                // Malformed framing: what passed is all the client gets; the connection
                // goes, which tells it the body is cut short.
                Err(()) => Progress::Done { surplus: true },
            },
            Body::Close => {
                if !data.is_empty() {
                    out.put_slice(format!("{:x}\r\n", data.len()).as_bytes());
                    out.put_slice(data);
                    out.put_slice(b"\r\n");
                }
                Progress::More
            }
        }
    }

    /// The upstream closed the connection: whether that ends the body properly, with what
    /// ends it for the client appended to `out`.
    fn at_end(&mut self, out: &mut BytesMut) -> bool {
        match self {
            Body::Close => {
                out.put_slice(b"0\r\n\r\n");
                true
            }
            Body::Empty => true,
            Body::Length(_) | Body::Chunked(_) => false,
        }
    }

    /// Whether the client's connection can carry another request after this body; a body cut
    /// short by malformed chunked framing cannot.
    fn keeps_client(&self) -> bool {
        !matches!(self, Body::Chunked(chunks) if chunks.broken)
    }
}

/// Reads a chunked body's framing (RFC 9112 §7.1) to find where it ends.
#[derive(Debug, Default)]
struct Chunks {
    state: ChunkState,
    size: u64,
    digits: u8,
    broken: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading the hex size.
    #[default]
    Size,
    /// Past the size: extensions, up to the line's end.
    SizeLine,
    /// This many data bytes still to come.
    Data(u64),
    /// The line ending after a chunk's data.
    DataEnd,
    /// The start of a trailer line, or the empty line that ends the body.
    TrailerStart,
    /// A CR at the start of a trailer line.
    TrailerCr,
    /// Inside a trailer line.
    Trailer,
}

impl Chunks {
    /// Feeds the next bytes: `Some(n)` when the body ends after the first `n` of them.
    fn scan(&mut self, data: &[u8]) -> Result<Option<usize>, ()> {
        let mut at = 0;
        while at < data.len() {
            let byte = data[at];
            match self.state {
                ChunkState::Size => match byte {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let digit = (byte as char).to_digit(16).unwrap_or_default();
                        self.digits += 1;
                        if self.digits > 15 {
                            return self.broke();
                        }
                        self.size = self.size * 16 + u64::from(digit);
                    }
                    b';' | b' ' | b'\t' | b'\r' if self.digits > 0 => {
                        self.state = ChunkState::SizeLine
                    }
                    b'\n' if self.digits > 0 => self.size_line_ended(),
                    _ => return self.broke(),
                },
                ChunkState::SizeLine => {
                    if byte == b'\n' {
                        self.size_line_ended();
                    }
                }
                ChunkState::Data(left) => {
                    let take = (data.len() - at).min(usize::try_from(left).unwrap_or(usize::MAX));
                    let left = left - take as u64;
                    self.state = match left {
                        0 => ChunkState::DataEnd,
                        left => ChunkState::Data(left),
                    };
                    at += take;
                    continue;
                }
                ChunkState::DataEnd => match byte {
                    b'\r' => {}
                    b'\n' => {
                        self.state = ChunkState::Size;
                        self.size = 0;
                        self.digits = 0;
                    }
                    _ => return self.broke(),
                },
                ChunkState::TrailerStart => match byte {
                    b'\n' => return Ok(Some(at + 1)),
                    b'\r' => self.state = ChunkState::TrailerCr,
                    _ => self.state = ChunkState::Trailer,
                },
                ChunkState::TrailerCr => match byte {
                    b'\n' => return Ok(Some(at + 1)),
                    _ => return self.broke(),
                },
                ChunkState::Trailer => {
                    if byte == b'\n' {
                        self.state = ChunkState::TrailerStart;
                    }
                }
            }
            at += 1;
        }
        Ok(None)
    }

    fn size_line_ended(&mut self) {
        self.state = match self.size {
            0 => ChunkState::TrailerStart,
            size => ChunkState::Data(size),
        };
    }

    fn broke(&mut self) -> Result<Option<usize>, ()> {
        self.broken = true;
        Err(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(pieces: &[&[u8]]) -> Result<Option<usize>, ()> {
        let mut chunks = Chunks::default();
        let mut offset = 0;
        for piece in pieces {
            if let Some(end) = chunks.scan(piece)? {
                return Ok(Some(offset + end));
            }
            offset += piece.len();
        }
        Ok(None)
    }

    #[test]
    fn a_chunked_body_ends_at_its_last_chunk_and_trailers_across_reads() {
        let body: &[u8] = b"5\r\nhello\r\n1A;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\nNEXT";
        assert_eq!(scan_all(&[body]), Ok(Some(body.len() - 4)));
        // The same, one byte at a time.
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(scan_all(&bytes), Ok(Some(body.len() - 4)));
        // Trailers, and bare LF line endings.
        let trailed: &[u8] = b"3\nabc\n0\nx-checksum: 1\n\n";
        assert_eq!(scan_all(&[trailed]), Ok(Some(trailed.len())));
        // Not over yet.
        assert_eq!(scan_all(&[b"5\r\nhel"]), Ok(None));
        assert_eq!(scan_all(&[b"0\r\n"]), Ok(None));
    }

    #[test]
    fn a_content_length_is_digits_only() {
        assert_eq!(content_length("42"), Some(42));
        assert_eq!(content_length(" 7\t"), Some(7));
        for bad in [
            "+5",
            "-1",
            "",
            " ",
            "0x10",
            "1 2",
            "99999999999999999999999",
        ] {
            assert_eq!(content_length(bad), None, "{bad:?}");
        }
        let signed = b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok";
        assert!(Head::parse(signed).is_err());
    }

    #[test]
    fn malformed_chunk_framing_is_refused() {
        assert_eq!(scan_all(&[b"zz\r\n"]), Err(()));
        assert_eq!(scan_all(&[b"\r\n"]), Err(()));
        assert_eq!(scan_all(&[b"2\r\nabX"]), Err(()));
        assert_eq!(scan_all(&[b"ffffffffffffffff\r\n"]), Err(()));
    }

    #[test]
    fn a_response_header_is_rewritten_for_the_client() {
        let upstream = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
            Cache-Control: max-age=60\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\n\
            Mcp-Session-Id: s-1\r\nWWW-Authenticate: Bearer realm=x\r\n\
            Transfer-Encoding: chunked\r\n\r\n";
        let Ok(Some(Parsed::Final(head))) = Head::parse(upstream) else {
            panic!("a complete header");
        };
        let client = String::from_utf8(head.downstream.to_vec()).expect("text");
        assert_eq!(
            client,
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nMcp-Session-Id: s-1\r\n\
             transfer-encoding: chunked\r\ncache-control: no-cache, no-transform\r\n\
             x-accel-buffering: no\r\n\r\n"
        );
        assert!(head.reusable && head.event_stream);
        assert_eq!(head.header_len, upstream.len());
    }

    #[test]
    fn a_response_without_framing_is_rechunked_and_its_connection_not_kept() {
        let Ok(Some(Parsed::Final(mut head))) =
            Head::parse(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
        else {
            panic!("a complete header");
        };
        assert!(!head.reusable);
        let mut out = BytesMut::new();
        assert_eq!(head.body.pass(b"{}", &mut out), Progress::More);
        assert!(head.body.at_end(&mut out));
        assert_eq!(&out[..], b"2\r\n{}\r\n0\r\n\r\n");
    }

    #[test]
    fn interim_and_malformed_response_headers() {
        let interim = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n";
        assert!(matches!(
            Head::parse(interim),
            Ok(Some(Parsed::Interim(40)))
        ));
        assert!(Head::parse(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(
            Head::parse(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
                .is_err()
        );
        let Ok(Some(Parsed::Final(head))) = Head::parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        ) else {
            panic!("a complete header");
        };
        assert!(
            !head.reusable,
            "a length beside a coding never keeps the connection"
        );
    }
}
