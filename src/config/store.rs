//! The `[store]` section: which token store, where, and the keys that seal its records.
//!
//! `kind = "file"` (the default) keeps slots in `dir`. `kind = "postgres"` keeps them in a
//! PostgreSQL database named by `url`, or, without one, by the libpq variables `PGHOST`,
//! `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE` and `PGSSLMODE` (what Databricks Apps sets
//! for a database resource); the variables also fill in what the URL leaves out, so the
//! password can stay out of the file. TLS to the database is not supported yet, so an
//! `sslmode` that requires it is refused here rather than failing at the first connection.
//!
//! `encryption_keys` lists `{ id, env }` or `{ id, file }` tables, each naming 32 random bytes
//! in base64; they are read and checked here, so `check` reports a missing or malformed key
//! by its id. Neither a key nor a database password is ever part of a message.

use toml::Spanned;

use super::env::{self, Env};
use super::raw::{RawStore, RawStoreKey, RawStoreKind};
use super::validate::{Checker, DEFAULT_STORE_DIR};
use super::{FieldErrorKind, StoreConfig, StoreKind};
use crate::store::{KeyMaterial, PostgresTarget, StoreKey};

/// The libpq variables that name a database, in the order they are looked at.
const PG_HOST: &str = "PGHOST";
const PG_PORT: &str = "PGPORT";
const PG_USER: &str = "PGUSER";
const PG_PASSWORD: &str = "PGPASSWORD";
const PG_DATABASE: &str = "PGDATABASE";
const PG_SSLMODE: &str = "PGSSLMODE";

pub(super) fn check(raw: RawStore, checker: &mut Checker<'_>) -> Option<StoreConfig> {
    let kind_span = raw.kind.as_ref().map(Spanned::span);
    let kind = match raw.kind.map(Spanned::into_inner).unwrap_or_default() {
        RawStoreKind::File => {
            if let Some(url) = &raw.url {
                let kind = FieldErrorKind::StoreUrlWithoutPostgres;
                checker.fail("store.url".into(), Some(url.span()), kind);
            }
            Some(StoreKind::File)
        }
        RawStoreKind::Postgres => postgres_target(raw.url.as_ref(), kind_span, checker)
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
    url: Option<&Spanned<String>>,
    kind_span: Option<std::ops::Range<usize>>,
    checker: &mut Checker<'_>,
) -> Option<PostgresTarget> {
    let (mut config, sslmode_in_url) = match url {
        Some(url) => match parse_url(url.get_ref()) {
            Ok(parsed) => parsed,
            Err(kind) => {
                checker.fail("store.url".into(), Some(url.span()), kind);
                return None;
            }
        },
        None if checker.env.var(PG_HOST).is_some() => (tokio_postgres::Config::new(), false),
        None => {
            let kind = FieldErrorKind::PostgresUnconfigured;
            checker.fail("store.kind".into(), kind_span, kind);
            return None;
        }
    };
    let span = url.map(Spanned::span).or(kind_span);
    let key = if url.is_some() {
        "store.url"
    } else {
        "store.kind"
    };
    let completed = complete_from_env(&mut config, sslmode_in_url, checker.env);
    let checked = completed.and_then(|()| match config.get_user() {
        Some(_) => Ok(()),
        None => Err(FieldErrorKind::PostgresUserMissing),
    });
    match checked {
        Ok(()) => Some(PostgresTarget::new(config)),
        Err(kind) => {
            checker.fail(key.into(), span, kind);
            None
        }
    }
}

/// Parses a `postgres://` URL; also says whether it sets `sslmode` itself.
fn parse_url(text: &str) -> Result<(tokio_postgres::Config, bool), FieldErrorKind> {
    // Neither parser's error is passed on: both may quote the URL, password and all.
    let url = url::Url::parse(text).map_err(|_| FieldErrorKind::InvalidPostgresUrl)?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(FieldErrorKind::InvalidPostgresUrl);
    }
    let sslmode = url
        .query_pairs()
        .find(|(key, _)| key == "sslmode")
        .map(|(_, value)| value.into_owned());
    if let Some(mode) = &sslmode {
        ssl_mode(mode)?;
    }
    let config = text
        .parse::<tokio_postgres::Config>()
        .map_err(|_| FieldErrorKind::InvalidPostgresUrl)?;
    Ok((config, sslmode.is_some()))
}

/// Fills in, from the libpq variables, what the URL (if any) left out.
fn complete_from_env(
    config: &mut tokio_postgres::Config,
    sslmode_in_url: bool,
    env: &dyn Env,
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
    if config.get_password().is_none()
        && let Some(password) = env.var(PG_PASSWORD)
    {
        config.password(password);
    }
    if config.get_dbname().is_none()
        && let Some(database) = env.var(PG_DATABASE)
    {
        config.dbname(database);
    }
    if !sslmode_in_url && let Some(mode) = env.var(PG_SSLMODE) {
        let mode = ssl_mode(mode.trim()).map_err(|kind| match kind {
            FieldErrorKind::InvalidPostgresUrl => {
                FieldErrorKind::InvalidPostgresEnv { var: PG_SSLMODE }
            }
            other => other,
        })?;
        config.ssl_mode(mode);
    }
    Ok(())
}

/// libpq's `sslmode` values, as far as a connection without TLS can honour them.
fn ssl_mode(mode: &str) -> Result<tokio_postgres::config::SslMode, FieldErrorKind> {
    use tokio_postgres::config::SslMode;
    match mode {
        "disable" => Ok(SslMode::Disable),
        "allow" | "prefer" => Ok(SslMode::Prefer),
        "require" | "verify-ca" | "verify-full" => Err(FieldErrorKind::PostgresTlsUnsupported {
            mode: mode.to_owned(),
        }),
        _ => Err(FieldErrorKind::InvalidPostgresUrl),
    }
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

    #[test]
    fn sslmode_require_is_refused_until_tls_is_supported() {
        let shown = error(
            "kind = \"postgres\"\nurl = \"postgres://gw@db/x?sslmode=require\"",
            &[],
        );
        assert!(shown.contains("sslmode require needs TLS"), "{shown}");
        let env = [
            ("PGHOST", "db"),
            ("PGUSER", "gw"),
            ("PGSSLMODE", "verify-full"),
        ];
        let shown = error("kind = \"postgres\"", &env);
        assert!(shown.contains("sslmode verify-full needs TLS"), "{shown}");
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
