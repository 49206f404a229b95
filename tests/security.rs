//! Attacks on the gateway's doors, not just its features: a web page that rebinds its DNS
//! name to 127.0.0.1, or posts to `localhost` from its own origin, gets 403 on every path,
//! and nothing reaches the upstream; allow-listed browser clients get CORS.

mod support;

use serde_json::{Value, json};
use support::gateway::{TestGateway, single_route};
use support::mock_upstream::{MockOptions, MockUpstream};

const TOKEN: &str = "security-upstream-token";
const APP: &str = "http://localhost:6274";

/// The mock upstream, taking [`TOKEN`].
async fn upstream() -> MockUpstream {
    MockUpstream::start(MockOptions {
        token: TOKEN.into(),
        ..Default::default()
    })
    .await
}

/// A gateway with the route `/up` to the mock, `server_extra` added to `[server]`.
async fn gateway_with(server_extra: &str) -> (MockUpstream, TestGateway) {
    let upstream = upstream().await;
    let gateway = single_route("/up", upstream.base_url(), TOKEN, server_extra);
    (upstream, gateway)
}

async fn gateway() -> (MockUpstream, TestGateway) {
    gateway_with(&format!(
        "allowed_origins = [\"{APP}\"]\nallowed_hosts = [\"gw.internal\"]"
    ))
    .await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

fn port(gateway: &TestGateway) -> u16 {
    gateway.running.local_addr().port()
}

/// Every kind of path: proxied, the page, sign-in, the callback, the admin API, metrics.
const PATHS: &[(&str, &str)] = &[
    ("POST", "/up/mcp"),
    ("GET", "/up/sse"),
    ("GET", "/"),
    ("GET", "/auth/up/start"),
    ("GET", "/oauth/callback?code=x&state=y"),
    ("GET", "/admin/api/routes"),
    ("GET", "/metrics"),
];

/// An MCP `initialize` POST to `/up/mcp`; its status.
async fn initialize(gateway: &TestGateway) -> u16 {
    client()
        .post(format!("{}/up/mcp", gateway.url()))
        .header("accept", "application/json")
        .json(&support::initialize_request())
        .send()
        .await
        .expect("initialize")
        .status()
        .as_u16()
}

async fn scrape(gateway: &TestGateway) -> String {
    client()
        .get(format!("{}/metrics", gateway.url()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// A `GET` of the mock's silent event stream, with the API key `key` when given.
async fn open_stream(gateway: &TestGateway, key: Option<&str>) -> reqwest::Response {
    let mut request = client()
        .get(format!("{}/up/silent", gateway.url()))
        .header("accept", "text/event-stream");
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.expect("stream")
}

/// Asserts that `response` is the gateway's JSON error: `status`, the error `code`, and a
/// message that names the setting `names`.
async fn assert_refused(response: reqwest::Response, status: u16, code: &str, names: &str) {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], code);
    let message = body["message"].as_str().expect("message");
    assert!(message.contains(names), "{body}");
}

/// Waits until a stream opens again: a closed one gave its place back.
async fn until_a_stream_opens(gateway: &TestGateway, key: Option<&str>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while open_stream(gateway, key).await.status() != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the place was never freed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn send(
    gateway: &TestGateway,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
) -> reqwest::Response {
    let url = format!("{}{path}", gateway.url());
    let mut request = match method {
        "POST" => client()
            .post(url)
            .header("accept", "application/json, text/event-stream")
            .json(&support::initialize_request()),
        _ => client().get(url).header("accept", "text/event-stream"),
    };
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request.send().await.expect("request")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebound_host_is_refused_on_every_path() {
    let (upstream, gateway) = gateway().await;
    let port = port(&gateway);
    for host in [
        format!("evil.example.com:{port}"),
        "evil.example.com".into(),
    ] {
        for (method, path) in PATHS {
            let response = send(&gateway, method, path, &[("host", host.clone())]).await;
            assert_eq!(response.status(), 403, "{method} {path} with Host {host}");
            let body: Value = response.json().await.expect("json");
            assert_eq!(body["error"], "forbidden_host");
            assert!(
                body["message"]
                    .as_str()
                    .expect("message")
                    .contains("allowed_hosts")
            );
        }
    }
    assert_eq!(
        upstream.state().total_requests(),
        0,
        "nothing reached the upstream"
    );

    // The names the gateway serves pass.
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("gw.internal:{port}"),
    ] {
        let response = send(&gateway, "POST", "/up/mcp", &[("host", host.clone())]).await;
        assert_eq!(response.status(), 200, "Host {host}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_origin_is_refused_on_every_path() {
    let (upstream, gateway) = gateway().await;
    for origin in ["https://evil.example", "http://localhost:3000", "null"] {
        for (method, path) in PATHS {
            let response = send(&gateway, method, path, &[("origin", origin.to_owned())]).await;
            assert_eq!(response.status(), 403, "{method} {path} from {origin}");
            let body: Value = response.json().await.expect("json");
            assert_eq!(body["error"], "forbidden_origin");
        }
    }
    assert_eq!(
        upstream.state().total_requests(),
        0,
        "nothing reached the upstream"
    );

    // The gateway's own origin (its page) and no Origin at all (any non-browser client) pass.
    let host = format!("localhost:{}", port(&gateway));
    let own = format!("http://{host}");
    let response = send(
        &gateway,
        "POST",
        "/up/mcp",
        &[("host", host), ("origin", own)],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    assert_eq!(send(&gateway, "POST", "/up/mcp", &[]).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allow_listed_browser_client_gets_cors_and_nothing_more() {
    let (upstream, gateway) = gateway().await;
    let preflight = client()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/up/mcp", gateway.url()),
        )
        .header("origin", APP)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type, mcp-session-id",
        )
        .send()
        .await
        .expect("preflight");
    assert_eq!(preflight.status(), 204);
    let headers = preflight.headers();
    assert_eq!(headers["access-control-allow-origin"], APP);
    let allowed = headers["access-control-allow-headers"]
        .to_str()
        .expect("ascii");
    assert!(allowed.contains("mcp-session-id") && allowed.contains("content-type"));
    assert!(headers.get("access-control-allow-credentials").is_none());
    assert_eq!(
        upstream.state().total_requests(),
        0,
        "preflights stay at the gateway"
    );

    let init = support::initialize_request();
    let response = client()
        .post(format!("{}/up/mcp", gateway.url()))
        .header("origin", APP)
        .header("accept", "application/json, text/event-stream")
        .json(&init)
        .send()
        .await
        .expect("initialize");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["access-control-allow-origin"], APP);
    let exposed = response.headers()["access-control-expose-headers"]
        .to_str()
        .expect("ascii");
    assert!(exposed.contains("mcp-session-id"), "{exposed}");
    let session = response.headers()["mcp-session-id"].clone();

    // The listening stream, relayed by the gateway's own loop, carries it too.
    let stream = client()
        .get(format!("{}/up/mcp", gateway.url()))
        .header("origin", APP)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", session)
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.headers()["access-control-allow-origin"], APP);
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_over_the_routes_limit_get_413_with_or_without_a_length() {
    let upstream = upstream().await;
    let gateway = support::gateway::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[routes]]\nname = \"up\"\nprefix = \"/up\"\n\
             upstream = \"{}\"\nmax_body_bytes = 2048\n\
             auth = {{ kind = \"bearer\", token_file = \"{{dir}}/token\" }}\n",
            upstream.base_url()
        ),
        &[("token", TOKEN)],
    );
    let big = json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
        "params":{"name":"echo","arguments":{"text": "x".repeat(5000)}}})
    .to_string();

    let declared = client()
        .post(format!("{}/up/mcp", gateway.url()))
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .expect("post");
    assert_refused(declared, 413, "body_too_large", "max_body_bytes").await;
    assert_eq!(upstream.state().total_requests(), 0);

    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big
        .as_bytes()
        .chunks(1000)
        .map(|chunk| Ok(chunk.to_vec()))
        .collect();
    let streamed = client()
        .post(format!("{}/up/mcp", gateway.url()))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await;
    if let Ok(streamed) = streamed {
        assert_eq!(streamed.status(), 413);
    } // else: the gateway closed the connection before the client finished sending

    // Other clients carry on.
    assert_eq!(initialize(&gateway).await, 200);
    let metrics = scrape(&gateway).await;
    assert!(
        metrics.contains("mcp_gateway_limited_requests_total{limit=\"body_size\",route=\"up\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_sign_in_and_admin_requests_is_limited_and_others_carry_on() {
    let (_upstream, gateway) = gateway_with("control_requests_per_minute = 5").await;
    let mut statuses = Vec::new();
    for path in ["/admin/api/routes"; 5]
        .into_iter()
        .chain(["/oauth/callback?state=x"; 3])
    {
        let response = client()
            .get(format!("{}{path}", gateway.url()))
            .send()
            .await
            .expect("get");
        if response.status() == 429 {
            let wait: u64 = response.headers()["retry-after"]
                .to_str()
                .expect("ascii")
                .parse()
                .expect("seconds");
            assert!((1..=12).contains(&wait), "{wait}");
        }
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);

    // The page, health and MCP traffic are not part of it.
    for path in ["/", "/healthz", "/readyz", "/metrics"] {
        let response = client()
            .get(format!("{}{path}", gateway.url()))
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), 200, "{path}");
    }
    for _ in 0..10 {
        assert_eq!(initialize(&gateway).await, 200);
    }
    let metrics = scrape(&gateway).await;
    assert!(
        metrics.contains("mcp_gateway_limited_requests_total{limit=\"rate\",route=\"-\"} 3"),
        "{metrics}"
    );
}

fn key_hash(key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("sha256:{hex}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_for_one_route_opens_no_other_and_no_key_reaches_an_upstream() {
    let upstream = upstream().await;
    let route = |name: &str, keys: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\nprefix = \"/{name}\"\nupstream = \"{}\"\n{keys}\
             auth = {{ kind = \"bearer\", token_file = \"{{dir}}/token\" }}\n",
            upstream.base_url()
        )
    };
    let gateway = support::gateway::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\napi_keys = [\"{}\"]\n{}{}",
            key_hash("every-route-key"),
            route(
                "jira",
                &format!("api_keys = [\"{}\"]\n", key_hash("jira-only-key"))
            ),
            route("wiki", ""),
        ),
        &[("token", TOKEN)],
    );
    let init = support::initialize_request();
    let call = |route: &str, key: Option<&str>| {
        let mut request = client()
            .post(format!("{}/{route}/mcp", gateway.url()))
            .header("accept", "application/json")
            .json(&init);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        async move { request.send().await.expect("post").status().as_u16() }
    };
    assert_eq!(call("jira", Some("every-route-key")).await, 200);
    assert_eq!(call("wiki", Some("every-route-key")).await, 200);
    assert_eq!(call("jira", Some("jira-only-key")).await, 200);
    assert_eq!(
        call("wiki", Some("jira-only-key")).await,
        401,
        "a key for another route"
    );
    assert_eq!(call("wiki", Some("wrong-key")).await, 401);
    assert_eq!(call("jira", None).await, 401);
    let seen = upstream.state().requests();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter()
            .all(|r| r.header("authorization") == Some(&format!("Bearer {TOKEN}")[..]))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_past_the_gateways_bound_get_503_and_other_traffic_carries_on() {
    let (upstream, gateway) = gateway_with("max_streams = 2").await;
    let first = open_stream(&gateway, None).await;
    let second = open_stream(&gateway, None).await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = open_stream(&gateway, None).await;
    assert_refused(third, 503, "too_many_streams", "max_streams").await;

    assert_eq!(
        initialize(&gateway).await,
        200,
        "requests that are not streams are not counted"
    );

    // A stream that ends frees its place.
    drop(first);
    until_a_stream_opens(&gateway, None).await;
    assert!(upstream.state().open_streams() <= 2);
}

/// Reads what the gateway sends on `socket` until it closes the connection, for at most
/// `within`; `None` when it was still open by then.
async fn read_until_closed(
    socket: &mut tokio::net::TcpStream,
    within: std::time::Duration,
) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let read = tokio::time::timeout(within, socket.read_to_end(&mut received)).await;
    read.ok()
        .map(|_| String::from_utf8_lossy(&received).into_owned())
}

/// Fetches `/healthz` `count` times while something else goes on; how many succeeded.
async fn healthy_requests(gateway: &TestGateway, count: usize) -> usize {
    let mut ok = 0;
    for _ in 0..count {
        let response = client()
            .get(format!("{}/healthz", gateway.url()))
            .timeout(std::time::Duration::from_secs(2))
            .send()
            .await;
        ok += usize::from(response.is_ok_and(|r| r.status() == 200));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    ok
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trickled_header_gets_408_and_others_are_served_meanwhile() {
    use tokio::io::AsyncWriteExt;
    let (_upstream, gateway) = gateway_with("header_timeout_secs = 1").await;
    let addr = gateway.running.local_addr();

    // Fifty slowloris connections, each sending a header line every 200 ms, forever.
    let mut attackers = Vec::new();
    for _ in 0..50 {
        let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n");
        socket.write_all(request.as_bytes()).await.expect("write");
        attackers.push(tokio::spawn(async move {
            let started = std::time::Instant::now();
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                if socket.write_all(b"X-Slow: yes\r\n").await.is_err() {
                    break;
                }
                if started.elapsed() > std::time::Duration::from_secs(10) {
                    return (socket, started.elapsed(), false);
                }
            }
            (socket, started.elapsed(), true)
        }));
    }
    let healthy = healthy_requests(&gateway, 40).await;
    assert_eq!(healthy, 40, "a healthy client is served throughout");

    for attacker in attackers {
        let (mut socket, elapsed, cut) = attacker.await.expect("attacker");
        assert!(cut, "the gateway cut the trickling connection");
        assert!(elapsed < std::time::Duration::from_secs(5), "{elapsed:?}");
        let answer = read_until_closed(&mut socket, std::time::Duration::from_secs(2))
            .await
            .unwrap_or_default();
        if !answer.is_empty() {
            assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
            assert!(answer.contains("header_timeout_secs"), "{answer}");
        }
    }
    let metrics = scrape(&gateway).await;
    let counted = metrics
        .lines()
        .find(|line| line.contains("limit=\"header_timeout\""))
        .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok());
    assert_eq!(counted, Some(50.0), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_header_past_the_limit_gets_431_and_one_below_passes() {
    use tokio::io::AsyncWriteExt;
    let (_upstream, gateway) = gateway_with("max_header_bytes = 4096").await;
    let addr = gateway.running.local_addr();

    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let big = "a".repeat(8 * 1024);
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Big: {big}\r\n\r\n");
    // The gateway may answer and close before it has read it all.
    let _ = socket.write_all(request.as_bytes()).await;
    let answer = read_until_closed(&mut socket, std::time::Duration::from_secs(5))
        .await
        .expect("the gateway closes the connection");
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(300)]
    );
    assert!(answer.contains("max_header_bytes"), "{answer}");

    let fits = client()
        .get(format!("{}/healthz", gateway.url()))
        .header("x-big", "a".repeat(3 * 1024))
        .send()
        .await
        .expect("healthz");
    assert_eq!(fits.status(), 200);
    assert!(scrape(&gateway).await.contains("limit=\"header_size\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_connection_is_closed_after_the_idle_timeout_and_a_busy_one_is_not() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_upstream, gateway) = gateway_with("idle_timeout_secs = 1\nheader_timeout_secs = 1").await;
    let addr = gateway.running.local_addr();

    // Connected and silent: closed without an answer once the header is overdue.
    let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let said = read_until_closed(&mut silent, std::time::Duration::from_secs(4)).await;
    assert_eq!(said.as_deref(), Some(""), "closed, and nothing was sent");

    // Kept alive: each request within the idle timeout is served on the same connection,
    // past the header timeout counted from connecting; then the idle connection closes.
    let mut kept = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    for _ in 0..4 {
        kept.write_all(request.as_bytes()).await.expect("write");
        let mut answer = vec![0; 1024];
        let read = kept.read(&mut answer).await.expect("read");
        let answer = String::from_utf8_lossy(&answer[..read]).into_owned();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let started = std::time::Instant::now();
    let after = read_until_closed(&mut kept, std::time::Duration::from_secs(4)).await;
    assert_eq!(after.as_deref(), Some(""), "the idle connection was closed");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn one_client_cannot_take_every_stream_and_others_still_get_theirs() {
    let (alice, bob) = ("alice-key-0123456789", "bob-key-0123456789");
    let (upstream, gateway) = gateway_with(&format!(
        "api_keys = [\"{}\", \"{}\"]\nmax_streams_per_client = 2",
        key_hash(alice),
        key_hash(bob)
    ))
    .await;
    let first = open_stream(&gateway, Some(alice)).await;
    let second = open_stream(&gateway, Some(alice)).await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = open_stream(&gateway, Some(alice)).await;
    assert_refused(third, 429, "too_many_streams", "max_streams_per_client").await;

    // Another key is another client, from the same address.
    let bobs = open_stream(&gateway, Some(bob)).await;
    assert_eq!(bobs.status(), 200);
    assert!(scrape(&gateway).await.contains("limit=\"client_streams\""));

    // A stream that ends gives its client the place back.
    drop(first);
    until_a_stream_opens(&gateway, Some(alice)).await;
    assert!(upstream.state().open_streams() <= 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forwarded_identity_counts_only_when_the_operator_trusts_its_header() {
    let open = |gateway: &TestGateway, who: &str| {
        client()
            .get(format!("{}/up/silent", gateway.url()))
            .header("accept", "text/event-stream")
            .header("x-auth-email", who.to_owned())
            .send()
    };

    // Trusted: each named caller is a client of its own.
    let (_upstream, trusting) =
        gateway_with("trusted_identity_header = \"X-Auth-Email\"\nmax_streams_per_client = 1")
            .await;
    let alice = open(&trusting, "alice@example.com").await.expect("stream");
    assert_eq!(alice.status(), 200);
    let again = open(&trusting, "alice@example.com").await.expect("stream");
    assert_eq!(again.status(), 429);
    let bob = open(&trusting, "bob@example.com").await.expect("stream");
    assert_eq!(bob.status(), 200);

    // Not trusted: the header is anyone's to write, so it names no one; the address counts.
    let (_upstream, plain) = gateway_with("max_streams_per_client = 1").await;
    let alice = open(&plain, "alice@example.com").await.expect("stream");
    assert_eq!(alice.status(), 200);
    let forged = open(&plain, "mallory@example.com").await.expect("stream");
    assert_eq!(
        forged.status(),
        429,
        "a made-up identity is not a new client"
    );
}
