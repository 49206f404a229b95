//! The PostgreSQL store logging in the way Databricks Lakebase wants: the libpq variables of
//! a database resource without `PGPASSWORD`, and the app's service principal
//! (`DATABRICKS_HOST`, `DATABRICKS_CLIENT_ID`, `DATABRICKS_CLIENT_SECRET`) whose OAuth token
//! is the password; from a config file, and in single-upstream mode with no file at all.
//!
//! A real PostgreSQL (`support::postgres`) has the token the mock workspace endpoint
//! (`support::workspace_oauth`) issues as its role's password. The gateway runs as a process
//! with exactly the environment a Databricks App would give it; this test's own environment
//! is left alone.

mod support;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::mock_upstream::{MockOptions, MockUpstream};
use support::postgres::{self, TestPostgres};
use support::process::{Running, gateway_command, listening_url};
use support::signin::{approved_callback, approved_callback_to, browser};
use support::workspace_oauth::{CLIENT_ID, CLIENT_SECRET, WorkspaceOAuth};

const FIRST_TOKEN: &str = "eyJ-lakebase-token-one";
const ROTATED_TOKEN: &str = "eyJ-lakebase-token-two";

/// A config with a postgres `[store]` naming no database (the environment does) and one
/// OAuth route `up`; written in `dir`, whose path it returns.
fn write_config(dir: &Path, upstream: &MockUpstream, store_extra: &str) -> std::path::PathBuf {
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nkind = \"postgres\"\ndir = \"store\"\n\
             {store_extra}\n[[routes]]\nname = \"up\"\nprefix = \"/up\"\nupstream = \"{}\"\n",
            upstream.base_url()
        ),
    )
    .expect("write config");
    path
}

/// The gateway binary on `config`, with only what Databricks Apps sets for a Lakebase
/// resource, the app's service principal at `workspace`, and `RUST_LOG=trace`; its log goes
/// to `log`.
fn lakebase_gateway(
    config: &Path,
    db: &TestPostgres,
    workspace: &WorkspaceOAuth,
    sslmode: &str,
    log: &Path,
) -> Child {
    gateway_command()
        .env_clear()
        .envs([
            ("PGHOST", "127.0.0.1"),
            ("PGPORT", &db.port().to_string()),
            ("PGUSER", postgres::USER),
            ("PGDATABASE", postgres::DATABASE),
            ("PGSSLMODE", sslmode),
            ("DATABRICKS_HOST", &workspace.host()),
            ("DATABRICKS_CLIENT_ID", CLIENT_ID),
            ("DATABRICKS_CLIENT_SECRET", CLIENT_SECRET),
            ("RUST_LOG", "trace"),
        ])
        .args(["serve", "--log-format", "json", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("spawn serve")
}

/// Signs in to route `up` of the gateway at `base`; returns the callback page's status.
async fn sign_in(base: &str) -> u16 {
    let callback = approved_callback(base).await;
    let done = browser().get(callback).send().await.expect("callback");
    done.status().as_u16()
}

async fn get(base: &str) -> u16 {
    browser()
        .get(format!("{base}/up/anything"))
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

/// The access token in the one slot row.
async fn stored_access_token(db: &TestPostgres) -> String {
    let row = db
        .client()
        .await
        .query_one("SELECT tokens::text FROM mcp_gateway_slots", &[])
        .await
        .expect("one slot row");
    let tokens: Value = serde_json::from_str(row.get::<_, &str>(0)).expect("jsonb text");
    tokens["access_token"].as_str().expect("a token").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_configured_like_databricks_apps_logs_in_with_one_workspace_token() {
    let mut db = TestPostgres::start_with_tls();
    db.set_password(FIRST_TOKEN).await;
    let workspace = WorkspaceOAuth::start(FIRST_TOKEN, 3600).await;
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = format!("ca_file = \"{}\"", db.ca_file().display());
    let config = write_config(dir.path(), &upstream, &ca_file);
    let log = dir.path().join("gateway.log");
    let mut child = lakebase_gateway(&config, &db, &workspace, "require", &log);
    let base = listening_url(&mut child);
    let child = Running::new(child);

    assert_eq!(sign_in(&base).await, 200);
    assert_eq!(get(&base).await, 200);
    let issued = upstream.oauth().issued_access_tokens();
    assert_eq!(stored_access_token(&db).await, issued[0]);
    // Start-up's migration, the sign-in's slot lock and its writes: one token for all.
    assert_eq!(workspace.requests(), 1);
    drop(child);

    let log = std::fs::read_to_string(&log).expect("log");
    for secret in [CLIENT_SECRET, FIRST_TOKEN] {
        assert!(!log.contains(secret), "a secret is in the log");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_database_restart_with_a_rotated_token_the_gateway_logs_in_with_a_new_one() {
    let mut db = TestPostgres::start();
    db.set_password(FIRST_TOKEN).await;
    let workspace = WorkspaceOAuth::start(FIRST_TOKEN, 3600).await;
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &upstream, "");
    let log = dir.path().join("gateway.log");
    let mut child = lakebase_gateway(&config, &db, &workspace, "disable", &log);
    let base = listening_url(&mut child);
    let _child = Running::new(child);
    assert_eq!(sign_in(&base).await, 200);
    assert_eq!(workspace.requests(), 1);

    // The database comes back refusing the token the gateway keeps; the workspace now
    // issues the one it accepts.
    db.stop();
    db.restart();
    db.set_password(ROTATED_TOKEN).await;
    workspace.set_token(ROTATED_TOKEN);

    // A refresh locks the slot on a new connection and writes the row on another.
    let refreshed = browser()
        .post(format!("{base}/admin/api/routes/up/refresh"))
        .send()
        .await
        .expect("refresh");
    let status = refreshed.status();
    let body = refreshed.text().await.expect("body");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        workspace.requests(),
        2,
        "one new token for both connections"
    );
    let newest = upstream
        .oauth()
        .issued_access_tokens()
        .last()
        .cloned()
        .expect("issued");
    assert_eq!(stored_access_token(&db).await, newest);
    assert_eq!(get(&base).await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_workspace_token_stops_start_up_naming_the_endpoint_and_the_oauth_error() {
    let db = TestPostgres::start();
    let workspace = WorkspaceOAuth::start(FIRST_TOKEN, 3600).await;
    workspace.refuse();
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &upstream, "");
    let log = dir.path().join("gateway.log");
    let child = lakebase_gateway(&config, &db, &workspace, "disable", &log);
    let mut child = Running::new(child);

    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait() {
            break status;
        }
        assert!(Instant::now() < deadline, "the gateway did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    let log = std::fs::read_to_string(&log).expect("log");
    let endpoint = format!("{}/oidc/v1/token", workspace.host());
    let error = log
        .lines()
        .find(|line| line.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line: {log}"));
    assert!(error.contains("cannot open the token store"), "{error}");
    assert!(error.contains(&endpoint), "{error}");
    assert!(error.contains("invalid_client"), "{error}");
    assert!(!log.contains(CLIENT_SECRET), "the secret is in the log");
    assert!(workspace.requests() >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn single_upstream_mode_keeps_its_sign_in_in_the_database_across_a_restart() {
    // Over TLS, the server's certificate verified against the libpq variable's CA.
    let mut db = TestPostgres::start_with_tls();
    let ca_file = db.ca_file().display().to_string();
    db.set_password(FIRST_TOKEN).await;
    let workspace = WorkspaceOAuth::start(FIRST_TOKEN, 3600).await;
    let upstream = MockUpstream::start(MockOptions::default()).await;
    // Each run gets an empty home: nothing can come back from files.
    let spawn = || {
        let home = tempfile::tempdir().expect("home");
        let child = gateway_command()
            .env_clear()
            .envs([
                ("UPSTREAM_MCP_URL", upstream.base_url()),
                ("MCP_GATEWAY_STORE", "postgres"),
                ("PORT", "0"),
                ("PGHOST", "127.0.0.1"),
                ("PGPORT", &db.port().to_string()),
                ("PGUSER", postgres::USER),
                ("PGDATABASE", postgres::DATABASE),
                ("PGSSLMODE", "verify-full"),
                ("PGSSLROOTCERT", &ca_file),
                ("DATABRICKS_HOST", &workspace.host()),
                ("DATABRICKS_CLIENT_ID", CLIENT_ID),
                ("DATABRICKS_CLIENT_SECRET", CLIENT_SECRET),
            ])
            .env("HOME", home.path())
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn serve");
        (home, child)
    };

    let (_home, mut child) = spawn();
    let base = listening_url(&mut child);
    let first = Running::new(child);
    let callback = approved_callback_to(&base, "default").await;
    let done = browser().get(callback).send().await.expect("callback");
    assert_eq!(done.status(), 200);
    let issued = upstream.oauth().issued_access_tokens();
    assert_eq!(stored_access_token(&db).await, issued[0]);
    drop(first);

    // A redeploy: a new process on a new disk finds the sign-in in the database.
    let (_home, mut child) = spawn();
    let base = listening_url(&mut child);
    let _second = Running::new(child);
    let answer = browser()
        .get(format!("{base}/anything"))
        .send()
        .await
        .expect("request");
    assert_eq!(answer.status(), 200);
    let seen = upstream
        .state()
        .last_request_to("/anything")
        .expect("the upstream saw the request");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {}", issued[0]).as_str())
    );
    assert_eq!(upstream.oauth().token_requests(), 1, "no second sign-in");
}
