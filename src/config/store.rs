//! The `[store]` section: which token store, where, and the keys that seal its records.
//!
//! `kind = "file"` (the default) keeps slots in `dir`. `kind = "postgres"` keeps them in a
//! PostgreSQL database named by `url`, or, without one, by the libpq variables `PGHOST`,
//! `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE` and `PGSSLMODE` (what Databricks Apps sets
//! for a database resource); the variables also fill in what the URL leaves out, so the
//! password can stay out of the file. An `sslmode` of `require`, `verify-ca` or
//! `verify-full` means TLS, with the server's certificate always verified (against the
//! Mozilla roots and `ca_file`, else `PGSSLROOTCERT`); `disable`, `allow` and `prefer` mean
//! none.
//!
//! `password_source` says where the database password comes from. `static`: the URL's, else
//! `PGPASSWORD`, else none. `databricks-oauth`: an OAuth token of the app's service
//! principal, fetched from the workspace (`DATABRICKS_HOST`) with `DATABRICKS_CLIENT_ID`
//! and `DATABRICKS_CLIENT_SECRET` before each new connection, as Lakebase expects; the URL
//! must then hold no password, and `PGPASSWORD` is not read. `auto` (the default) is
//! `static` when a password is configured, else `databricks-oauth` when all three
//! variables are set (as on Databricks Apps), else no password. `DATABRICKS_HOST` is a host
//! name, with or without `https://`; `http://` is accepted for loopback hosts only.
//!
//! `encryption_keys` lists `{ id, env }` or `{ id, file }` tables, each naming 32 random bytes
//! in base64; they are read and checked here, so `check` reports a missing or malformed key
//! by its id. Neither a key nor a database password is ever part of a message.

use std::ops::Range;

use toml::Spanned;

use super::env::{self, Env};
use super::location::SourceFile;
use super::raw::{RawPasswordSource, RawStore, RawStoreKey, RawStoreKind};
use super::validate::{Checker, DEFAULT_STORE_DIR};
use super::{FieldError, FieldErrorKind, StoreConfig, StoreKind};
use crate::secret::Secret;
use crate::store::{KeyMaterial, PostgresTarget, PostgresTls, StoreKey, WorkspaceCredentials};

/// The libpq variables that name a database, in the order they are looked at.
const PG_HOST: &str = "PGHOST";
const PG_PORT: &str = "PGPORT";
const PG_USER: &str = "PGUSER";
const PG_PASSWORD: &str = "PGPASSWORD";
const PG_DATABASE: &str = "PGDATABASE";
const PG_SSLMODE: &str = "PGSSLMODE";
const PG_SSLROOTCERT: &str = "PGSSLROOTCERT";
/// What Databricks Apps sets for the app's service principal and its workspace.
const DATABRICKS_HOST: &str = "DATABRICKS_HOST";
const DATABRICKS_CLIENT_ID: &str = "DATABRICKS_CLIENT_ID";
const DATABRICKS_CLIENT_SECRET: &str = "DATABRICKS_CLIENT_SECRET";

pub(super) fn check(raw: RawStore, checker: &mut Checker<'_>) -> Option<StoreConfig> {
    let kind_span = raw.kind.as_ref().map(Spanned::span);
    let kind = match raw
        .kind
        .as_ref()
        .map(|kind| *kind.get_ref())
        .unwrap_or_default()
    {
        RawStoreKind::File => {
            for (key, value) in [("url", &raw.url), ("ca_file", &raw.ca_file)] {
                if let Some(value) = value {
                    let kind = FieldErrorKind::PostgresOnlyKey { key };
                    checker.fail(format!("store.{key}"), Some(value.span()), kind);
                }
            }
            if let Some(source) = &raw.password_source {
                let kind = FieldErrorKind::PostgresOnlyKey {
                    key: "password_source",
                };
                checker.fail("store.password_source".into(), Some(source.span()), kind);
            }
            Some(StoreKind::File)
        }
        RawStoreKind::Postgres => postgres_target(&raw, kind_span, checker)
            .map(|target| StoreKind::Postgres(Box::new(target))),
    };
    let keys = keys(&raw.encryption_keys, checker);
    let dir = dir(raw.dir.as_ref(), checker);
    Some(StoreConfig {
        kind: kind?,
        dir: dir?,
        keys: keys?,
    })
}

/// Single-upstream mode's store, from `MCP_GATEWAY_STORE`: `file` (the default) or
/// `postgres`, the database named by the libpq variables alone and the password found as
/// under `password_source = "auto"` (on Databricks Apps, the app's workspace token). Errors
/// come back under the variable's name, with nothing about a file.
pub(super) fn from_env(env: &dyn Env) -> Result<StoreKind, Vec<FieldError>> {
    let fail = |kind| {
        vec![FieldError {
            key: env::STORE_VAR.to_owned(),
            at: None,
            kind,
        }]
    };
    match env.var(env::STORE_VAR).as_deref().map(str::trim) {
        None | Some("file") => return Ok(StoreKind::File),
        Some("postgres") => {}
        Some(other) => {
            return Err(fail(FieldErrorKind::UnknownStoreKind {
                value: other.to_owned(),
            }));
        }
    }
    if env.var(PG_HOST).is_none() {
        return Err(fail(FieldErrorKind::PostgresEnvUnconfigured));
    }
    // The same rules as a file's `[store] kind = "postgres"` with nothing else set; a file
    // has nothing to point at, so whatever goes wrong is the variable's.
    let mut checker = Checker::new(
        SourceFile {
            path: std::path::Path::new(env::STORE_VAR),
            text: "",
        },
        env,
    );
    // `postgres_target` gives a target only when it recorded no error.
    match postgres_target(&RawStore::default(), None, &mut checker) {
        Some(target) => Ok(StoreKind::Postgres(Box::new(target))),
        None => Err(checker
            .into_errors()
            .into_iter()
            .map(|error| FieldError {
                key: env::STORE_VAR.to_owned(),
                at: None,
                kind: error.kind,
            })
            .collect()),
    }
}

fn dir(raw: Option<&Spanned<String>>, checker: &mut Checker<'_>) -> Option<std::path::PathBuf> {
    match raw {
        Some(dir) => checker.path("store.dir", dir),
        None => match env::expand_home(DEFAULT_STORE_DIR, checker.env) {
            Ok(dir) => Some(dir),
            Err(kind) => {
                checker.fail("store.dir".into(), None, kind);
                None
            }
        },
    }
}

fn keys(raw: &[Spanned<RawStoreKey>], checker: &mut Checker<'_>) -> Option<Vec<StoreKey>> {
    let mut keys: Vec<StoreKey> = Vec::with_capacity(raw.len());
    let mut all_valid = true;
    for (index, entry) in raw.iter().enumerate() {
        let path = format!("store.encryption_keys[{index}]");
        let key = store_key(&path, entry, checker);
        let Some(key) = key else {
            all_valid = false;
            continue;
        };
        if keys.iter().any(|earlier| earlier.id == key.id) {
            let kind = FieldErrorKind::DuplicateStoreKey { id: key.id };
            checker.fail(format!("{path}.id"), Some(entry.get_ref().id.span()), kind);
            all_valid = false;
            continue;
        }
        keys.push(key);
    }
    all_valid.then_some(keys)
}

fn store_key(
    path: &str,
    entry: &Spanned<RawStoreKey>,
    checker: &mut Checker<'_>,
) -> Option<StoreKey> {
    let raw = entry.get_ref();
    let id = raw.id.get_ref().clone();
    if !valid_key_id(&id) {
        let kind = FieldErrorKind::InvalidStoreKeyId { id };
        checker.fail(format!("{path}.id"), Some(raw.id.span()), kind);
        return None;
    }
    let text = match (&raw.env, &raw.file) {
        (Some(var), None) => key_from_env(var, checker.env),
        (None, Some(file)) => key_from_file(&format!("{path}.file"), file, checker)?,
        _ => Err(FieldErrorKind::StoreKeySourceCount { id: id.clone() }),
    };
    let material = text.and_then(|text| {
        KeyMaterial::from_base64(&text).map_err(|source| FieldErrorKind::InvalidStoreKey {
            id: id.clone(),
            source,
        })
    });
    match material {
        Ok(material) => Some(StoreKey { id, material }),
        Err(kind) => {
            checker.fail(path.to_owned(), Some(entry.span()), kind);
            None
        }
    }
}

/// Ids are written into every sealed record and into messages: short, plain characters.
fn valid_key_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn key_from_env(var: &Spanned<String>, env: &dyn Env) -> Result<String, FieldErrorKind> {
    env.var(var.get_ref())
        .ok_or_else(|| FieldErrorKind::TokenEnvUnset {
            var: var.get_ref().clone(),
        })
}

/// The key file's text; `None` when the checker has already reported the file unreadable.
fn key_from_file(
    path: &str,
    file: &Spanned<String>,
    checker: &mut Checker<'_>,
) -> Option<Result<String, FieldErrorKind>> {
    let file = checker.readable_file(path, file)?;
    Some(
        std::fs::read_to_string(&file)
            .map_err(|source| FieldErrorKind::UnreadableFile { path: file, source }),
    )
}

/// The database of `kind = "postgres"`: the URL, completed from the libpq variables.
fn postgres_target(
    raw: &RawStore,
    kind_span: Option<Range<usize>>,
    checker: &mut Checker<'_>,
) -> Option<PostgresTarget> {
    let url = raw.url.as_ref();
    let (mut config, url_sslmode) = match url {
        Some(url) => match parse_url(url.get_ref()) {
            Ok(parsed) => parsed,
            Err(kind) => {
                checker.fail("store.url".into(), Some(url.span()), kind);
                return None;
            }
        },
        None if checker.env.var(PG_HOST).is_some() => (tokio_postgres::Config::new(), None),
        None => {
            let kind = FieldErrorKind::PostgresUnconfigured;
            checker.fail("store.kind".into(), kind_span, kind);
            return None;
        }
    };
    let tls = tls(raw, url_sslmode.as_deref(), checker);
    let (key, span) = match url {
        Some(url) => ("store.url", Some(url.span())),
        None => ("store.kind", kind_span.clone()),
    };
    let source = password_source(raw);
    let read_password = source != RawPasswordSource::DatabricksOauth;
    let completed = complete_from_env(&mut config, checker.env, read_password).and_then(|()| {
        match config.get_user() {
            Some(_) => Ok(()),
            None => Err(FieldErrorKind::PostgresUserMissing),
        }
    });
    if let Err(kind) = completed {
        checker.fail(key.into(), span, kind);
        return None;
    }
    let workspace = workspace_login(raw, config.get_password().is_some(), kind_span, checker);
    let target = PostgresTarget::new(config, tls?);
    Some(match workspace? {
        Some(credentials) => target.with_workspace_login(credentials),
        None => target,
    })
}

fn password_source(raw: &RawStore) -> RawPasswordSource {
    raw.password_source
        .as_ref()
        .map(|source| *source.get_ref())
        .unwrap_or_default()
}

/// The service principal whose workspace tokens are the database password, when
/// `password_source` (or, under `auto`, the environment) asks for one; `Some(None)` for a
/// login with the configured password, `None` when something is wrong.
fn workspace_login(
    raw: &RawStore,
    has_password: bool,
    kind_span: Option<Range<usize>>,
    checker: &mut Checker<'_>,
) -> Option<Option<WorkspaceCredentials>> {
    let env = checker.env;
    let wanted = match password_source(raw) {
        RawPasswordSource::Static => false,
        RawPasswordSource::Auto => {
            !has_password
                && [
                    DATABRICKS_HOST,
                    DATABRICKS_CLIENT_ID,
                    DATABRICKS_CLIENT_SECRET,
                ]
                .iter()
                .all(|var| env.var(var).is_some())
        }
        RawPasswordSource::DatabricksOauth if has_password => {
            let span = raw.url.as_ref().map(Spanned::span);
            let kind = FieldErrorKind::PasswordWithWorkspaceLogin;
            checker.fail("store.url".into(), span, kind);
            return None;
        }
        RawPasswordSource::DatabricksOauth => true,
    };
    if !wanted {
        return Some(None);
    }
    match workspace_credentials(env) {
        Ok(credentials) => Some(Some(credentials)),
        Err(kind) => {
            let (key, span) = match &raw.password_source {
                Some(source) => ("store.password_source", Some(source.span())),
                None => ("store.kind", kind_span),
            };
            checker.fail(key.into(), span, kind);
            None
        }
    }
}

/// The app's service principal and its workspace's token endpoint, from the environment.
fn workspace_credentials(env: &dyn Env) -> Result<WorkspaceCredentials, FieldErrorKind> {
    let vars = [
        DATABRICKS_HOST,
        DATABRICKS_CLIENT_ID,
        DATABRICKS_CLIENT_SECRET,
    ];
    let [Some(host), Some(client_id), Some(client_secret)] = vars.map(|var| env.var(var)) else {
        let missing: Vec<&str> = vars
            .into_iter()
            .filter(|var| env.var(var).is_none())
            .collect();
        return Err(FieldErrorKind::WorkspaceCredentialsMissing {
            missing: missing.join(", "),
        });
    };
    let endpoint = WorkspaceCredentials::token_endpoint(&host)
        .map_err(|source| FieldErrorKind::InvalidWorkspaceHost { source })?;
    Ok(WorkspaceCredentials {
        endpoint,
        client_id: client_id.trim().to_owned(),
        client_secret: Secret::new(client_secret),
    })
}

/// Parses a `postgres://` URL; also returns its `sslmode`, which is taken out first since
/// the driver knows only some of libpq's values.
fn parse_url(text: &str) -> Result<(tokio_postgres::Config, Option<String>), FieldErrorKind> {
    // Neither parser's error is passed on: both may quote the URL, password and all.
    let url = url::Url::parse(text).map_err(|_| FieldErrorKind::InvalidPostgresUrl)?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(FieldErrorKind::InvalidPostgresUrl);
    }
    let sslmode = url
        .query_pairs()
        .find(|(key, _)| key == "sslmode")
        .map(|(_, value)| value.into_owned());
    let (base, query) = text.split_once('?').unwrap_or((text, ""));
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty() && !pair.starts_with("sslmode="))
        .collect();
    let without_sslmode = match rest.is_empty() {
        true => base.to_owned(),
        false => format!("{base}?{}", rest.join("&")),
    };
    let config = without_sslmode
        .parse::<tokio_postgres::Config>()
        .map_err(|_| FieldErrorKind::InvalidPostgresUrl)?;
    Ok((config, sslmode))
}

/// Whether the connection uses TLS, from the URL's `sslmode`, else `PGSSLMODE`; and the
/// `ca_file`, which only a TLS connection can use. `None` when something is wrong.
fn tls(
    raw: &RawStore,
    url_sslmode: Option<&str>,
    checker: &mut Checker<'_>,
) -> Option<Option<PostgresTls>> {
    let (key, mode) = match (url_sslmode, checker.env.var(PG_SSLMODE)) {
        (Some(mode), _) => ("store.url", mode.to_owned()),
        (None, Some(mode)) => (PG_SSLMODE, mode.trim().to_owned()),
        (None, None) => ("", "prefer".to_owned()),
    };
    let span = raw.url.as_ref().map(Spanned::span);
    let Some(uses_tls) = sslmode_uses_tls(&mode) else {
        let kind = FieldErrorKind::InvalidSslMode { mode };
        checker.fail(key.into(), span, kind);
        return None;
    };
    let ca_file = match &raw.ca_file {
        Some(file) if !uses_tls => {
            let kind = FieldErrorKind::CaFileWithoutTls;
            checker.fail("store.ca_file".into(), Some(file.span()), kind);
            return None;
        }
        Some(file) => Some(checker.readable_file("store.ca_file", file)?),
        // As libpq does: the variable stands in for the file's key, and without TLS it is
        // not looked at.
        None => match checker.env.var(PG_SSLROOTCERT) {
            Some(file) if uses_tls => {
                let file = std::path::PathBuf::from(file);
                if let Err(kind) = super::validate::readable_file(&file) {
                    checker.fail(PG_SSLROOTCERT.into(), None, kind);
                    return None;
                }
                Some(file)
            }
            _ => None,
        },
    };
    Some(uses_tls.then_some(PostgresTls { ca_file }))
}

/// libpq's `sslmode` values: whether each means TLS; `None` for one libpq does not know.
/// `disable`, `allow` and `prefer` connect without TLS; the others with TLS, always
/// verifying the server's certificate.
fn sslmode_uses_tls(mode: &str) -> Option<bool> {
    match mode {
        "disable" | "allow" | "prefer" => Some(false),
        "require" | "verify-ca" | "verify-full" => Some(true),
        _ => None,
    }
}

/// Fills in, from the libpq variables, what the URL (if any) left out; `PGPASSWORD` only
/// when `read_password`.
fn complete_from_env(
    config: &mut tokio_postgres::Config,
    env: &dyn Env,
    read_password: bool,
) -> Result<(), FieldErrorKind> {
    if config.get_hosts().is_empty()
        && let Some(hosts) = env.var(PG_HOST)
    {
        for host in hosts.split(',') {
            config.host(host.trim());
        }
    }
    if config.get_ports().is_empty()
        && let Some(port) = env.var(PG_PORT)
    {
        let port = port.trim().parse::<u16>();
        config.port(port.map_err(|_| FieldErrorKind::InvalidPostgresEnv { var: PG_PORT })?);
    }
    if config.get_user().is_none()
        && let Some(user) = env.var(PG_USER)
    {
        config.user(user);
    }
    if read_password
        && config.get_password().is_none()
        && let Some(password) = env.var(PG_PASSWORD)
    {
        config.password(password);
    }
    if config.get_dbname().is_none()
        && let Some(database) = env.var(PG_DATABASE)
    {
        config.dbname(database);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as BASE64;

    use crate::config::{Config, ConfigError, StoreKind};

    const FILE: &str = "/etc/gateway/gateway.toml";

    fn key_text(byte: u8) -> String {
        BASE64.encode([byte; 32])
    }

    fn load(store: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut vars: std::collections::HashMap<String, String> = env
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        vars.insert("HOME".into(), "/home/ada".into());
        let text = format!(
            "[store]\n{store}\n[[routes]]\nname = \"r\"\nprefix = \"/r\"\nupstream = \"https://r.example.com\"\n"
        );
        Config::from_toml_str(&text, Path::new(FILE), &vars)
    }

    fn error(store: &str, env: &[(&str, &str)]) -> String {
        match load(store, env) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(error) => error.to_string(),
        }
    }

    fn postgres(config: &Config) -> String {
        match &config.store.kind {
            StoreKind::Postgres(target) => target.describe(),
            other => panic!("expected postgres, got {other:?}"),
        }
    }

    #[test]
    fn the_default_store_is_files_without_keys() {
        let config = load("", &[]).expect("valid");
        assert_eq!(config.store.kind, StoreKind::File);
        assert!(config.store.keys.is_empty());
    }

    #[test]
    fn postgres_from_a_url_keeps_the_password_out_of_debug() {
        let config = load(
            "kind = \"postgres\"\nurl = \"postgres://gw:pw-SECRET@db.internal:6543/tokens\"",
            &[],
        )
        .expect("valid");
        assert_eq!(postgres(&config), "gw@db.internal:6543/tokens");
        assert!(!format!("{config:?}").contains("SECRET"));
    }

    #[test]
    fn postgres_from_the_libpq_variables_alone() {
        let env = [
            ("PGHOST", "instance.database.example"),
            ("PGPORT", "5433"),
            ("PGUSER", "app-sp"),
            ("PGPASSWORD", "pw-SECRET"),
            ("PGDATABASE", "databricks_postgres"),
            ("PGSSLMODE", "disable"),
        ];
        let config = load("kind = \"postgres\"", &env).expect("valid");
        assert_eq!(
            postgres(&config),
            "app-sp@instance.database.example:5433/databricks_postgres"
        );
        assert!(!format!("{config:?}").contains("SECRET"));
    }

    #[test]
    fn the_variables_fill_in_what_the_url_leaves_out() {
        let env = [("PGUSER", "other"), ("PGDATABASE", "other")];
        let config = load(
            "kind = \"postgres\"\nurl = \"postgres://gw@db/tokens\"",
            &env,
        )
        .expect("valid");
        assert_eq!(postgres(&config), "gw@db:5432/tokens");
        let config = load("kind = \"postgres\"\nurl = \"postgres://db\"", &env).expect("valid");
        assert_eq!(postgres(&config), "other@db:5432/other");
    }

    #[test]
    fn postgres_without_url_or_pghost_says_what_to_set() {
        let shown = error("kind = \"postgres\"", &[]);
        assert!(
            shown.contains(&format!("{FILE}:2:8: store.kind:")),
            "{shown}"
        );
        assert!(
            shown.contains("set url =") && shown.contains("PGHOST"),
            "{shown}"
        );
    }

    #[test]
    fn a_bad_url_is_refused_without_echoing_it() {
        for url in [
            "mysql://gw:pw-SECRET@db/x",
            "postgres://gw:pw-SECRET@db:port/x",
            "SECRET",
        ] {
            let shown = error(&format!("kind = \"postgres\"\nurl = \"{url}\""), &[]);
            assert!(
                shown.contains("store.url") && shown.contains("not a PostgreSQL"),
                "{shown}"
            );
            assert!(!shown.contains("SECRET"), "{shown}");
        }
    }

    #[test]
    fn a_url_with_the_file_store_is_an_error() {
        let shown = error("url = \"postgres://gw@db/x\"", &[]);
        assert!(shown.contains("store.url: url only applies"), "{shown}");
    }

    fn uses_tls(config: &Config) -> bool {
        match &config.store.kind {
            StoreKind::Postgres(target) => target.uses_tls(),
            other => panic!("expected postgres, got {other:?}"),
        }
    }

    #[test]
    fn sslmode_require_and_verify_mean_tls_and_the_others_do_not() {
        let modes = [
            ("require", true),
            ("verify-ca", true),
            ("verify-full", true),
            ("disable", false),
            ("allow", false),
            ("prefer", false),
        ];
        for (mode, tls) in modes {
            let url = format!("url = \"postgres://gw@db/x?connect_timeout=3&sslmode={mode}\"");
            let config = load(&format!("kind = \"postgres\"\n{url}"), &[]).expect(mode);
            assert_eq!(uses_tls(&config), tls, "{mode}");
            let env = [("PGHOST", "db"), ("PGUSER", "gw"), ("PGSSLMODE", mode)];
            let config = load("kind = \"postgres\"", &env).expect(mode);
            assert_eq!(uses_tls(&config), tls, "PGSSLMODE={mode}");
        }
        let plain = load("kind = \"postgres\"\nurl = \"postgres://gw@db/x\"", &[]).expect("ok");
        assert!(!uses_tls(&plain));
    }

    #[test]
    fn the_url_sslmode_wins_over_pgsslmode() {
        let env = [("PGSSLMODE", "require")];
        let store = "kind = \"postgres\"\nurl = \"postgres://gw@db/x?sslmode=disable\"";
        assert!(!uses_tls(&load(store, &env).expect("valid")));
    }

    #[test]
    fn an_unknown_sslmode_is_named() {
        let store = "kind = \"postgres\"\nurl = \"postgres://gw@db/x?sslmode=always\"";
        let shown = error(store, &[]);
        assert!(
            shown.contains("store.url") && shown.contains("`always`"),
            "{shown}"
        );
        let env = [("PGHOST", "db"), ("PGUSER", "gw"), ("PGSSLMODE", "always")];
        let shown = error("kind = \"postgres\"", &env);
        assert!(
            shown.contains("PGSSLMODE") && shown.contains("`always`"),
            "{shown}"
        );
    }

    #[test]
    fn ca_file_needs_tls_and_the_postgres_kind_and_must_be_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").expect("write");
        let ca_line = format!("ca_file = \"{}\"", ca.display());
        let url = "url = \"postgres://gw@db/x?sslmode=require\"";
        let tls = format!("kind = \"postgres\"\n{url}\n{ca_line}");
        assert!(uses_tls(&load(&tls, &[]).expect("valid")));
        let plain = format!("kind = \"postgres\"\nurl = \"postgres://gw@db/x\"\n{ca_line}");
        assert!(error(&plain, &[]).contains("store.ca_file: ca_file needs sslmode"));
        assert!(error(&ca_line, &[]).contains("store.ca_file: ca_file only applies"));
        let missing = tls.replace("ca.pem", "missing.pem");
        assert!(error(&missing, &[]).contains("store.ca_file: cannot read"));
    }

    #[test]
    fn pgsslrootcert_stands_in_for_ca_file_over_tls_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("root.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").expect("write");
        let ca_text = ca.display().to_string();
        let with_mode = |mode| {
            [
                ("PGHOST", "db"),
                ("PGUSER", "gw"),
                ("PGSSLMODE", mode),
                ("PGSSLROOTCERT", ca_text.as_str()),
            ]
        };
        let config = load("kind = \"postgres\"", &with_mode("verify-full")).expect("valid");
        assert!(uses_tls(&config));
        assert!(format!("{config:?}").contains("root.pem"), "{config:?}");
        // A file's own ca_file wins.
        let other = dir.path().join("other.pem");
        std::fs::write(&other, "-----BEGIN CERTIFICATE-----\n").expect("write");
        let store = format!("kind = \"postgres\"\nca_file = \"{}\"", other.display());
        let config = load(&store, &with_mode("require")).expect("valid");
        let shown = format!("{config:?}");
        assert!(
            shown.contains("other.pem") && !shown.contains("root.pem"),
            "{shown}"
        );
        // Without TLS, as for libpq, the variable is not looked at.
        let config = load("kind = \"postgres\"", &with_mode("disable")).expect("valid");
        assert!(!uses_tls(&config));

        let missing = dir.path().join("missing.pem").display().to_string();
        let env = [
            ("PGHOST", "db"),
            ("PGUSER", "gw"),
            ("PGSSLMODE", "require"),
            ("PGSSLROOTCERT", missing.as_str()),
        ];
        let shown = error("kind = \"postgres\"", &env);
        assert!(shown.contains("PGSSLROOTCERT: cannot read"), "{shown}");
    }

    #[test]
    fn a_unix_socket_url_is_understood() {
        let store = "kind = \"postgres\"\nurl = \"postgresql://gw@%2Frun%2Fpostgresql/tokens\"";
        let config = load(store, &[]).expect("valid");
        assert_eq!(postgres(&config), "gw@/run/postgresql:5432/tokens");
    }

    #[test]
    fn a_database_needs_a_user() {
        let shown = error("kind = \"postgres\"", &[("PGHOST", "db")]);
        assert!(shown.contains("no database user"), "{shown}");
    }

    #[test]
    fn a_bad_pgport_names_the_variable() {
        let env = [("PGHOST", "db"), ("PGUSER", "gw"), ("PGPORT", "five")];
        assert!(error("kind = \"postgres\"", &env).contains("PGPORT"));
    }

    /// What Databricks Apps sets for a Lakebase database resource and the app itself.
    const LAKEBASE: [(&str, &str); 7] = [
        ("PGHOST", "instance-1.database.cloud.databricks.com"),
        ("PGPORT", "5432"),
        ("PGUSER", "4f0c-sp-id"),
        ("PGDATABASE", "databricks_postgres"),
        ("PGSSLMODE", "require"),
        ("DATABRICKS_HOST", "adb-1.azuredatabricks.net"),
        ("DATABRICKS_CLIENT_ID", "4f0c-sp-id"),
    ];

    /// [`LAKEBASE`] with the client secret, then `extra`, which wins over both.
    fn lakebase(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut env = LAKEBASE.to_vec();
        env.push(("DATABRICKS_CLIENT_SECRET", "dose-SECRET"));
        env.extend_from_slice(extra);
        env
    }

    fn workspace_endpoint(config: &Config) -> Option<String> {
        match &config.store.kind {
            StoreKind::Postgres(target) => target
                .workspace_login()
                .map(|credentials| credentials.endpoint.to_string()),
            other => panic!("expected postgres, got {other:?}"),
        }
    }

    #[test]
    fn databricks_apps_without_a_password_log_in_with_a_workspace_token() {
        let config = load("kind = \"postgres\"", &lakebase(&[])).expect("valid");
        assert_eq!(
            workspace_endpoint(&config).as_deref(),
            Some("https://adb-1.azuredatabricks.net/oidc/v1/token")
        );
        assert_eq!(
            postgres(&config),
            "4f0c-sp-id@instance-1.database.cloud.databricks.com:5432/databricks_postgres"
        );
        assert!(uses_tls(&config));
        assert!(!format!("{config:?}").contains("SECRET"));
    }

    #[test]
    fn a_configured_password_wins_over_the_workspace_under_auto() {
        let env = lakebase(&[("PGPASSWORD", "pw-SECRET")]);
        let config = load("kind = \"postgres\"", &env).expect("valid");
        assert_eq!(workspace_endpoint(&config), None);
        let store = "kind = \"postgres\"\nurl = \"postgres://gw:pw@db/x\"";
        assert_eq!(
            workspace_endpoint(&load(store, &lakebase(&[])).expect("valid")),
            None
        );
    }

    #[test]
    fn static_never_uses_the_workspace_and_databricks_oauth_ignores_pgpassword() {
        let store = "kind = \"postgres\"\npassword_source = \"static\"";
        let config = load(store, &lakebase(&[])).expect("valid");
        assert_eq!(workspace_endpoint(&config), None);
        let store = "kind = \"postgres\"\npassword_source = \"databricks-oauth\"";
        let env = lakebase(&[("PGPASSWORD", "pw-SECRET")]);
        let config = load(store, &env).expect("valid");
        assert!(workspace_endpoint(&config).is_some());
    }

    #[test]
    fn databricks_oauth_without_the_variables_names_the_missing_ones() {
        let store = "kind = \"postgres\"\npassword_source = \"databricks-oauth\"";
        let shown = error(store, &LAKEBASE);
        assert!(shown.contains("store.password_source"), "{shown}");
        assert!(
            shown.contains("DATABRICKS_CLIENT_SECRET must be set"),
            "{shown}"
        );
        assert!(!shown.contains("DATABRICKS_CLIENT_ID,"), "{shown}");
    }

    #[test]
    fn databricks_oauth_with_a_password_in_the_url_is_refused_without_echoing_it() {
        let store = "kind = \"postgres\"\npassword_source = \"databricks-oauth\"\n\
                     url = \"postgres://sp:pw-SECRET@db/x\"";
        let shown = error(store, &lakebase(&[]));
        assert!(
            shown.contains("store.url") && shown.contains("remove the password"),
            "{shown}"
        );
        assert!(!shown.contains("SECRET"), "{shown}");
    }

    #[test]
    fn a_plain_http_workspace_host_is_refused_unless_it_is_loopback() {
        let env = lakebase(&[("DATABRICKS_HOST", "http://adb-1.azuredatabricks.net")]);
        let shown = error("kind = \"postgres\"", &env);
        assert!(
            shown.contains("store.kind") && shown.contains("DATABRICKS_HOST"),
            "{shown}"
        );
        assert!(shown.contains("loopback"), "{shown}");
        let env = lakebase(&[("DATABRICKS_HOST", "http://127.0.0.1:9")]);
        let config = load("kind = \"postgres\"", &env).expect("valid");
        assert_eq!(
            workspace_endpoint(&config).as_deref(),
            Some("http://127.0.0.1:9/oidc/v1/token")
        );
    }

    #[test]
    fn password_source_is_checked_by_name_and_only_for_postgres() {
        let shown = error("password_source = \"databricks-oauth\"", &[]);
        assert!(
            shown.contains("store.password_source: password_source only applies"),
            "{shown}"
        );
        let shown = error(
            "kind = \"postgres\"\npassword_source = \"oauth\"",
            &lakebase(&[]),
        );
        assert!(shown.contains("store.password_source"), "{shown}");
        assert!(shown.contains("databricks-oauth"), "{shown}");
    }

    #[test]
    fn keys_from_env_and_file_are_read_first_one_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("old.key");
        std::fs::write(&file, format!("{}\n", key_text(2))).expect("write");
        let store = format!(
            "encryption_keys = [{{ id = \"k2\", env = \"STORE_KEY\" }}, {{ id = \"k1\", file = \"{}\" }}]",
            file.display()
        );
        let config = load(&store, &[("STORE_KEY", &key_text(1))]).expect("valid");
        let ids: Vec<_> = config
            .store
            .keys
            .iter()
            .map(|key| key.id.as_str())
            .collect();
        assert_eq!(ids, ["k2", "k1"]);
        assert!(!format!("{config:?}").contains(&key_text(1)[..12]));
    }

    #[test]
    fn a_key_of_the_wrong_length_or_not_base64_names_the_key_id() {
        let short = BASE64.encode([1u8; 16]);
        let store = "encryption_keys = [{ id = \"k1\", env = \"STORE_KEY\" }]";
        let shown = error(store, &[("STORE_KEY", &short)]);
        assert!(shown.contains("store.encryption_keys[0]"), "{shown}");
        assert!(
            shown.contains("encryption key `k1`") && shown.contains("16 bytes"),
            "{shown}"
        );
        let shown = error(store, &[("STORE_KEY", "SECRET!!")]);
        assert!(
            shown.contains("`k1`") && shown.contains("not base64"),
            "{shown}"
        );
        assert!(!shown.contains("SECRET"), "{shown}");
    }

    #[test]
    fn a_missing_key_variable_is_a_check_error() {
        let shown = error(
            "encryption_keys = [{ id = \"k1\", env = \"STORE_KEY\" }]",
            &[],
        );
        assert!(shown.contains("STORE_KEY is not set"), "{shown}");
    }

    #[test]
    fn key_entries_need_one_source_a_plain_id_and_no_repeats() {
        let both = "encryption_keys = [{ id = \"k1\", env = \"A\", file = \"/k\" }]";
        assert!(error(both, &[("A", &key_text(1))]).contains("exactly one of env or file"));
        let bad_id = "encryption_keys = [{ id = \"k 1\", env = \"A\" }]";
        assert!(error(bad_id, &[("A", &key_text(1))]).contains("encryption key id `k 1`"));
        let twice =
            "encryption_keys = [{ id = \"k1\", env = \"A\" }, { id = \"k1\", env = \"A\" }]";
        let shown = error(twice, &[("A", &key_text(1))]);
        assert!(shown.contains("store.encryption_keys[1].id") && shown.contains("more than once"));
    }

    #[test]
    fn an_unknown_key_in_a_key_entry_names_its_path() {
        let shown = error("encryption_keys = [{ id = \"k1\", value = \"x\" }]", &[]);
        assert!(shown.contains("store.encryption_keys"), "{shown}");
        assert!(shown.contains("unknown field `value`"), "{shown}");
    }
}
