//! No secret leaks, at any log level: the gateway binary runs with `RUST_LOG=trace` through a
//! sign-in, proxied traffic with an inbound API key, a refused token and its resend, a
//! refresh on request, a refused key and a route that needs sign-in again. Then its logs,
//! its metrics, its pages and every body it answered are searched for every secret that
//! was in play: what the mock authorization server issued (access and refresh tokens,
//! codes, client secrets), the API key, and the MCP session id.

mod support;

use std::process::Stdio;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::mock_upstream::{MockOptions, MockUpstream};
use support::signin::{approved_callback, browser};

const API_KEY: &str = "leak-test-api-key-6f1d2c8e9a7b4d3f";

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_logs_metrics_pages_or_error_bodies_even_at_trace() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key_hash = hex(&Sha256::digest(API_KEY.as_bytes()));
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\napi_keys = [\"sha256:{key_hash}\"]\n\
             [store]\ndir = \"store\"\n[[routes]]\nname = \"up\"\nprefix = \"/up\"\n\
             upstream = \"{}\"\n",
            upstream.base_url()
        ),
    )
    .expect("config");
    let log_path = dir.path().join("gateway.log");
    let mut child = support::process::gateway_command()
        .env("RUST_LOG", "trace")
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).expect("log file"))
        .spawn()
        .expect("spawn serve");
    let base = support::process::listening_url(&mut child);

    let mut seen = Vec::new(); // every body and page the gateway answered
    let mut secrets = vec![API_KEY.to_owned()];

    // Sign in the way a browser does.
    let done = browser()
        .get(approved_callback(&base).await)
        .send()
        .await
        .expect("callback");
    assert_eq!(done.status(), 200);
    seen.push(done.text().await.expect("page"));

    let mcp = |body: Value, session: Option<String>, key: &str| {
        let mut request = browser()
            .post(format!("{base}/up/mcp"))
            .header("accept", "application/json")
            .bearer_auth(key)
            .json(&body);
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        request.send()
    };
    let init = support::initialize_request();
    let response = mcp(init, None, API_KEY).await.expect("initialize");
    let session = response.headers()["mcp-session-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    secrets.push(session.clone());
    seen.push(response.text().await.expect("body"));
    let call = json!({"jsonrpc":"2.0","id":2,"method":"tools/call",
        "params":{"name":"echo","arguments":{"text":"hello"}}});
    let answer = mcp(call.clone(), Some(session.clone()), API_KEY)
        .await
        .expect("call");
    assert_eq!(answer.status(), 200);
    seen.push(answer.text().await.expect("body"));

    // A token the upstream refuses: refreshed and the call sent again.
    upstream.oauth().expire_access_tokens();
    let answer = mcp(call.clone(), Some(session.clone()), API_KEY)
        .await
        .expect("call");
    let text = answer.text().await.expect("body");
    assert!(text.contains("hello"), "{text}");
    seen.push(text);
    assert!(upstream.oauth().refresh_requests() >= 1);

    // A refresh on request, a refused key, then a route that needs sign-in again.
    let refreshed = browser()
        .post(format!("{base}/admin/api/routes/up/refresh"))
        .send()
        .await
        .expect("refresh");
    seen.push(refreshed.text().await.expect("body"));
    let refused = mcp(call.clone(), Some(session.clone()), "wrong-key")
        .await
        .expect("call");
    assert_eq!(refused.status(), 401);
    seen.push(refused.text().await.expect("body"));
    upstream.oauth().revoke_refresh_tokens();
    upstream.oauth().expire_access_tokens();
    let answer = mcp(call, Some(session), API_KEY).await.expect("call");
    let text = answer.text().await.expect("body");
    assert!(text.contains("/auth/up/start"), "{text}");
    seen.push(text);

    for path in ["/", "/metrics", "/admin/api/routes", "/readyz"] {
        let response = browser()
            .get(format!("{base}{path}"))
            .header("accept", "text/html")
            .send()
            .await
            .expect("page");
        seen.push(response.text().await.expect("text"));
    }
    let _ = child.kill();
    let _ = child.wait();

    secrets.extend(upstream.oauth().issued_secrets());
    assert!(
        secrets.len() >= 6,
        "tokens, codes and keys were issued: {}",
        secrets.len()
    );
    let log = std::fs::read_to_string(&log_path).expect("log");
    let trace_lines = log
        .lines()
        .filter(|line| line.contains("\"TRACE\"") || line.contains("\"DEBUG\""))
        .count();
    assert!(
        trace_lines > 5,
        "the gateway logged at debug and trace:\n{log}"
    );
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "a secret is in the log");
        for body in &seen {
            assert!(
                !body.contains(secret.as_str()),
                "a secret is in an answer: {body}"
            );
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
