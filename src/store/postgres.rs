//! The PostgreSQL token store: one row per slot in a database that several gateway replicas
//! share (on Databricks Apps, a Lakebase database resource).
//!
//! Table `mcp_gateway_slots` holds, per [`Slot::hash`], the route's name (for people reading
//! the table), the tokens record, the client registration record and when the row last
//! changed. Records are the same JSON the file store writes, sealed the same way when keys are
//! configured ([`Keyring`]), kept as `jsonb`; saving tokens also moves the client record to
//! the current key, only if the row still holds the record that was read.
//!
//! - **Sign-ins in progress.** Table `mcp_gateway_flows` holds each [`StoredFlow`] under the
//!   SHA-256 of its `state` (never the state itself) with its expiry, so that a callback may
//!   land on any replica. The record is sealed like the others, with the state's digest as
//!   the associated data. Taking one deletes it in the same statement (`DELETE … RETURNING`),
//!   so a state works once across all replicas; an expired one is deleted but not returned,
//!   and saving deletes every expired one. Expiry is judged by the database's clock.
//! - **Schema.** [`PostgresStore::open`] applies the numbered [`MIGRATIONS`] that table
//!   `mcp_gateway_schema_version` does not list yet, in order, in one transaction that first
//!   takes a transaction-scoped advisory lock: replicas starting at once apply them once.
//! - **Slot locks.** [`TokenStore::lock`] opens a connection of its own and takes
//!   `pg_advisory_lock` on the slot hash there; the [`SlotLock`] keeps that connection, and
//!   dropping it closes the connection, which frees the lock on the server, as does the death
//!   of the process. Tasks of one process queue on a local mutex first, so one process holds
//!   at most one such connection per slot.
//! - **Connection loss.** Operations share one connection, opened on first use. When it fails
//!   the operation answers [`StoreError::Unreachable`] (or [`StoreError::TimedOut`]), and the
//!   next use connects again; an operation that failed on a connection it found already open
//!   retries once on a new one, since every operation here is idempotent. The loss is logged
//!   once (warn) and the return once (info), not per request.
//! - **Runtime.** Connections are driven by a small runtime of the store's own, since a
//!   connection must outlive whichever runtime first asked for it (start-up loads tokens on a
//!   short-lived one). Queries can be awaited from any runtime.
//! - **Password.** The configured one (URL or `PGPASSWORD`), or, on Databricks Lakebase, an
//!   OAuth token of the app's service principal from [`WorkspaceTokens`], asked for before
//!   every new connection: a login needs a token valid at that moment, while an open
//!   connection outlives it. A login refused with a kept token is tried once more with a new
//!   one. A token that cannot be had fails the connection attempt with
//!   [`StoreError::WorkspaceToken`], and the next attempt asks again.
//! - **TLS.** With `sslmode` `require`, `verify-ca` or `verify-full` the connection uses
//!   rustls and the server's certificate is always verified, host name included, against
//!   the Mozilla roots and the configured `ca_file`: stricter than libpq's `require`, which
//!   checks nothing. Otherwise (`disable`, `prefer`) the connection is plain.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::sealed::{Keyring, RecordKind};
use super::workspace_token::{WorkspaceCredentials, WorkspaceTokens};
use super::{
    Slot, SlotLock, StoreError, StoredClient, StoredFlow, StoredTokens, TokenStore, unix_seconds,
};
use crate::secret::Secret;

/// How long an operation may take before the database counts as unreachable.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for a slot lock: another replica holds it only for one token request.
const LOCK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long start-up waits for the schema to be brought up to date.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(60);
/// The advisory lock key that serialises migrations ("mcpgwmig" in ASCII).
const MIGRATION_LOCK: i64 = 0x6d63_7067_776d_6967;

/// The schema, one step per entry; entry `n` is version `n + 1`. Never edit one that has
/// shipped: add a new one.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE mcp_gateway_slots (
        slot_hash text PRIMARY KEY,
        route text NOT NULL,
        tokens jsonb,
        client jsonb,
        updated_at timestamptz NOT NULL DEFAULT now()
    )",
    "CREATE TABLE mcp_gateway_flows (
        state_digest text PRIMARY KEY,
        route text NOT NULL,
        flow jsonb NOT NULL,
        expires_at timestamptz NOT NULL
    );
    CREATE INDEX mcp_gateway_flows_expiry ON mcp_gateway_flows (expires_at)",
];

/// Saves a sign-in, deleting the expired ones on the way. A state is random enough never to
/// repeat; a retried save finds its own row and leaves it.
const SAVE_FLOW: &str = "WITH expired AS (DELETE FROM mcp_gateway_flows WHERE expires_at <= now())
    INSERT INTO mcp_gateway_flows (state_digest, route, flow, expires_at)
    VALUES ($1, $2, $3::text::jsonb, to_timestamp($4::float8))
    ON CONFLICT (state_digest) DO NOTHING";

/// Takes a sign-in out, whether or not it has expired, and says whether it had.
const TAKE_FLOW: &str = "DELETE FROM mcp_gateway_flows WHERE state_digest = $1
    RETURNING flow::text, expires_at > now()";

/// Where the database is: a connection configuration whose password is never shown.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct PostgresTarget {
    config: tokio_postgres::Config,
    tls: Option<Tls>,
    /// Log in with a workspace OAuth token rather than a password of the config's.
    workspace: Option<WorkspaceCredentials>,
}

/// TLS to the database: the roots its certificate must chain to, besides Mozilla's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tls {
    pub(crate) ca_file: Option<PathBuf>,
}

impl PostgresTarget {
    pub(crate) fn new(mut config: tokio_postgres::Config, tls: Option<Tls>) -> Self {
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives_idle(Duration::from_secs(30))
            .application_name("mcp-u2m-gateway");
        if tls.is_some() {
            config.ssl_mode(SslMode::Require);
        }
        Self {
            config,
            tls,
            workspace: None,
        }
    }

    /// Logs in with an OAuth token of the service principal `credentials` name, fetched
    /// for each new connection, instead of a password.
    pub(crate) fn with_workspace_login(mut self, credentials: WorkspaceCredentials) -> Self {
        self.workspace = Some(credentials);
        self
    }

    /// The service principal whose tokens are the password, when logins use them.
    pub(crate) fn workspace_login(&self) -> Option<&WorkspaceCredentials> {
        self.workspace.as_ref()
    }

    pub(crate) fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The TLS connector, with the roots read now; `None` for a plain connection.
    fn connector(&self) -> Result<Option<MakeRustlsConnect>, StoreError> {
        let Some(tls) = &self.tls else {
            return Ok(None);
        };
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = &tls.ca_file {
            let ca_error = |source| StoreError::CaFile {
                path: path.clone(),
                source,
            };
            for cert in CertificateDer::pem_file_iter(path).map_err(ca_error)? {
                let cert = cert.map_err(ca_error)?;
                roots
                    .add(cert)
                    .map_err(|source| StoreError::Tls { source })?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|source| StoreError::Tls { source })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Some(MakeRustlsConnect::new(config)))
    }

    /// `user@host:port/database`, for messages: no password, whatever the URL held.
    pub(crate) fn describe(&self) -> String {
        let config = &self.config;
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(name)) => name.clone(),
            Some(Host::Unix(dir)) => dir.display().to_string(),
            None => "localhost".to_owned(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().unwrap_or("?");
        let database = config.get_dbname().unwrap_or(user);
        format!("{user}@{host}:{port}/{database}")
    }
}

impl fmt::Debug for PostgresTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresTarget")
            .field("target", &self.describe())
            .field("tls", &self.tls)
            .field("workspace", &self.workspace)
            .finish()
    }
}

/// Whether the shared connection is known to be lost, so loss and return are logged once.
#[derive(Debug)]
struct Health {
    target: String,
    lost: AtomicBool,
}

impl Health {
    fn lost(&self, error: &(dyn std::error::Error + 'static)) {
        if !self.lost.swap(true, Ordering::AcqRel) {
            // tokio-postgres says only "db error" at the top; the server's words are below.
            let cause = error.source().map(ToString::to_string);
            tracing::warn!(store = %self.target, %error, cause,
                "token store database connection lost; store operations fail until it is back");
        }
    }

    fn connected(&self) {
        if self.lost.swap(false, Ordering::AcqRel) {
            tracing::info!(store = %self.target, "token store database reconnected");
        }
    }
}

/// Slots kept as rows of one PostgreSQL database.
pub(crate) struct PostgresStore {
    target: PostgresTarget,
    tls: Option<MakeRustlsConnect>,
    /// Where login tokens come from, when the password is a workspace token.
    workspace: Option<Arc<WorkspaceTokens>>,
    keyring: Keyring,
    health: Arc<Health>,
    /// The shared connection; `None` until first used and after it is lost.
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
    local_locks: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Where connections are driven; `runtime` owns it and is taken only by drop.
    handle: tokio::runtime::Handle,
    runtime: Option<tokio::runtime::Runtime>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.target)
            .field("tls", &self.target.uses_tls())
            .field("workspace_login", &self.workspace.is_some())
            .field("sealed", &!self.keyring.is_empty())
            .finish()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is not allowed inside another runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl PostgresStore {
    /// Connects to the database and brings its schema up to date; fails when the database
    /// cannot be reached or migrated. Blocks the calling thread (it runs at start-up).
    pub(crate) fn open(target: PostgresTarget, keyring: Keyring) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("token-store")
            .enable_all()
            .build()
            .map_err(StoreError::Runtime)?;
        let workspace = match target.workspace.clone() {
            Some(credentials) => Some(Arc::new(WorkspaceTokens::new(credentials).map_err(
                |source| StoreError::WorkspaceToken {
                    target: target.describe(),
                    source: Box::new(source),
                },
            )?)),
            None => None,
        };
        let store = Self {
            tls: target.connector()?,
            workspace,
            health: Arc::new(Health {
                target: target.describe(),
                lost: AtomicBool::new(false),
            }),
            target,
            keyring,
            client: tokio::sync::Mutex::new(None),
            local_locks: parking_lot::Mutex::new(HashMap::new()),
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        };
        // A thread of its own, since blocking on a runtime is refused inside another one.
        let handle = store.handle.clone();
        let migrate = async {
            // Another replica may hold the migration lock; it never needs this long.
            match tokio::time::timeout(MIGRATION_TIMEOUT, store.migrate()).await {
                Ok(migrated) => migrated,
                Err(_) => Err(StoreError::TimedOut {
                    target: store.target_name(),
                    secs: MIGRATION_TIMEOUT.as_secs(),
                }),
            }
        };
        let migrated = std::thread::scope(|scope| scope.spawn(|| handle.block_on(migrate)).join());
        match migrated {
            Ok(result) => result.map(|()| store),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    fn target_name(&self) -> String {
        self.health.target.clone()
    }

    fn timed_out(&self) -> StoreError {
        StoreError::TimedOut {
            target: self.target_name(),
            secs: QUERY_TIMEOUT.as_secs(),
        }
    }

    /// Opens a new connection, driven on the store's runtime.
    async fn connect(&self) -> Result<Client, StoreError> {
        let login = self.login().await?;
        let mut attempt = self.attempt(login.config).await;
        if let (Some(token), Some(Err(source))) = (&login.kept_token, &attempt)
            && refused_login(source)
        {
            // The kept token was refused before its expiry (revoked, or the role's password
            // changed): once more with a new one.
            if let Some(tokens) = &self.workspace {
                tokens.forget(token).await;
            }
            let login = self.login().await?;
            attempt = self.attempt(login.config).await;
        }
        match attempt {
            Some(Ok(client)) => {
                self.health.connected();
                Ok(client)
            }
            Some(Err(source)) => {
                self.health.lost(&source);
                Err(self.classify("connect", source))
            }
            None => Err(self.timed_out()),
        }
    }

    /// One connection attempt; `None` when there was no answer in time.
    async fn attempt(
        &self,
        config: tokio_postgres::Config,
    ) -> Option<Result<Client, tokio_postgres::Error>> {
        let health = Arc::clone(&self.health);
        let connecting = match self.tls.clone() {
            Some(tls) => self.handle.spawn(open_connection(config, tls, health)),
            None => self.handle.spawn(open_connection(config, NoTls, health)),
        };
        match tokio::time::timeout(CONNECT_TIMEOUT * 2, connecting).await {
            Ok(Ok(result)) => Some(result),
            Ok(Err(joined)) if joined.is_panic() => std::panic::resume_unwind(joined.into_panic()),
            // No answer in time, or the task was cancelled because the store is being dropped.
            Ok(Err(_)) | Err(_) => None,
        }
    }

    /// How to log in now: the target's configuration, with a workspace token as the
    /// password when logins use one.
    async fn login(&self) -> Result<Login, StoreError> {
        let mut config = self.target.config.clone();
        let Some(tokens) = &self.workspace else {
            return Ok(Login {
                config,
                kept_token: None,
            });
        };
        // On the store's runtime, like the connections: the HTTP client's pooled
        // connections must not belong to a caller's runtime that may end.
        let tokens = Arc::clone(tokens);
        let asking = self.handle.spawn(async move { tokens.password().await });
        match asking.await {
            Ok(Ok(password)) => {
                config.password(password.token.expose());
                Ok(Login {
                    config,
                    kept_token: password.kept.then_some(password.token),
                })
            }
            Ok(Err(source)) => {
                let error = StoreError::WorkspaceToken {
                    target: self.target_name(),
                    source: Box::new(source),
                };
                self.health.lost(&error);
                Err(error)
            }
            Err(joined) if joined.is_panic() => std::panic::resume_unwind(joined.into_panic()),
            // Cancelled because the store is being dropped.
            Err(_) => Err(self.timed_out()),
        }
    }

    /// The shared connection, opened when there is none or it was closed; also says whether
    /// it was already open (and so may have died unnoticed).
    async fn shared_client(&self) -> Result<(Arc<Client>, bool), StoreError> {
        let mut shared = self.client.lock().await;
        if let Some(client) = shared.as_ref().filter(|client| !client.is_closed()) {
            return Ok((Arc::clone(client), true));
        }
        *shared = None;
        let client = Arc::new(self.connect().await?);
        *shared = Some(Arc::clone(&client));
        Ok((client, false))
    }

    /// Forgets the shared connection if it is still `client`.
    async fn forget(&self, client: &Arc<Client>) {
        let mut shared = self.client.lock().await;
        if shared
            .as_ref()
            .is_some_and(|held| Arc::ptr_eq(held, client))
        {
            *shared = None;
        }
    }

    /// Runs `operation` on the shared connection, with a time limit; retries once on a new
    /// connection when the one it found open turns out to be gone.
    async fn run<T, F, Fut>(&self, action: &'static str, operation: F) -> Result<T, StoreError>
    where
        F: Fn(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        loop {
            let (client, reused) = self.shared_client().await?;
            let error =
                match tokio::time::timeout(QUERY_TIMEOUT, operation(Arc::clone(&client))).await {
                    Ok(Ok(value)) => return Ok(value),
                    Ok(Err(source)) => self.classify(action, source),
                    Err(_) => self.timed_out(),
                };
            if !error.is_unreachable() {
                return Err(error);
            }
            self.forget(&client).await;
            if !reused {
                self.health.lost(&error);
                return Err(error);
            }
        }
    }

    /// A failed operation as a [`StoreError`]: a lost connection, or a refusal.
    fn classify(&self, action: &'static str, source: tokio_postgres::Error) -> StoreError {
        let target = self.target_name();
        // Classes 08 (connection exception) and 57 (operator intervention: a shutdown or a
        // restart) mean the server went away, not that it refused this operation.
        let gone = match source.code() {
            None => true,
            Some(code) => code.code().starts_with("08") || code.code().starts_with("57"),
        };
        if gone {
            StoreError::Unreachable { target, source }
        } else {
            StoreError::Database {
                target,
                action,
                source,
            }
        }
    }

    /// Applies the migrations this database lacks, on a connection of its own.
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.connect().await?;
        let fail = |action| move |source| self.classify(action, source);
        let transaction = client
            .transaction()
            .await
            .map_err(fail("begin a transaction"))?;
        transaction
            .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(fail("take the schema migration lock"))?;
        transaction
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS mcp_gateway_schema_version (
                    version integer PRIMARY KEY,
                    applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await
            .map_err(fail("create the schema version table"))?;
        let row = transaction
            .query_one(
                "SELECT coalesce(max(version), 0) FROM mcp_gateway_schema_version",
                &[],
            )
            .await
            .map_err(fail("read the schema version"))?;
        let current: i32 = row.get(0);
        let known = MIGRATIONS.len() as i32;
        if current > known {
            return Err(StoreError::SchemaTooNew {
                target: self.target_name(),
                found: current,
                known,
            });
        }
        for (version, sql) in (1..).zip(MIGRATIONS).skip(current as usize) {
            transaction
                .batch_execute(sql)
                .await
                .map_err(fail("apply a schema migration"))?;
            transaction
                .execute(
                    "INSERT INTO mcp_gateway_schema_version (version) VALUES ($1)",
                    &[&version],
                )
                .await
                .map_err(fail("record a schema migration"))?;
            tracing::info!(store = %self.health.target, version, "token store schema migrated");
        }
        transaction
            .commit()
            .await
            .map_err(fail("commit the schema migrations"))
    }

    fn record_name(&self, slot: &Slot, kind: RecordKind) -> String {
        format!(
            "{} of slot {} in {}",
            kind.as_str(),
            slot.hash(),
            self.health.target
        )
    }

    /// The record as stored (sealed or not), when the slot has one.
    async fn load_text(&self, hash: &str, kind: RecordKind) -> Result<Option<String>, StoreError> {
        let query = match kind {
            RecordKind::Tokens => "SELECT tokens::text FROM mcp_gateway_slots WHERE slot_hash = $1",
            RecordKind::Client => "SELECT client::text FROM mcp_gateway_slots WHERE slot_hash = $1",
        };
        let row = self
            .run("read a slot", |client| {
                let hash = hash.to_owned();
                async move { client.query_opt(query, &[&hash]).await }
            })
            .await?;
        Ok(row.and_then(|row| row.get::<_, Option<String>>(0)))
    }

    async fn load<T: DeserializeOwned>(
        &self,
        slot: &Slot,
        kind: RecordKind,
    ) -> Result<Option<T>, StoreError> {
        let hash = slot.hash();
        let Some(text) = self.load_text(&hash, kind).await? else {
            return Ok(None);
        };
        let record = || self.record_name(slot, kind);
        let plain = self
            .keyring
            .open(&hash, kind, text.as_bytes())
            .map_err(|source| StoreError::sealed(record(), source))?;
        serde_json::from_slice(&plain)
            .map(Some)
            .map_err(|error| StoreError::Unreadable {
                record: record(),
                reason: super::describe(&error),
            })
    }

    /// Moves the slot's client registration to the current key when it is under another:
    /// it is rewritten only when a client registers, so without this an old key could never
    /// be retired. Best effort: on failure the record stays readable under its old key.
    async fn reseal_client(&self, slot: &Slot) {
        if self.keyring.is_empty() {
            return;
        }
        if let Err(error) = self.try_reseal_client(slot).await {
            tracing::warn!(route = %slot.route, %error,
                "client registration not moved to the current store key; its old key still opens it");
        }
    }

    async fn try_reseal_client(&self, slot: &Slot) -> Result<(), StoreError> {
        let hash = slot.hash();
        let Some(text) = self.load_text(&hash, RecordKind::Client).await? else {
            return Ok(());
        };
        let resealed = self
            .keyring
            .reseal(&hash, RecordKind::Client, text.as_bytes())
            .map_err(|source| {
                StoreError::sealed(self.record_name(slot, RecordKind::Client), source)
            })?;
        let Some(resealed) = resealed else {
            return Ok(());
        };
        let resealed = String::from_utf8_lossy(&resealed).into_owned();

        // Only over the record that was read: a registration written meanwhile is newer.
        self.run("reseal a client registration", |client| {
            let params = (
                hash.clone(),
                RecordText(resealed.clone()),
                RecordText(text.clone()),
            );
            async move {
                client
                    .execute(
                        "UPDATE mcp_gateway_slots SET client = $2::text::jsonb, updated_at = now()
                         WHERE slot_hash = $1 AND client = $3::text::jsonb",
                        &[&params.0, &params.1, &params.2],
                    )
                    .await
            }
        })
        .await
        .map(drop)
    }

    async fn save<T: Serialize>(
        &self,
        slot: &Slot,
        kind: RecordKind,
        record: &T,
    ) -> Result<(), StoreError> {
        let hash = slot.hash();
        let sealed =
            self.keyring
                .seal(&hash, kind, record)
                .map_err(|source| StoreError::Serialize {
                    record: self.record_name(slot, kind),
                    source,
                })?;
        // Serialised JSON is UTF-8; the database parses it again as jsonb.
        let text = RecordText(String::from_utf8_lossy(&sealed).into_owned());
        let statement = match kind {
            RecordKind::Tokens => {
                "INSERT INTO mcp_gateway_slots (slot_hash, route, tokens) VALUES ($1, $2, $3::text::jsonb)
                 ON CONFLICT (slot_hash) DO UPDATE
                 SET route = excluded.route, tokens = excluded.tokens, updated_at = now()"
            }
            RecordKind::Client => {
                "INSERT INTO mcp_gateway_slots (slot_hash, route, client) VALUES ($1, $2, $3::text::jsonb)
                 ON CONFLICT (slot_hash) DO UPDATE
                 SET route = excluded.route, client = excluded.client, updated_at = now()"
            }
        };
        self.run("write a slot", |client| {
            let params = (hash.clone(), slot.route.clone(), RecordText(text.0.clone()));
            async move {
                client
                    .execute(statement, &[&params.0, &params.1, &params.2])
                    .await
            }
        })
        .await
        .map(drop)
    }

    fn flow_record_name(&self) -> String {
        format!("sign-in in progress in {}", self.health.target)
    }

    /// A taken sign-in's record, opened and parsed.
    fn open_flow(&self, state_digest: &str, text: &str) -> Result<StoredFlow, StoreError> {
        let plain = self
            .keyring
            .open_flow(state_digest, text.as_bytes())
            .map_err(|source| StoreError::sealed(self.flow_record_name(), source))?;
        serde_json::from_slice(&plain).map_err(|error| StoreError::Unreadable {
            record: self.flow_record_name(),
            reason: super::describe(&error),
        })
    }

    fn local_lock(&self, hash: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.local_locks.lock();

        // Forget slots nobody holds or waits for, so per-user slots do not pile up.
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks.entry(hash.to_owned()).or_default().clone()
    }
}

#[async_trait]
impl TokenStore for PostgresStore {
    async fn load_tokens(&self, slot: &Slot) -> Result<Option<StoredTokens>, StoreError> {
        self.load(slot, RecordKind::Tokens).await
    }

    async fn save_tokens(&self, slot: &Slot, tokens: &StoredTokens) -> Result<(), StoreError> {
        self.save(slot, RecordKind::Tokens, tokens).await?;
        self.reseal_client(slot).await;
        Ok(())
    }

    async fn load_client(&self, slot: &Slot) -> Result<Option<StoredClient>, StoreError> {
        self.load(slot, RecordKind::Client).await
    }

    async fn save_client(&self, slot: &Slot, client: &StoredClient) -> Result<(), StoreError> {
        self.save(slot, RecordKind::Client, client).await
    }

    async fn clear(&self, slot: &Slot, with_client: bool) -> Result<(), StoreError> {
        let statement = if with_client {
            "DELETE FROM mcp_gateway_slots WHERE slot_hash = $1"
        } else {
            "UPDATE mcp_gateway_slots SET tokens = NULL, updated_at = now() WHERE slot_hash = $1"
        };
        let hash = slot.hash();
        self.run("clear a slot", |client| {
            let hash = hash.clone();
            async move { client.execute(statement, &[&hash]).await }
        })
        .await
        .map(drop)
    }

    async fn lock(&self, slot: &Slot) -> Result<SlotLock, StoreError> {
        let hash = slot.hash();
        let local = self.local_lock(&hash).lock_owned().await;
        let client = self.connect().await?;
        let key = advisory_key(&hash);
        let params: [&(dyn ToSql + Sync); 1] = [&key];
        let locking = client.execute("SELECT pg_advisory_lock($1)", &params);
        match tokio::time::timeout(LOCK_TIMEOUT, locking).await {
            Ok(Ok(_)) => Ok(SlotLock::new(HeldLock {
                _client: client,
                _local: local,
            })),
            Ok(Err(source)) => Err(self.classify("lock a slot", source)),
            Err(_) => Err(StoreError::TimedOut {
                target: self.target_name(),
                secs: LOCK_TIMEOUT.as_secs(),
            }),
        }
    }

    /// Yes: every replica on this database sees the sign-ins the others started.
    fn is_shared(&self) -> bool {
        true
    }

    async fn save_flow(
        &self,
        state_digest: &str,
        flow: &StoredFlow,
        expires_at: SystemTime,
    ) -> Result<(), StoreError> {
        let sealed = self
            .keyring
            .seal_flow(state_digest, flow)
            .map_err(|source| StoreError::Serialize {
                record: self.flow_record_name(),
                source,
            })?;
        let text = String::from_utf8_lossy(&sealed).into_owned();
        let expires_at = unix_seconds(expires_at);
        self.run("save a sign-in in progress", |client| {
            let params = (
                state_digest.to_owned(),
                flow.route.clone(),
                RecordText(text.clone()),
            );
            async move {
                client
                    .execute(SAVE_FLOW, &[&params.0, &params.1, &params.2, &expires_at])
                    .await
            }
        })
        .await
        .map(drop)
    }

    async fn take_flow(&self, state_digest: &str) -> Result<Option<StoredFlow>, StoreError> {
        let row = self
            .run("take a sign-in in progress", |client| {
                let digest = state_digest.to_owned();
                async move { client.query_opt(TAKE_FLOW, &[&digest]).await }
            })
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let (text, live): (String, bool) = (row.get(0), row.get(1));
        if !live {
            return Ok(None);
        }
        self.open_flow(state_digest, &text).map(Some)
    }
}

/// A connection configuration ready to log in, and the workspace token in it when that
/// token was a kept one (which a refused login then discards).
struct Login {
    config: tokio_postgres::Config,
    kept_token: Option<Secret>,
}

/// Whether the server refused the login itself (a wrong or expired password).
fn refused_login(error: &tokio_postgres::Error) -> bool {
    error.code().is_some_and(|code| {
        *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
    })
}

/// A slot lock held by this store: the connection holding the advisory lock (closing it
/// frees the lock on the server), then the in-process mutex.
struct HeldLock {
    _client: Client,
    _local: tokio::sync::OwnedMutexGuard<()>,
}

/// Connects, and drives the connection on the current runtime until it ends.
async fn open_connection<T>(
    config: tokio_postgres::Config,
    tls: T,
    health: Arc<Health>,
) -> Result<Client, tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, connection) = config.connect(tls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            health.lost(&error);
        }
    });
    Ok(client)
}

/// A record as a query parameter. tokio-postgres logs parameters with `Debug` at debug
/// level; this one prints nothing of the record, which may hold plain tokens.
struct RecordText(String);

impl fmt::Debug for RecordText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[record]")
    }
}

impl ToSql for RecordText {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        self.0.to_sql(ty, out)
    }

    fn accepts(ty: &Type) -> bool {
        <String as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

/// The advisory lock key of a slot: its hash's 64 bits, which is as unique as slots are.
fn advisory_key(hash: &str) -> i64 {
    u64::from_str_radix(hash, 16).map_or(0, |bits| bits as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> PostgresTarget {
        PostgresTarget::new(url.parse().expect("a connection url"), None)
    }

    #[test]
    fn a_target_is_shown_without_its_password() {
        let target = target("postgres://gw:hunter2-SECRET@db.internal:6543/tokens");
        let shown = format!("{} {target:?}", target.describe());
        assert!(shown.contains("gw@db.internal:6543/tokens"), "{shown}");
        assert!(!shown.contains("SECRET"), "{shown}");
    }

    #[test]
    fn a_target_with_a_workspace_login_shows_no_client_secret() {
        let credentials = WorkspaceCredentials {
            endpoint: "https://adb-1.azuredatabricks.net/oidc/v1/token"
                .parse()
                .expect("url"),
            client_id: "sp-id".into(),
            client_secret: crate::secret::Secret::new("dose-SECRET"),
        };
        let target = target("postgres://sp-id@instance.database.example/db")
            .with_workspace_login(credentials);
        let shown = format!("{target:?}");
        assert!(
            shown.contains("sp-id") && shown.contains("oidc/v1/token"),
            "{shown}"
        );
        assert!(!shown.contains("SECRET"), "{shown}");
    }

    #[test]
    fn a_unix_socket_target_names_its_directory() {
        let target = target("postgresql://gw@%2Frun%2Fpostgresql/tokens");
        assert_eq!(target.describe(), "gw@/run/postgresql:5432/tokens");
    }

    #[test]
    fn record_parameters_debug_print_nothing_of_the_record() {
        let shown = format!(
            "{:?}",
            RecordText(r#"{"access_token": "at-SECRET"}"#.into())
        );
        assert_eq!(shown, "[record]");
    }

    #[test]
    fn advisory_keys_are_the_slot_hash_bits() {
        assert_eq!(advisory_key("0000000000000001"), 1);
        assert_eq!(advisory_key("ffffffffffffffff"), -1);
        let slot = Slot::new("a", "https://mcp.atlassian.com/v1", None);
        assert_ne!(advisory_key(&slot.hash()), 0);
    }

    #[test]
    fn migrations_are_numbered_from_one_in_order() {
        let versions: Vec<i32> = (1..).zip(MIGRATIONS).map(|(v, _)| v).collect();
        assert_eq!(versions.first(), Some(&1));
        assert_eq!(versions.len(), MIGRATIONS.len());
    }
}
