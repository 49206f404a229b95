//! How the gateway serves a client's HTTP/1.1 connection, seen from the wire on both sides:
//! a raw client writing exactly the bytes each test needs, and a raw upstream answering with
//! every framing HTTP/1.1 allows, behind an in-process gateway.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::gateway::single_route;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const TOKEN: &str = "client-side-token-1";
const MESSAGE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#;
const ANSWER: &str = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;

/// An upstream whose answer depends on the path asked for; see [`answer`].
struct ScriptedUpstream {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Each request's first line and whether it carried the route's token.
    requests: mpsc::UnboundedReceiver<(String, bool)>,
    /// One message each time the upstream sees a connection end.
    closed: mpsc::UnboundedReceiver<()>,
    server: tokio::task::JoinHandle<()>,
}

impl ScriptedUpstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let (request_tx, requests) = mpsc::unbounded_channel();
        let (closed_tx, closed) = mpsc::unbounded_channel();
        let count = Arc::clone(&accepted);
        let server = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (request_tx, closed_tx) = (request_tx.clone(), closed_tx.clone());
                tokio::spawn(async move {
                    serve(socket, request_tx).await;
                    let _ = closed_tx.send(());
                });
            }
        });
        Self {
            addr,
            accepted,
            requests,
            closed,
            server,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Serves requests on one upstream connection until the script closes it or the gateway
/// does.
async fn serve(mut socket: TcpStream, requests: mpsc::UnboundedSender<(String, bool)>) {
    let mut buffer = Vec::new();
    loop {
        let Some(request) = read_request(&mut socket, &mut buffer).await else {
            return;
        };
        let first_line = request.lines().next().unwrap_or_default().to_owned();
        let token = request.to_ascii_lowercase().contains(&format!(
            "authorization: bearer {}\r\n",
            TOKEN.to_ascii_lowercase()
        ));
        let path = first_line.split(' ').nth(1).unwrap_or_default().to_owned();
        let _ = requests.send((first_line, token));
        if !answer(&mut socket, &path).await {
            return;
        }
    }
}

/// Writes the scripted answer for `path`; `false` when the connection ends after it.
async fn answer(socket: &mut TcpStream, path: &str) -> bool {
    let pause = || tokio::time::sleep(Duration::from_millis(30));
    let json = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n";
    let written = match path {
        "/chunked" => {
            // The answer in three chunks written apart, and a trailer.
            let head = format!("{json}transfer-encoding: chunked\r\n\r\n");
            let (one, two) = ANSWER.split_at(10);
            let mut result = socket.write_all(head.as_bytes()).await;
            pause().await;
            for part in [one, two] {
                let chunk = format!("{:X};note=1\r\n{part}\r\n", part.len());
                result = result.and(socket.write_all(chunk.as_bytes()).await);
                pause().await;
            }
            result.and(socket.write_all(b"0\r\nx-trailer: 1\r\n\r\n").await)
        }
        "/unframed" => {
            // No length, no coding: the body ends when the connection does.
            let head = format!("{json}\r\n{ANSWER}");
            let _ = socket.write_all(head.as_bytes()).await;
            return false;
        }
        "/interim" => {
            let interim = "HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n";
            let whole = format!(
                "{interim}{json}content-length: {}\r\n\r\n{ANSWER}",
                ANSWER.len()
            );
            socket.write_all(whole.as_bytes()).await
        }
        "/accepted" => {
            socket
                .write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
                .await
        }
        "/no-content" => socket.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await,
        "/broken" => {
            let head = format!("{json}transfer-encoding: chunked\r\n\r\n5\r\nabcde\r\nzz\r\n");
            let _ = socket.write_all(head.as_bytes()).await;
            // The connection stays open: only the framing says the body is broken.
            tokio::time::sleep(Duration::from_secs(30)).await;
            return false;
        }
        "/events" => {
            // One event, then silence until the gateway leaves.
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                        transfer-encoding: chunked\r\n\r\n";
            let event = "data: {\"n\":1}\n\n";
            let chunk = format!("{:x}\r\n{event}\r\n", event.len());
            let _ = socket.write_all(format!("{head}{chunk}").as_bytes()).await;
            let mut rest = [0u8; 64];
            // Returns when the gateway closes the connection.
            while let Ok(read) = socket.read(&mut rest).await {
                if read == 0 {
                    break;
                }
            }
            return false;
        }
        _ => {
            let whole = format!("{json}content-length: {}\r\n\r\n{ANSWER}", ANSWER.len());
            socket.write_all(whole.as_bytes()).await
        }
    };
    written.is_ok()
}

/// Reads one request (header and `Content-Length` body) off the connection.
async fn read_request(socket: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let header = String::from_utf8_lossy(&buffer[..end + 4]).to_ascii_lowercase();
            let length = header
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |value| value.trim().parse::<usize>().unwrap_or(0));
            if buffer.len() >= end + 4 + length {
                let request = buffer.drain(..end + 4 + length).collect::<Vec<u8>>();
                return Some(String::from_utf8_lossy(&request).into_owned());
            }
        }
        let mut chunk = [0u8; 8192];
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
        }
    }
}

/// A response as a raw client reads it.
#[derive(Debug)]
struct Response {
    status: u16,
    /// Header lines, names lowercase.
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(known, _)| known == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A client connection that writes raw bytes and reads whole responses.
struct RawClient {
    socket: TcpStream,
    buffer: Vec<u8>,
}

impl RawClient {
    async fn connect(addr: &str) -> Self {
        let socket = TcpStream::connect(addr).await.expect("connect");
        Self {
            socket,
            buffer: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &str) {
        self.socket
            .write_all(bytes.as_bytes())
            .await
            .expect("write request");
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        let read = tokio::time::timeout(Duration::from_secs(10), self.socket.read(&mut chunk))
            .await
            .expect("the gateway answers in time")
            .unwrap_or(0);
        self.buffer.extend_from_slice(&chunk[..read]);
        read > 0
    }

    /// Reads the next response, decoding a chunked body.
    async fn response(&mut self) -> Response {
        let (status, headers, header_len) = loop {
            let mut lines = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut lines);
            if let httparse::Status::Complete(len) = parsed.parse(&self.buffer).expect("HTTP") {
                let headers = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8_lossy(h.value).into_owned();
                        (h.name.to_ascii_lowercase(), value)
                    })
                    .collect::<Vec<_>>();
                break (parsed.code.expect("status"), headers, len);
            }
            assert!(self.fill().await, "the connection ended before a response");
        };
        self.buffer.drain(..header_len);
        let mut response = Response {
            status,
            headers,
            body: String::new(),
        };
        if response.header("transfer-encoding") == Some("chunked") {
            loop {
                let Some(line_end) = self.buffer.windows(2).position(|w| w == b"\r\n") else {
                    assert!(self.fill().await, "the connection ended mid-body");
                    continue;
                };
                let size_line = String::from_utf8_lossy(&self.buffer[..line_end]).into_owned();
                let size = usize::from_str_radix(size_line.split(';').next().unwrap_or(""), 16)
                    .expect("chunk size");
                if size == 0 {
                    // Trailer lines, if any, up to the empty line.
                    self.buffer.drain(..line_end + 2);
                    loop {
                        match self.buffer.windows(2).position(|w| w == b"\r\n") {
                            Some(0) => {
                                self.buffer.drain(..2);
                                return response;
                            }
                            Some(end) => drop(self.buffer.drain(..end + 2)),
                            None => assert!(self.fill().await, "the connection ended mid-trailer"),
                        }
                    }
                }
                while self.buffer.len() < line_end + 2 + size + 2 {
                    assert!(self.fill().await, "the connection ended mid-chunk");
                }
                let data = &self.buffer[line_end + 2..line_end + 2 + size];
                response.body.push_str(&String::from_utf8_lossy(data));
                self.buffer.drain(..line_end + 2 + size + 2);
            }
        }
        let length: usize = response
            .header("content-length")
            .map_or(0, |value| value.parse().expect("length"));
        while self.buffer.len() < length {
            assert!(self.fill().await, "the connection ended mid-body");
        }
        response.body = String::from_utf8_lossy(&self.buffer[..length]).into_owned();
        self.buffer.drain(..length);
        response
    }

    /// Whether the gateway closed the connection (after anything still buffered).
    async fn closed(&mut self) -> bool {
        self.buffer.is_empty() && !self.fill().await
    }
}

fn post(path: &str, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         accept: application/json, text/event-stream\r\nauthorization: Bearer client-own\r\n\
         {extra}content-length: {}\r\n\r\n{MESSAGE}",
        MESSAGE.len()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_upstream_framing_reaches_the_client_whole_on_one_kept_connection() {
    let mut upstream = ScriptedUpstream::start().await;
    let gateway = single_route("/up", &upstream.url(), TOKEN, "");
    let mut client = RawClient::connect(&gateway.running.local_addr().to_string()).await;

    for path in ["/chunked", "/interim", "/plain", "/unframed", "/chunked"] {
        client.send(&post(&format!("/up{path}"), "")).await;
        let response = client.response().await;
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(response.body, ANSWER, "{path}");
        assert_eq!(
            response.header("content-type"),
            Some("application/json"),
            "{path}"
        );
        let (line, token) = upstream.requests.recv().await.expect("upstream request");
        assert_eq!(line, format!("POST {path} HTTP/1.1"));
        assert!(
            token,
            "{path} reached the upstream without the route's token"
        );
    }
    for (path, status) in [("/accepted", 202), ("/no-content", 204)] {
        client.send(&post(&format!("/up{path}"), "")).await;
        let response = client.response().await;
        assert_eq!((response.status, response.body.as_str()), (status, ""));
    }

    // The unframed answer cost its connection; every other answer left it for the next.
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_are_answered_in_order() {
    let upstream = ScriptedUpstream::start().await;
    let gateway = single_route("/up", &upstream.url(), TOKEN, "");
    let mut client = RawClient::connect(&gateway.running.local_addr().to_string()).await;

    let three = [
        post("/up/chunked", ""),
        post("/up/accepted", ""),
        post("/up/plain", ""),
    ]
    .concat();
    client.send(&three).await;
    let statuses = [
        client.response().await.status,
        client.response().await.status,
        client.response().await.status,
    ];
    assert_eq!(statuses, [200, 202, 200]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_keeps_working_across_requests_of_every_kind() {
    let mut upstream = ScriptedUpstream::start().await;
    let gateway = single_route("/up", &upstream.url(), TOKEN, "");
    let mut client = RawClient::connect(&gateway.running.local_addr().to_string()).await;

    client.send(&post("/up/plain", "")).await;
    assert_eq!(client.response().await.body, ANSWER);
    // A control path, then a request with an Origin of the gateway's own: both answered on
    // the same connection, and so is every request after them.
    client
        .send("GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await;
    assert_eq!(client.response().await.status, 200);
    let origin = format!("origin: http://{}\r\n", gateway.running.local_addr());
    let own_origin = post("/up/plain", &origin).replace(
        "host: localhost",
        &format!("host: {}", gateway.running.local_addr()),
    );
    client.send(&own_origin).await;
    assert_eq!(client.response().await.body, ANSWER);
    client.send(&post("/up/chunked", "")).await;
    assert_eq!(client.response().await.body, ANSWER);

    let mut lines = Vec::new();
    while let Ok((line, token)) = upstream.requests.try_recv() {
        assert!(token);
        lines.push(line);
    }
    assert_eq!(
        lines,
        [
            "POST /plain HTTP/1.1",
            "POST /plain HTTP/1.1",
            "POST /chunked HTTP/1.1"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_that_says_close_gets_its_answer_and_then_the_end() {
    let upstream = ScriptedUpstream::start().await;
    let gateway = single_route("/up", &upstream.url(), TOKEN, "");
    let mut client = RawClient::connect(&gateway.running.local_addr().to_string()).await;

    client
        .send(&post("/up/plain", "connection: close\r\n"))
        .await;
    assert_eq!(client.response().await.body, ANSWER);
    assert!(client.closed().await, "the connection stayed open");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_an_event_stream_answer_closes_the_upstream_connection() {
    let mut upstream = ScriptedUpstream::start().await;
    let gateway = single_route("/up", &upstream.url(), TOKEN, "");
    let mut client = RawClient::connect(&gateway.running.local_addr().to_string()).await;

    client.send(&post("/up/events", "")).await;
    // The header and the first event arrive while the upstream holds the stream open.
    while !String::from_utf8_lossy(&client.buffer).contains("data: {\"n\":1}") {
        assert!(client.fill().await, "the stream ended early");
    }
    let header = String::from_utf8_lossy(&client.buffer).to_ascii_lowercase();
    assert!(
        header.contains("cache-control: no-cache, no-transform\r\n"),
        "{header}"
    );
    assert!(header.contains("x-accel-buffering: no\r\n"), "{header}");
    drop(client);

    tokio::time::timeout(Duration::from_secs(10), upstream.closed.recv())
        .await
        .expect("the upstream connection was closed after the client left")
        .expect("closed signal");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_with_broken_framing_ends_the_client_connection_instead_of_hanging() {
    let upstream = ScriptedUpstream::start().await;
    let gateway = single_route("/up", &upstream.url(), TOKEN, "");
    let mut client = RawClient::connect(&gateway.running.local_addr().to_string()).await;

    client.send(&post("/up/broken", "")).await;
    let started = std::time::Instant::now();
    while client.fill().await {}
    let received = String::from_utf8_lossy(&client.buffer).into_owned();
    assert!(received.starts_with("HTTP/1.1 200 OK\r\n"), "{received}");
    assert!(
        !received.ends_with("0\r\n\r\n"),
        "a cut body must not look complete: {received}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}
