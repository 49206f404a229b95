//! Signing in through the gateway as a browser would, for the tests that need a signed-in
//! OAuth route: a gateway with one OAuth route `up` in front of the mock upstream, and the
//! redirects of a sign-in followed by hand.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use reqwest::cookie::Jar;
use serde_json::Value;
use url::Url;

use super::gateway::{TestGateway, start};
use super::mock_upstream::MockUpstream;

/// The cookies of the tests' one browser. A sign-in's cookie is named after its own
/// `state`, so tests running side by side never read each other's.
static COOKIES: LazyLock<Arc<Jar>> = LazyLock::new(|| Arc::new(Jar::default()));

/// The browser of the person `who`, as an authenticating proxy in front delivers its
/// requests: each names them in the `identity` header (none, for `None`). It shows
/// redirects instead of following them and keeps its own cookies.
pub fn person(identity: &str, who: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(who) = who {
        let value = reqwest::header::HeaderValue::from_str(who).expect("identity header value");
        let name =
            reqwest::header::HeaderName::from_bytes(identity.as_bytes()).expect("header name");
        headers.insert(name, value);
    }
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .default_headers(headers)
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// A client that shows redirects instead of following them and keeps cookies, like a test
/// of a browser.
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_provider(Arc::clone(&COOKIES))
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// Opens a route's start page at `base` the way a browser does: when the gateway first
/// moves the browser to its public URL, follows that. Returns the redirect to the
/// authorization server (or the page that says why there is none).
pub async fn start_sign_in(base: &str, route: &str) -> reqwest::Response {
    let start = browser()
        .get(format!("{base}/auth/{route}/start"))
        .send()
        .await
        .expect("start");
    let moved = start.status() == 302 && location(&start).path().starts_with("/auth/");
    if !moved {
        return start;
    }
    browser()
        .get(location(&start))
        .send()
        .await
        .expect("start at the public URL")
}

pub fn oauth_gateway(upstream: &MockUpstream, auth_extra: &str) -> TestGateway {
    start(
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
[store]
dir = "{{dir}}/store"
[[routes]]
name = "up"
prefix = "/up"
upstream = "{}"
[routes.auth]
kind = "oauth"
{auth_extra}
"#,
            upstream.base_url()
        ),
        &[],
    )
}

pub fn location(response: &reqwest::Response) -> Url {
    let location = response.headers()["location"].to_str().expect("ascii");
    Url::parse(location).expect("absolute location")
}

pub fn query(url: &Url) -> HashMap<String, String> {
    url.query_pairs().into_owned().collect()
}

/// Starts a sign-in to route `up` at `base` and lets the mock authorization server approve
/// it; returns the callback URL the browser is sent back to, not yet visited.
pub async fn approved_callback(base: &str) -> Url {
    approved_callback_to(base, "up").await
}

/// [`approved_callback`] for the route named `route`.
pub async fn approved_callback_to(base: &str, route: &str) -> Url {
    let start = start_sign_in(base, route).await;
    let approved = browser()
        .get(location(&start))
        .send()
        .await
        .expect("authorize");
    assert_eq!(approved.status(), 302, "the mock approves at once");
    location(&approved)
}

/// Runs a sign-in the way a browser would; returns the callback page's status and text.
pub async fn sign_in(gateway: &TestGateway) -> (u16, String) {
    let start = start_sign_in(&gateway.url(), "up").await;
    assert_eq!(
        start.status(),
        302,
        "{}",
        start.text().await.unwrap_or_default()
    );
    let authorize = location(&start);
    let approved = browser().get(authorize).send().await.expect("authorize");
    assert_eq!(approved.status(), 302, "the mock approves at once");
    let callback = location(&approved);
    let page = browser().get(callback).send().await.expect("callback");
    let status = page.status().as_u16();
    (status, page.text().await.expect("page"))
}

pub async fn initialize(gateway: &TestGateway) -> (u16, Value) {
    let response = browser()
        .post(format!("{}/up/mcp", gateway.url()))
        .header("accept", "application/json, text/event-stream")
        .json(&super::initialize_request())
        .send()
        .await
        .expect("initialize");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub fn store_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("store"))
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
