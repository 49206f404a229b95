//! The binary as Databricks Apps runs it: single-upstream mode from the environment,
//! listening on every address at `DATABRICKS_APP_PORT`, behind the platform's proxy. With no
//! public URL configured, the gateway takes it from the proxy's `X-Forwarded-Host`, so the
//! page shows the app's own endpoints and sign-ins come back to the app.

mod support;

use std::process::Stdio;

use serde_json::Value;
use support::mock_upstream::{MockOptions, MockUpstream};
use support::process::{Running, gateway_command, listening_url};

const APP_HOST: &str = "mcp-gateway-1234.aws.databricksapps.com";

#[tokio::test(flavor = "multi_thread")]
async fn behind_the_apps_proxy_the_public_url_is_the_forwarded_host() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let home = tempfile::tempdir().expect("home");
    let mut child = gateway_command()
        .arg("serve")
        .env("UPSTREAM_MCP_URL", upstream.base_url())
        .env("DATABRICKS_APP_PORT", "0")
        .env("HOME", home.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let listening = listening_url(&mut child);
    let _gateway = Running::new(child);
    let port = url::Url::parse(&listening)
        .expect("the banner's URL")
        .port()
        .expect("a port");
    assert!(listening.contains("0.0.0.0"), "{listening}");
    let base = format!("http://127.0.0.1:{port}");
    let from_the_proxy = |request: reqwest::RequestBuilder| {
        request
            .header("x-forwarded-host", APP_HOST)
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-email", "ada@example.com")
    };
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    let index: Value = from_the_proxy(client.get(format!("{base}/")))
        .header("accept", "application/json")
        .send()
        .await
        .expect("index")
        .json()
        .await
        .expect("json");
    let route = &index["routes"][0];
    assert_eq!(
        route["streamable_http"],
        format!("https://{APP_HOST}/mcp"),
        "{index}"
    );
    assert_eq!(route["sse"], format!("https://{APP_HOST}/sse"), "{index}");

    let start = from_the_proxy(client.get(format!("{base}/auth/default/start")))
        .send()
        .await
        .expect("start");
    assert_eq!(start.status(), 302, "{:?}", start.text().await);
    let authorize = url::Url::parse(start.headers()["location"].to_str().expect("ascii"))
        .expect("an authorization URL");
    let redirect = authorize
        .query_pairs()
        .find(|(key, _)| key == "redirect_uri")
        .map(|(_, value)| value.into_owned());
    assert_eq!(
        redirect.as_deref(),
        Some(format!("https://{APP_HOST}/oauth/callback").as_str())
    );

    // A request naming another host later changes nothing: the first one taught it.
    let again: Value = client
        .get(format!("{base}/"))
        .header("x-forwarded-host", "elsewhere.example.com")
        .header("accept", "application/json")
        .send()
        .await
        .expect("index")
        .json()
        .await
        .expect("json");
    assert_eq!(
        again["routes"][0]["streamable_http"],
        format!("https://{APP_HOST}/mcp")
    );
}
