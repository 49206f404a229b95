//! How the gateway uses its connections to an upstream, seen from the upstream's side of the
//! wire: a raw HTTP/1.1 server on loopback that counts connections and records how each
//! request arrived, behind an in-process gateway.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Value, json};
use support::gateway::single_route;
use support::mock_upstream::{MockOptions, MockUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "wire-token-1";

/// The answer of the raw upstream to every request.
const ANSWER: &str = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;

/// A request as the raw upstream read it.
#[derive(Debug, Clone)]
struct Arrival {
    /// The connection it came on, counted from 0.
    connection: usize,
    /// The whole request: header and body.
    request: String,
    /// Whether the upstream's first read of it already held all of it.
    in_one_read: bool,
}

/// A raw HTTP/1.1 upstream that answers each request with [`ANSWER`], keeps connections
/// open, and, when `close_after` is set, closes each connection that long after answering
/// (without saying so first, as servers with a short keep-alive timeout do).
struct RawUpstream {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    server: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    async fn start(close_after: Option<Duration>) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let (count, record) = (Arc::clone(&accepted), Arc::clone(&arrivals));
        let server = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let connection = count.fetch_add(1, Ordering::SeqCst);
                let record = Arc::clone(&record);
                tokio::spawn(serve(socket, connection, record, close_after));
            }
        });
        RawUpstream {
            addr,
            accepted,
            arrivals,
            server,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn arrivals(&self) -> Vec<Arrival> {
        self.arrivals.lock().clone()
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve(
    mut socket: TcpStream,
    connection: usize,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    close_after: Option<Duration>,
) {
    let mut buffer = Vec::new();
    loop {
        let mut reads = 0;
        let request = loop {
            if let Some(length) = complete_request(&buffer) {
                break buffer.drain(..length).collect::<Vec<u8>>();
            }
            let mut chunk = [0u8; 16 * 1024];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
            reads += 1;
        };
        arrivals.lock().push(Arrival {
            connection,
            request: String::from_utf8_lossy(&request).into_owned(),
            in_one_read: reads == 1,
        });
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{ANSWER}",
            ANSWER.len()
        );
        if socket.write_all(response.as_bytes()).await.is_err() {
            return;
        }
        if let Some(delay) = close_after {
            tokio::time::sleep(delay).await;
            return;
        }
    }
}

/// The length of the request at the start of `buffer`, once all of it is there.
fn complete_request(buffer: &[u8]) -> Option<usize> {
    let header_end = buffer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let header = String::from_utf8_lossy(&buffer[..header_end]).to_ascii_lowercase();
    let length = header
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |value| value.trim().parse::<usize>().unwrap_or(0));
    (buffer.len() >= header_end + length).then_some(header_end + length)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .pool_max_idle_per_host(1)
        .build()
        .expect("client")
}

fn call(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": "echo", "arguments": {"text": format!("call {id}")}}})
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> (u16, String) {
    let response = client
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("authorization", "Bearer client-credential")
        .json(body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread")]
async fn small_posts_go_out_in_one_write_over_one_kept_connection() {
    let upstream = RawUpstream::start(None).await;
    let gateway = single_route("/up", &upstream.url(), TOKEN, "");
    let client = client();
    let url = format!("{}/up/mcp", gateway.url());

    // The client sends each request the moment it has read the last answer.
    for id in 0..200 {
        let (status, body) = post(&client, &url, &call(id)).await;
        assert_eq!((status, body.as_str()), (200, ANSWER), "request {id}");
    }

    let arrivals = upstream.arrivals();
    assert_eq!(arrivals.len(), 200);
    assert_eq!(
        upstream.accepted(),
        1,
        "every request reused the first connection"
    );
    for (id, arrival) in arrivals.iter().enumerate() {
        assert!(arrival.in_one_read, "request {id} arrived in pieces");
        let request = arrival.request.to_ascii_lowercase();
        assert!(request.starts_with("post /mcp http/1.1\r\n"), "{request}");
        assert!(request.contains(&format!("authorization: bearer {TOKEN}\r\n")));
        assert!(!request.contains("client-credential"));
        assert!(arrival.request.ends_with(&call(id as u64).to_string()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_the_upstream_closed_while_idle_is_not_used_again() {
    let upstream = RawUpstream::start(Some(Duration::from_millis(20))).await;
    let gateway = single_route("/up", &upstream.url(), TOKEN, "");
    let client = client();
    let url = format!("{}/up/mcp", gateway.url());

    for id in 0..5 {
        let (status, body) = post(&client, &url, &call(id)).await;
        assert_eq!((status, body.as_str()), (200, ANSWER), "request {id}");
        // Long enough for the upstream to close the connection it answered on.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let connections: Vec<usize> = upstream.arrivals().iter().map(|a| a.connection).collect();
    assert_eq!(
        connections,
        [0, 1, 2, 3, 4],
        "each request found its connection closed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_clients_share_a_bounded_set_of_connections() {
    let upstream = RawUpstream::start(None).await;
    let gateway = single_route("/up", &upstream.url(), TOKEN, "");
    let url = format!("{}/up/mcp", gateway.url());

    let clients = (0..16).map(|n| {
        let url = url.clone();
        tokio::spawn(async move {
            let client = client();
            for id in 0..25 {
                let (status, body) = post(&client, &url, &call(n * 100 + id)).await;
                assert_eq!((status, body.as_str()), (200, ANSWER));
            }
        })
    });
    for client in futures::future::join_all(clients).await {
        client.expect("client task");
    }

    assert_eq!(upstream.arrivals().len(), 16 * 25);
    let accepted = upstream.accepted();
    assert!(
        (1..=16).contains(&accepted),
        "at most one upstream connection per concurrent client, got {accepted}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn large_and_chunked_bodies_still_reach_the_upstream_whole() {
    let mock = MockUpstream::start(MockOptions {
        token: TOKEN.into(),
        ..MockOptions::default()
    })
    .await;
    let gateway = single_route("/up", mock.base_url(), TOKEN, "");
    let url = format!("{}/up/mcp", gateway.url());
    let client = client();
    let initialize = client
        .post(&url)
        .header("accept", "application/json, text/event-stream")
        .json(&support::initialize_request())
        .send()
        .await
        .expect("initialize");
    assert_eq!(initialize.status(), 200);
    let session = initialize.headers()["mcp-session-id"]
        .to_str()
        .expect("session id")
        .to_owned();

    // Over the size read whole: this one streams through pingora's proxy loop.
    let text = "x".repeat(200 * 1024);
    let big = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                     "params": {"name": "echo", "arguments": {"text": text}}});
    let answer: Value = client
        .post(&url)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &session)
        .json(&big)
        .send()
        .await
        .expect("large call")
        .json()
        .await
        .expect("large answer");
    assert_eq!(answer["result"]["content"][0]["text"], text.as_str());

    // A body of unknown length, sent chunked, goes the same way.
    let small = call(3).to_string().into_bytes();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        small.chunks(16).map(|chunk| Ok(chunk.to_vec())).collect();
    let answer: Value = client
        .post(&url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-session-id", &session)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .expect("chunked call")
        .json()
        .await
        .expect("chunked answer");
    assert_eq!(answer["result"]["content"][0]["text"], "call 3");
    let recorded = mock.state().last_request_to("/mcp").expect("recorded");
    assert_eq!(
        recorded.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
}
