//! The legacy MCP HTTP+SSE transport, seen from the middle: an incremental scanner for the
//! upstream's `text/event-stream` body and the rewrite of its `endpoint` event.
//!
//! A legacy server opens its SSE stream with an `endpoint` event whose data is the URL the
//! client must POST its messages to. Relayed unchanged, that URL would send clients straight
//! to the upstream, without the gateway's token. The proxy's event-stream relay
//! (`proxy::stream`) therefore feeds every upstream chunk through an [`SseScanner`], which
//! forwards each complete event the moment its blank line arrives and hands the data of an
//! `endpoint` event to an [`EndpointRewriter`]. The rewriter turns the upstream URL into a
//! path under the route's prefix; [`upstream_url`] is its inverse, used by the route when the
//! client's POST comes back, so the mapping needs no per-session state.
//!
//! Everything other than the `endpoint` event's `data` lines passes through byte for byte,
//! unless a plugin reads messages: then the scanner also offers each complete `message`
//! event's data ([`SseScanner::feed_messages`]), and a changed message replaces its data.

use bytes::{Bytes, BytesMut};
use url::{Origin, Url};

/// Largest event the scanner holds back while waiting for its end. A bigger event cannot be
/// an `endpoint` event (that is one URL), so it is streamed through as it arrives instead,
/// without being offered to a message reader.
const MAX_EVENT_BYTES: usize = 1 << 20;

/// What a buffer keeps after a big event, so a long-lived stream does not pin a large
/// allocation because of one past event.
const RETAINED_BUFFER_BYTES: usize = 16 * 1024;

/// The UTF-8 byte-order mark an event stream may start with.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// How many leading bytes of each line the scanner remembers: enough to recognise
/// `event: endpoint` without keeping the line.
const HEAD_BYTES: usize = 16;

/// The path segment, right after a route's prefix, that stands for the upstream origin's root
/// rather than for the route's base path.
const ROOT_MARKER: &str = "/~";

/// What an event is, by its `event` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventKind {
    /// The legacy transport's `endpoint` event.
    Endpoint,
    /// A JSON-RPC message: no `event` field, or `event: message`.
    Message,
    Other,
}

/// Where the scanner is relative to the stream's structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// Between events, at the start of a line: nothing is held back.
    Idle,
    /// Inside an event (or a first line not yet known to be a comment), held back until it
    /// ends.
    Buffering,
    /// Inside an event that outgrew [`MAX_EVENT_BYTES`]: its bytes flow through unheld.
    Passthrough,
}

/// Whether the stream's leading byte-order mark has been dealt with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bom {
    /// At the start of the stream, with this many bytes of a byte-order mark seen and held.
    Pending(usize),
    Done,
}

/// What the scanner releases from one chunk: a range of the chunk itself, or assembled bytes.
enum Released {
    Range(std::ops::Range<usize>),
    Assembled(BytesMut),
}

/// Incremental, event-aware reader of an upstream `text/event-stream` body.
///
/// Feed it the body's chunks as they arrive; each call returns the bytes that may be written
/// to the client now. Comments and blank lines between events are released at once; an event
/// is held back until its terminating blank line, so that an `endpoint` event can be
/// rewritten whole. Line endings may be LF, CRLF or a lone CR, and a chunk may end anywhere,
/// including between the CR and LF of one line ending.
#[derive(Debug)]
pub(crate) struct SseScanner {
    /// Bytes of the current event that arrived in earlier chunks.
    buf: Vec<u8>,
    unit: Unit,
    /// The current event has a field line (it is an event, not a leading comment).
    in_event: bool,
    /// The current event's type, as set by its last `event` field.
    kind: EventKind,
    /// Whether `message` events are offered to the rewrite, besides `endpoint` events.
    messages: bool,
    /// The last byte seen was a CR: an LF right after it belongs to the same line ending.
    after_cr: bool,
    /// Length of the current, unfinished line.
    line_len: usize,
    /// The first bytes of the current line.
    head: [u8; HEAD_BYTES],
    bom: Bom,
}

impl Default for SseScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl SseScanner {
    /// A scanner at the start of a stream.
    pub(crate) fn new() -> Self {
        Self {
            buf: Vec::new(),
            unit: Unit::Idle,
            in_event: false,
            kind: EventKind::Message,
            messages: false,
            after_cr: false,
            line_len: 0,
            head: [0; HEAD_BYTES],
            bom: Bom::Pending(0),
        }
    }

    /// Takes the next chunk of the stream and returns what may be forwarded now.
    ///
    /// When an `endpoint` event completes, `rewrite` gets its data (multi-line data joined
    /// with LF). `Some(new)` replaces the event's `data` lines with `new`, keeping its other
    /// lines and line endings; `None` forwards the event unchanged.
    ///
    /// A byte-order mark at the very start of the stream is consumed and not forwarded: the
    /// client's decoder would drop it anyway, and a keepalive written before it would turn it
    /// into part of the first field's name.
    pub(crate) fn feed(
        &mut self,
        chunk: &[u8],
        mut rewrite: impl FnMut(&str) -> Option<String>,
    ) -> Bytes {
        self.messages = false;
        self.feed_any(chunk, &mut |kind, data| match kind {
            EventKind::Endpoint => rewrite(data),
            EventKind::Message | EventKind::Other => None,
        })
    }

    /// Like [`SseScanner::feed`], and also hands each complete `message` event (an event
    /// without an `event` field, or `event: message`) to `message`, whose `Some` replaces
    /// the event's data.
    pub(crate) fn feed_messages(
        &mut self,
        chunk: &[u8],
        mut endpoint: impl FnMut(&str) -> Option<String>,
        mut message: impl FnMut(&str) -> Option<String>,
    ) -> Bytes {
        self.messages = true;
        self.feed_any(chunk, &mut |kind, data| match kind {
            EventKind::Endpoint => endpoint(data),
            EventKind::Message => message(data),
            EventKind::Other => None,
        })
    }

    fn feed_any(
        &mut self,
        chunk: &[u8],
        rewrite: &mut dyn FnMut(EventKind, &str) -> Option<String>,
    ) -> Bytes {
        let chunk = match self.take_bom(chunk) {
            Some(rest) => rest,
            None => return Bytes::new(),
        };
        match self.scan(chunk, rewrite) {
            Released::Range(range) => Bytes::copy_from_slice(&chunk[range]),
            Released::Assembled(out) => out.freeze(),
        }
    }

    /// True when nothing is held back and no line is half-read, so bytes of the gateway's own
    /// (a keepalive comment) can be written without splitting an upstream event.
    ///
    /// Right after a CR line ending the LF that may follow is still to come; writing a
    /// comment there is safe, because the client then reads that LF as an empty line, which
    /// dispatches nothing.
    pub(crate) fn at_event_boundary(&self) -> bool {
        self.unit == Unit::Idle && self.bom_held() == 0
    }

    /// Ends the stream: returns the bytes still held back (a truncated final event), as they
    /// arrived, and resets the scanner.
    pub(crate) fn finish(&mut self) -> Bytes {
        let mut rest = Vec::with_capacity(self.bom_held() + self.buf.len());
        rest.extend_from_slice(&BOM[..self.bom_held()]);
        rest.append(&mut self.buf);
        *self = Self::new();
        Bytes::from(rest)
    }

    fn bom_held(&self) -> usize {
        match self.bom {
            Bom::Pending(held) => held,
            Bom::Done => 0,
        }
    }

    /// Deals with a byte-order mark at the start of the stream. Returns the part of `chunk`
    /// to scan, or `None` when the whole chunk is (so far) a byte-order mark.
    fn take_bom<'a>(&mut self, chunk: &'a [u8]) -> Option<&'a [u8]> {
        let Bom::Pending(held) = self.bom else {
            return Some(chunk);
        };
        let wanted = &BOM[held..];
        let matched = wanted.iter().zip(chunk).take_while(|(a, b)| a == b).count();
        if matched == wanted.len() {
            self.bom = Bom::Done;
            return Some(&chunk[matched..]);
        }
        if matched == chunk.len() {
            self.bom = Bom::Pending(held + matched);
            return None;
        }

        // Not a byte-order mark after all: the bytes held back start the first line.
        self.bom = Bom::Done;
        if held > 0 {
            self.unit = Unit::Buffering;
            self.buf.extend_from_slice(&BOM[..held]);
            self.push_line_bytes(&BOM[..held]);
        }
        Some(chunk)
    }

    /// Scans one chunk. Output so far is always `out` followed by `chunk[emit_from..]` up to
    /// the start of the event being held; bytes held from earlier chunks come before any byte
    /// of this chunk, because such an event started before it.
    fn scan(
        &mut self,
        chunk: &[u8],
        rewrite: &mut dyn FnMut(EventKind, &str) -> Option<String>,
    ) -> Released {
        let mut out = BytesMut::new();
        let mut emit_from = 0;
        let mut event_start = (self.unit == Unit::Buffering).then_some(0);
        let mut pos = 0;
        while pos < chunk.len() {
            if std::mem::take(&mut self.after_cr) && chunk[pos] == b'\n' {
                pos += 1;
                continue;
            }

            // Take the rest of the current line, up to its line ending if it has arrived.
            let rest = &chunk[pos..];
            let line_end = rest.iter().position(|&b| b == b'\n' || b == b'\r');
            let line = &rest[..line_end.unwrap_or(rest.len())];
            if !line.is_empty() && self.unit == Unit::Idle {
                self.start_event();
                event_start = Some(pos);
            }
            self.push_line_bytes(line);
            let Some(line_end) = line_end else {
                break;
            };
            self.after_cr = rest[line_end] == b'\r';
            pos += line_end + 1;

            // A finished event (or leading comment) is released, rewritten if it must be.
            let Some(kind) = self.end_line() else {
                continue;
            };
            let offered = kind.filter(|kind| match kind {
                EventKind::Endpoint => true,
                EventKind::Message => self.messages,
                EventKind::Other => false,
            });
            let Some(start) = event_start.take() else {
                if offered.is_some() {
                    tracing::warn!("event exceeds the size limit; forwarded unchanged");
                }
                continue;
            };
            match offered.map(|kind| self.rewrite_held(kind, &chunk[start..pos], rewrite)) {
                Some(Some(event)) => {
                    out.extend_from_slice(&chunk[emit_from..start]);
                    out.extend_from_slice(&event);
                    emit_from = pos;
                }
                _ => out.extend_from_slice(&self.buf),
            }
            self.clear_buf();
        }
        self.hold_tail(chunk, event_start, emit_from, out)
    }

    /// At the end of a chunk: holds back the unfinished event's bytes, unless that would make
    /// it too big to hold, and returns what is released.
    fn hold_tail(
        &mut self,
        chunk: &[u8],
        event_start: Option<usize>,
        emit_from: usize,
        mut out: BytesMut,
    ) -> Released {
        let mut emit_to = chunk.len();
        if let Some(start) = event_start {
            if self.buf.len() + (chunk.len() - start) > MAX_EVENT_BYTES {
                tracing::debug!("event exceeds the size limit; streamed without holding it back");
                self.unit = Unit::Passthrough;
                out.extend_from_slice(&self.buf);
                self.clear_buf();
            } else {
                self.buf.extend_from_slice(&chunk[start..]);
                emit_to = start;
            }
        }
        if out.is_empty() {
            return Released::Range(emit_from..emit_to);
        }
        out.extend_from_slice(&chunk[emit_from..emit_to]);
        Released::Assembled(out)
    }

    /// Rewrites the event made of the held bytes and `tail`, unless it is too big.
    fn rewrite_held(
        &mut self,
        kind: EventKind,
        tail: &[u8],
        rewrite: &mut dyn FnMut(EventKind, &str) -> Option<String>,
    ) -> Option<Vec<u8>> {
        if self.buf.len() + tail.len() > MAX_EVENT_BYTES {
            tracing::warn!("event exceeds the size limit; forwarded unchanged");
            return None;
        }
        let held = self.buf.len();
        self.buf.extend_from_slice(tail);
        let rewritten = rewrite_event_data(&self.buf, &mut |data| rewrite(kind, data));
        self.buf.truncate(held);
        rewritten
    }

    fn start_event(&mut self) {
        self.unit = Unit::Buffering;
        self.in_event = false;
        self.kind = EventKind::Message;
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) {
        if self.line_len < HEAD_BYTES {
            let n = bytes.len().min(HEAD_BYTES - self.line_len);
            self.head[self.line_len..self.line_len + n].copy_from_slice(&bytes[..n]);
        }
        self.line_len += bytes.len();
    }

    fn clear_buf(&mut self) {
        self.buf.clear();
        self.buf.shrink_to(RETAINED_BUFFER_BYTES);
    }

    /// Classifies the line just ended. Returns `Some` when it ends the current event (with
    /// the event's kind) or a leading comment (`Some(None)`).
    fn end_line(&mut self) -> Option<Option<EventKind>> {
        let len = std::mem::take(&mut self.line_len);
        if self.unit == Unit::Idle {
            return None;
        }
        if len == 0 {
            self.unit = Unit::Idle;
            return Some(self.in_event.then_some(self.kind));
        }
        let head = &self.head[..len.min(HEAD_BYTES)];
        if head[0] == b':' {
            if self.in_event {
                return None;
            }
            self.unit = Unit::Idle;
            return Some(None);
        }
        self.in_event = true;
        if let Some((b"event", value)) = split_field(head) {
            self.kind = match value {
                _ if len > HEAD_BYTES => EventKind::Other,
                b"endpoint" => EventKind::Endpoint,
                b"message" | b"" => EventKind::Message,
                _ => EventKind::Other,
            };
        }
        None
    }
}

/// Splits a field line into its name and value (one leading space of the value dropped);
/// `None` for a comment or an empty line.
fn split_field(line: &[u8]) -> Option<(&[u8], &[u8])> {
    if line.first().is_none_or(|&b| b == b':') {
        return None;
    }
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return Some((line, b""));
    };
    let value = &line[colon + 1..];
    Some((&line[..colon], value.strip_prefix(b" ").unwrap_or(value)))
}

/// Splits complete bytes into lines, each with its line ending (CRLF, LF or CR; empty for a
/// last line without one).
fn split_lines(mut bytes: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    std::iter::from_fn(move || {
        if bytes.is_empty() {
            return None;
        }
        let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') else {
            return Some((std::mem::take(&mut bytes), &b""[..]));
        };
        let crlf = bytes[end] == b'\r' && bytes.get(end + 1) == Some(&b'\n');
        let (line, rest) = bytes.split_at(end);
        let (ending, rest) = rest.split_at(if crlf { 2 } else { 1 });
        bytes = rest;
        Some((line, ending))
    })
}

/// Rewrites a complete event: its data goes through `rewrite`, and the result replaces its
/// `data` lines where the first of them stood. `None` leaves the event as is.
fn rewrite_event_data(
    event: &[u8],
    rewrite: &mut dyn FnMut(&str) -> Option<String>,
) -> Option<Vec<u8>> {
    let data = event_data(event)?;
    let new = rewrite(std::str::from_utf8(&data).ok()?)?;

    let mut out = Vec::with_capacity(event.len() + new.len());
    let mut data_written = false;
    for (line, ending) in split_lines(event) {
        if !matches!(split_field(line), Some((b"data", _))) {
            out.extend_from_slice(line);
            out.extend_from_slice(ending);
        } else if !std::mem::replace(&mut data_written, true) {
            write_data_lines(&mut out, &new, ending);
        }
    }
    Some(out)
}

/// The event's data per the SSE rules (its `data` values joined with LF), or `None` when it
/// has no `data` field and so would not be dispatched at all.
fn event_data(event: &[u8]) -> Option<Vec<u8>> {
    let mut data: Option<Vec<u8>> = None;
    for (line, _) in split_lines(event) {
        if let Some((b"data", value)) = split_field(line) {
            let data = data.get_or_insert_with(Vec::new);
            data.extend_from_slice(value);
            data.push(b'\n');
        }
    }

    // Every value was followed by LF; the last one is not part of the data.
    data.map(|mut data| {
        data.pop();
        data
    })
}

fn write_data_lines(out: &mut Vec<u8>, data: &str, ending: &[u8]) {
    let data = data.replace("\r\n", "\n").replace('\r', "\n");
    for line in data.split('\n') {
        out.extend_from_slice(b"data:");
        if !line.is_empty() {
            out.push(b' ');
            out.extend_from_slice(line.as_bytes());
        }
        out.extend_from_slice(ending);
    }
}

/// Maps the URL in a legacy `endpoint` event to the path a client should post to instead:
/// the same place on the upstream, seen through one route's prefix.
///
/// A URL under the route's base path becomes `{prefix}{rest}`; any other URL on the
/// upstream's origin becomes `{prefix}/~{path}`, which [`upstream_url`] maps back to the
/// origin's root. The query is kept as given, the fragment dropped.
#[derive(Debug, Clone)]
pub(crate) struct EndpointRewriter {
    /// The URL the SSE stream was requested from: relative endpoints resolve against it.
    sse_url: Url,
    origin: Origin,
    /// The route's base path without a trailing slash (empty for the origin's root).
    base_path: String,
    /// The base URL's path ended with `/`, so an empty rest reads back with one.
    base_trailing_slash: bool,
    /// The route's prefix without a trailing slash (empty for `/`).
    prefix: String,
}

impl EndpointRewriter {
    /// A rewriter for one stream, requested from `sse_url`, of the route that maps `prefix`
    /// (`/` or `/name`) to `upstream_base`.
    pub(crate) fn new(sse_url: Url, upstream_base: Url, prefix: &str) -> Self {
        let base_path = upstream_base.path();
        Self {
            sse_url,
            origin: upstream_base.origin(),
            base_path: base_path.strip_suffix('/').unwrap_or(base_path).to_owned(),
            base_trailing_slash: base_path.len() > 1 && base_path.ends_with('/'),
            prefix: prefix.strip_suffix('/').unwrap_or(prefix).to_owned(),
        }
    }

    /// The origin-relative URL the client should use for `endpoint`, or `None` to leave the
    /// event alone: it is not a URL, or it points at another origin, which the gateway does
    /// not proxy for this route.
    pub(crate) fn rewrite(&self, endpoint: &str) -> Option<String> {
        let target = match self.sse_url.join(endpoint) {
            Ok(target) => target,
            Err(error) => {
                tracing::debug!(%error, "endpoint event data is not a URL; forwarded unchanged");
                return None;
            }
        };
        if target.origin() != self.origin {
            tracing::debug!("endpoint event points at another origin; forwarded unchanged");
            return None;
        }

        // Below the base path, the rest goes after the prefix; anywhere else on the origin,
        // the whole path goes after the root marker, which also carries what the short form
        // cannot: the base path itself (an empty rest would read back with a trailing
        // slash), a rest starting `//` (scheme-relative: another host), and at a route at
        // `/`, a path the gateway keeps for its own pages.
        let path = target.path();
        let mut rewritten = String::with_capacity(self.prefix.len() + path.len() + 8);
        rewritten.push_str(&self.prefix);
        let short = self
            .below_base(path)
            .filter(|rest| self.short_form_holds(rest));
        match short {
            Some(rest) => rewritten.push_str(rest),
            None => {
                rewritten.push_str(ROOT_MARKER);
                rewritten.push_str(path);
            }
        }
        if let Some(query) = target.query() {
            rewritten.push('?');
            rewritten.push_str(query);
        }
        Some(rewritten)
    }

    /// Whether `{prefix}{rest}` leads back to the same place through [`upstream_url`] and
    /// the route table.
    fn short_form_holds(&self, rest: &str) -> bool {
        if rest.is_empty() {
            // Only a bare prefix over a base without a trailing slash reads back as the base.
            return !self.prefix.is_empty() && !self.base_trailing_slash;
        }
        !rest.starts_with("//")
            && root_path(rest).is_none()
            && !(self.prefix.is_empty() && crate::route::is_reserved(rest))
    }

    /// The part of `path` after the base path, if `path` is the base path or below it.
    fn below_base<'a>(&self, path: &'a str) -> Option<&'a str> {
        let rest = path.strip_prefix(self.base_path.as_str())?;
        (rest.is_empty() || rest.starts_with('/')).then_some(rest)
    }
}

/// The path on the origin's root that `rest` stands for, when it starts with the root marker.
fn root_path(rest: &str) -> Option<&str> {
    let path = rest.strip_prefix(ROOT_MARKER)?;
    (path.is_empty() || path.starts_with('/')).then_some(path)
}

/// The upstream URL for a request to `{prefix}{rest}?{query}` on a route whose upstream is
/// `base`: the inverse of [`EndpointRewriter::rewrite`].
///
/// `rest` is the request path after the prefix (`""`, `/mcp`, `/~/messages/`). A `rest` under
/// the root marker `/~` addresses the upstream origin's root; any other is appended to the
/// base path without doubling its slash. An empty `rest` is the base URL's own path. The
/// query replaces the base URL's and is kept as given; percent-escapes in `rest` are kept.
pub(crate) fn upstream_url(base: &Url, rest: &str, query: Option<&str>) -> Url {
    let mut url = base.clone();
    url.set_fragment(None);
    if let Some(path) = root_path(rest) {
        url.set_path(if path.is_empty() { "/" } else { path });
    } else if !rest.is_empty() {
        let base_path = base.path();
        let base_path = base_path.strip_suffix('/').unwrap_or(base_path);
        let mut path = String::with_capacity(base_path.len() + rest.len() + 1);
        path.push_str(base_path);
        if !rest.starts_with('/') {
            path.push('/');
        }
        path.push_str(rest);
        url.set_path(&path);
    }
    url.set_query(query);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENDPOINT_LF: &[u8] = b"event: endpoint\ndata: /v1/message?sessionId=abc\n\n";

    fn url(s: &str) -> Url {
        Url::parse(s).expect("test URL parses")
    }

    /// Rewrites every endpoint to a fixed marker, recording what it was given.
    fn marker(seen: &mut Vec<String>) -> impl FnMut(&str) -> Option<String> + '_ {
        |data| {
            seen.push(data.to_owned());
            Some("/gw/message?sessionId=abc".to_owned())
        }
    }

    /// Feeds `chunks` in order and returns everything released, including `finish`.
    fn run(chunks: &[&[u8]]) -> (Vec<u8>, Vec<String>) {
        let mut seen = Vec::new();
        let mut scanner = SseScanner::new();
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend_from_slice(&scanner.feed(chunk, marker(&mut seen)));
        }
        out.extend_from_slice(&scanner.finish());
        (out, seen)
    }

    fn feed_all(scanner: &mut SseScanner, chunk: &[u8]) -> Bytes {
        scanner.feed(chunk, |_| Some("/rewritten".to_owned()))
    }

    #[test]
    fn non_endpoint_events_pass_through_byte_identical() {
        let stream: &[u8] = b"event: message\ndata: {\"a\":1}\nid: 7\nretry: 10\n\n\
            data: one\ndata: two\n\n: comment\n\nevent:ping\ndata\n\n";
        let (out, seen) = run(&[stream]);
        assert_eq!(out, stream);
        assert!(seen.is_empty());
    }

    #[test]
    fn complete_events_are_released_in_the_same_feed() {
        let mut scanner = SseScanner::new();
        let out = feed_all(&mut scanner, b"data: a\n\ndata: b\n\ndata: c");
        assert_eq!(&out[..], b"data: a\n\ndata: b\n\n");
        assert_eq!(&feed_all(&mut scanner, b"\n\n")[..], b"data: c\n\n");
    }

    #[test]
    fn complete_events_are_released_as_one_slice_of_the_chunk() {
        let mut scanner = SseScanner::new();
        let released = scanner.scan(b"data: a\n\n: c\n\ndata: b", &mut |_, _| None);
        assert!(matches!(released, Released::Range(range) if range == (0..14)));
    }

    #[test]
    fn message_events_are_offered_only_when_asked_for_and_across_chunks() {
        let stream: &[&[u8]] = &[
            b": hello\n\nevent: endpoint\ndata: /v1/message\n\ndata: {\"a\"",
            b":1}\n\nevent: message\r\ndata: {\"b\":2}\r\n\r\nevent: ping\ndata: {}\n\n",
        ];
        let mut offered = Vec::new();
        let mut scanner = SseScanner::new();
        let mut out = Vec::new();
        for chunk in stream {
            let released = scanner.feed_messages(
                chunk,
                |_| Some("/gw/message".into()),
                |data| {
                    offered.push(data.to_owned());
                    Some("{\"changed\":true}".into())
                },
            );
            out.extend_from_slice(&released);
        }
        out.extend_from_slice(&scanner.finish());
        assert_eq!(offered, ["{\"a\":1}", "{\"b\":2}"]);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            ": hello\n\nevent: endpoint\ndata: /gw/message\n\ndata: {\"changed\":true}\n\n\
             event: message\r\ndata: {\"changed\":true}\r\n\r\nevent: ping\ndata: {}\n\n"
        );

        // Without asking, messages pass byte for byte.
        let mut plain = SseScanner::new();
        let released = plain.feed(b"data: {\"a\":1}\n\n", |_| None);
        assert_eq!(&released[..], b"data: {\"a\":1}\n\n");
    }

    #[test]
    fn endpoint_event_data_is_rewritten() {
        let (out, seen) = run(&[ENDPOINT_LF]);
        assert_eq!(out, b"event: endpoint\ndata: /gw/message?sessionId=abc\n\n");
        assert_eq!(seen, ["/v1/message?sessionId=abc"]);
    }

    #[test]
    fn endpoint_event_with_data_before_event_field_is_rewritten() {
        let (out, seen) = run(&[b"data: /v1/message\nevent: endpoint\n\n"]);
        assert_eq!(out, b"data: /gw/message?sessionId=abc\nevent: endpoint\n\n");
        assert_eq!(seen, ["/v1/message"]);
    }

    #[test]
    fn only_the_endpoint_event_changes_among_other_events() {
        let stream = b": hello\n\nevent: message\ndata: x\n\n\
            event: endpoint\ndata: /v1/message\n\n\
            data: after\n\n";
        let (out, _) = run(&[stream]);
        let expected: &[u8] = b": hello\n\nevent: message\ndata: x\n\n\
            event: endpoint\ndata: /gw/message?sessionId=abc\n\n\
            data: after\n\n";
        assert_eq!(out, expected);
    }

    #[test]
    fn endpoint_event_keeps_its_other_lines() {
        let (out, _) = run(&[b"id: 1\nevent: endpoint\n: note\ndata:/v1/a\nretry: 5\n\n"]);
        let expected: &[u8] =
            b"id: 1\nevent: endpoint\n: note\ndata: /gw/message?sessionId=abc\nretry: 5\n\n";
        assert_eq!(out, expected);
    }

    #[test]
    fn split_at_every_byte_matches_feeding_whole() {
        let streams: [&[u8]; 4] = [
            b": hi\n\nevent: endpoint\ndata: /v1/message?sessionId=abc\n\ndata: x\n\n",
            b": hi\r\n\r\nevent: endpoint\r\ndata: /v1/message?sessionId=abc\r\n\r\n\
                data: x\r\n\r\n",
            b": hi\r\rdata: /v1/message?sessionId=abc\revent: endpoint\r\rdata: x\r\r",
            b"\xEF\xBB\xBFevent: endpoint\ndata: /v1/m\n\n",
        ];
        for stream in streams {
            let (whole, whole_seen) = run(&[stream]);
            assert_eq!(whole_seen.len(), 1, "{:?}", String::from_utf8_lossy(stream));
            for at in 0..=stream.len() {
                let (first, second) = stream.split_at(at);
                let (split, seen) = run(&[first, second]);
                assert_eq!(split, whole, "split at {at}");
                assert_eq!(seen, whole_seen, "split at {at}");
            }
        }
    }

    #[test]
    fn one_byte_chunks_match_feeding_whole() {
        let stream: &[u8] =
            b"data: a\r\n\r\n: c\r\nevent: endpoint\r\ndata: /v1/m\r\ndata: 2\r\n\r\nid: 9\r\r";
        let chunks: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(run(&chunks), run(&[stream]));
    }

    #[test]
    fn crlf_endpoint_event_keeps_crlf() {
        let (out, _) = run(&[b"event: endpoint\r\ndata: /v1/message\r\n\r\n"]);
        assert_eq!(
            out,
            b"event: endpoint\r\ndata: /gw/message?sessionId=abc\r\n\r\n"
        );
    }

    #[test]
    fn cr_only_stream_is_parsed() {
        let (out, seen) = run(&[b"data: a\r\revent: endpoint\rdata: /v1/m\r\r"]);
        assert_eq!(
            out,
            b"data: a\r\revent: endpoint\rdata: /gw/message?sessionId=abc\r\r"
        );
        assert_eq!(seen, ["/v1/m"]);
    }

    #[test]
    fn event_ending_between_cr_and_lf_is_released_at_the_cr() {
        let mut scanner = SseScanner::new();
        let out = feed_all(&mut scanner, b"event: endpoint\r\ndata: /v1/m\r\n\r");
        assert_eq!(&out[..], b"event: endpoint\r\ndata: /rewritten\r\n\r");
        assert!(scanner.at_event_boundary());

        // The LF completing the line ending is not an extra empty line.
        let out = feed_all(&mut scanner, b"\ndata: x\r\n\r\n");
        assert_eq!(&out[..], b"\ndata: x\r\n\r\n");
    }

    #[test]
    fn lf_after_cr_inside_an_event_does_not_end_it() {
        let mut scanner = SseScanner::new();
        assert!(feed_all(&mut scanner, b"data: a\r").is_empty());
        assert!(feed_all(&mut scanner, b"\n").is_empty());
        assert_eq!(&feed_all(&mut scanner, b"\r\n")[..], b"data: a\r\n\r\n");
    }

    #[test]
    fn comment_between_events_is_released_immediately() {
        let mut scanner = SseScanner::new();
        assert_eq!(
            &feed_all(&mut scanner, b": keepalive\n")[..],
            b": keepalive\n"
        );
        assert!(scanner.at_event_boundary());
        assert_eq!(&feed_all(&mut scanner, b"\n")[..], b"\n");
    }

    #[test]
    fn comment_inside_an_event_stays_with_the_event() {
        let mut scanner = SseScanner::new();
        assert!(feed_all(&mut scanner, b"data: x\n: inside\n").is_empty());
        assert_eq!(&feed_all(&mut scanner, b"\n")[..], b"data: x\n: inside\n\n");
    }

    #[test]
    fn comment_split_across_chunks_is_released_when_complete() {
        let mut scanner = SseScanner::new();
        assert!(feed_all(&mut scanner, b": keep").is_empty());
        assert!(!scanner.at_event_boundary());
        assert_eq!(&feed_all(&mut scanner, b"alive\n")[..], b": keepalive\n");
        assert!(scanner.at_event_boundary());
    }

    #[test]
    fn multi_line_data_is_joined_with_lf() {
        let (out, seen) = run(&[b"event: endpoint\ndata: /v1/a\ndata:b\n\n"]);
        assert_eq!(seen, ["/v1/a\nb"]);
        assert_eq!(out, b"event: endpoint\ndata: /gw/message?sessionId=abc\n\n");
    }

    #[test]
    fn rewritten_data_with_newlines_becomes_several_data_lines() {
        let mut scanner = SseScanner::new();
        let out = scanner.feed(b"event: endpoint\r\ndata: x\r\n\r\n", |_| {
            Some("a\nb".into())
        });
        assert_eq!(&out[..], b"event: endpoint\r\ndata: a\r\ndata: b\r\n\r\n");
    }

    #[test]
    fn leading_space_is_stripped_once() {
        let (_, seen) = run(&[b"event:endpoint\ndata:  /v1/a\n\n"]);
        assert_eq!(seen, [" /v1/a"]);
    }

    #[test]
    fn event_field_without_colon_resets_the_type() {
        let stream: &[u8] = b"event: endpoint\nevent\ndata: /v1/a\n\n";
        let (out, seen) = run(&[stream]);
        assert_eq!(out, stream);
        assert!(seen.is_empty());
    }

    #[test]
    fn last_event_field_wins() {
        let (_, seen) = run(&[b"event: message\ndata: /v1/a\nevent: endpoint\n\n"]);
        assert_eq!(seen, ["/v1/a"]);
    }

    #[test]
    fn event_type_match_is_exact() {
        for stream in [
            &b"event: Endpoint\ndata: /v1/a\n\n"[..],
            b"event: endpoints\ndata: /v1/a\n\n",
            b"event: endpoint \ndata: /v1/a\n\n",
            b"event:  endpoint\ndata: /v1/a\n\n",
            b"Event: endpoint\ndata: /v1/a\n\n",
        ] {
            let (out, seen) = run(&[stream]);
            assert_eq!(out, stream);
            assert!(seen.is_empty(), "{:?}", String::from_utf8_lossy(stream));
        }
    }

    #[test]
    fn data_field_without_colon_is_empty_data() {
        let (out, seen) = run(&[b"event: endpoint\ndata\n\n"]);
        assert_eq!(seen, [""]);
        assert_eq!(out, b"event: endpoint\ndata: /gw/message?sessionId=abc\n\n");
    }

    #[test]
    fn endpoint_event_without_data_is_not_rewritten() {
        let stream: &[u8] = b"event: endpoint\nid: 1\n\n";
        let (out, seen) = run(&[stream]);
        assert_eq!(out, stream);
        assert!(seen.is_empty());
    }

    #[test]
    fn endpoint_event_is_forwarded_unchanged_when_rewrite_declines() {
        let mut scanner = SseScanner::new();
        let out = scanner.feed(ENDPOINT_LF, |_| None);
        assert_eq!(&out[..], ENDPOINT_LF);
    }

    #[test]
    fn endpoint_event_with_invalid_utf8_data_is_forwarded_unchanged() {
        let stream: &[u8] = b"event: endpoint\ndata: /v1/\xFF\n\n";
        let (out, seen) = run(&[stream]);
        assert_eq!(out, stream);
        assert!(seen.is_empty());
    }

    #[test]
    fn byte_order_mark_at_start_is_consumed() {
        let (out, seen) = run(&[b"\xEF\xBB\xBFevent: endpoint\ndata: /v1/a\n\n"]);
        assert_eq!(out, b"event: endpoint\ndata: /gw/message?sessionId=abc\n\n");
        assert_eq!(seen, ["/v1/a"]);
    }

    #[test]
    fn byte_order_mark_later_in_the_stream_is_data() {
        let stream: &[u8] = b"data: a\n\n\xEF\xBB\xBFevent: endpoint\ndata: /v1/a\n\n";
        let (out, seen) = run(&[stream]);
        assert_eq!(out, stream);
        assert!(seen.is_empty());
    }

    #[test]
    fn partial_byte_order_mark_is_held_then_released_as_data() {
        let mut scanner = SseScanner::new();
        assert!(feed_all(&mut scanner, b"\xEF").is_empty());
        assert!(!scanner.at_event_boundary());
        assert!(feed_all(&mut scanner, b"\xBB").is_empty());
        assert_eq!(&feed_all(&mut scanner, b"x\n\n")[..], b"\xEF\xBBx\n\n");

        let mut scanner = SseScanner::new();
        assert!(feed_all(&mut scanner, b"\xEF").is_empty());
        assert_eq!(&scanner.finish()[..], b"\xEF");
    }

    #[test]
    fn empty_chunk_releases_nothing_and_changes_nothing() {
        let mut scanner = SseScanner::new();
        assert!(feed_all(&mut scanner, b"").is_empty());
        assert!(scanner.at_event_boundary());
        assert!(feed_all(&mut scanner, b"data: a").is_empty());
        assert!(feed_all(&mut scanner, b"").is_empty());
        assert!(!scanner.at_event_boundary());
        assert_eq!(&feed_all(&mut scanner, b"\n\n")[..], b"data: a\n\n");
    }

    #[test]
    fn at_event_boundary_tracks_events_in_progress() {
        let mut scanner = SseScanner::new();
        assert!(scanner.at_event_boundary());
        feed_all(&mut scanner, b"da");
        assert!(!scanner.at_event_boundary(), "half a line");
        feed_all(&mut scanner, b"ta: x\n");
        assert!(
            !scanner.at_event_boundary(),
            "a field line without its blank line"
        );
        feed_all(&mut scanner, b"\n");
        assert!(scanner.at_event_boundary(), "event complete");
        feed_all(&mut scanner, b"\n\n");
        assert!(scanner.at_event_boundary(), "blank lines between events");
        feed_all(&mut scanner, b"data: y\r\n\r");
        assert!(scanner.at_event_boundary(), "event complete at a CR");
    }

    #[test]
    fn finish_returns_a_truncated_event_unchanged() {
        let mut scanner = SseScanner::new();
        assert!(feed_all(&mut scanner, b"event: endpoint\ndata: /v1/a\n").is_empty());
        assert_eq!(&scanner.finish()[..], b"event: endpoint\ndata: /v1/a\n");
        assert!(scanner.at_event_boundary());
        assert!(scanner.finish().is_empty());
    }

    #[test]
    fn event_larger_than_the_limit_streams_through() {
        let mut scanner = SseScanner::new();
        let half = vec![b'x'; MAX_EVENT_BYTES / 2 + 1];
        let mut first = b"data: ".to_vec();
        first.extend_from_slice(&half);
        assert!(feed_all(&mut scanner, &first).is_empty());

        // The chunk that crosses the limit releases what was held, and what follows flows.
        let out = feed_all(&mut scanner, &half);
        assert_eq!(out.len(), first.len() + half.len());
        assert_eq!(&out[..first.len()], &first[..]);
        assert!(scanner.buf.capacity() <= RETAINED_BUFFER_BYTES);
        assert!(!scanner.at_event_boundary());
        assert_eq!(&feed_all(&mut scanner, b"more\n")[..], b"more\n");
        assert!(!scanner.at_event_boundary());
        assert_eq!(&feed_all(&mut scanner, b"\ndata: n")[..], b"\n");
        assert!(!scanner.at_event_boundary());
        assert_eq!(&feed_all(&mut scanner, b"\n\n")[..], b"data: n\n\n");
    }

    #[test]
    fn endpoint_event_larger_than_the_limit_is_not_rewritten() {
        let mut stream = b"event: endpoint\ndata: /v1/m?".to_vec();
        stream.extend(std::iter::repeat_n(b'a', MAX_EVENT_BYTES));
        stream.extend_from_slice(b"\n\n");
        let (first, second) = stream.split_at(MAX_EVENT_BYTES / 2);
        let (out, seen) = run(&[first, second]);
        assert_eq!(out, stream);
        assert!(seen.is_empty());

        // Whole in one chunk, it is no more rewritable than when it arrives in pieces.
        let (out, seen) = run(&[&stream]);
        assert_eq!(out, stream);
        assert!(seen.is_empty());
    }

    #[test]
    fn long_lines_hold_no_more_than_the_limit() {
        let mut scanner = SseScanner::new();
        let piece = vec![b'y'; 64 * 1024];
        feed_all(&mut scanner, b"data: ");
        for _ in 0..40 {
            feed_all(&mut scanner, &piece);
            assert!(scanner.buf.len() <= MAX_EVENT_BYTES);
        }
        assert_eq!(&feed_all(&mut scanner, b"\n\n")[..], b"\n\n");
    }

    #[test]
    fn scanner_and_rewriter_together_rewrite_a_legacy_stream() {
        let rewriter = EndpointRewriter::new(
            url("https://mcp.example.com/v1/sse"),
            url("https://mcp.example.com/v1"),
            "/atlassian",
        );
        let mut scanner = SseScanner::new();
        let out = scanner.feed(
            b"event: endpoint\ndata: message?sessionId=abc\n\n",
            |data| rewriter.rewrite(data),
        );
        assert_eq!(
            &out[..],
            b"event: endpoint\ndata: /atlassian/message?sessionId=abc\n\n"
        );
    }

    fn rewriter(sse: &str, base: &str, prefix: &str) -> EndpointRewriter {
        EndpointRewriter::new(url(sse), url(base), prefix)
    }

    fn atlassian() -> EndpointRewriter {
        rewriter(
            "https://mcp.example.com/v1/sse?x=1",
            "https://mcp.example.com/v1",
            "/atlassian",
        )
    }

    #[test]
    fn origin_relative_endpoint_under_base_goes_under_prefix() {
        let rewritten = atlassian().rewrite("/v1/message?sessionId=abc");
        assert_eq!(
            rewritten.as_deref(),
            Some("/atlassian/message?sessionId=abc")
        );
    }

    #[test]
    fn absolute_endpoint_on_the_upstream_origin_is_rewritten() {
        let rewritten = atlassian().rewrite("https://mcp.example.com/v1/message?sessionId=abc");
        assert_eq!(
            rewritten.as_deref(),
            Some("/atlassian/message?sessionId=abc")
        );
        let explicit_port = atlassian().rewrite("https://MCP.example.com:443/v1/message");
        assert_eq!(explicit_port.as_deref(), Some("/atlassian/message"));
    }

    #[test]
    fn endpoint_relative_to_the_sse_url_is_resolved_against_it() {
        let rewritten = atlassian().rewrite("message?sessionId=abc");
        assert_eq!(
            rewritten.as_deref(),
            Some("/atlassian/message?sessionId=abc")
        );
        let dot = atlassian().rewrite("../v1/./message");
        assert_eq!(dot.as_deref(), Some("/atlassian/message"));
        let query_only = atlassian().rewrite("?sessionId=abc");
        assert_eq!(query_only.as_deref(), Some("/atlassian/sse?sessionId=abc"));
    }

    #[test]
    fn endpoint_on_another_origin_is_left_alone() {
        for endpoint in [
            "https://other.example.com/v1/message",
            "http://mcp.example.com/v1/message",
            "https://mcp.example.com:8443/v1/message",
            "//other.example.com/v1/message",
        ] {
            assert_eq!(atlassian().rewrite(endpoint), None, "{endpoint}");
        }
    }

    #[test]
    fn endpoint_that_is_not_a_url_is_left_alone() {
        assert_eq!(atlassian().rewrite("http://[::1"), None);
    }

    #[test]
    fn endpoint_outside_the_base_path_goes_under_the_root_marker() {
        let r = rewriter(
            "https://mcp.example.com/v1/sse",
            "https://mcp.example.com/v1",
            "/p",
        );
        assert_eq!(
            r.rewrite("/messages/?session_id=1").as_deref(),
            Some("/p/~/messages/?session_id=1")
        );
        assert_eq!(
            r.rewrite("/v1x/message").as_deref(),
            Some("/p/~/v1x/message")
        );
        assert_eq!(r.rewrite("/").as_deref(), Some("/p/~/"));
    }

    #[test]
    fn endpoint_equal_to_the_base_path_is_the_prefix() {
        assert_eq!(
            atlassian().rewrite("/v1?s=1").as_deref(),
            Some("/atlassian?s=1")
        );
        assert_eq!(atlassian().rewrite("/v1/").as_deref(), Some("/atlassian/"));
    }

    #[test]
    fn root_prefix_never_doubles_the_slash() {
        let r = rewriter(
            "https://mcp.example.com/v1/sse",
            "https://mcp.example.com/v1",
            "/",
        );
        assert_eq!(
            r.rewrite("/v1/message?sessionId=abc").as_deref(),
            Some("/message?sessionId=abc")
        );
        assert_eq!(r.rewrite("/messages/").as_deref(), Some("/~/messages/"));
    }

    #[test]
    fn what_the_short_form_cannot_carry_goes_under_the_root_marker() {
        let base = "https://mcp.example.com/v1";
        let at_root = rewriter("https://mcp.example.com/v1/sse", base, "/");
        let at_p = rewriter(
            "https://mcp.example.com/v1/sse",
            "https://mcp.example.com/v1/",
            "/p",
        );
        // The base path itself: a bare `/` or `/p` would come back as `/v1/`, and `/` is the
        // gateway's page.
        assert_eq!(at_root.rewrite("/v1?s=1").as_deref(), Some("/~/v1?s=1"));
        assert_eq!(at_p.rewrite("/v1").as_deref(), Some("/p/~/v1"));
        // `//x` would send the client to the host `x`.
        assert_eq!(
            at_root.rewrite("/v1//x/message").as_deref(),
            Some("/~/v1//x/message")
        );
        // The gateway's own paths stay the gateway's.
        assert_eq!(
            at_root.rewrite("/v1/auth/x").as_deref(),
            Some("/~/v1/auth/x")
        );
        assert_eq!(
            at_root.rewrite("/v1/metrics").as_deref(),
            Some("/~/v1/metrics")
        );
        assert_eq!(at_p.rewrite("/v1/auth/x").as_deref(), Some("/p/auth/x"));

        let url = Url::parse(base).expect("url");
        for (rest, path) in [("/~/v1", "/v1"), ("/~/v1//x/message", "/v1//x/message")] {
            assert_eq!(upstream_url(&url, rest, None).path(), path);
        }
    }

    #[test]
    fn base_with_trailing_slash_is_the_same_base() {
        let r = rewriter(
            "https://mcp.example.com/v1/sse",
            "https://mcp.example.com/v1/",
            "/p",
        );
        assert_eq!(r.rewrite("/v1/message").as_deref(), Some("/p/message"));
        assert_eq!(r.rewrite("/v2/message").as_deref(), Some("/p/~/v2/message"));
    }

    #[test]
    fn base_with_empty_path_holds_every_path() {
        for base in ["https://mcp.example.com", "https://mcp.example.com/"] {
            let r = rewriter("https://mcp.example.com/sse", base, "/p");
            assert_eq!(
                r.rewrite("/messages/?session_id=1").as_deref(),
                Some("/p/messages/?session_id=1")
            );
            assert_eq!(r.rewrite("message").as_deref(), Some("/p/message"));
        }
    }

    #[test]
    fn path_below_base_that_looks_like_the_root_marker_stays_unambiguous() {
        let r = rewriter(
            "https://mcp.example.com/v1/sse",
            "https://mcp.example.com/v1",
            "/p",
        );
        assert_eq!(r.rewrite("/v1/~/m").as_deref(), Some("/p/~/v1/~/m"));
        let root = rewriter(
            "https://mcp.example.com/sse",
            "https://mcp.example.com",
            "/p",
        );
        assert_eq!(root.rewrite("/~/m").as_deref(), Some("/p/~/~/m"));
        assert_eq!(root.rewrite("/~x").as_deref(), Some("/p/~x"));
    }

    #[test]
    fn fragment_is_dropped_and_percent_escapes_kept() {
        let rewritten = atlassian().rewrite("/v1/a%2Fb/message?s=%20x&t=a%26b#frag");
        assert_eq!(
            rewritten.as_deref(),
            Some("/atlassian/a%2Fb/message?s=%20x&t=a%26b")
        );
    }

    #[test]
    fn upstream_url_maps_prefix_paths_back() {
        let base = url("https://mcp.example.com/v1");
        let cases = [
            ("", None, "https://mcp.example.com/v1"),
            ("/", None, "https://mcp.example.com/v1/"),
            (
                "/mcp",
                Some("a=1&b=%20"),
                "https://mcp.example.com/v1/mcp?a=1&b=%20",
            ),
            (
                "/~/messages/",
                Some("session_id=1"),
                "https://mcp.example.com/messages/?session_id=1",
            ),
            ("/~", None, "https://mcp.example.com/"),
            ("/~x", None, "https://mcp.example.com/v1/~x"),
            ("/a%2Fb", None, "https://mcp.example.com/v1/a%2Fb"),
            ("mcp", None, "https://mcp.example.com/v1/mcp"),
        ];
        for (rest, query, expected) in cases {
            assert_eq!(
                upstream_url(&base, rest, query).as_str(),
                expected,
                "{rest}"
            );
        }
    }

    #[test]
    fn upstream_url_handles_trailing_slash_and_empty_base_paths() {
        let slash = url("https://mcp.example.com/v1/");
        assert_eq!(
            upstream_url(&slash, "", None).as_str(),
            "https://mcp.example.com/v1/"
        );
        assert_eq!(
            upstream_url(&slash, "/mcp", None).as_str(),
            "https://mcp.example.com/v1/mcp"
        );
        let root = url("https://mcp.example.com");
        assert_eq!(
            upstream_url(&root, "", None).as_str(),
            "https://mcp.example.com/"
        );
        assert_eq!(
            upstream_url(&root, "/mcp", Some("")).as_str(),
            "https://mcp.example.com/mcp?"
        );
        let with_query = url("https://mcp.example.com/v1?tenant=a#f");
        assert_eq!(
            upstream_url(&with_query, "/mcp", None).as_str(),
            "https://mcp.example.com/v1/mcp"
        );
    }

    /// Splits a rewritten endpoint into the route-relative rest and query, as the route table
    /// does for an incoming request.
    fn strip_prefix<'a>(rewritten: &'a str, prefix: &str) -> (&'a str, Option<&'a str>) {
        let (path, query) = match rewritten.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (rewritten, None),
        };
        let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
        (
            path.strip_prefix(prefix)
                .expect("rewritten path is under the prefix"),
            query,
        )
    }

    #[test]
    fn rewrite_then_upstream_url_round_trips() {
        let sse = "https://mcp.example.com/v1/sse?x=1";
        let bases = [
            "https://mcp.example.com/v1",
            "https://mcp.example.com/v1/",
            "https://mcp.example.com",
        ];
        let endpoints = [
            "/v1/message?sessionId=abc",
            "message?sessionId=abc",
            "https://mcp.example.com/v1/message?sessionId=abc#f",
            "/messages/?session_id=1",
            "/v1x/message",
            "/v1/~/m?q",
            "/~/m",
            "/v1/a%2Fb?s=%20x",
            "/",
        ];
        for base in bases {
            for prefix in ["/p", "/"] {
                let r = rewriter(sse, base, prefix);
                for endpoint in endpoints {
                    let rewritten = r.rewrite(endpoint).expect("same origin is rewritten");
                    assert!(!rewritten.contains("//"), "{rewritten}");
                    let (rest, query) = strip_prefix(&rewritten, prefix);
                    let back = upstream_url(&url(base), rest, query);
                    let mut expected = url(sse).join(endpoint).expect("endpoint resolves");
                    expected.set_fragment(None);
                    assert_eq!(back, expected, "{base} {prefix} {endpoint} via {rewritten}");
                }
            }
        }
    }
}
