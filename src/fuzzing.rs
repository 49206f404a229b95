//! Property checks over the code that reads untrusted input, one function per fuzz target.
//!
//! The fuzz targets in `fuzz/` call these with libFuzzer's inputs, and `tests/fuzz_corpus.rs`
//! replays the checked-in seed corpus through them, so each property is written once. Every
//! function takes raw bytes, runs one parser on them and panics when a property that the
//! parser's documentation promises does not hold: the SSE scanner and the endpoint rewrite,
//! the configuration loader, the JSON-RPC method sniffer and the OAuth callback's query.
//!
//! This module exists for those two callers only; it is not part of the crate's API.

use std::path::Path;
use std::sync::LazyLock;

use serde_json::Value;
use url::Url;

use crate::config::{Config, Env};
use crate::oauth::flow::CallbackParams;
use crate::proxy::jsonrpc::{method_label, sniff_method};
use crate::proxy::sse::{EndpointRewriter, SseScanner, upstream_url};

/// The byte-order mark the scanner drops at the very start of a stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The SSE scanner and the endpoint rewrite.
///
/// The input's first byte `n` says how many of the bytes after it are chunk lengths; the
/// rest is the event stream, fed in chunks of those lengths and then whatever remains. With
/// a rewrite that leaves every event alone, the scanner must release the stream unchanged
/// (less a leading byte-order mark), in order, and everything it consumed whenever it says
/// it is at an event boundary. With a rewrite that changes endpoints, the output must not
/// depend on the chunking. Every endpoint the scanner hands out, and the whole stream as a
/// string, must survive the rewrite and its inverse, `upstream_url`.
pub fn sse_scanner(data: &[u8]) {
    let (chunks, stream) = split_chunks(data);
    check_passthrough(&chunks, stream);

    let whole = relay(&[stream], |data| ROUND_TRIPS[0].rewriter.rewrite(data));
    let split = relay(&chunks, |data| ROUND_TRIPS[0].rewriter.rewrite(data));
    assert_eq!(
        split, whole,
        "the output depends on where the stream was split"
    );

    let endpoints = whole.endpoints.iter().map(String::as_str);
    for endpoint in endpoints.chain(std::str::from_utf8(stream).ok()) {
        for round_trip in ROUND_TRIPS.iter() {
            round_trip.check(endpoint);
        }
    }
}

/// Splits fuzz input into the chunks to feed and the whole stream they make up.
fn split_chunks(data: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let Some((&count, rest)) = data.split_first() else {
        return (Vec::new(), data);
    };
    let (lengths, stream) = rest.split_at(usize::from(count).min(rest.len()));
    let mut chunks = Vec::with_capacity(lengths.len() + 1);
    let mut left = stream;
    for &length in lengths {
        let (chunk, after) = left.split_at(usize::from(length).min(left.len()));
        chunks.push(chunk);
        left = after;
    }
    chunks.push(left);
    (chunks, stream)
}

/// What a scanner released for a whole stream, and the endpoint data it handed out.
#[derive(Debug, Default, PartialEq, Eq)]
struct Relayed {
    bytes: Vec<u8>,
    endpoints: Vec<String>,
}

fn relay(chunks: &[&[u8]], rewrite: impl Fn(&str) -> Option<String>) -> Relayed {
    let mut scanner = SseScanner::new();
    let mut relayed = Relayed::default();
    for chunk in chunks {
        let released = scanner.feed(chunk, |data| {
            relayed.endpoints.push(data.to_owned());
            rewrite(data)
        });
        relayed.bytes.extend_from_slice(&released);
    }
    relayed.bytes.extend_from_slice(&scanner.finish());
    assert!(scanner.at_event_boundary(), "finish leaves a fresh scanner");
    relayed
}

/// With no rewrite, what the scanner releases is always a prefix of the stream, all of what
/// it has consumed at an event boundary, and the whole stream at the end.
fn check_passthrough(chunks: &[&[u8]], stream: &[u8]) {
    check_passthrough_with(chunks, stream, false);
    check_passthrough_with(chunks, stream, true);
}

/// The pass-through check, with (`messages`) or without messages offered to a reader that
/// changes none.
fn check_passthrough_with(chunks: &[&[u8]], stream: &[u8], messages: bool) {
    let expected = stream.strip_prefix(BOM).unwrap_or(stream);
    let mut scanner = SseScanner::new();
    let mut released = Vec::new();
    let mut consumed = 0;
    for chunk in chunks {
        let out = match messages {
            true => scanner.feed_messages(chunk, |_| None, |_| None),
            false => scanner.feed(chunk, |_| None),
        };
        released.extend_from_slice(&out);
        consumed += chunk.len();
        assert!(
            expected.starts_with(&released),
            "released bytes are not the stream's"
        );
        if scanner.at_event_boundary() {
            let dropped = stream.len() - expected.len();
            assert_eq!(
                released.len() + dropped.min(consumed),
                consumed,
                "bytes held back at an event boundary"
            );
        }
    }
    released.extend_from_slice(&scanner.finish());
    assert_eq!(
        released, expected,
        "an unrewritten stream did not pass through"
    );
}

/// One route's view of an upstream, with the rewriter for a stream opened on it.
struct RoundTrip {
    sse_url: Url,
    base: Url,
    prefix: &'static str,
    rewriter: EndpointRewriter,
}

/// Routes with and without a base path, with and without its trailing slash, at `/` and
/// under a prefix. The first one also rewrites the scanner's endpoints.
static ROUND_TRIPS: LazyLock<Vec<RoundTrip>> = LazyLock::new(|| {
    let sse_url = "https://mcp.example.com/v1/sse?x=1";
    let bases = [
        "https://mcp.example.com/v1",
        "https://mcp.example.com/v1/",
        "https://mcp.example.com",
    ];
    let mut round_trips = Vec::new();
    for base in bases {
        for prefix in ["/p", "/"] {
            let sse_url = Url::parse(sse_url).expect("fixed URL parses");
            let base = Url::parse(base).expect("fixed URL parses");
            let rewriter = EndpointRewriter::new(sse_url.clone(), base.clone(), prefix);
            round_trips.push(RoundTrip {
                sse_url,
                base,
                prefix,
                rewriter,
            });
        }
    }
    round_trips
});

impl RoundTrip {
    /// A rewritten endpoint is an origin-relative URL under the route's prefix, and a request
    /// to it reaches the path and query the endpoint itself resolves to.
    fn check(&self, endpoint: &str) {
        let Some(rewritten) = self.rewriter.rewrite(endpoint) else {
            return;
        };
        let target = self
            .sse_url
            .join(endpoint)
            .expect("a rewritten endpoint is a URL");
        let context = || format!("{endpoint:?} on {} at {}", self.base, self.prefix);
        assert!(
            rewritten.starts_with('/') && !rewritten.starts_with("//"),
            "{rewritten:?} is not origin-relative: {}",
            context()
        );
        let (path, query) = match rewritten.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (rewritten.as_str(), None),
        };
        let rest = route_rest(path, self.prefix)
            .unwrap_or_else(|| panic!("{rewritten:?} is not under the prefix: {}", context()));
        assert!(
            !crate::route::is_reserved(path),
            "{rewritten:?} is one of the gateway's own paths: {}",
            context()
        );
        let back = upstream_url(&self.base, rest, query);
        assert_eq!(
            (back.path(), back.query()),
            (target.path(), target.query()),
            "{rewritten:?} does not lead back: {}",
            context()
        );
    }
}

/// The part of a request path after a route's prefix, as the route table takes it.
fn route_rest<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    if prefix == "/" {
        return Some(path);
    }
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// Where the fuzzed file claims to be; nothing exists there, so relative paths resolve to
/// files that are missing rather than to whatever the fuzzer's working directory holds.
const CONFIG_PATH: &str = "/nonexistent/mcp-u2m-gateway/gateway.toml";

/// A plain environment: a home directory and the token variables the seeds name.
const PLAIN_ENV: [(&str, &str); 3] = [
    ("HOME", "/home/fuzz"),
    ("INTERNAL_MCP_TOKEN", "fuzz-token"),
    ("MCP_GATEWAY_ADMIN_TOKEN", "fuzz-admin-token"),
];

/// The same on Databricks Apps, whose port variable overrides the listener.
const DATABRICKS_ENV: [(&str, &str); 4] = [
    ("HOME", "/home/fuzz"),
    ("INTERNAL_MCP_TOKEN", "fuzz-token"),
    ("MCP_GATEWAY_ADMIN_TOKEN", "fuzz-admin-token"),
    ("DATABRICKS_APP_PORT", "8080"),
];

/// The configuration loader: any text loads or fails without panicking, and a failure, and
/// every cause in its chain, says something.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for env in [&PLAIN_ENV as &dyn Env, &DATABRICKS_ENV] {
        if let Err(error) = Config::from_toml_str(&text, Path::new(CONFIG_PATH), env) {
            let mut cause: Option<&dyn std::error::Error> = Some(&error);
            while let Some(error) = cause {
                assert!(!error.to_string().is_empty(), "empty message: {error:?}");
                cause = error.source();
            }
        }
    }
}

/// The JSON-RPC method sniffer, on the input as a body and on an object built from it.
///
/// On any body that parses as JSON, the sniffer agrees with `method_label` where both
/// promise the same answer: an array is a batch, a scalar has no method, and an object whose
/// first member is `"method"` with a plain string value has that method's label. The object
/// built from the input puts a plain `method` among arbitrary other members and nested
/// values, where the sniffer must find it too.
pub fn jsonrpc_sniff(data: &[u8]) {
    let sniffed = sniff_method(data);
    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        check_sniffed(data, &value, sniffed);
    }

    let (body, method) = JsonBuilder::new(data).object_with_method();
    let value: Value = serde_json::from_slice(&body).unwrap_or_else(|error| {
        panic!("built body is not JSON ({error}): {}", body.escape_ascii())
    });
    assert_eq!(value.get("method").and_then(Value::as_str), Some(&*method));
    assert_eq!(
        sniff_method(&body),
        method_label(&value),
        "sniffed a different method in {}",
        body.escape_ascii()
    );
}

fn check_sniffed(body: &[u8], value: &Value, sniffed: Option<&str>) {
    let expected = match value {
        Value::Array(_) => method_label(value),
        Value::Object(members) => {
            let leading = leading_method(body);
            if leading.is_none() || leading != members.get("method").and_then(Value::as_str) {
                return;
            }
            method_label(value)
        }
        _ => None,
    };
    assert_eq!(sniffed, expected, "sniffed {}", body.escape_ascii());
}

/// The value of an object's first member when that member is `"method"` with a string
/// value spelled without escapes (the sniffer compares the raw bytes).
fn leading_method(body: &[u8]) -> Option<&str> {
    let ws: &[char] = &[' ', '\t', '\n', '\r'];
    let text = std::str::from_utf8(body).ok()?;
    let rest = text.trim_start_matches(ws).strip_prefix('{')?;
    let rest = rest.trim_start_matches(ws).strip_prefix("\"method\"")?;
    let rest = rest.trim_start_matches(ws).strip_prefix(':')?;
    let rest = rest.trim_start_matches(ws).strip_prefix('"')?;
    let method = &rest[..rest.find('"')?];
    (!method.contains('\\')).then_some(method)
}

/// Method names the sniffer should know, and some it should count as `other`.
const METHODS: &[&str] = &[
    "initialize",
    "tools/call",
    "tools/list",
    "ping",
    "notifications/initialized",
    "resources/read",
    "vendor/thing",
    "",
];

/// Builds JSON text from fuzz bytes; once they run out, every choice is the first one.
struct JsonBuilder<'a> {
    data: &'a [u8],
    out: Vec<u8>,
}

impl<'a> JsonBuilder<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            out: Vec::new(),
        }
    }

    fn byte(&mut self) -> u8 {
        let Some((&byte, rest)) = self.data.split_first() else {
            return 0;
        };
        self.data = rest;
        byte
    }

    fn choose(&mut self, count: u8) -> u8 {
        self.byte() % count
    }

    /// An object with a top-level `"method"` member among others, and that method.
    fn object_with_method(mut self) -> (Vec<u8>, String) {
        let method = self.method();
        let others = self.choose(5);
        let at = self.choose(others + 1);
        self.out.push(b'{');
        for index in 0..=others {
            if index > 0 {
                self.out.push(b',');
            }
            self.space();
            if index == at {
                self.out.extend_from_slice(b"\"method\"");
                self.colon();
                self.out.push(b'"');
                self.out.extend_from_slice(method.as_bytes());
                self.out.push(b'"');
            } else {
                self.key();
                self.colon();
                self.value(2);
            }
            self.space();
        }
        self.out.push(b'}');
        (self.out, method)
    }

    /// A method name without escapes: a known one, or plain characters.
    fn method(&mut self) -> String {
        let pick = usize::from(self.byte());
        if pick < 128 {
            return METHODS[pick % METHODS.len()].to_owned();
        }
        let length = self.choose(24);
        (0..length).map(|_| self.plain_char()).collect()
    }

    fn plain_char(&mut self) -> char {
        match self.byte() {
            b'"' | b'\\' => 'q',
            byte @ 0x20..=0x7e => char::from(byte),
            byte if byte & 1 == 0 => 'é',
            _ => '→',
        }
    }

    /// A member name that is never `method`, escaped or not.
    fn key(&mut self) {
        self.out.push(b'"');
        let length = self.choose(8);
        let mut plain = String::new();
        for _ in 0..length {
            match self.choose(8) {
                0 => self.out.extend_from_slice(b"\\\""),
                1 => self.out.extend_from_slice(b"\\u0041"),
                _ => plain.push(char::from(b'a' + self.choose(26))),
            }
        }
        if plain == "method" {
            plain.push('s');
        }
        self.out.extend_from_slice(plain.as_bytes());
        self.out.push(b'"');
    }

    fn colon(&mut self) {
        self.space();
        self.out.push(b':');
        self.space();
    }

    fn space(&mut self) {
        let spaces: &[u8] = match self.choose(6) {
            0 => b" ",
            1 => b"\n\t",
            2 => b"\r\n ",
            _ => b"",
        };
        self.out.extend_from_slice(spaces);
    }

    /// A value nested at most `depth` more levels: scalars, strings full of the characters
    /// that end values, arrays, and objects that may hold a `method` of their own.
    fn value(&mut self, depth: u8) {
        match self.choose(if depth == 0 { 5 } else { 7 }) {
            0 => self.out.extend_from_slice(b"null"),
            1 => self.out.extend_from_slice(b"true"),
            2 => self.number(),
            3 | 4 => self.string(),
            5 => self.array(depth - 1),
            _ => self.object(depth - 1),
        }
    }

    fn number(&mut self) {
        let numbers: [&[u8]; 5] = [b"0", b"-17", b"3.25", b"1e10", b"-0.5E-3"];
        let number = numbers[usize::from(self.choose(5))];
        self.out.extend_from_slice(number);
    }

    fn string(&mut self) {
        let pieces: [&[u8]; 8] = [b"a", b"}", b"]", b",", b"{[", b"\\\"", b"\\\\", b"\\u00e9"];
        self.out.push(b'"');
        for _ in 0..self.choose(6) {
            let piece = pieces[usize::from(self.choose(8))];
            self.out.extend_from_slice(piece);
        }
        self.out.push(b'"');
    }

    fn array(&mut self, depth: u8) {
        self.out.push(b'[');
        for index in 0..self.choose(4) {
            if index > 0 {
                self.out.push(b',');
            }
            self.space();
            self.value(depth);
        }
        self.out.push(b']');
    }

    fn object(&mut self, depth: u8) {
        self.out.push(b'{');
        for index in 0..self.choose(4) {
            if index > 0 {
                self.out.push(b',');
            }
            self.space();
            if self.choose(4) == 0 {
                self.out.extend_from_slice(b"\"method\"");
            } else {
                self.key();
            }
            self.colon();
            self.value(depth);
        }
        self.out.push(b'}');
    }
}

/// The OAuth callback's query parser: any query parses or fails without panicking, a
/// failure says something, and neither a parsed callback's `Debug` nor an error shows an
/// authorization code long enough to be worth hiding.
///
/// A long code can still turn up by coincidence, as the text of another parameter or of the
/// output's own words (`[redacted]` is ten characters); so a code counts as shown only when
/// the same query with its codes replaced prints without it.
pub fn callback_query(data: &[u8]) {
    let query = String::from_utf8_lossy(data);
    let shown = describe_callback(&query);
    if let Err(message) = &shown.1 {
        assert!(!message.is_empty(), "an error without a message");
    }
    let masked = describe_callback(&with_codes_replaced(&query));
    for code in codes(&query)
        .iter()
        .filter(|code| code.chars().count() >= 8)
    {
        let leaks = |text: &str, masked: &str| text.contains(code) && !masked.contains(code);
        assert!(
            !leaks(&shown.0, &masked.0),
            "Debug shows the code {code:?}: {}",
            shown.0
        );
        if let (Err(message), Err(masked)) = (&shown.1, &masked.1) {
            assert!(!leaks(message, masked), "the error shows the code {code:?}");
        }
    }
}

/// The parse result's `Debug`, and an error's message.
fn describe_callback(query: &str) -> (String, Result<(), String>) {
    match CallbackParams::parse(query) {
        Ok(params) => (format!("{params:?}"), Ok(())),
        Err(error) => (format!("{error:?}"), Err(error.to_string())),
    }
}

/// The values of every `code` parameter in `query`, decoded as a form is.
fn codes(query: &str) -> Vec<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .filter(|(name, _)| name == "code")
        .map(|(_, value)| value.into_owned())
        .collect()
}

/// `query` with every `code` value replaced by one too short to count as shown, and every
/// other parameter kept as it decodes.
fn with_codes_replaced(query: &str) -> String {
    let mut replaced = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let value = if name == "code" { "x".into() } else { value };
        replaced.append_pair(&name, &value);
    }
    replaced.finish()
}
