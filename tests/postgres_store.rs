//! The PostgreSQL token store against a real server, and sealed records in both stores:
//! replicas sharing sign-ins through one database, one refresh for a crowd of requests
//! across two gateways, a database restart under traffic, encryption at rest with key
//! rotation, and the schema migrated once by gateways starting together.
//!
//! Each test starts its own server (`support::postgres`); `scripts/install-test-deps.sh`
//! installs PostgreSQL.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;
use support::gateway::{TestGateway, start};
use support::mock_upstream::{MockOptions, MockUpstream};
use support::postgres::{self, TestPostgres};
use support::signin::{browser, initialize, sign_in};

/// A gateway with one OAuth route `up` whose `[store]` holds `store`; `public_url`, when
/// given, makes it a replica behind the same address as another gateway.
fn gateway(upstream: &MockUpstream, store: &str, public_url: Option<&str>) -> TestGateway {
    let public_url = public_url
        .map(|url| format!("public_url = \"{url}\""))
        .unwrap_or_default();
    start(
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
{public_url}
[store]
{store}
[[routes]]
name = "up"
prefix = "/up"
upstream = "{}"
[routes.auth]
kind = "oauth"
"#,
            upstream.base_url()
        ),
        &[],
    )
}

/// The `[store]` lines of the postgres store on `db`, plus `extra`.
fn on(db: &TestPostgres, extra: &str) -> String {
    format!(
        "kind = \"postgres\"\nurl = \"{}\"\ndir = \"{{dir}}/store\"\n{extra}",
        db.url()
    )
}

/// The address a browser used for `gateway`, which a replica must share.
fn public_url(gateway: &TestGateway) -> String {
    gateway.url().replace("127.0.0.1", "localhost")
}

/// `encryption_keys` naming key files written in `dir`: id and the byte the key repeats.
fn keys(dir: &Path, keys: &[(&str, u8)]) -> String {
    let entries: Vec<String> = keys
        .iter()
        .map(|(id, byte)| {
            let path = dir.join(format!("{id}.key"));
            std::fs::write(&path, BASE64.encode([*byte; 32])).expect("write key file");
            format!("{{ id = \"{id}\", file = \"{}\" }}", path.display())
        })
        .collect();
    format!("encryption_keys = [{}]", entries.join(", "))
}

/// The slot rows: route, and the tokens and client records as text.
async fn rows(db: &TestPostgres) -> Vec<(String, Option<String>, Option<String>)> {
    db.client()
        .await
        .query(
            "SELECT route, tokens::text, client::text FROM mcp_gateway_slots",
            &[],
        )
        .await
        .expect("query the slots")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

/// The one row's tokens record, parsed.
async fn stored_tokens(db: &TestPostgres) -> Value {
    let rows = rows(db).await;
    assert_eq!(rows.len(), 1, "one slot");
    let text = rows[0].1.as_deref().expect("tokens stored");
    serde_json::from_str(text).expect("jsonb text")
}

async fn get(gateway: &TestGateway) -> u16 {
    reqwest::get(format!("{}/up/anything", gateway.url()))
        .await
        .expect("request")
        .status()
        .as_u16()
}

/// The bearer token the upstream saw on the last request.
fn last_bearer(upstream: &MockUpstream) -> String {
    let seen = upstream
        .state()
        .last_request_to("/anything")
        .expect("the upstream saw a request");
    let auth = seen.header("authorization").expect("authorization");
    auth.trim_start_matches("Bearer ").to_owned()
}

/// The route's sign-in status from the admin API (loopback needs no token).
async fn sign_in_status(gateway: &TestGateway) -> Value {
    let status: Value = reqwest::get(format!("{}/admin/api/routes/up", gateway.url()))
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    status["sign_in"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sign_in_stored_in_postgres_serves_a_second_gateway_without_signing_in() {
    let db = TestPostgres::start();
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let first = gateway(&upstream, &on(&db, ""), None);
    assert_eq!(sign_in(&first).await.0, 200);

    let rows = rows(&db).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (route, tokens, client) = &rows[0];
    assert_eq!(route, "up");
    let tokens: Value = serde_json::from_str(tokens.as_deref().expect("tokens")).expect("json");
    let issued = upstream.oauth().issued_access_tokens();
    assert_eq!(tokens["access_token"], issued[0]);
    assert!(client.as_deref().is_some_and(|c| c.contains("client_id")));

    // A second replica on the same database, started after the sign-in.
    let second = gateway(&upstream, &on(&db, ""), Some(&public_url(&first)));
    assert_eq!(get(&second).await, 200);
    assert_eq!(last_bearer(&upstream), issued[0]);
    assert_eq!(initialize(&second).await.0, 200);
    assert_eq!(
        upstream.oauth().token_requests(),
        1,
        "only the sign-in's code exchange"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_gateways_on_one_database_refresh_once_for_a_thousand_requests_at_expiry() {
    let db = TestPostgres::start();
    let upstream = MockUpstream::start(MockOptions {
        access_token_ttl: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    let first = gateway(&upstream, &on(&db, ""), None);
    assert_eq!(sign_in(&first).await.0, 200);
    let signed_in = Instant::now();
    let second = gateway(&upstream, &on(&db, ""), Some(&public_url(&first)));
    assert_eq!(
        get(&second).await,
        200,
        "the replica serves the stored sign-in"
    );

    // Both refreshers start at 80% of the 3 s lifetime; the slow token endpoint keeps the
    // first refresh in flight past expiry while the other gateway waits for the slot lock.
    let oauth = upstream.oauth();
    oauth.set_token_delay(Some(Duration::from_millis(1500)));
    oauth.set_access_token_ttl(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(3100).saturating_sub(signed_in.elapsed())).await;

    let began = Instant::now();
    let client = reqwest::Client::new();
    let requests = (0..1000).map(|n| {
        let url = format!("{}/up/anything", [&first, &second][n % 2].url());
        let client = client.clone();
        tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) })
    });
    let statuses = futures::future::join_all(requests).await;
    let took = began.elapsed();
    let failed: Vec<_> = statuses
        .iter()
        .filter(|s| !matches!(s, Ok(Ok(200))))
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    eprintln!(
        "1000 requests across two gateways at expiry: {} ms, {} refresh token requests",
        took.as_millis(),
        oauth.refresh_requests()
    );
    assert_eq!(oauth.refresh_requests(), 1, "one token request for both");
    assert!(!oauth.refresh_token_reuse_detected());

    // Both use the new token, and the row holds it.
    let newest = oauth
        .issued_access_tokens()
        .last()
        .cloned()
        .expect("issued");
    for gateway in [&first, &second] {
        assert_eq!(get(gateway).await, 200);
        assert_eq!(last_bearer(&upstream), newest, "{}", gateway.url());
    }
    assert_eq!(stored_tokens(&db).await["access_token"], newest);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_restart_under_traffic_loses_nothing_and_the_next_refresh_updates_the_row() {
    let mut db = TestPostgres::start();
    let upstream = MockUpstream::start(MockOptions {
        access_token_ttl: Duration::from_secs(6),
        ..Default::default()
    })
    .await;
    let gateway = gateway(&upstream, &on(&db, ""), None);
    assert_eq!(sign_in(&gateway).await.0, 200);
    let signed_in = Instant::now();
    let first_token = upstream.oauth().issued_access_tokens()[0].clone();

    // The database goes away; requests go on with the tokens the gateway holds.
    db.stop();
    for _ in 0..10 {
        assert_eq!(
            get(&gateway).await,
            200,
            "served while the database is down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A refresh now cannot lock the slot: it fails saying so, and spends no refresh token.
    let refused = browser()
        .post(format!("{}/admin/api/routes/up/refresh", gateway.url()))
        .send()
        .await
        .expect("refresh");
    assert_eq!(refused.status(), 502);
    let body = refused.text().await.expect("body");
    assert!(body.contains("unreachable"), "{body}");
    assert!(!body.contains(postgres::PASSWORD), "{body}");
    assert_eq!(upstream.oauth().refresh_requests(), 0);
    assert_eq!(
        get(&gateway).await,
        200,
        "the failed refresh changed nothing"
    );
    db.restart();

    // The refresher runs at 80% of the lifetime (4.8 s), after the database is back; traffic
    // carries on past the first token's expiry.
    while signed_in.elapsed() < Duration::from_secs(8) {
        assert_eq!(get(&gateway).await, 200, "at {:?}", signed_in.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let oauth = upstream.oauth();
    assert_eq!(oauth.refresh_requests(), 1);
    assert!(!oauth.refresh_token_reuse_detected());
    let newest = oauth
        .issued_access_tokens()
        .last()
        .cloned()
        .expect("issued");
    assert_ne!(newest, first_token);
    assert_eq!(last_bearer(&upstream), newest);
    assert_eq!(stored_tokens(&db).await["access_token"], newest);
}

#[tokio::test(flavor = "multi_thread")]
async fn sealed_rows_hide_tokens_name_a_missing_key_and_rotate_to_the_first_key() {
    let db = TestPostgres::start();
    let keydir = tempfile::tempdir().expect("tempdir");
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let first = gateway(
        &upstream,
        &on(&db, &keys(keydir.path(), &[("k1", 1)])),
        None,
    );
    assert_eq!(sign_in(&first).await.0, 200);
    let replica = |store: String| gateway(&upstream, &store, Some(&public_url(&first)));

    let oauth = upstream.oauth();
    let sealed = stored_tokens(&db).await;
    assert_eq!(sealed["key_id"], "k1");
    let row = format!("{:?}", rows(&db).await);
    for token in oauth
        .issued_access_tokens()
        .iter()
        .chain(&oauth.issued_refresh_tokens())
    {
        assert!(
            !row.contains(token.as_str()),
            "token text in the row: {row}"
        );
    }

    // Without the key: the route needs sign-in, and says which key it lacks.
    let keyless = replica(on(&db, ""));
    let status = sign_in_status(&keyless).await;
    assert_eq!(status["state"], "needs_sign_in", "{status}");
    let reason = status["reason"].as_str().expect("a reason");
    assert!(
        reason.contains("`k1`") && reason.contains("encryption_keys"),
        "{reason}"
    );
    assert!(!reason.contains(postgres::PASSWORD), "{reason}");
    assert_ne!(get(&keyless).await, 200);
    drop(keyless);

    // A new first key with the old one kept second: reads, then reseals on the next write.
    let rotated = replica(on(&db, &keys(keydir.path(), &[("k2", 2), ("k1", 1)])));
    assert_eq!(get(&rotated).await, 200);
    let refreshed = browser()
        .post(format!("{}/admin/api/routes/up/refresh", rotated.url()))
        .send()
        .await
        .expect("refresh");
    assert_eq!(refreshed.status(), 200);
    assert_eq!(stored_tokens(&db).await["key_id"], "k2");
    let client: Value = serde_json::from_str(rows(&db).await[0].2.as_deref().expect("client"))
        .expect("client json");
    assert_eq!(
        client["key_id"], "k2",
        "the registration moved to the new key too"
    );

    // The old key can go now: the replica serves, and refreshes with the stored client.
    let new_only = replica(on(&db, &keys(keydir.path(), &[("k2", 2)])));
    assert_eq!(get(&new_only).await, 200);
    let refreshed = browser()
        .post(format!("{}/admin/api/routes/up/refresh", new_only.url()))
        .send()
        .await
        .expect("refresh");
    assert_eq!(refreshed.status(), 200);
    assert_eq!(get(&new_only).await, 200);
    let newest = oauth
        .issued_access_tokens()
        .last()
        .cloned()
        .expect("issued");
    assert_eq!(last_bearer(&upstream), newest);
}

#[tokio::test(flavor = "multi_thread")]
async fn sealed_files_hide_tokens_and_a_gateway_without_the_key_names_it_and_keeps_them() {
    let keydir = tempfile::tempdir().expect("tempdir");
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let sealed = format!(
        "dir = \"{{dir}}/store\"\n{}",
        keys(keydir.path(), &[("k1", 1)])
    );
    let first = gateway(&upstream, &sealed, None);
    assert_eq!(sign_in(&first).await.0, 200);
    let store = first.dir.path().join("store");
    let oauth = upstream.oauth();
    let tokens: Vec<String> = oauth
        .issued_access_tokens()
        .into_iter()
        .chain(oauth.issued_refresh_tokens())
        .collect();
    assert!(
        tokens.len() >= 2,
        "an access and a refresh token were issued"
    );
    let files: Vec<_> = std::fs::read_dir(&store)
        .expect("store dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read");
        assert!(text.contains("\"k1\""), "{text}");
        for token in &tokens {
            assert!(
                !text.contains(token.as_str()),
                "token text in {}",
                file.display()
            );
        }
    }

    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).expect("read"))
        .collect();

    // Without the key: the route needs sign-in, says which key it lacks, and the files stay.
    let keyless = gateway(&upstream, &format!("dir = \"{}\"", store.display()), None);
    let status = sign_in_status(&keyless).await;
    assert_eq!(status["state"], "needs_sign_in", "{status}");
    let reason = status["reason"].as_str().expect("a reason");
    assert!(reason.contains("`k1`"), "{reason}");
    let after: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).expect("kept"))
        .collect();
    assert_eq!(before, after);
    let names: Vec<_> = std::fs::read_dir(&store)
        .expect("store dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(
        !names.iter().any(|name| name.contains("corrupt")),
        "{names:?}"
    );
}

#[test]
fn migrations_run_once_when_gateways_start_together_on_an_empty_database() {
    let db = TestPostgres::start();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let upstream = runtime.block_on(MockUpstream::start(MockOptions::default()));
    let store = on(&db, "");
    let gateways: Vec<TestGateway> = std::thread::scope(|scope| {
        let starting: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| gateway(&upstream, &store, None)))
            .collect();
        starting
            .into_iter()
            .map(|thread| thread.join().expect("a gateway starts"))
            .collect()
    });
    assert_eq!(gateways.len(), 4);
    runtime.block_on(async {
        let client = db.client().await;
        let versions: Vec<i32> = client
            .query(
                "SELECT version FROM mcp_gateway_schema_version ORDER BY version",
                &[],
            )
            .await
            .expect("versions")
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(versions, [1, 2]);
        let slots: i64 = client
            .query_one("SELECT count(*) FROM mcp_gateway_slots", &[])
            .await
            .expect("the slots table exists")
            .get(0);
        assert_eq!(slots, 0);
    });
}

/// The binary at `RUST_LOG=trace` through a sign-in, a database outage with refreshes that
/// fail, and its return: neither the database password, nor the key, nor a token reaches the
/// log or an answer, and the outage is logged once and the return once.
#[tokio::test(flavor = "multi_thread")]
async fn no_password_key_or_token_leaks_and_an_outage_is_logged_once() {
    let mut db = TestPostgres::start();
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = BASE64.encode([0x5a; 32]);
    std::fs::write(dir.path().join("k1.key"), &key).expect("key file");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nkind = \"postgres\"\nurl = \"{}\"\n\
             dir = \"store\"\nencryption_keys = [{{ id = \"k1\", file = \"k1.key\" }}]\n\
             [[routes]]\nname = \"up\"\nprefix = \"/up\"\nupstream = \"{}\"\n",
            db.url(),
            upstream.base_url()
        ),
    )
    .expect("config");
    let log_path = dir.path().join("gateway.log");
    let mut child = support::process::gateway_command()
        .env("RUST_LOG", "trace")
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log_path).expect("log file"))
        .spawn()
        .expect("spawn serve");
    let base = support::process::listening_url(&mut child);
    let child = support::process::Running::new(child);
    let mut seen = Vec::new();
    let callback = support::signin::approved_callback(&base).await;
    let done = browser().get(callback).send().await.expect("callback");
    assert_eq!(done.status(), 200);
    seen.push(done.text().await.expect("page"));
    let refresh = || async {
        let response = browser()
            .post(format!("{base}/admin/api/routes/up/refresh"))
            .send()
            .await
            .expect("refresh");
        (
            response.status().as_u16(),
            response.text().await.expect("body"),
        )
    };

    db.stop();
    for _ in 0..3 {
        let (status, body) = refresh().await;
        assert_eq!(status, 502, "{body}");
        seen.push(body);
    }
    db.restart();
    let (status, body) = refresh().await;
    assert_eq!(status, 200, "{body}");
    seen.push(body);
    for path in ["/metrics", "/admin/api/routes", "/"] {
        let page = browser()
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("page");
        seen.push(page.text().await.expect("text"));
    }
    drop(child);

    let log = std::fs::read_to_string(&log_path).expect("log");
    let count = |needle: &str| log.lines().filter(|line| line.contains(needle)).count();
    assert_eq!(count("token store database connection lost"), 1, "{log}");
    assert_eq!(count("token store database reconnected"), 1, "{log}");
    let mut secrets = upstream.oauth().issued_secrets();
    assert!(secrets.len() >= 4, "tokens and a code were issued");
    secrets.extend([postgres::PASSWORD.to_owned(), key]);
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

/// Whatever `error` says, its causes included.
fn chain(error: &dyn std::error::Error) -> String {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    chain
}

/// Binds a gateway with one OAuth route on `store`, expecting it to fail; returns the error.
fn refused_start(store: &str, upstream: &MockUpstream) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[store]\n{store}\ndir = \"store\"\n[[routes]]\nname = \"up\"\nprefix = \"/up\"\n\
             upstream = \"{}\"\n",
            upstream.base_url()
        ),
    )
    .expect("config");
    let config = mcp_u2m_gateway::Config::load(Some(&path)).expect("valid config");
    match mcp_u2m_gateway::Gateway::bind(config) {
        Ok(_) => panic!("the gateway started"),
        Err(error) => chain(&error),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_does_not_start_on_an_unreachable_database_and_says_so_without_the_password() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    // A port nothing listens on: taken, then let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let url = format!(
        "postgres://gateway:{}@127.0.0.1:{port}/postgres",
        postgres::PASSWORD
    );
    let error = refused_start(&format!("kind = \"postgres\"\nurl = \"{url}\""), &upstream);
    assert!(error.contains("cannot open the token store"), "{error}");
    assert!(
        error.contains(&format!("gateway@127.0.0.1:{port}/postgres is unreachable")),
        "{error}"
    );
    assert!(!error.contains(postgres::PASSWORD), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sslmode_require_connects_over_tls_and_refuses_an_unknown_certificate() {
    let db = TestPostgres::start_with_tls();
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let url = format!("{}?sslmode=require", db.url());
    let store = format!(
        "kind = \"postgres\"\nurl = \"{url}\"\nca_file = \"{}\"\ndir = \"{{dir}}/store\"",
        db.ca_file().display()
    );
    let gateway = gateway(&upstream, &store, None);
    assert_eq!(sign_in(&gateway).await.0, 200);
    let issued = upstream.oauth().issued_access_tokens();
    assert_eq!(stored_tokens(&db).await["access_token"], issued[0]);

    // Every connection the gateway holds is encrypted.
    let (encrypted, all): (i64, i64) = {
        let row = db
            .client()
            .await
            .query_one(
                "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_ssl s
                 JOIN pg_stat_activity a USING (pid)
                 WHERE a.application_name = 'mcp-u2m-gateway'",
                &[],
            )
            .await
            .expect("query");
        (row.get(0), row.get(1))
    };
    assert!(
        all >= 1 && encrypted == all,
        "{encrypted} of {all} over TLS"
    );

    // Without the CA that signed it, the server's certificate is refused at start.
    let chain = refused_start(&format!("kind = \"postgres\"\nurl = \"{url}\""), &upstream);
    assert!(chain.contains("certificate"), "{chain}");
    assert!(!chain.contains(postgres::PASSWORD), "{chain}");
}
