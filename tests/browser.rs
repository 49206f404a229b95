//! The web UI in a real browser: headless Chromium, driven through chromedriver's WebDriver
//! API, opens the gateway's page, clicks Sign in, approves on the mock authorization
//! server's consent page, comes back and finds the route signed in with a live expiry.
//! A screenshot of the signed-in page is left at `target/ui-signed-in.png`.
//!
//! Chromium and chromedriver come from Debian's `chromium` and `chromium-driver` packages,
//! which `scripts/install-test-deps.sh` installs (the README's test command runs it).

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use support::mock_upstream::{MockOptions, MockUpstream};
use support::signin::oauth_gateway;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The key WebDriver uses for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process, stopped when dropped.
struct Driver {
    child: Child,
    base: String,
}

impl Driver {
    fn start() -> Self {
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: run scripts/install-test-deps.sh (the README's test command does)"
            );
        }
        let mut child = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let port = loop {
            let line = lines
                .next()
                .expect("chromedriver says where it listens")
                .expect("line");
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                break rest.trim_end_matches('.').trim().to_owned();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser session.
struct Browser {
    http: reqwest::Client,
    session: String,
}

impl Browser {
    async fn open(driver: &Driver) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1000,1100"],
            },
        }}});
        let created: Value = http
            .post(format!("{}/session", driver.base))
            .json(&capabilities)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("json");
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        Self {
            http,
            session: format!("{}/session/{session}", driver.base),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request
            .send()
            .await
            .expect("webdriver")
            .json()
            .await
            .expect("json");
        assert!(
            answer["value"]["error"].is_null(),
            "webdriver {path}: {answer}"
        );
        answer["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn source(&self) -> String {
        let value = self.call(reqwest::Method::GET, "/source", None).await;
        value.as_str().unwrap_or_default().to_owned()
    }

    /// Waits until the page holds `text`; returns the page.
    async fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let page = self.source().await;
            if page.contains(text) {
                return page;
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed {text:?}:\n{page}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn element(&self, css: &str) -> String {
        let body = json!({ "using": "css selector", "value": css });
        let found = self
            .call(reqwest::Method::POST, "/element", Some(body))
            .await;
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned()
    }

    async fn click(&self, css: &str) {
        let element = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn text(&self, css: &str) -> String {
        let element = self.element(css).await;
        let value = self
            .call(
                reqwest::Method::GET,
                &format!("/element/{element}/text"),
                None,
            )
            .await;
        value.as_str().unwrap_or_default().to_owned()
    }

    async fn displayed(&self, css: &str) -> bool {
        let element = self.element(css).await;
        let value = self
            .call(
                reqwest::Method::GET,
                &format!("/element/{element}/displayed"),
                None,
            )
            .await;
        value.as_bool().unwrap_or(false)
    }

    async fn screenshot(&self, path: &Path) {
        let value = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().expect("base64"))
            .expect("png");
        std::fs::write(path, png).expect("write screenshot");
    }

    async fn close(self) {
        let _ = self.http.delete(&self.session).send().await;
    }
}

fn screenshot_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ui-signed-in.png")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_signs_in_through_the_page_in_a_real_browser() {
    let upstream = MockUpstream::start(MockOptions {
        consent_page: true,
        ..Default::default()
    })
    .await;
    let gateway = oauth_gateway(&upstream, "");
    // The page links to the public URL's host, localhost.
    let home = format!("http://localhost:{}/", gateway.running.local_addr().port());
    let driver = Driver::start();
    let browser = Browser::open(&driver).await;

    browser.go(&home).await;
    browser.wait_for("needs sign-in").await;
    browser.click("a.button.primary").await;

    // The mock authorization server asks first, as a real one would.
    browser.wait_for("Mock authorization server").await;
    browser.click("#approve").await;
    let done = browser.wait_for("Signed in to up").await;
    assert!(!done.contains("code="), "the page shows no code");

    browser.go(&home).await;
    let page = browser.wait_for(">signed in<").await;
    for secret in upstream.oauth().issued_secrets() {
        assert!(!page.contains(&secret), "the page shows a credential");
    }
    // The script ran: the countdown ticks and the copy buttons show.
    let countdown = browser.text("[data-expires-at]").await;
    assert!(countdown.starts_with("in "), "{countdown}");
    assert!(browser.displayed("button[data-copy]").await);
    browser.screenshot(&screenshot_path()).await;
    browser.close().await;

    // And MCP clients now get through.
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/up/mcp", gateway.url()))
        .header("accept", "application/json")
        .json(&support::initialize_request())
        .send()
        .await
        .expect("initialize")
        .json()
        .await
        .expect("json");
    assert_eq!(answer["result"]["serverInfo"]["name"], "mock-upstream");
}
