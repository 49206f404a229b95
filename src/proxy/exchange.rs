//! The gateway's own HTTP/1.1 client toward upstreams, for every request it sends itself:
//! small whole-body `POST`s, event-stream `GET`s, bridged messages and resends.
//!
//! [`send`] writes the request line, the headers and the whole body in one write, then
//! reads the response header with pingora's HTTP/1 client session; the caller reads the
//! body. A connection whose response was read to its end goes back to its upstream's
//! [`IdlePool`] ([`release`]), and the next request to that upstream takes it, once a
//! non-blocking read has shown that the upstream did not close it meanwhile.
//!
//! Pingora's proxy loop, which carries the other requests (bodies of unknown or large
//! size), writes a request's header and body in two writes and parks each returned
//! connection on a task of its own that watches it. For a request of a few hundred bytes
//! those two costs outweigh the rest of the proxying, which is why the proxy reads small
//! bodies whole and sends them here (`GatewayProxy::send_whole`).

use std::fmt;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use parking_lot::Mutex;
use pingora::connectors::TransportConnector;
use pingora::http::RequestHeader;
use pingora::protocols::Stream;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v1::client::{HttpSession as Http1Session, http_req_header_to_wire};
use pingora::{Error, ErrorType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::upstream::Upstream;

/// The largest declared body the proxy reads whole and sends here; longer ones, and bodies
/// of unknown length, stream through pingora's proxy loop.
pub(crate) const MAX_WHOLE_BODY: u64 = 64 * 1024;

/// Idle connections kept per upstream, at most; one more is closed.
const MAX_IDLE: usize = 128;

/// How long a connection may wait idle for its next request, as for pingora's own pool.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// An upstream's idle keep-alive connections, the most recently used last.
///
/// Connections are keyed by the upstream alone (its scheme, host, port and CA), as HTTP
/// clients key theirs by origin: a new DNS answer does not make an open connection wrong.
#[derive(Default)]
pub(crate) struct IdlePool {
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    stream: Stream,
    since: Instant,
}

impl fmt::Debug for IdlePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdlePool")
            .field("idle", &self.idle.lock().len())
            .finish()
    }
}

impl IdlePool {
    /// The most recently used connection that is still open, if any. Connections found
    /// closed or expired on the way are dropped, which closes them.
    fn take(&self) -> Option<Stream> {
        loop {
            let Idle { mut stream, since } = self.idle.lock().pop()?;
            if since.elapsed() < IDLE_TIMEOUT && still_open(&mut stream) {
                return Some(stream);
            }
        }
    }

    pub(crate) fn put(&self, stream: Stream) {
        let now = Instant::now();
        let (expired, refused) = {
            let mut idle = self.idle.lock();
            // The oldest connections sit at the front; traffic only ever takes from the back.
            let fresh = idle
                .iter()
                .position(|idle| now.duration_since(idle.since) < IDLE_TIMEOUT)
                .unwrap_or(idle.len());
            let expired: Vec<Idle> = idle.drain(..fresh).collect();
            if idle.len() < MAX_IDLE {
                idle.push(Idle { stream, since: now });
                (expired, None)
            } else {
                (expired, Some(stream))
            }
        };
        // Closing sockets is a system call each: done after the lock is released.
        drop(expired);
        drop(refused);
    }

    /// How many connections wait idle now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.idle.lock().len()
    }
}

/// Whether an idle connection can carry a request: a read that would block means the
/// upstream has neither closed it nor sent anything unasked.
fn still_open(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    // `unconstrained`: tokio's cooperative budget could make a ready read look pending.
    tokio::task::unconstrained(stream.read(&mut byte))
        .now_or_never()
        .is_none()
}

/// Whether a client request is read whole and sent here: a `POST` that declares a length
/// of at most [`MAX_WHOLE_BODY`], is not chunked, and does not wait for `100 Continue`.
pub(crate) fn is_small_post(request: &RequestHeader) -> bool {
    let headers = &request.headers;
    request.method == http::Method::POST
        && super::headers::declared_length(request).is_some_and(|length| length <= MAX_WHOLE_BODY)
        && !headers.contains_key(http::header::TRANSFER_ENCODING)
        && !headers.contains_key(http::header::EXPECT)
}

/// Sends `request` (a header ready for the upstream, with its `Content-Length`) and its whole
/// `body` in one write, and reads the response header. The header must arrive within the
/// upstream's read timeout unless `streaming`; an event-stream body has no read timeout.
///
/// A reused connection that fails while the request is written never delivered it, so the
/// request goes out once more on a new connection; a failure after the write is the
/// caller's to report, since the upstream may have acted on the request.
pub(crate) async fn send(
    transport: &TransportConnector,
    upstream: &Upstream,
    request: &RequestHeader,
    body: &[u8],
    streaming: bool,
) -> pingora::Result<HttpSession> {
    let mut wire = http_req_header_to_wire(request).ok_or_else(|| {
        Error::explain(
            ErrorType::InvalidHTTPHeader,
            "the request line cannot be sent upstream",
        )
    })?;
    wire.extend_from_slice(body);
    let timeouts = upstream.timeouts();
    let stream = deliver(transport, upstream, &wire).await?;

    let mut session = Http1Session::new(stream);
    session.read_timeout = (!streaming).then_some(timeouts.read);
    session.write_timeout = Some(timeouts.read);
    let mut session = HttpSession::H1(session);
    session.read_response_header().await?;
    let event_stream = session
        .response_header()
        .is_some_and(super::headers::is_event_stream);
    if let (HttpSession::H1(h1), true) = (&mut session, event_stream) {
        // Events may be minutes apart; the stream ends when either side leaves.
        h1.read_timeout = None;
    }
    Ok(session)
}

/// Writes `wire`, a whole request, to a connection to the upstream: a kept one when there
/// is one, else a new one. A kept connection that fails while the request is written never
/// delivered it, so the request goes out once more on a new connection.
pub(crate) async fn deliver(
    transport: &TransportConnector,
    upstream: &Upstream,
    wire: &[u8],
) -> pingora::Result<Stream> {
    let timeout = upstream.timeouts().read;
    let mut pooled = upstream.idle().take();
    loop {
        let (mut stream, reused) = match pooled.take() {
            Some(stream) => (stream, true),
            None => (connect(transport, upstream).await?, false),
        };
        match write_all(&mut stream, wire, timeout).await {
            Ok(()) => return Ok(stream),
            Err(_) if reused => continue,
            Err(error) => return Err(error),
        }
    }
}

/// A new connection to the upstream, with its TLS, SNI and CA settings.
async fn connect(transport: &TransportConnector, upstream: &Upstream) -> pingora::Result<Stream> {
    // The peer's read timeout plays no part in connecting; the session sets its own.
    let peer = upstream
        .peer(false)
        .await
        .map_err(|e| Error::because(ErrorType::ConnectNoRoute, "resolving the upstream", e))?;
    transport.new_stream(&peer).await
}

async fn write_all(stream: &mut Stream, wire: &[u8], timeout: Duration) -> pingora::Result<()> {
    let write = async {
        stream.write_all(wire).await?;
        stream.flush().await
    };
    match tokio::time::timeout(timeout, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::because(
            ErrorType::WriteError,
            "while writing the request",
            e,
        )),
        Err(_) => Error::e_explain(ErrorType::WriteTimedout, "while writing the request"),
    }
}

/// Hands the connection under a response read to its end back to the upstream's pool;
/// anything else (a response cut short, `Connection: close`, bytes past the body) is closed.
pub(crate) async fn release(upstream: &Upstream, session: HttpSession) {
    match session {
        HttpSession::H1(mut session) => {
            session.respect_keepalive();
            if let Some(stream) = session.reuse().await {
                upstream.idle().put(stream);
            }
        }
        mut other => other.shutdown().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    /// A loopback connection as the gateway's end, and the upstream's end.
    async fn connection() -> (Stream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("listener address");
        let (ours, theirs) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let ours = pingora::protocols::l4::stream::Stream::from(ours.expect("connect"));
        (Box::new(ours), theirs.expect("accept").0)
    }

    /// Lets the runtime's reactor see what happened on the sockets.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn a_pool_hands_out_open_connections_and_drops_closed_ones() {
        let pool = IdlePool::default();
        let (open, _upstream) = connection().await;
        let (closed, upstream_gone) = connection().await;
        pool.put(open);
        pool.put(closed);
        drop(upstream_gone);
        settle().await;

        // The closed one is on top: it is dropped on the way to the open one.
        assert!(pool.take().is_some());
        assert_eq!(pool.len(), 0);
        assert!(pool.take().is_none());
    }

    #[tokio::test]
    async fn a_connection_the_upstream_wrote_to_unasked_is_not_reused() {
        let pool = IdlePool::default();
        let (stream, mut upstream) = connection().await;
        pool.put(stream);
        upstream
            .write_all(b"HTTP/1.1 200 OK\r\n")
            .await
            .expect("write");
        settle().await;
        assert!(pool.take().is_none());
    }

    #[tokio::test]
    async fn a_pool_keeps_a_bounded_number_of_connections() {
        let pool = IdlePool::default();
        let mut upstreams = Vec::new();
        for _ in 0..MAX_IDLE + 3 {
            let (stream, upstream) = connection().await;
            pool.put(stream);
            upstreams.push(upstream);
        }
        assert_eq!(pool.len(), MAX_IDLE);
    }

    #[tokio::test]
    async fn a_pool_drops_connections_idle_too_long() {
        let pool = IdlePool::default();
        let (stream, _upstream) = connection().await;
        pool.put(stream);
        let long_ago = Instant::now()
            .checked_sub(IDLE_TIMEOUT)
            .expect("the machine has been up for more than a minute");
        pool.idle.lock()[0].since = long_ago;
        assert!(pool.take().is_none());
        assert_eq!(pool.len(), 0);
    }
}
