//! The Kubernetes deployment in `deploy/kubernetes/`: its `gateway.toml` passes `check` with
//! exactly the environment the Deployment gives the pods, the manifests hang together, and
//! two replicas running that configuration on one PostgreSQL database serve many people,
//! each with their own tokens, refreshing each person's token once between them. The
//! replicas are the binary, started with the environment the Deployment gives its pods.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::mock_upstream::{MockOptions, MockUpstream};
use support::postgres::TestPostgres;
use support::process::{Running, gateway_command, listening_url};
use support::signin::location;

const IDENTITY: &str = "x-auth-request-email";

fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(deploy_file(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The environment variables the Deployment's container sets, each with a value a real
/// cluster could give it.
fn deployment_environment() -> BTreeMap<String, String> {
    let deployment = read("deployment.yaml");
    let env_block = deployment
        .split("          env:\n")
        .nth(1)
        .and_then(|rest| rest.split("          readinessProbe:").next())
        .expect("the container's env list");
    env_block
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- name: "))
        .map(|name| {
            let value = match name {
                "GATEWAY_STORE_KEY" => "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
                "PGPORT" => "5432",
                _ => "from-the-cluster",
            };
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

#[test]
fn the_kubernetes_config_checks_with_what_the_deployment_gives_the_pods() {
    let env = deployment_environment();
    for needed in [
        "PGHOST",
        "PGUSER",
        "PGPASSWORD",
        "GATEWAY_STORE_KEY",
        "MCP_GATEWAY_ADMIN_TOKEN",
    ] {
        assert!(env.contains_key(needed), "deployment.yaml lacks {needed}");
    }
    let output = Command::new(env!("CARGO_BIN_EXE_mcp-u2m-gateway"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(&env)
        .args(["check", "--config"])
        .arg(deploy_file("gateway.toml"))
        .output()
        .expect("run check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("per-user"), "{stdout}");
    assert!(stdout.contains("postgres from-the-cluster"), "{stdout}");
    assert!(stdout.contains("sealed with key k1"), "{stdout}");

    // Without the key the Deployment provides, the same file is refused.
    let output = Command::new(env!("CARGO_BIN_EXE_mcp-u2m-gateway"))
        .env_clear()
        .envs(env.iter().filter(|(name, _)| *name != "GATEWAY_STORE_KEY"))
        .args(["check", "--config"])
        .arg(deploy_file("gateway.toml"))
        .output()
        .expect("run check");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("GATEWAY_STORE_KEY"));
}

#[test]
fn the_manifests_name_each_other_consistently() {
    let kustomization = read("kustomization.yaml");
    for resource in [
        "namespace.yaml",
        "deployment.yaml",
        "service.yaml",
        "networkpolicy.yaml",
        "poddisruptionbudget.yaml",
    ] {
        assert!(deploy_file(resource).is_file(), "{resource}");
        assert!(
            kustomization.contains(&format!("- {resource}")),
            "{resource}"
        );
    }
    assert!(kustomization.contains("name: mcp-gateway-config"));
    let deployment = read("deployment.yaml");
    let replicas: u32 = deployment
        .lines()
        .find_map(|line| line.trim().strip_prefix("replicas: "))
        .and_then(|count| count.parse().ok())
        .expect("replicas");
    assert!(replicas >= 2, "{replicas} replicas");
    assert!(deployment.contains("path: /readyz") && deployment.contains("path: /healthz"));
    assert!(deployment.contains("configMap: { name: mcp-gateway-config }"));
    assert!(deployment.contains("containerPort: 8000"));
    assert!(read("gateway.toml").contains("listen = \"0.0.0.0:8000\""));
    // Bridge sessions live in one replica: the Service keeps a client on it.
    assert!(read("service.yaml").contains("sessionAffinity: ClientIP"));
    // Every key the Deployment reads from the Secret is in the example Secret.
    let secret = read("secret.example.yaml");
    for key in deployment
        .split("key: ")
        .skip(1)
        .filter_map(|rest| rest.split([' ', '}']).next())
    {
        assert!(secret.contains(&format!("{key}:")), "secret lacks {key}");
    }
}

/// deploy/kubernetes/gateway.toml as a test runs it: on loopback, against `upstream`, with
/// the database's URL; everything else as the pods have it.
fn replica_config(upstream: &MockUpstream, db: &TestPostgres, public_url: Option<&str>) -> String {
    let public = match public_url {
        Some(url) => format!("public_url = \"{url}\""),
        None => String::new(),
    };
    read("gateway.toml")
        .replace("listen = \"0.0.0.0:8000\"", "listen = \"127.0.0.1:0\"")
        .replace("https://mcp.atlassian.com/v1", upstream.base_url())
        .replace(
            "dir = \"/var/lib/mcp-gateway\"",
            &format!("dir = \"{{dir}}/state\"\nurl = \"{}\"", db.url()),
        )
        .replace("public_url = \"https://mcp.example.com\"", &public)
        .replace("allowed_hosts = [\"mcp.example.com\"]", "")
}

/// One replica: the binary, as a pod runs it, with the Deployment's environment.
struct Replica {
    url: String,
    _process: Running,
    _dir: tempfile::TempDir,
}

fn replica(upstream: &MockUpstream, db: &TestPostgres, public_url: Option<&str>) -> Replica {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gateway.toml");
    let text = replica_config(upstream, db, public_url)
        .replace("{dir}", &dir.path().display().to_string());
    std::fs::write(&config, text).expect("write config");
    let mut child = gateway_command()
        .env_clear()
        .envs(deployment_environment())
        .env("RUST_LOG", "warn")
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start a replica");
    let url = listening_url(&mut child);
    Replica {
        url,
        _process: Running::new(child),
        _dir: dir,
    }
}

/// A browser of `who`, as the authenticating proxy in front delivers its requests.
fn person(who: &str) -> reqwest::Client {
    support::signin::person(IDENTITY, Some(who))
}

async fn sign_in(browser: &reqwest::Client, base: &str) {
    let mut start = browser
        .get(format!("{base}/auth/atlassian/start"))
        .send()
        .await
        .expect("start");
    if start.status() == 302 && location(&start).path().starts_with("/auth/") {
        start = browser.get(location(&start)).send().await.expect("start");
    }
    let approved = browser
        .get(location(&start))
        .send()
        .await
        .expect("authorize");
    let callback = browser
        .get(location(&approved))
        .send()
        .await
        .expect("callback");
    assert_eq!(callback.status(), 200);
}

/// The bearer token each person's requests carried upstream, by person.
fn tokens_seen(upstream: &MockUpstream) -> BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut seen: BTreeMap<_, std::collections::BTreeSet<_>> = BTreeMap::new();
    for request in upstream.state().requests() {
        if let (Some(who), Some(token)) = (
            request.header("x-test-person"),
            request.header("authorization"),
        ) {
            seen.entry(who.to_owned())
                .or_default()
                .insert(token.to_owned());
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_on_one_database_serve_many_people_and_refresh_each_token_once() {
    let db = TestPostgres::start();
    let upstream = MockUpstream::start(MockOptions {
        access_token_ttl: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    let first = replica(&upstream, &db, None);
    let public_url = first.url.replace("127.0.0.1", "localhost");
    let second = replica(&upstream, &db, Some(&public_url));
    let people: Vec<String> = (1..=5).map(|n| format!("person{n}@example.com")).collect();
    for who in &people {
        sign_in(&person(who), &first.url).await;
    }
    let signed_in = Instant::now();

    // Each replica's scheduler starts refreshing at 80% of the 3 s lifetime; the slow
    // token endpoint keeps those refreshes in flight past expiry, when the traffic comes.
    let oauth = upstream.oauth();
    oauth.set_token_delay(Some(Duration::from_millis(1500)));
    oauth.set_access_token_ttl(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(3100).saturating_sub(signed_in.elapsed())).await;

    let browsers: Vec<reqwest::Client> = people.iter().map(|who| person(who)).collect();
    let requests = (0..1000).map(|n| {
        let (who, browser) = (&people[n % people.len()], &browsers[n % people.len()]);
        let url = format!("{}/atlassian/anything", [&first, &second][n % 2].url);
        let request = browser.get(url).header("x-test-person", who.as_str());
        tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
    });
    let statuses = futures::future::join_all(requests).await;
    let failed = statuses
        .iter()
        .filter(|s| !matches!(s, Ok(Ok(200))))
        .count();
    assert_eq!(
        failed,
        0,
        "e.g. {:?}",
        statuses.iter().find(|s| !matches!(s, Ok(Ok(200))))
    );
    assert_eq!(
        oauth.refresh_requests(),
        people.len(),
        "one refresh per person for both replicas"
    );
    assert!(!oauth.refresh_token_reuse_detected());

    // Nobody's requests carried anybody else's token.
    let seen = tokens_seen(&upstream);
    assert_eq!(seen.len(), people.len());
    let mut all = std::collections::BTreeSet::new();
    for (who, tokens) in &seen {
        assert!(tokens.len() <= 2, "{who}: {tokens:?}");
        for token in tokens {
            assert!(all.insert(token.clone()), "{token} went out for two people");
        }
    }
}
