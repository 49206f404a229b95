//! Sign-ins across replicas that share one PostgreSQL store: a sign-in started on one
//! gateway finishes on another, as happens behind a load balancer; its `state` still works
//! once across both, expires, stays bound to the person who started it, and is sealed in
//! the database when keys are configured.
//!
//! Each test starts its own server (`support::postgres`); `scripts/install-test-deps.sh`
//! installs PostgreSQL. The two gateways listen on two ports of one host under one public
//! URL; a browser's cookies belong to the host whatever the port, so moving a callback to
//! the other port is what a load balancer does.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::cookie::Jar;
use sha2::{Digest, Sha256};
use support::gateway::{TestGateway, start};
use support::mock_upstream::{MockOptions, MockUpstream, PreregisteredClient};
use support::postgres::TestPostgres;
use support::signin::{browser, location, query};
use url::Url;

const IDENTITY: &str = "x-forwarded-email";
const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";

/// How a test gateway is set up besides its database.
#[derive(Default)]
struct Replica<'a> {
    /// The public URL of the replica it sits beside, which both then share.
    beside: Option<&'a TestGateway>,
    /// Lines added to `[server]`.
    server: &'a str,
    /// Lines added to `[store]`.
    store: String,
    /// Lines added to the route's `[routes.auth]`.
    auth: &'a str,
    per_user: bool,
}

/// A gateway with one OAuth route `up` in front of `upstream`, its store on `db`.
fn gateway(db: &TestPostgres, upstream: &MockUpstream, replica: Replica<'_>) -> TestGateway {
    let public_url = replica
        .beside
        .map(|first| format!("public_url = \"{}\"", public_url(first)))
        .unwrap_or_default();
    let per_user = match replica.per_user {
        true => "trusted_identity_header = \"X-Forwarded-Email\"\nprincipal = \"forwarded\"",
        false => "",
    };
    start(
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
{public_url}
{per_user}
{server}
[store]
kind = "postgres"
url = "{url}"
dir = "{{dir}}/store"
{store}
[[routes]]
name = "up"
prefix = "/up"
upstream = "{upstream}"
[routes.auth]
kind = "oauth"
{auth}
"#,
            server = replica.server,
            auth = replica.auth,
            store = replica.store,
            url = db.url(),
            upstream = upstream.base_url(),
        ),
        &[],
    )
}

/// The address a browser uses for `gateway`, which a replica beside it shares.
fn public_url(gateway: &TestGateway) -> String {
    gateway.url().replace("127.0.0.1", "localhost")
}

/// `url` as the load balancer delivers it to `replica`: the same URL on the replica's port.
fn at(url: &Url, replica: &TestGateway) -> Url {
    let mut moved = url.clone();
    let port = replica.running.local_addr().port();
    moved.set_port(Some(port)).expect("an http URL has a port");
    moved
}

/// `encryption_keys` with one key `id` of bytes `byte`, its file written in `dir`.
fn key(dir: &Path, id: &str, byte: u8) -> String {
    let path = dir.join(format!("{id}.key"));
    std::fs::write(&path, BASE64.encode([byte; 32])).expect("write key file");
    format!(
        "encryption_keys = [{{ id = \"{id}\", file = \"{}\" }}]",
        path.display()
    )
}

/// Starts a sign-in on `gateway` under the public host, as the load balancer delivers it
/// (marked as a start the gateway moved there itself, since the port differs), and lets the
/// mock approve it: the callback URL, and the binding cookie's value as the start page set it.
async fn approved_at(gateway: &TestGateway) -> (Url, String) {
    let port = gateway.running.local_addr().port();
    let start = format!("http://localhost:{port}/auth/up/start?canonical=1");
    let started = browser().get(start).send().await.expect("start");
    assert_eq!(started.status(), 302);
    let cookie = started.headers()["set-cookie"]
        .to_str()
        .expect("ascii")
        .split(';')
        .next()
        .and_then(|pair| pair.split_once('='))
        .map(|(_, value)| value.to_owned())
        .expect("a binding cookie");
    let approved = browser()
        .get(location(&started))
        .send()
        .await
        .expect("authorize");
    assert_eq!(approved.status(), 302, "the mock approves at once");
    (location(&approved), cookie)
}

/// Visits `url` with the tests' browser: the page's status and text.
async fn visit(client: &reqwest::Client, url: Url) -> (u16, String) {
    let page = client.get(url).send().await.expect("page");
    let status = page.status().as_u16();
    (status, page.text().await.expect("text"))
}

async fn get(gateway: &TestGateway) -> (u16, String) {
    let response = reqwest::get(format!("{}/up/anything", gateway.url()))
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// The bearer token the upstream saw on the last request.
fn last_bearer(upstream: &MockUpstream) -> String {
    let seen = upstream.state().last_request_to("/anything").expect("seen");
    let auth = seen.header("authorization").expect("authorization");
    auth.trim_start_matches("Bearer ").to_owned()
}

/// The flows table: each row's state digest and record as text.
async fn flow_rows(db: &TestPostgres) -> Vec<(String, String)> {
    db.client()
        .await
        .query(
            "SELECT state_digest, flow::text FROM mcp_gateway_flows",
            &[],
        )
        .await
        .expect("query the flows")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

fn hex_sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_callback_landing_on_another_replica_signs_in_and_its_replay_is_refused_everywhere() {
    let db = TestPostgres::start();
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let first = gateway(&db, &upstream, Replica::default());
    let second = gateway(
        &db,
        &upstream,
        Replica {
            beside: Some(&first),
            ..Default::default()
        },
    );

    let (callback, _) = approved_at(&first).await;
    let state = query(&callback)["state"].clone();
    let rows = flow_rows(&db).await;
    assert_eq!(rows.len(), 1, "the start saved the flow for the replicas");
    assert_eq!(rows[0].0, hex_sha256(&state), "keyed by the state's digest");
    assert!(
        !rows[0].1.contains(&state),
        "the state itself is not stored"
    );

    let (status, page) = visit(&browser(), at(&callback, &second)).await;
    assert_eq!(status, 200, "{page}");
    assert!(flow_rows(&db).await.is_empty(), "the flow was taken");
    let issued = upstream.oauth().issued_access_tokens();
    assert_eq!(issued.len(), 1);

    // The replica that finished serves at once, from the tokens it installed.
    assert_eq!(get(&second).await.0, 200);
    assert_eq!(last_bearer(&upstream), issued[0]);

    // The one that started it holds no tokens, so it reads the store again and serves too.
    assert_eq!(get(&first).await.0, 200);
    assert_eq!(last_bearer(&upstream), issued[0]);

    // The same callback again, at the replica that started it: its state was used.
    let (status, page) = visit(&browser(), callback).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("unknown or was already used"), "{page}");
    assert_eq!(upstream.oauth().token_requests(), 1, "one code exchange");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sign_in_older_than_the_timeout_is_refused_by_the_replica_it_lands_on() {
    let db = TestPostgres::start();
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let first = gateway(&db, &upstream, Replica::default());
    let second = gateway(
        &db,
        &upstream,
        Replica {
            beside: Some(&first),
            server: "sign_in_timeout_secs = 1",
            ..Default::default()
        },
    );

    // Still live in the store (the first gateway gives ten minutes), but not to the second.
    let (callback, _) = approved_at(&first).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, page) = visit(&browser(), at(&callback, &second)).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("has expired"), "{page}");
    assert!(flow_rows(&db).await.is_empty(), "the flow was used up");
    assert_eq!(upstream.oauth().token_requests(), 0);

    // Expired in the store too: a replica finds nothing to finish.
    let short = Replica {
        beside: Some(&second),
        server: "sign_in_timeout_secs = 1",
        ..Default::default()
    };
    let third = gateway(&db, &upstream, short);
    let (callback, _) = approved_at(&second).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, page) = visit(&browser(), at(&callback, &third)).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("unknown or was already used"), "{page}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_keys_a_saved_sign_in_is_sealed_to_its_state_and_opens_on_the_other_replica() {
    let db = TestPostgres::start();
    let keydir = tempfile::tempdir().expect("tempdir");
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let sealed = || key(keydir.path(), "k1", 7);
    let first = gateway(
        &db,
        &upstream,
        Replica {
            store: sealed(),
            ..Default::default()
        },
    );
    let second = gateway(
        &db,
        &upstream,
        Replica {
            beside: Some(&first),
            store: sealed(),
            ..Default::default()
        },
    );

    let (callback, cookie) = approved_at(&first).await;
    let state = query(&callback)["state"].clone();
    let rows = flow_rows(&db).await;
    assert_eq!(rows.len(), 1);
    let record: serde_json::Value = serde_json::from_str(&rows[0].1).expect("jsonb");
    let mut fields: Vec<&str> = record
        .as_object()
        .expect("an envelope")
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        ["ciphertext", "key_id", "mcp_gateway_sealed", "nonce"],
        "nothing but the envelope: no verifier, cookie or client in clear text"
    );
    for secret in [cookie.as_str(), state.as_str(), "verifier", "client_id"] {
        assert!(!rows[0].1.contains(secret), "{secret} in {}", rows[0].1);
    }

    let (status, page) = visit(&browser(), at(&callback, &second)).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(get(&second).await.0, 200);
}

/// A browser whose requests the proxy in front names as `who`, with the tests' cookies.
fn as_person(jar: &Arc<Jar>, who: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(IDENTITY, who.parse().expect("header value"));
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_provider(Arc::clone(jar))
        .default_headers(headers)
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// Starts `client`'s sign-in at `gateway`'s public URL and lets the mock approve it.
async fn approved_for(client: &reqwest::Client, gateway: &TestGateway) -> Url {
    let port = gateway.running.local_addr().port();
    let start = format!("http://localhost:{port}/auth/up/start?canonical=1");
    let started = client.get(start).send().await.expect("start");
    assert_eq!(started.status(), 302);
    let approved = client
        .get(location(&started))
        .send()
        .await
        .expect("authorize");
    assert_eq!(approved.status(), 302, "the mock approves at once");
    location(&approved)
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_per_user_route_a_sign_in_finishes_on_another_replica_only_for_its_own_person() {
    let db = TestPostgres::start();
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let per_user = |beside| Replica {
        beside,
        per_user: true,
        ..Default::default()
    };
    let first = gateway(&db, &upstream, per_user(None));
    let second = gateway(&db, &upstream, per_user(Some(&first)));
    let jar = Arc::new(Jar::default());
    let (alice, bob) = (as_person(&jar, ALICE), as_person(&jar, BOB));

    // Alice starts on the first replica; the callback reaches the second from Bob's session.
    let callback = approved_for(&alice, &first).await;
    let (status, page) = visit(&bob, at(&callback, &second)).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("started by someone else"), "{page}");
    assert_eq!(upstream.oauth().token_requests(), 0);
    assert!(flow_rows(&db).await.is_empty(), "the flow was used up");

    // From her own session it works, and the second replica serves her with her token.
    let callback = approved_for(&alice, &first).await;
    let (status, page) = visit(&alice, at(&callback, &second)).await;
    assert_eq!(status, 200, "{page}");
    let served = alice
        .get(format!("{}/up/anything", second.url()))
        .send()
        .await
        .expect("request");
    assert_eq!(served.status(), 200);
    let issued = upstream.oauth().issued_access_tokens();
    assert_eq!(last_bearer(&upstream), issued[0]);
    let served = alice
        .get(format!("{}/up/anything", first.url()))
        .send()
        .await
        .expect("request");
    assert_eq!(
        served.status(),
        200,
        "the first replica reads her tokens again"
    );
    assert_eq!(last_bearer(&upstream), issued[0]);
    let refused = bob
        .get(format!("{}/up/anything", second.url()))
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), 401, "Bob has not signed in");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_outage_leaves_a_sign_in_to_its_own_replica_and_a_handover_says_why_not() {
    let mut db = TestPostgres::start();
    let upstream = MockUpstream::start(MockOptions {
        preregistered: vec![PreregisteredClient::public("gw-client")],
        ..Default::default()
    })
    .await;
    // A client registered ahead, so that starting a sign-in reads nothing from the database.
    let own_client = |beside| Replica {
        beside,
        auth: "client_id = \"gw-client\"",
        ..Default::default()
    };
    let first = gateway(&db, &upstream, own_client(None));
    let second = gateway(&db, &upstream, own_client(Some(&first)));

    // Not saved while the database is down; back in time for the callback at its own replica.
    db.stop();
    let (callback, _) = approved_at(&first).await;
    db.restart();
    assert!(flow_rows(&db).await.is_empty(), "nothing was saved");
    let (status, page) = visit(&browser(), callback).await;
    assert_eq!(status, 200, "{page}");

    // Saved, then the database goes away: the other replica cannot look it up, and says so.
    let (callback, _) = approved_at(&first).await;
    assert_eq!(flow_rows(&db).await.len(), 1);
    db.stop();
    let (status, page) = visit(&browser(), at(&callback, &second)).await;
    assert_eq!(status, 503, "{page}");
    assert!(page.contains("unreachable"), "{page}");
    assert!(page.contains("start the sign-in again"), "{page}");
    assert!(!page.contains(support::postgres::PASSWORD), "{page}");
    assert_eq!(
        upstream.oauth().token_requests(),
        1,
        "only the first sign-in's"
    );
}
