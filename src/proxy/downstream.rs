//! The downstream connection guard: every request header must arrive in time and within a
//! size, so that a client trickling bytes (slowloris) cannot hold a connection open.
//!
//! Pingora times out each read of a request header, but not the header as a whole, so a
//! client sending one byte every minute keeps its connection forever; and it keeps an idle
//! HTTP/1.1 connection between requests for as long as the client likes. [`HeaderGuard`]
//! wraps pingora's HTTP application: each accepted connection's stream is a
//! [`GuardedStream`], which watches the bytes pingora reads while a header is due.
//!
//! - The first header must be complete within `server.header_timeout_secs` of connecting,
//!   and each later one within the same time of its first byte, or the client gets `408`.
//! - A header longer than `server.max_header_bytes` gets `431`.
//! - Between requests, a connection may stay idle for `server.idle_timeout_secs`; then it
//!   is closed, without an answer since there is no request.
//!
//! After a refusal the connection closes. Once the header's empty line has passed, bodies
//! and responses flow untouched, at the cost of one branch per read; the proxy's `logging`
//! phase tells the stream when a request is over, so that the next header is watched.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::lane::{Exit, Lane};
use crate::metrics::Metrics;

/// How long a request header may take and how large it may be, and how long a connection
/// may wait between requests.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeaderLimits {
    pub(crate) timeout: Duration,
    pub(crate) max_bytes: usize,
    pub(crate) idle: Duration,
}

/// Pingora's HTTP application with every connection's stream guarded.
pub(crate) struct HeaderGuard<A> {
    inner: Arc<A>,
    limits: HeaderLimits,
    metrics: Arc<Metrics>,
    /// Turns true at the end of a drain.
    closing: tokio::sync::watch::Receiver<bool>,
    /// Serves each HTTP/1 connection until it sees a request that is pingora's.
    lane: Lane,
}

impl<A> HeaderGuard<A> {
    pub(crate) fn new(
        inner: A,
        limits: HeaderLimits,
        metrics: Arc<Metrics>,
        closing: tokio::sync::watch::Receiver<bool>,
        lane: Lane,
    ) -> Self {
        Self {
            inner: Arc::new(inner),
            limits,
            metrics,
            closing,
            lane,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for HeaderGuard<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // HTTP/2 frames its headers itself; the guard and the lane read HTTP/1 only.
        if stream.selected_alpn_proto() == Some(ALPN::H2) {
            return self.inner.process_new(stream, shutdown).await;
        }
        let mut guarded = GuardedStream::new(stream, self.limits, Arc::clone(&self.metrics));
        let mut closing = self.closing.clone();
        match self.lane.serve(&mut guarded, &mut closing).await {
            Exit::Closed => return None,
            Exit::HandOver(read) => guarded.unread(read),
        }
        self.inner.process_new(Box::new(guarded), shutdown).await
    }

    /// Runs once the listeners stopped (after an upgrade's hand-over). Pingora's own
    /// cleanup drops every connection waiting for its next request, including one whose
    /// request is on its way, which the client would see as a reset; so it waits for the
    /// end of the drain. Until then such a connection is served, with `Connection: close`.
    async fn cleanup(&self) {
        let mut closing = self.closing.clone();
        let _ = closing.wait_for(|closing| *closing).await;
        self.inner.cleanup().await;
    }
}

/// Tells the guarded stream under a finished request to watch for the next header.
pub(crate) fn request_done(stream: Option<&Stream>) {
    let guarded = stream.and_then(|stream| stream.as_any().downcast_ref::<GuardedStream>());
    if let Some(guarded) = guarded {
        guarded.request_done();
    }
}

/// Where the connection is in its current request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests: the next header's first byte is due by the idle deadline.
    Idle,
    /// A header is being read and must be complete by the header deadline.
    Header,
    /// The header has passed; the rest of the request is pingora's.
    Body,
    /// The guard answered and ends the connection.
    Refused,
}

/// Why the guard answered a request itself.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Timeout,
    TooLarge,
}

impl Refusal {
    fn response(self, limits: HeaderLimits) -> String {
        let (status, code, message) = match self {
            Refusal::Timeout => (
                "408 Request Timeout",
                "header_timeout",
                format!(
                    "the request header did not arrive within {} s (server.header_timeout_secs)",
                    limits.timeout.as_secs()
                ),
            ),
            Refusal::TooLarge => (
                "431 Request Header Fields Too Large",
                "header_too_large",
                format!(
                    "the request header is larger than {} bytes (server.max_header_bytes)",
                    limits.max_bytes
                ),
            ),
        };
        let body = crate::proxy::reply::error_body(code, message).to_string();
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\nCache-Control: no-store\r\n\r\n{body}",
            body.len()
        )
    }

    fn label(self) -> &'static str {
        match self {
            Refusal::Timeout => "header_timeout",
            Refusal::TooLarge => "header_size",
        }
    }
}

/// Finds the empty line that ends a header, across reads. Bare LF line endings count too,
/// as pingora's parser accepts them.
#[derive(Debug, Default)]
struct HeaderEnd {
    /// The last byte was the LF of a line ending (so an empty line may follow).
    after_lf: bool,
    /// That LF was followed by a CR, which may start the empty line's CRLF.
    after_lf_cr: bool,
}

impl HeaderEnd {
    /// The number of bytes of `bytes` up to and including the header's end, if it is there.
    fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        for (at, &byte) in bytes.iter().enumerate() {
            match byte {
                b'\n' if self.after_lf || self.after_lf_cr => {
                    *self = Self::default();
                    return Some(at + 1);
                }
                b'\n' => self.after_lf = true,
                b'\r' if self.after_lf => {
                    self.after_lf = false;
                    self.after_lf_cr = true;
                }
                _ => *self = Self::default(),
            }
        }
        None
    }
}

/// A downstream connection's stream, watching the request headers that pass through it.
pub(crate) struct GuardedStream {
    inner: Stream,
    limits: HeaderLimits,
    metrics: Arc<Metrics>,
    phase: Phase,
    deadline: Pin<Box<Sleep>>,
    header_bytes: usize,
    header_end: HeaderEnd,
    /// Set by the proxy when a request is over; the next read starts watching a header.
    request_done: AtomicBool,
    /// Bytes the lane read and handed back, served before anything new.
    unread: Bytes,
}

impl GuardedStream {
    fn new(inner: Stream, limits: HeaderLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            limits,
            metrics,
            phase: Phase::Header,
            deadline: Box::pin(tokio::time::sleep(limits.timeout)),
            header_bytes: 0,
            header_end: HeaderEnd::default(),
            request_done: AtomicBool::new(false),
            unread: Bytes::new(),
        }
    }

    /// Marks the request under way as over: the next read starts watching a header.
    pub(crate) fn request_done(&self) {
        self.request_done.store(true, Ordering::Release);
    }

    /// Puts `bytes`, read from this stream, back in front of it: the next reads return them.
    pub(crate) fn unread(&mut self, bytes: Bytes) {
        debug_assert!(self.unread.is_empty());
        self.unread = bytes;
    }

    /// Watches `fresh`, the bytes just read, for the end of the header and its size.
    fn watch(&mut self, fresh: &[u8]) -> Result<(), Refusal> {
        match self.phase {
            Phase::Idle if !fresh.is_empty() => {
                self.phase = Phase::Header;
                self.deadline
                    .as_mut()
                    .reset(Instant::now() + self.limits.timeout);
            }
            Phase::Header => {}
            Phase::Idle | Phase::Body | Phase::Refused => return Ok(()),
        }
        let header = match self.header_end.scan(fresh) {
            Some(end) => {
                self.phase = Phase::Body;
                end
            }
            None => fresh.len(),
        };
        self.header_bytes += header;
        if self.header_bytes > self.limits.max_bytes {
            return Err(Refusal::TooLarge);
        }
        Ok(())
    }

    /// Writes the refusal's response as far as the socket takes it at once (a few hundred
    /// bytes into an idle socket), then reads as the end of the stream.
    fn refuse(&mut self, cx: &mut Context<'_>, refusal: Refusal) -> Poll<std::io::Result<()>> {
        self.phase = Phase::Refused;
        self.metrics.limited("-", refusal.label());
        tracing::debug!(limit = refusal.label(), "refused a request header");
        let response = refusal.response(self.limits);
        let inner = Pin::new(&mut self.inner);
        if let Poll::Ready(Ok(_)) = inner.poll_write(cx, response.as_bytes()) {
            let _ = Pin::new(&mut self.inner).poll_flush(cx);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if !this.unread.is_empty() {
            // Already watched on their way in.
            let take = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread.split_to(take));
            return Poll::Ready(Ok(()));
        }
        // A load first: most reads are not the first after a request, and a swap would
        // write the flag's cache line on every one of them.
        let done = this.request_done.load(Ordering::Relaxed)
            && this.request_done.swap(false, Ordering::Acquire);
        if done && this.phase == Phase::Body {
            this.phase = Phase::Idle;
            this.header_bytes = 0;
            this.header_end = HeaderEnd::default();
            let idle_until = Instant::now() + this.limits.idle;
            this.deadline.as_mut().reset(idle_until);
        }
        match this.phase {
            Phase::Refused => return Poll::Ready(Ok(())),
            Phase::Idle | Phase::Header if this.deadline.as_mut().poll(cx).is_ready() => {
                // A client that sent nothing gets no answer, as there is no request.
                if this.header_bytes == 0 {
                    this.phase = Phase::Refused;
                    return Poll::Ready(Ok(()));
                }
                return this.refuse(cx, Refusal::Timeout);
            }
            Phase::Idle | Phase::Header | Phase::Body => {}
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let fresh = &buf.filled()[before..];
        if let Err(refusal) = this.watch(fresh) {
            buf.set_filled(before);
            return this.refuse(cx, refusal);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

impl fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedStream")
            .field("phase", &self.phase)
            .field("header_bytes", &self.header_bytes)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_ends_at_its_empty_line_across_reads_and_line_endings() {
        let mut end = HeaderEnd::default();
        assert_eq!(end.scan(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"), Some(27));

        let mut end = HeaderEnd::default();
        assert_eq!(end.scan(b"GET / HTTP/1.1\r\nHost: a\r"), None);
        assert_eq!(end.scan(b"\n\r"), None);
        assert_eq!(end.scan(b"\nrest"), Some(1));

        let mut end = HeaderEnd::default();
        assert_eq!(end.scan(b"GET / HTTP/1.1\nHost: a\n\n"), Some(24));

        // A CR inside a line, and a lone CR after a line ending, end nothing.
        let mut end = HeaderEnd::default();
        assert_eq!(end.scan(b"GET / HTTP/1.1\r\nX: a\rb\r\n\rc\r\n"), None);
    }
}
