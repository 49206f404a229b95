//! Loading whole configurations: every rule's message names the key path and position.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const FILE: &str = "/etc/gateway/gateway.toml";
const HOME: [(&str, &str); 1] = [("HOME", "/home/ada")];
// printf %s "secret" | sha256sum
const SECRET_HASH: &str = "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

const ONE_ROUTE: &str = r#"
[[routes]]
name = "atlassian"
prefix = "/atlassian"
upstream = "https://mcp.atlassian.com/v1"
"#;

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, Path::new(FILE), &HOME)
}

fn load_ok(text: &str) -> Config {
    load(text).unwrap_or_else(|error| panic!("expected a valid config, got: {error}"))
}

fn message(text: &str) -> String {
    match load(text) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(error) => error.to_string(),
    }
}

/// The only field error of an invalid config, as displayed.
fn field_error(text: &str) -> String {
    match load(text) {
        Err(ConfigError::Invalid { errors, .. }) if errors.len() == 1 => errors[0].to_string(),
        other => panic!("expected exactly one field error, got {other:?}"),
    }
}

/// `FILE:line:col: key:` for the first occurrence of `needle`.
fn at(text: &str, needle: &str, key: &str) -> String {
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle} not in text"));
    let position = location::position(text, offset).expect("offset is in the text");
    format!("{FILE}:{}:{}: {key}:", position.line, position.column)
}

fn assert_starts(actual: &str, expected_start: &str) {
    assert!(
        actual.starts_with(expected_start),
        "expected `{expected_start}` at the start of:\n{actual}"
    );
}

fn with_route(extra: &str) -> String {
    format!("{ONE_ROUTE}{extra}")
}

/// One `[[routes]]` table; name on line 2, prefix on line 3, upstream on line 4.
fn route(name: &str, prefix: &str, upstream: &str) -> String {
    format!("[[routes]]\nname = \"{name}\"\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\n")
}

fn route_with(fields: &str) -> String {
    format!("[[routes]]\nname = \"r\"\nprefix = \"/r\"\n{fields}\n")
}

/// Route `r` with an `[routes.auth]` table holding `lines`.
fn with_auth(lines: &str) -> String {
    route_with(&format!(
        "upstream = \"https://r.example.com\"\n[routes.auth]\n{lines}"
    ))
}

/// Route `r` with a `[routes.headers]` table holding `lines`.
fn with_headers(lines: &str) -> String {
    route_with(&format!(
        "upstream = \"https://r.example.com\"\n[routes.headers]\n{lines}"
    ))
}

// Valid configurations.

#[test]
fn full_example_parses_into_every_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    for name in ["cert.pem", "key.pem", "ca.pem", "token"] {
        std::fs::write(dir.path().join(name), "x").expect("write fixture");
    }
    let text = format!(
        r#"
[server]
listen = "0.0.0.0:9443"
public_url = "https://gateway.example.com"
threads = 3
api_keys = ["{SECRET_HASH}"]
sse_keepalive_secs = 20
connect_timeout_secs = 5
read_timeout_secs = 60
[server.tls]
cert_file = "cert.pem"
key_file = "key.pem"

[store]
kind = "file"
dir = "state"

[[routes]]
name = "atlassian"
prefix = "/atlassian"
upstream = "https://mcp.atlassian.com/v1"
ca_file = "ca.pem"
[routes.auth]
kind = "oauth"

[[routes]]
name = "bench"
prefix = "/bench"
upstream = "http://127.0.0.1:9000/mcp"
[routes.auth]
kind = "bearer"
token_env = "BENCH_TOKEN"
[routes.headers]
"X-Extra" = "value"

[[routes]]
name = "filed"
prefix = "/filed"
upstream = "http://127.0.0.1:9001"
[routes.auth]
kind = "bearer"
token_file = "token"

[[routes]]
name = "open"
prefix = "/"
upstream = "http://127.0.0.1:9002"
[routes.auth]
kind = "none"
"#
    );
    let path = dir.path().join("gateway.toml");
    let env = [("HOME", "/home/ada"), ("BENCH_TOKEN", "s3cret-value")];
    let config = Config::from_toml_str(&text, &path, &env).unwrap_or_else(|e| panic!("{e}"));

    let server = &config.server;
    assert_eq!(
        server.listen,
        "0.0.0.0:9443".parse::<SocketAddr>().expect("addr")
    );
    assert_eq!(server.public_url.as_str(), "https://gateway.example.com/");
    assert_eq!(server.threads, 3);
    assert!(!server.allow_anonymous);
    assert_eq!(server.api_keys, vec![ApiKeyHash::of_key("secret")]);
    assert_eq!(server.sse_keepalive, Some(Duration::from_secs(20)));
    assert_eq!(server.connect_timeout, Duration::from_secs(5));
    assert_eq!(server.read_timeout, Duration::from_secs(60));
    let tls = server.tls.as_ref().expect("tls is set");
    assert_eq!(tls.cert_file, dir.path().join("cert.pem"));
    assert_eq!(tls.key_file, dir.path().join("key.pem"));
    assert!(!server.databricks);

    assert_eq!(config.store.kind, StoreKind::File);
    assert_eq!(config.store.dir, dir.path().join("state"));
    assert_eq!(config.source, ConfigSource::File(path));

    let routes = &config.routes;
    assert_eq!(routes.len(), 4);
    assert_eq!(routes[0].name, "atlassian");
    assert_eq!(routes[0].prefix, "/atlassian");
    assert_eq!(routes[0].upstream.as_str(), "https://mcp.atlassian.com/v1");
    assert_eq!(routes[0].ca_file, Some(dir.path().join("ca.pem")));
    assert!(matches!(routes[0].auth, RouteAuth::OAuth(_)));
    let bench_auth = RouteAuth::Bearer(BearerSource::Env("BENCH_TOKEN".into()));
    assert_eq!(routes[1].auth, bench_auth);
    assert_eq!(routes[1].headers, vec![("X-Extra".into(), "value".into())]);
    let token_path = dir.path().join("token");
    assert_eq!(
        routes[2].auth,
        RouteAuth::Bearer(BearerSource::File(token_path))
    );
    assert_eq!(routes[3].prefix, "/");
    assert_eq!(routes[3].auth, RouteAuth::None);

    // The token's value is looked up but never kept.
    assert!(!format!("{config:?}").contains("s3cret-value"));
}

#[test]
fn defaults_fill_everything_but_routes() {
    let config = load_ok(ONE_ROUTE);
    let server = &config.server;
    assert_eq!(
        server.listen,
        "127.0.0.1:8000".parse::<SocketAddr>().expect("addr")
    );
    assert_eq!(server.public_url.as_str(), "http://localhost:8000/");
    assert!(server.threads >= 1);
    assert!(server.api_keys.is_empty());
    assert_eq!(server.sse_keepalive, Some(Duration::from_secs(15)));
    assert_eq!(server.connect_timeout, Duration::from_secs(10));
    assert_eq!(server.read_timeout, Duration::from_secs(300));
    assert!(server.tls.is_none());
    assert_eq!(config.store.dir, PathBuf::from("/home/ada/.mcp/auth"));
    assert!(matches!(config.routes[0].auth, RouteAuth::OAuth(_)));
    assert!(config.routes[0].headers.is_empty());
}

#[test]
fn store_dir_expands_tilde_from_home() {
    let config = load_ok(&with_route("[store]\ndir = \"~/tokens\"\n"));
    assert_eq!(config.store.dir, PathBuf::from("/home/ada/tokens"));
}

#[test]
fn relative_paths_are_relative_to_the_config_file() {
    let config = load_ok(&with_route("[store]\ndir = \"state\"\n"));
    assert_eq!(config.store.dir, PathBuf::from("/etc/gateway/state"));
}

#[test]
fn store_dir_needs_home_for_tilde() {
    let text = with_route("[store]\ndir = \"~/tokens\"\n");
    let result = Config::from_toml_str(&text, Path::new(FILE), &[("HOME", "")]);
    let Err(ConfigError::Invalid { errors, .. }) = result else {
        panic!("expected an invalid config, got {result:?}");
    };
    assert_starts(
        &errors[0].to_string(),
        &at(&text, "\"~/tokens\"", "store.dir"),
    );
    assert!(errors[0].to_string().contains("HOME is not set"));
}

#[test]
fn zero_keepalive_turns_keepalive_off() {
    let config = load_ok(&with_route("[server]\nsse_keepalive_secs = 0\n"));
    assert_eq!(config.server.sse_keepalive, None);
}

#[test]
fn public_url_is_derived_from_the_listener() {
    let cases = [
        ("127.0.0.1:9000", "http://localhost:9000/"),
        ("[::1]:9000", "http://localhost:9000/"),
        ("0.0.0.0:9000", "http://localhost:9000/"),
        ("10.1.2.3:9000", "http://10.1.2.3:9000/"),
        ("[fd00::1]:9000", "http://[fd00::1]:9000/"),
    ];
    for (listen, expected) in cases {
        let text = with_route(&format!(
            "[server]\nlisten = \"{listen}\"\nallow_anonymous = true\n"
        ));
        assert_eq!(
            load_ok(&text).server.public_url.as_str(),
            expected,
            "{listen}"
        );
    }
}

#[test]
fn public_url_uses_https_when_tls_is_set() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("cert.pem"), "x").expect("write cert");
    std::fs::write(dir.path().join("key.pem"), "x").expect("write key");
    let text = with_route("[server.tls]\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"\n");
    let config = Config::from_toml_str(&text, &dir.path().join("gateway.toml"), &HOME)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.server.public_url.as_str(), "https://localhost:8000/");
}

#[test]
fn nested_prefixes_and_the_root_prefix_are_allowed() {
    let text = r#"
[[routes]]
name = "a"
prefix = "/a"
upstream = "https://a.example.com"
[[routes]]
name = "ab"
prefix = "/a/b"
upstream = "https://ab.example.com"
[[routes]]
name = "root"
prefix = "/"
upstream = "https://root.example.com"
"#;
    let prefixes: Vec<String> = load_ok(text).routes.into_iter().map(|r| r.prefix).collect();
    assert_eq!(prefixes, ["/a", "/a/b", "/"]);
}

#[test]
fn shipped_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.toml");
    let config = Config::from_file(&path, &HOME).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["atlassian", "linear"]);
    assert_eq!(
        config.routes[0].upstream.as_str(),
        "https://mcp.atlassian.com/v1"
    );
    assert!(
        config
            .routes
            .iter()
            .all(|r| matches!(r.auth, RouteAuth::OAuth(_)))
    );
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8000");
    assert_eq!(config.store.dir, PathBuf::from("/home/ada/.mcp/auth"));
}

#[test]
fn reserved_paths_are_the_control_plane() {
    for path in [
        "/", "/auth", "/oauth", "/admin", "/metrics", "/healthz", "/readyz",
    ] {
        assert!(RESERVED_PATHS.contains(&path), "{path}");
    }
    assert!(RESERVED_PATHS.contains(&"/.well-known"));
}

// TOML and schema errors.

#[test]
fn syntax_error_has_line_and_column() {
    let text = "[server]\nlisten = \n";
    let error = load(text).expect_err("bad TOML");
    assert!(matches!(error, ConfigError::Syntax { .. }), "{error:?}");
    assert_starts(&error.to_string(), &format!("{FILE}:2:10: "));
    assert!(std::error::Error::source(&error).is_some());
}

#[test]
fn unknown_top_level_key_is_named_with_its_line() {
    let text = with_route("[serer]\nlisten = \"127.0.0.1:1\"\n");
    let error = load(&text).expect_err("unknown key");
    assert!(matches!(error, ConfigError::UnknownKey { .. }), "{error:?}");
    assert_starts(&error.to_string(), &at(&text, "serer", "serer"));
}

#[test]
fn unknown_nested_key_names_the_full_key_path() {
    let text = r#"
[[routes]]
name = "a"
prefix = "/a"
upstream = "https://a.example.com"

[[routes]]
name = "b"
prefix = "/b"
upstream = "https://b.example.com"
[routes.auth]
kind = "bearer"
tokn_env = "TOKEN"
"#;
    let error = message(text);
    assert_starts(&error, &at(text, "tokn_env", "routes[1].auth.tokn_env"));
    assert!(error.contains("unknown field `tokn_env`"), "{error}");
}

#[test]
fn unknown_key_in_server_section_is_named() {
    let text = with_route("[server]\nthread = 2\n");
    assert_starts(&message(&text), &at(&text, "thread =", "server.thread"));
}

#[test]
fn inline_token_is_not_a_key() {
    let text = with_auth("kind = \"bearer\"\ntoken = \"abc\"");
    let error = load(&text).expect_err("inline token");
    assert!(matches!(error, ConfigError::UnknownKey { .. }), "{error:?}");
    assert_starts(
        &error.to_string(),
        &at(&text, "token =", "routes[0].auth.token"),
    );
}

#[test]
fn wrong_type_names_the_key() {
    let text = with_route("[server]\nthreads = \"many\"\n");
    let error = load(&text).expect_err("wrong type");
    assert!(matches!(error, ConfigError::Schema { .. }), "{error:?}");
    assert_starts(&error.to_string(), &at(&text, "\"many\"", "server.threads"));
}

#[test]
fn missing_required_key_names_the_table() {
    let text = "[[routes]]\nname = \"a\"\nprefix = \"/a\"\n";
    let error = message(text);
    assert_starts(&error, &format!("{FILE}:1:1: routes[0]:"));
    assert!(error.contains("missing field `upstream`"), "{error}");
}

#[test]
fn unknown_auth_kind_lists_the_choices() {
    let text = with_auth("kind = \"basic\"");
    let error = message(&text);
    assert_starts(&error, &at(&text, "\"basic\"", "routes[0].auth.kind"));
    assert!(error.contains("`oauth`, `bearer`, `none`"), "{error}");
}

#[test]
fn unknown_store_kind_is_refused() {
    let text = with_route("[store]\nkind = \"redis\"\n");
    assert_starts(&message(&text), &at(&text, "\"redis\"", "store.kind"));
}

// Validation rules.

#[test]
fn invalid_route_name_is_refused() {
    for name in ["", "Jira", "-x", "a.b"] {
        let text = route(name, "/x", "https://x.example.com");
        let error = field_error(&text);
        assert_starts(&error, &format!("{FILE}:2:8: routes[0].name:"));
        assert!(error.contains("must be 1 to 64 characters"), "{error}");
    }
    let long = "a".repeat(65);
    let text = route(&long, "/x", "https://x.example.com");
    assert_starts(&field_error(&text), &format!("{FILE}:2:8: routes[0].name:"));
}

#[test]
fn duplicate_route_name_mentions_both_lines() {
    let text = r#"[[routes]]
name = "jira"
prefix = "/a"
upstream = "https://a.example.com"
[[routes]]
name = "jira"
prefix = "/b"
upstream = "https://b.example.com"
"#;
    let error = field_error(text);
    assert_starts(&error, &format!("{FILE}:6:8: routes[1].name:"));
    assert!(
        error.contains("`jira` is already used at line 2"),
        "{error}"
    );
}

#[test]
fn malformed_prefix_is_refused_with_its_reason() {
    let cases = [
        ("atlassian", "must start with `/`"),
        ("/a/", "must not end with `/`"),
        ("/a//b", "empty segment"),
        ("/a/../b", "`.` or `..` segments"),
        ("/a?b=1", "without `?` or `#`"),
        ("/a#b", "without `?` or `#`"),
        ("/a b", "may only contain"),
    ];
    for (prefix, reason) in cases {
        let text = route("r", prefix, "https://r.example.com");
        let error = field_error(&text);
        assert_starts(&error, &format!("{FILE}:3:10: routes[0].prefix:"));
        assert!(error.contains(reason), "{prefix}: {error}");
    }
}

#[test]
fn tilde_segment_in_prefix_is_refused() {
    let text = route("r", "/r/~", "https://r.example.com");
    let error = field_error(&text);
    assert_starts(&error, &format!("{FILE}:3:10: routes[0].prefix:"));
    assert!(error.contains("segment `~`"), "{error}");
}

#[test]
fn duplicate_prefix_names_both_routes() {
    let text = r#"[[routes]]
name = "jira"
prefix = "/work"
upstream = "https://a.example.com"

[[routes]]
name = "linear"
prefix = "/work"
upstream = "https://b.example.com"
"#;
    let error = field_error(text);
    assert_starts(&error, &format!("{FILE}:8:10: routes[1].prefix:"));
    assert!(error.contains("overlapping prefix `/work`"), "{error}");
    assert!(error.contains("`linear` and `jira` at line 3"), "{error}");
}

#[test]
fn prefix_shadowing_a_reserved_path_is_refused() {
    for (prefix, reserved) in [
        ("/admin", "/admin"),
        ("/admin/x", "/admin"),
        ("/.well-known", "/.well-known"),
        ("/oauth/cb", "/oauth"),
    ] {
        let text = route("r", prefix, "https://r.example.com");
        let error = field_error(&text);
        assert_starts(&error, &format!("{FILE}:3:10: routes[0].prefix:"));
        assert!(error.contains(&format!("own path `{reserved}`")), "{error}");
    }
}

#[test]
fn upstream_must_be_a_plain_absolute_http_url() {
    let cases = [
        ("mcp.example.com/v1", "is not a URL"),
        ("/v1", "is not a URL"),
        ("ftp://mcp.example.com", "must use http or https"),
        ("file:///tmp/x", "must use http or https"),
        ("https://mcp.example.com/v1?x=1", "must not contain a query"),
        (
            "https://mcp.example.com/v1#top",
            "must not contain a fragment",
        ),
        (
            "https://user:pw@mcp.example.com",
            "must not contain user info",
        ),
    ];
    for (upstream, reason) in cases {
        let text = route_with(&format!("upstream = \"{upstream}\""));
        let error = field_error(&text);
        assert_starts(&error, &format!("{FILE}:4:12: routes[0].upstream:"));
        assert!(error.contains(reason), "{upstream}: {error}");
    }
}

#[test]
fn missing_ca_file_is_refused() {
    let text =
        route_with("upstream = \"https://r.example.com\"\nca_file = \"/nonexistent/ca.pem\"");
    let error = field_error(&text);
    assert_starts(&error, &at(&text, "\"/nonexistent", "routes[0].ca_file"));
    assert!(
        error.contains("cannot read /nonexistent/ca.pem: "),
        "{error}"
    );
}

#[test]
fn ca_file_that_is_a_directory_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = route_with(&format!(
        "upstream = \"https://r.example.com\"\nca_file = \"{}\"",
        dir.path().display()
    ));
    assert!(field_error(&text).contains("is not a regular file"));
}

#[test]
fn missing_token_file_is_refused() {
    let text = with_auth("kind = \"bearer\"\ntoken_file = \"/nonexistent/token\"");
    let error = field_error(&text);
    assert_starts(
        &error,
        &at(&text, "\"/nonexistent", "routes[0].auth.token_file"),
    );
}

#[test]
fn unset_or_empty_token_env_is_refused() {
    let text = with_auth("kind = \"bearer\"\ntoken_env = \"R_TOKEN\"");
    let home = ("HOME".to_owned(), "/home/ada".to_owned());
    let empty = ("R_TOKEN".to_owned(), String::new());
    for env in [HashMap::from([home.clone()]), HashMap::from([home, empty])] {
        let result = Config::from_toml_str(&text, Path::new(FILE), &env);
        let Err(ConfigError::Invalid { errors, .. }) = result else {
            panic!("expected an invalid config, got {result:?}");
        };
        let error = errors[0].to_string();
        assert_starts(
            &error,
            &at(&text, "\"R_TOKEN\"", "routes[0].auth.token_env"),
        );
        assert!(error.contains("R_TOKEN is not set or is empty"), "{error}");
    }
}

#[test]
fn bearer_needs_exactly_one_token_source() {
    let neither = with_auth("kind = \"bearer\"");
    let both = format!("{neither}\ntoken_env = \"A\"\ntoken_file = \"/etc/hostname\"");
    for text in [neither.as_str(), both.as_str()] {
        let error = field_error(text);
        assert_starts(&error, &at(text, "\"bearer\"", "routes[0].auth.kind"));
        assert!(
            error.contains("exactly one of token_env or token_file"),
            "{error}"
        );
    }
}

#[test]
fn token_source_without_bearer_is_refused() {
    for kind in ["", "kind = \"oauth\"\n", "kind = \"none\"\n"] {
        let text = with_auth(&format!("{kind}token_env = \"A\""));
        let error = field_error(&text);
        assert_starts(&error, &at(&text, "\"A\"", "routes[0].auth.token_env"));
        assert!(
            error.contains("only applies to kind = \"bearer\""),
            "{error}"
        );
    }
}

#[test]
fn invalid_header_names_are_refused() {
    let text = with_headers("\"X Bad\" = \"v\"");
    let error = field_error(&text);
    assert_starts(
        &error,
        &at(&text, "\"X Bad\"", "routes[0].headers.\"X Bad\""),
    );
    assert!(error.contains("not a valid HTTP header name"), "{error}");
}

#[test]
fn gateway_owned_headers_are_refused() {
    for name in [
        "Authorization",
        "host",
        "Connection",
        "Transfer-Encoding",
        "TE",
        "Upgrade",
    ] {
        let text = with_headers(&format!("{name} = \"v\""));
        let error = field_error(&text);
        assert_starts(
            &error,
            &at(
                &text,
                &format!("{name} ="),
                &format!("routes[0].headers.{name}"),
            ),
        );
        assert!(error.contains("is set by the gateway"), "{error}");
    }
}

#[test]
fn headers_differing_only_in_case_are_refused() {
    let text = with_headers("X-A = \"1\"\nx-a = \"2\"");
    let error = field_error(&text);
    assert_starts(&error, &at(&text, "x-a", "routes[0].headers.x-a"));
}

#[test]
fn header_values_with_control_characters_are_refused_without_echo() {
    let text = with_headers("X-Key = \"k3y\\r\\nX-Evil: 1\"");
    let error = field_error(&text);
    assert_starts(&error, &at(&text, "X-Key", "routes[0].headers.X-Key"));
    assert!(!error.contains("k3y"), "{error}");
}

#[test]
fn no_routes_says_how_to_add_one() {
    let error = field_error("[server]\nthreads = 2\n");
    assert_starts(&error, &format!("{FILE}: routes: no routes"));
    assert!(
        error.contains("[[routes]]") && error.contains("UPSTREAM_MCP_URL"),
        "{error}"
    );
}

#[test]
fn binding_beyond_loopback_needs_a_way_to_know_callers() {
    let text = with_route("[server]\nlisten = \"0.0.0.0:8000\"\n");
    let error = field_error(&text);
    assert_starts(&error, &at(&text, "\"0.0.0.0", "server.listen"));
    for hint in [
        "server.api_keys",
        "sha256sum",
        "allow_anonymous = true",
        "127.0.0.1",
    ] {
        assert!(error.contains(hint), "{hint}: {error}");
    }
}

#[test]
fn api_keys_or_allow_anonymous_permit_binding_beyond_loopback() {
    let keys = with_route(&format!(
        "[server]\nlisten = \"0.0.0.0:8000\"\napi_keys = [\"{SECRET_HASH}\"]\n"
    ));
    assert_eq!(load_ok(&keys).server.api_keys.len(), 1);
    let anonymous = with_route("[server]\nlisten = \"10.0.0.1:8000\"\nallow_anonymous = true\n");
    assert!(load_ok(&anonymous).server.allow_anonymous);
}

#[test]
fn malformed_api_key_is_refused_without_echo() {
    let text = with_route(&format!(
        "[server]\napi_keys = [\"{SECRET_HASH}\", \"my-raw-key\"]\n"
    ));
    let error = field_error(&text);
    assert_starts(&error, &at(&text, "\"my-raw-key\"", "server.api_keys[1]"));
    assert!(error.contains("printf %s \"$KEY\" | sha256sum"), "{error}");
    assert!(!error.contains("my-raw-key"), "{error}");
}

#[test]
fn zero_threads_is_refused() {
    let text = with_route("[server]\nthreads = 0\n");
    assert_starts(&field_error(&text), &at(&text, "0\n", "server.threads"));
}

#[test]
fn zero_timeouts_are_refused() {
    let text = with_route("[server]\nconnect_timeout_secs = 0\nread_timeout_secs = 0\n");
    let error = message(&text);
    assert!(
        error.contains(&at(&text, "0\nread", "server.connect_timeout_secs")),
        "{error}"
    );
    assert!(
        error.contains("server.read_timeout_secs: must be at least 1 second"),
        "{error}"
    );
}

#[test]
fn downstream_limits_have_defaults_and_refuse_nonsense() {
    let server = load_ok(&with_route("")).server;
    assert_eq!(server.header_timeout, Duration::from_secs(10));
    assert_eq!(server.idle_timeout, Duration::from_secs(60));
    assert_eq!(server.max_header_bytes, 64 * 1024);
    assert_eq!(server.drain, Duration::from_secs(10));

    let text = with_route(
        "[server]\nheader_timeout_secs = 0\nidle_timeout_secs = 0\nmax_header_bytes = 100\n\
         drain_secs = 0\n",
    );
    let error = message(&text);
    for expected in [
        "server.drain_secs: must be at least 1 second",
        "server.header_timeout_secs: must be at least 1 second",
        "server.idle_timeout_secs: must be at least 1 second",
        "server.max_header_bytes: must be at least 1024 bytes",
    ] {
        assert!(error.contains(expected), "{expected} in {error}");
    }
}

#[test]
fn the_upgrade_socket_defaults_to_the_store_and_is_relative_to_the_file() {
    let config = load_ok(&with_route("[store]\ndir = \"/var/lib/gw\"\n"));
    assert_eq!(
        config.upgrade_socket(),
        Path::new("/var/lib/gw/upgrade.sock")
    );
    let config = load_ok(&with_route("[server]\nupgrade_socket = \"run/up.sock\"\n"));
    let beside_the_file = Path::new(FILE)
        .parent()
        .expect("a directory")
        .join("run/up.sock");
    assert_eq!(config.upgrade_socket(), beside_the_file);
}

#[test]
fn identity_headers_are_trusted_only_when_configured_or_on_databricks() {
    assert!(load_ok(&with_route("")).server.identity_headers.is_empty());
    let text = with_route("[server]\ntrusted_identity_header = \"X-Auth-Request-Email\"\n");
    let names = load_ok(&text).server.identity_headers;
    assert_eq!(
        names,
        [http::HeaderName::from_static("x-auth-request-email")]
    );

    let text = with_route("[server]\ntrusted_identity_header = \"not a header\"\n");
    let error = field_error(&text);
    assert_starts(
        &error,
        &at(&text, "\"not a header", "server.trusted_identity_header"),
    );
}

#[test]
fn plugins_are_checked_by_kind_and_by_their_own_keys() {
    let plugin = |table: &str| format!("{}\n[[routes.plugins]]\n{table}\n", with_route(""));
    let config = load_ok(&plugin("kind = \"rate_limit\"\nrequests_per_minute = 60"));
    let kinds: Vec<&str> = config.routes[0].plugins.iter().map(|p| p.kind).collect();
    assert_eq!(kinds, ["rate_limit"]);

    let text = plugin("kind = \"tool_filterr\"");
    let error = field_error(&text);
    assert!(error.contains("routes[0].plugins[0]"), "{error}");
    assert!(
        error.contains("`tool_filterr` is not a plugin: use one of headers, rate_limit"),
        "{error}"
    );

    let error = field_error(&plugin("requests_per_minute = 60"));
    assert!(error.contains("a plugin needs a `kind`"), "{error}");

    let error = field_error(&plugin("kind = \"rate_limit\"\nrequests_per_minut = 60"));
    assert!(
        error.contains("plugin rate_limit:") && error.contains("requests_per_minut"),
        "{error}"
    );
}

#[test]
fn malformed_listen_is_refused() {
    let text = with_route("[server]\nlisten = \"localhost:8000\"\n");
    let error = field_error(&text);
    assert_starts(&error, &at(&text, "\"localhost", "server.listen"));
    assert!(error.contains("is not a socket address"), "{error}");
}

#[test]
fn malformed_public_url_is_refused() {
    let text = with_route("[server]\npublic_url = \"localhost:8000\"\n");
    assert_starts(
        &field_error(&text),
        &at(&text, "\"localhost", "server.public_url"),
    );
}

#[test]
fn missing_tls_files_are_refused() {
    let tls = "cert_file = \"/nonexistent/cert.pem\"\nkey_file = \"/nonexistent/key.pem\"\n";
    let text = with_route(&format!("[server.tls]\n{tls}"));
    let error = message(&text);
    assert!(
        error.contains(&at(&text, "\"/nonexistent/cert", "server.tls.cert_file")),
        "{error}"
    );
    assert!(
        error.contains(&at(&text, "\"/nonexistent/key", "server.tls.key_file")),
        "{error}"
    );
}

#[test]
fn tls_needs_both_files() {
    let text = with_route("[server.tls]\ncert_file = \"/etc/hostname\"\n");
    let error = message(&text);
    assert_starts(&error, &at(&text, "[server.tls]", "server.tls"));
    assert!(error.contains("missing field `key_file`"), "{error}");
}

#[test]
fn all_broken_rules_are_reported_one_per_line() {
    let text = r#"[server]
threads = 0

[[routes]]
name = "Bad"
prefix = "/admin"
upstream = "ftp://x"
"#;
    let error = load(text).expect_err("three problems");
    let ConfigError::Invalid { errors, origin } = &error else {
        panic!("expected an invalid config, got {error:?}");
    };
    assert_eq!(errors.len(), 4);
    assert_eq!(*origin, ConfigSource::File(FILE.into()));
    let lines: Vec<String> = error.to_string().lines().map(str::to_owned).collect();
    assert_eq!(lines[0], format!("4 errors in {FILE}:"));
    assert_starts(&lines[1], &format!("{FILE}:2:11: server.threads:"));
    assert_starts(&lines[2], &format!("{FILE}:5:8: routes[0].name:"));
    assert_starts(&lines[3], &format!("{FILE}:6:10: routes[0].prefix:"));
    assert_starts(&lines[4], &format!("{FILE}:7:12: routes[0].upstream:"));
}

// The environment.

#[test]
fn databricks_port_overrides_listen_in_file_mode() {
    let text = with_route("[server]\nlisten = \"127.0.0.1:8000\"\n");
    let env = [("HOME", "/home/ada"), ("DATABRICKS_APP_PORT", "8080")];
    let config =
        Config::from_toml_str(&text, Path::new(FILE), &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.server.listen.to_string(), "0.0.0.0:8080");
    assert!(config.server.databricks);
    assert_eq!(config.server.public_url.as_str(), "http://localhost:8080/");
    let trusted: Vec<&str> = config
        .server
        .identity_headers
        .iter()
        .map(http::HeaderName::as_str)
        .collect();
    assert_eq!(trusted, ["x-forwarded-email", "x-forwarded-user"]);
}

#[test]
fn malformed_databricks_port_is_refused() {
    let env = [("HOME", "/home/ada"), ("DATABRICKS_APP_PORT", "http")];
    let result = Config::from_toml_str(ONE_ROUTE, Path::new(FILE), &env);
    let Err(ConfigError::Invalid { errors, .. }) = result else {
        panic!("expected an invalid config, got {result:?}");
    };
    assert_eq!(
        errors[0].to_string(),
        format!("{FILE}: DATABRICKS_APP_PORT: `http` is not a port number")
    );
}

#[test]
fn env_mode_builds_one_default_route() {
    let env = [
        ("HOME", "/home/ada"),
        ("UPSTREAM_MCP_URL", "https://mcp.example.com/v1"),
    ];
    let config = Config::from_env(&env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.source, ConfigSource::Environment);
    assert_eq!(config.routes.len(), 1);
    let route = &config.routes[0];
    assert_eq!(
        (route.name.as_str(), route.prefix.as_str()),
        ("default", "/")
    );
    assert_eq!(route.upstream.as_str(), "https://mcp.example.com/v1");
    assert!(matches!(route.auth, RouteAuth::OAuth(_)));
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8000");
    assert!(!config.server.databricks);
    assert_eq!(config.store.dir, PathBuf::from("/home/ada/.mcp/auth"));
}

#[test]
fn env_mode_port_precedence() {
    let url = ("UPSTREAM_MCP_URL", "https://mcp.example.com");
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[
                ("DATABRICKS_APP_PORT", "1"),
                ("PORT", "2"),
                ("OAUTH_CALLBACK_PORT", "3"),
            ],
            "0.0.0.0:1",
        ),
        (
            &[("PORT", "2"), ("OAUTH_CALLBACK_PORT", "3")],
            "127.0.0.1:2",
        ),
        (&[("OAUTH_CALLBACK_PORT", "3")], "127.0.0.1:3"),
        (&[("PORT", "")], "127.0.0.1:8000"),
    ];
    for (vars, expected) in cases {
        let mut env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        env.insert(url.0.into(), url.1.into());
        env.insert("HOME".into(), "/home/ada".into());
        let config = Config::from_env(&env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.server.listen.to_string(), expected, "{vars:?}");
        assert_eq!(config.server.databricks, expected.starts_with("0.0.0.0"));
    }
}

#[test]
fn env_mode_errors_name_the_variable() {
    let env = [
        ("HOME", "/home/ada"),
        ("UPSTREAM_MCP_URL", "mcp.example.com"),
        ("PORT", "80a"),
    ];
    let error = Config::from_env(&env)
        .expect_err("two bad variables")
        .to_string();
    let lines: Vec<&str> = error.lines().collect();
    assert_eq!(lines[0], "2 errors in the environment (UPSTREAM_MCP_URL):");
    assert_starts(
        lines[1],
        "UPSTREAM_MCP_URL: `mcp.example.com` is not a URL: ",
    );
    assert_eq!(lines[2], "PORT: `80a` is not a port number");
}

// Discovery.

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn config(&self, name: &str, name_of_route: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let text = route(
            name_of_route,
            &format!("/{name_of_route}"),
            "https://x.example.com",
        );
        std::fs::write(&path, text).expect("write config");
        path
    }

    fn missing(&self) -> PathBuf {
        self.dir.path().join("missing.toml")
    }
}

fn discovered_route(result: Result<Config, ConfigError>) -> String {
    let config = result.unwrap_or_else(|e| panic!("{e}"));
    config.routes[0].name.clone()
}

#[test]
fn discovery_prefers_explicit_then_variable_then_upstream_then_default_file() {
    let files = Files::new();
    let explicit = files.config("explicit.toml", "explicit");
    let named = files.config("named.toml", "named");
    let default = files.config("gateway.toml", "local");
    let named_text = named.to_string_lossy().into_owned();
    let full = HashMap::from([
        ("HOME".to_owned(), "/home/ada".to_owned()),
        ("MCP_GATEWAY_CONFIG".to_owned(), named_text),
        (
            "UPSTREAM_MCP_URL".to_owned(),
            "https://env.example.com".to_owned(),
        ),
    ]);
    let without = |var: &str| {
        let mut env = full.clone();
        env.remove(var);
        env
    };

    let found = env::discover(Some(&explicit), &full, &default);
    assert_eq!(discovered_route(found), "explicit");
    assert_eq!(
        discovered_route(env::discover(None, &full, &default)),
        "named"
    );
    let no_named = without("MCP_GATEWAY_CONFIG");
    assert_eq!(
        discovered_route(env::discover(None, &no_named, &default)),
        "default"
    );
    let mut neither = no_named.clone();
    neither.remove("UPSTREAM_MCP_URL");
    assert_eq!(
        discovered_route(env::discover(None, &neither, &default)),
        "local"
    );
}

#[test]
fn discovery_without_any_config_says_what_to_do() {
    let files = Files::new();
    let error = env::discover(None, &HOME, &files.missing()).expect_err("nothing to load");
    assert!(matches!(error, ConfigError::NotFound));
    let text = error.to_string();
    for hint in ["gateway.toml", "--config", "UPSTREAM_MCP_URL"] {
        assert!(text.contains(hint), "{hint}: {text}");
    }
}

#[test]
fn explicit_config_that_does_not_exist_is_an_io_error() {
    let files = Files::new();
    let missing = files.missing();
    let error = env::discover(Some(&missing), &HOME, &missing).expect_err("missing file");
    assert!(matches!(error, ConfigError::Io { .. }), "{error:?}");
    assert!(error.to_string().contains("missing.toml"));
    assert!(std::error::Error::source(&error).is_some());
}

#[test]
fn oauth_keys_are_parsed_into_settings() {
    let text = with_auth(
        "client_id = \"gw\"\nclient_secret_file = \"/etc/hostname\"\ntoken_endpoint_auth_method = \"client_secret_post\"\n\
         scopes = [\"a\", \"b\"]\nsend_resource = false\nallow_issuer_mismatch = true\n\
         client_metadata_url = \"/oauth/client.json\"\nauthorize_params = { prompt = \"consent\" }",
    );
    let config = load_ok(&text);
    let RouteAuth::OAuth(settings) = &config.routes[0].auth else {
        panic!("an OAuth route");
    };
    let client = settings.client.as_ref().expect("a configured client");
    assert_eq!(client.client_id, "gw");
    assert_eq!(
        client.auth_method,
        super::ClientAuthMethod::ClientSecretPost
    );
    assert_eq!(
        settings.scopes.as_deref(),
        Some(&["a".to_owned(), "b".to_owned()][..])
    );
    assert!(!settings.send_resource && settings.allow_issuer_mismatch);
    assert_eq!(
        settings.client_metadata_url.as_deref(),
        Some("/oauth/client.json")
    );
    assert_eq!(
        settings.authorize_params,
        vec![("prompt".to_owned(), "consent".to_owned())]
    );
}

#[test]
fn oauth_keys_are_refused_where_they_cannot_apply() {
    let on_bearer = with_auth("kind = \"bearer\"\ntoken_env = \"HOME\"\nclient_id = \"x\"");
    let error = field_error(&on_bearer);
    assert!(
        error.contains("routes[0].auth.client_id")
            && error.contains("only applies to kind = \"oauth\""),
        "{error}"
    );

    let bad_path = with_auth("client_metadata_url = \"/elsewhere.json\"");
    let error = field_error(&bad_path);
    assert!(
        error.contains("routes[0].auth.client_metadata_url") && error.contains("/oauth/"),
        "{error}"
    );

    let secret_without_id = with_auth("client_secret_env = \"HOME\"");
    assert!(field_error(&secret_without_id).contains("need a client_id"));

    let method_without_secret =
        with_auth("client_id = \"x\"\ntoken_endpoint_auth_method = \"client_secret_basic\"");
    assert!(
        field_error(&method_without_secret)
            .contains("client_secret_basic needs client_secret_env or client_secret_file")
    );
}

#[test]
fn admin_defaults_to_loopback_without_a_token() {
    let config = load_ok(ONE_ROUTE);
    assert!(config.admin.allow_loopback);
    assert_eq!(config.admin.token, None);
}

#[test]
fn admin_token_comes_from_one_source_and_unknown_keys_are_named() {
    let both = message(&with_route(
        "[admin]\ntoken_env = \"HOME\"\ntoken_file = \"/etc/hostname\"\n",
    ));
    assert!(
        both.contains("admin.token_file") && both.contains("not both"),
        "{both}"
    );
    let unset = message(&with_route("[admin]\ntoken_env = \"NO_SUCH_ADMIN_VAR\"\n"));
    assert!(
        unset.contains("admin.token_env") && unset.contains("NO_SUCH_ADMIN_VAR"),
        "{unset}"
    );
    let unknown = message(&with_route("[admin]\ntoken = \"inline\"\n"));
    assert!(unknown.contains("admin.token: unknown field"), "{unknown}");
    let config = load_ok(&with_route(
        "[admin]\nallow_loopback = false\ntoken_env = \"HOME\"\n",
    ));
    assert!(!config.admin.allow_loopback);
    assert_eq!(
        config.admin.token,
        Some(crate::config::BearerSource::Env("HOME".into()))
    );
}

#[test]
fn a_route_transport_is_auto_unless_set_and_unknown_ones_are_refused() {
    let config = load_ok(&with_route(""));
    assert_eq!(config.routes[0].transport, Transport::Auto);
    let text = with_route("").replace("[[routes]]\n", "[[routes]]\ntransport = \"streamable\"\n");
    assert_eq!(load_ok(&text).routes[0].transport, Transport::Streamable);
    let text = with_route("").replace("[[routes]]\n", "[[routes]]\ntransport = \"websocket\"\n");
    let error = message(&text);
    assert!(
        error.contains("websocket") && error.contains("auto") && error.contains("streamable"),
        "{error}"
    );
}

// Principals.

const OAUTH_AND_BEARER: &str = r#"
[[routes]]
name = "atlassian"
prefix = "/atlassian"
upstream = "https://mcp.atlassian.com/v1"
[routes.auth]
kind = "oauth"

[[routes]]
name = "static"
prefix = "/static"
upstream = "https://mcp.example.com"
[routes.auth]
kind = "none"
"#;

#[test]
fn server_principal_makes_oauth_routes_per_user_and_leaves_the_others_shared() {
    let text = format!(
        "[server]\ntrusted_identity_header = \"X-Auth-Request-Email\"\nprincipal = \"forwarded\"\n\
         per_user_refresh_window_secs = 3600\n{OAUTH_AND_BEARER}"
    );
    let config = load_ok(&text);
    let per_user: Vec<bool> = config.routes.iter().map(|route| route.per_user).collect();
    assert_eq!(per_user, [true, false]);
    assert_eq!(
        config.server.per_user_refresh_window,
        Duration::from_secs(3600)
    );
    let shared = load_ok(OAUTH_AND_BEARER);
    assert!(shared.routes.iter().all(|route| !route.per_user));
    assert_eq!(
        shared.server.per_user_refresh_window,
        Duration::from_secs(24 * 60 * 60)
    );
}

#[test]
fn per_user_routes_need_a_trusted_identity_header() {
    let text = format!("[server]\nprincipal = \"forwarded\"\n{OAUTH_AND_BEARER}");
    let error = field_error(&text);
    assert_starts(&error, &at(&text, "\"forwarded\"", "server.principal"));
    assert!(error.contains("server.trusted_identity_header"), "{error}");

    let text = OAUTH_AND_BEARER.replacen(
        "[routes.auth]",
        "principal = \"forwarded\"\n[routes.auth]",
        1,
    );
    let error = field_error(&text);
    assert_starts(&error, &at(&text, "\"forwarded\"", "routes[0].principal"));
}

#[test]
fn a_route_that_is_not_oauth_cannot_be_per_user() {
    let text = format!(
        "[server]\ntrusted_identity_header = \"X-Auth-Request-Email\"\n{}",
        OAUTH_AND_BEARER.replace(
            "[routes.auth]\nkind = \"none\"",
            "principal = \"forwarded\"\n[routes.auth]\nkind = \"none\"",
        )
    );
    let error = field_error(&text);
    assert_starts(&error, &at(&text, "\"forwarded\"", "routes[1].principal"));
    assert!(
        error.contains("only applies to auth.kind = \"oauth\""),
        "{error}"
    );
    assert!(message(&with_route("[server]\nprincipal = \"everyone\"\n")).contains("principal"));
}

#[test]
fn env_mode_is_per_user_only_when_asked_and_on_a_platform_that_names_people() {
    let url = ("UPSTREAM_MCP_URL", "https://mcp.example.com/v1");
    let home = ("HOME", "/home/ada");
    let on_databricks = [
        url,
        home,
        ("DATABRICKS_APP_PORT", "8080"),
        ("MCP_GATEWAY_PRINCIPAL", "forwarded"),
    ];
    let config = Config::from_env(&on_databricks).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.routes[0].per_user);
    let shared = [url, home, ("DATABRICKS_APP_PORT", "8080")];
    let config = Config::from_env(&shared).unwrap_or_else(|e| panic!("{e}"));
    assert!(!config.routes[0].per_user);

    let nobody_names = [url, home, ("MCP_GATEWAY_PRINCIPAL", "forwarded")];
    let error = Config::from_env(&nobody_names)
        .expect_err("no identity")
        .to_string();
    assert!(
        error.contains("MCP_GATEWAY_PRINCIPAL: principal = \"forwarded\" needs"),
        "{error}"
    );
    let unknown = [url, home, ("MCP_GATEWAY_PRINCIPAL", "each")];
    let error = Config::from_env(&unknown)
        .expect_err("unknown mode")
        .to_string();
    assert!(error.contains("`each` is not a principal mode"), "{error}");
}

#[test]
fn env_mode_keeps_tokens_in_the_database_the_platform_names() {
    let url = ("UPSTREAM_MCP_URL", "https://mcp.example.com/v1");
    let home = ("HOME", "/home/ada");
    // What Databricks Apps sets for an app with a Lakebase database resource: no password.
    let lakebase = [
        url,
        home,
        ("DATABRICKS_APP_PORT", "8080"),
        ("MCP_GATEWAY_STORE", "postgres"),
        ("PGHOST", "instance-1.database.example"),
        ("PGPORT", "5432"),
        ("PGUSER", "app-sp"),
        ("PGDATABASE", "databricks_postgres"),
        ("PGSSLMODE", "require"),
        ("DATABRICKS_HOST", "workspace.example"),
        ("DATABRICKS_CLIENT_ID", "app-sp"),
        ("DATABRICKS_CLIENT_SECRET", "dose-SECRET"),
    ];
    let config = Config::from_env(&lakebase).unwrap_or_else(|e| panic!("{e}"));
    let StoreKind::Postgres(target) = &config.store.kind else {
        panic!("expected postgres, got {:?}", config.store.kind);
    };
    assert_eq!(
        target.describe(),
        "app-sp@instance-1.database.example:5432/databricks_postgres"
    );
    assert!(target.workspace_login().is_some());
    assert!(!format!("{config:?}").contains("SECRET"));

    // Unset, or `file`: the files under ~/.mcp/auth, as before.
    let unset = Config::from_env(&[url, home]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(unset.store.kind, StoreKind::File);
    let file = [url, home, ("MCP_GATEWAY_STORE", "file")];
    let file = Config::from_env(&file).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(file.store.kind, StoreKind::File);
}

#[test]
fn env_mode_says_what_a_database_store_is_missing() {
    let url = ("UPSTREAM_MCP_URL", "https://mcp.example.com/v1");
    let home = ("HOME", "/home/ada");
    let store = ("MCP_GATEWAY_STORE", "postgres");

    let nowhere = Config::from_env(&[url, home, store])
        .expect_err("no database")
        .to_string();
    assert!(
        nowhere.contains("MCP_GATEWAY_STORE: postgres needs a database: set PGHOST"),
        "{nowhere}"
    );
    assert!(
        !nowhere.contains("url ="),
        "a file's key means nothing here: {nowhere}"
    );

    let no_user = Config::from_env(&[url, home, store, ("PGHOST", "db.internal")])
        .expect_err("no user")
        .to_string();
    assert!(
        no_user.contains("MCP_GATEWAY_STORE: no database user") && no_user.contains("PGUSER"),
        "{no_user}"
    );

    let bad_mode = [
        url,
        home,
        store,
        ("PGHOST", "db.internal"),
        ("PGUSER", "gw"),
        ("PGSSLMODE", "sometimes"),
    ];
    let error = Config::from_env(&bad_mode)
        .expect_err("bad sslmode")
        .to_string();
    assert!(
        error.contains("MCP_GATEWAY_STORE: sslmode `sometimes`"),
        "{error}"
    );

    let unknown = Config::from_env(&[url, home, ("MCP_GATEWAY_STORE", "redis")])
        .expect_err("unknown store")
        .to_string();
    assert!(
        unknown.contains("MCP_GATEWAY_STORE: `redis` is not a token store: use file"),
        "{unknown}"
    );
}

#[test]
fn on_databricks_keepalives_stay_within_the_platforms_patience() {
    let env = [("HOME", "/home/ada"), ("DATABRICKS_APP_PORT", "8080")];
    let load_on_databricks =
        |server: &str| Config::from_toml_str(&with_route(server), Path::new(FILE), &env);
    for quiet in ["sse_keepalive_secs = 30", "sse_keepalive_secs = 0"] {
        let error = load_on_databricks(&format!("[server]\n{quiet}\n"))
            .expect_err(quiet)
            .to_string();
        assert!(error.contains("server.sse_keepalive_secs"), "{error}");
        assert!(error.contains("set 1 to 25 seconds"), "{error}");
    }
    let config =
        load_on_databricks("[server]\nsse_keepalive_secs = 25\n").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.server.sse_keepalive, Some(Duration::from_secs(25)));
    // Elsewhere, quiet streams are the operator's choice.
    assert_eq!(
        load_ok(&with_route("[server]\nsse_keepalive_secs = 0\n"))
            .server
            .sse_keepalive,
        None
    );
}
