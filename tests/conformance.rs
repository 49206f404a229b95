//! The official MCP conformance suite (`@modelcontextprotocol/conformance`) with the gateway
//! as the OAuth client under test.
//!
//! For each client auth scenario the suite starts an MCP server and an authorization server
//! on loopback and runs `tests/conformance/auth_client.py`, which starts the gateway binary
//! with one OAuth route to that server, signs in through the gateway's own pages (following
//! the redirects a browser would), and uses the route with the official Python SDK client.
//! The suite records every request its servers saw and grades them; this test reads those
//! grades and requires every check of every scenario below to pass, warnings included.
//!
//! Scenarios: the whole `auth` suite, the 2025-03-26 back-compat ones, and the draft ones an
//! authorization-code client can take part in. The suite's `extensions` (client credentials,
//! cross-app access) are machine-to-machine grants, which a gateway that signs people in
//! does not use.
//!
//! The suite's server scenario `dns-rebinding-protection` runs against the gateway as the
//! server: a route on `localhost` must refuse a rebound `Host`/`Origin` and serve its own.
//! And every server scenario runs against the reference `server-everything`, directly and
//! through a gateway route in front of it: no check that passes directly may fail through
//! the gateway, nor through the bridge to the server's legacy SSE mode, nor through both
//! bridge directions in a row (the suite's Streamable HTTP client bridged to a second
//! gateway's legacy endpoint, which bridges it back to the server's Streamable HTTP mode).

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::gateway::single_route;
use support::interop::{NodeServer, conformance, node, python, repo_file, server_everything};
use support::mock_upstream::{MockOptions, MockUpstream};

/// Every scenario this test must see graded, by suite.
const SUITES: &[(&str, &[&str])] = &[
    (
        "auth",
        &[
            "auth/metadata-default",
            "auth/metadata-var1",
            "auth/metadata-var2",
            "auth/metadata-var3",
            "auth/basic-cimd",
            "auth/scope-from-www-authenticate",
            "auth/scope-from-scopes-supported",
            "auth/scope-omitted-when-undefined",
            "auth/scope-step-up",
            "auth/scope-retry-limit",
            "auth/token-endpoint-auth-basic",
            "auth/token-endpoint-auth-post",
            "auth/token-endpoint-auth-none",
            "auth/pre-registration",
        ],
    ),
    (
        "backcompat",
        &[
            "auth/2025-03-26-oauth-metadata-backcompat",
            "auth/2025-03-26-oauth-endpoint-fallback",
        ],
    ),
    (
        "draft",
        &[
            "auth/resource-mismatch",
            "auth/offline-access-scope",
            "auth/offline-access-not-supported",
        ],
    ),
];

/// The shape of the `-<timestamp>` the suite appends to each scenario's results directory.
const TIMESTAMP_SUFFIX: &str = "-2026-12-03T23-46-38-073Z";

/// One scenario's grades: how many checks passed, and each one that did not.
#[derive(Debug, Default)]
struct Grades {
    passed: usize,
    problems: Vec<String>,
}

/// Runs one suite; the suite writes `<out>/<scenario>-<timestamp>/checks.json` per scenario.
fn run_suite(suite: &str, out: &Path) {
    let client = format!(
        "exec {} {} --gateway {}",
        python().display(),
        repo_file("tests/conformance/auth_client.py").display(),
        env!("CARGO_BIN_EXE_mcp-u2m-gateway"),
    );
    let node = node();
    let path = match std::env::var_os("PATH") {
        Some(path) => format!("{}:{}", node.with_file_name("").display(), path.display()),
        None => node.with_file_name("").display().to_string(),
    };
    let output = Command::new(&node)
        .arg(conformance())
        .args([
            "client",
            "--suite",
            suite,
            "--timeout",
            "60000",
            "--command",
        ])
        .arg(&client)
        .arg("--output-dir")
        .arg(out)
        .env("PATH", path)
        .output()
        .expect("run the conformance suite");
    // The exit status is the suite's verdict; the grades below say which checks made it.
    println!(
        "conformance {suite}: exit {:?}\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout)
    );
}

/// The grades in one scenario's `checks.json`.
fn read_grades(run: &Path) -> Grades {
    let text = std::fs::read_to_string(run.join("checks.json")).expect("checks.json");
    let checks: Vec<Value> = serde_json::from_str(&text).expect("checks are JSON");
    let mut grades = Grades::default();
    for check in checks {
        match check["status"].as_str() {
            Some("SUCCESS") => grades.passed += 1,
            Some("FAILURE" | "WARNING") => grades.problems.push(format!(
                "{} {}: {}",
                check["status"].as_str().unwrap_or_default(),
                check["id"].as_str().unwrap_or_default(),
                check["errorMessage"]
                    .as_str()
                    .or(check["description"].as_str())
                    .unwrap_or_default()
            )),
            _ => {}
        }
    }
    grades
}

/// Reads every scenario's grades under `out`.
fn grades(out: &Path) -> BTreeMap<String, Grades> {
    let mut found = BTreeMap::new();
    for suite_dir in std::fs::read_dir(out).expect("results directory") {
        let suite_dir = suite_dir.expect("entry").path();
        for run in std::fs::read_dir(&suite_dir).expect("scenario results") {
            let run = run.expect("entry").path();
            let name = run
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            // `<scenario>-<timestamp>`, the timestamp as `2026-12-03T23-46-38-073Z`.
            let scenario = &name[..name.len().saturating_sub(TIMESTAMP_SUFFIX.len())];
            let prefix = suite_dir.file_name().expect("dir").to_string_lossy();
            let key = format!("{prefix}/{scenario}");
            let grades = read_grades(&run);
            let entry: &mut Grades = found.entry(key).or_default();
            entry.passed += grades.passed;
            entry.problems.extend(grades.problems);
        }
    }
    found
}

#[test]
fn the_gateway_passes_the_conformance_suites_client_auth_scenarios() {
    let out = tempfile::tempdir().expect("tempdir");
    for (suite, _) in SUITES {
        run_suite(suite, out.path());
    }
    let graded = grades(out.path());

    let mut failures = Vec::new();
    for scenario in SUITES.iter().flat_map(|(_, scenarios)| scenarios.iter()) {
        match graded.get(*scenario) {
            None => failures.push(format!("{scenario}: not run")),
            Some(grades) if grades.passed == 0 => {
                failures.push(format!("{scenario}: no check passed"))
            }
            Some(grades) => {
                println!(
                    "{scenario}: {} passed, {} failed",
                    grades.passed,
                    grades.problems.len()
                );
                for problem in &grades.problems {
                    failures.push(format!("{scenario}: {problem}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "conformance problems:\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_passes_the_suites_dns_rebinding_scenario() {
    let upstream = MockUpstream::start(MockOptions {
        token: "dns-token".into(),
        ..Default::default()
    })
    .await;
    let gateway = single_route("/up", upstream.base_url(), "dns-token", "");
    let url = format!(
        "http://localhost:{}/up/mcp",
        gateway.running.local_addr().port()
    );
    let out = tempfile::tempdir().expect("tempdir");
    let (node, suite, dir) = (node(), conformance(), out.path().to_owned());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(node)
            .arg(suite)
            .args(["server", "--scenario", "dns-rebinding-protection", "--url"])
            .arg(url)
            .arg("--output-dir")
            .arg(dir)
            .output()
            .expect("run the conformance suite")
    })
    .await
    .expect("join");
    println!("{}", String::from_utf8_lossy(&output.stdout));

    let run = std::fs::read_dir(out.path())
        .expect("results")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.to_string_lossy().contains("dns-rebinding-protection"))
        .expect("the scenario's results");
    let grades = read_grades(&run);
    assert_eq!(grades.passed, 2, "{grades:?}");
    assert!(grades.problems.is_empty(), "{:?}", grades.problems);
}

/// Runs every server scenario against `url`; each check's status, by scenario and check id.
async fn server_checks(url: String) -> BTreeMap<String, String> {
    let out = tempfile::tempdir().expect("tempdir");
    let (node, suite, dir) = (node(), conformance(), out.path().to_owned());
    tokio::task::spawn_blocking(move || {
        let output = Command::new(node)
            .arg(suite)
            .args(["server", "--url"])
            .arg(&url)
            .arg("--output-dir")
            .arg(dir)
            .output()
            .expect("run the conformance suite");
        println!("{url}:\n{}", String::from_utf8_lossy(&output.stdout));
    })
    .await
    .expect("join");
    let mut checks = BTreeMap::new();
    for run in std::fs::read_dir(out.path()).expect("results") {
        let run = run.expect("entry").path();
        let name = run
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let scenario = &name[..name.len().saturating_sub(TIMESTAMP_SUFFIX.len())];
        let text = std::fs::read_to_string(run.join("checks.json")).expect("checks.json");
        let found: Vec<Value> = serde_json::from_str(&text).expect("checks are JSON");
        for check in found {
            let id = check["id"].as_str().unwrap_or_default();
            let status = check["status"].as_str().unwrap_or_default().to_owned();
            checks.insert(format!("{scenario} {id}"), status);
        }
    }
    checks
}

#[tokio::test(flavor = "multi_thread")]
async fn in_front_of_server_everything_the_gateway_loses_no_server_check() {
    let server = NodeServer::start(&server_everything(), &["streamableHttp"]);
    let gateway = support::gateway::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[routes]]\nname = \"everything\"\n\
             prefix = \"/everything\"\nupstream = \"{}\"\nauth = {{ kind = \"none\" }}\n",
            server.url
        ),
        &[],
    );
    let port = gateway.running.local_addr().port();
    let direct = server_checks(format!("{}/mcp", server.url)).await;
    let through = server_checks(format!("http://localhost:{port}/everything/mcp")).await;

    let passed_directly: Vec<&String> = direct
        .iter()
        .filter(|(_, status)| *status == "SUCCESS")
        .map(|(check, _)| check)
        .collect();
    assert!(
        passed_directly.len() >= 10,
        "the reference server passes too little to compare: {direct:?}"
    );
    let lost: Vec<String> = passed_directly
        .iter()
        .filter(|check| through.get(**check).map(String::as_str) != Some("SUCCESS"))
        .map(|check| format!("{check}: {:?}", through.get(*check)))
        .collect();
    assert!(lost.is_empty(), "checks lost through the gateway: {lost:?}");
    println!(
        "server checks passed: {} directly, {} through the gateway",
        passed_directly.len(),
        through
            .values()
            .filter(|status| *status == "SUCCESS")
            .count()
    );
}

/// The checks that pass against server-everything's Streamable HTTP mode directly also
/// pass against its legacy SSE mode behind a `transport = "sse"` route: the conformance
/// suite's Streamable HTTP client is bridged to the legacy transport.
#[tokio::test(flavor = "multi_thread")]
async fn through_the_bridge_to_a_legacy_server_the_gateway_loses_no_server_check() {
    let streamable = NodeServer::start(&server_everything(), &["streamableHttp"]);
    let legacy = NodeServer::start(&server_everything(), &["sse"]);
    let gateway = support::gateway::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[routes]]\nname = \"everything\"\n\
             prefix = \"/everything\"\nupstream = \"{}\"\ntransport = \"sse\"\n\
             auth = {{ kind = \"none\" }}\n",
            legacy.url
        ),
        &[],
    );
    let port = gateway.running.local_addr().port();
    let direct = server_checks(format!("{}/mcp", streamable.url)).await;
    let bridged = server_checks(format!("http://localhost:{port}/everything/mcp")).await;
    let passed_directly: Vec<&String> = direct
        .iter()
        .filter(|(_, status)| *status == "SUCCESS")
        .map(|(check, _)| check)
        .collect();
    assert!(passed_directly.len() >= 10, "{direct:?}");
    let lost: Vec<String> = passed_directly
        .iter()
        .filter(|check| bridged.get(**check).map(String::as_str) != Some("SUCCESS"))
        .map(|check| format!("{check}: {:?}", bridged.get(*check)))
        .collect();
    assert!(lost.is_empty(), "checks lost through the bridge: {lost:?}");
    println!(
        "server checks passed: {} directly, {} through the bridge",
        passed_directly.len(),
        bridged
            .values()
            .filter(|status| *status == "SUCCESS")
            .count()
    );
}

/// Both bridge directions at once, graded by the suite: its Streamable HTTP client goes
/// through a `transport = "sse"` route (bridged to the legacy transport) whose upstream is
/// a second gateway's legacy endpoint, where the legacy client is bridged back to
/// server-everything's Streamable HTTP mode. No check that passes directly may be lost.
#[tokio::test(flavor = "multi_thread")]
async fn through_both_bridges_in_a_row_the_gateway_loses_no_server_check() {
    let server = NodeServer::start(&server_everything(), &["streamableHttp"]);
    let inner = support::gateway::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[routes]]\nname = \"everything\"\n\
             prefix = \"/everything\"\nupstream = \"{}\"\ntransport = \"streamable\"\n\
             auth = {{ kind = \"none\" }}\n",
            server.url
        ),
        &[],
    );
    let outer = support::gateway::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[routes]]\nname = \"legacy\"\n\
             prefix = \"/legacy\"\nupstream = \"{}/everything\"\ntransport = \"sse\"\n\
             auth = {{ kind = \"none\" }}\n",
            inner.url()
        ),
        &[],
    );
    let port = outer.running.local_addr().port();
    let direct = server_checks(format!("{}/mcp", server.url)).await;
    let bridged = server_checks(format!("http://localhost:{port}/legacy/mcp")).await;
    let passed_directly: Vec<&String> = direct
        .iter()
        .filter(|(_, status)| *status == "SUCCESS")
        .map(|(check, _)| check)
        .collect();
    assert!(passed_directly.len() >= 10, "{direct:?}");
    let lost: Vec<String> = passed_directly
        .iter()
        .filter(|check| bridged.get(**check).map(String::as_str) != Some("SUCCESS"))
        .map(|check| format!("{check}: {:?}", bridged.get(*check)))
        .collect();
    assert!(
        lost.is_empty(),
        "checks lost through both bridges: {lost:?}"
    );
    println!(
        "server checks passed: {} directly, {} through both bridges",
        passed_directly.len(),
        bridged
            .values()
            .filter(|status| *status == "SUCCESS")
            .count()
    );
}
