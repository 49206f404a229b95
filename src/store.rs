//! The token store: where each slot keeps its OAuth tokens and its client registration.
//!
//! A slot is one route's upstream and, for a route in per-user mode, one principal. The OAuth
//! flow writes a slot when a person signs in (first the dynamic client registration, then the
//! tokens from the code exchange); the refresher reads it, refreshes ahead of expiry and writes
//! the new tokens back while holding the slot's [`SlotLock`], so that two gateway processes
//! sharing one store never spend the same refresh token. The admin commands clear slots.
//!
//! Replicas sharing a store also share the sign-ins in progress ([`StoredFlow`]), so that a
//! callback the load balancer sends to another replica than the one that started the sign-in
//! still finds it.
//!
//! [`TokenStore`] is what those callers see; [`FileStore`] keeps slots as JSON files in a
//! private directory, in the layout of the Python proxy this gateway replaces, so sign-ins made
//! there keep working; [`PostgresStore`] keeps them as rows of a PostgreSQL database that
//! several gateway replicas share. Either seals its records when `[store] encryption_keys` is
//! set ([`Keyring`]). Records read from disk accept that proxy's older shapes (an ISO-8601
//! `expires_at`, a registration response with fields of its own) and are always written back in
//! the current one.

mod file;
mod postgres;
mod sealed;
mod workspace_token;

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::secret::Secret;
use crate::token::AccessToken;

pub(crate) use file::FileStore;
pub(crate) use postgres::{PostgresStore, PostgresTarget, Tls as PostgresTls};
pub use sealed::{KeyError, SealError};
pub(crate) use sealed::{KeyMaterial, Keyring, StoreKey};
pub use workspace_token::WorkspaceTokenError;
pub(crate) use workspace_token::{WorkspaceCredentials, WorkspaceHostError};

/// Which slot: a route's upstream and, in per-user mode, whose tokens.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Slot {
    /// The route's name, for log lines; it takes no part in where the slot is stored.
    pub(crate) route: String,
    /// The upstream URL exactly as configured.
    pub(crate) upstream: String,
    /// The signed-in user in per-user mode; `None` for a route's single shared slot.
    pub(crate) principal: Option<String>,
}

impl Slot {
    pub(crate) fn new(
        route: impl Into<String>,
        upstream: impl Into<String>,
        principal: Option<String>,
    ) -> Self {
        Self {
            route: route.into(),
            upstream: upstream.into(),
            principal,
        }
    }

    /// The slot's name in the store: the first 16 hex digits of SHA-256 of the upstream URL,
    /// as the Python proxy named its files; a per-user slot hashes `upstream + "\n" + principal`.
    pub(crate) fn hash(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.upstream.as_bytes());
        if let Some(principal) = &self.principal {
            hasher.update(b"\n");
            hasher.update(principal.as_bytes());
        }
        hasher.finalize()[..8]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

/// A slot's tokens, as the token endpoint issued them.
///
/// `Debug` shows neither token. Reading also accepts the Python proxy's token file: an
/// ISO-8601 `expires_at`, or only `expires_in` beside an issue time; writing always uses Unix
/// seconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(from = "TokenFile")]
pub(crate) struct StoredTokens {
    pub(crate) access_token: AccessToken,
    pub(crate) token_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) refresh_token: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) scope: Option<String>,
    /// Absolute expiry, Unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) expires_at: Option<f64>,
    /// When these tokens were obtained, Unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) issued_at: Option<f64>,
}

impl StoredTokens {
    /// Time left before expiry: `None` when the expiry is unknown, zero once it has passed.
    pub(crate) fn expires_in(&self, now: SystemTime) -> Option<Duration> {
        let left = self.expires_at? - unix_seconds(now);
        Some(match Duration::try_from_secs_f64(left) {
            Ok(left) => left,
            Err(_) if left > 0.0 => Duration::MAX,
            Err(_) => Duration::ZERO,
        })
    }

    /// Whether the access token has expired; a token without a known expiry never has.
    pub(crate) fn is_expired(&self, now: SystemTime) -> bool {
        self.expires_in(now) == Some(Duration::ZERO)
    }

    /// Whether the access token expires within `margin` of `now`.
    pub(crate) fn expires_within(&self, now: SystemTime, margin: Duration) -> bool {
        self.expires_in(now).is_some_and(|left| left <= margin)
    }

    /// The access token's whole lifetime, when both its issue and expiry times are known.
    pub(crate) fn lifetime(&self) -> Option<Duration> {
        Duration::try_from_secs_f64(self.expires_at? - self.issued_at?).ok()
    }
}

/// A token file as found on disk, before the older shapes are normalised.
#[derive(Deserialize)]
struct TokenFile {
    access_token: AccessToken,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    refresh_token: Option<Secret>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    expires_at: Option<Value>,
    #[serde(default)]
    expires_in: Option<Value>,
    #[serde(default)]
    issued_at: Option<Value>,
}

impl From<TokenFile> for StoredTokens {
    fn from(file: TokenFile) -> Self {
        let issued_at = file
            .issued_at
            .and_then(|value| timestamp("issued_at", &value));
        let lifetime = file.expires_in.as_ref().and_then(number);
        let expires_at = match file.expires_at {
            Some(value) => timestamp("expires_at", &value),
            None => issued_at.zip(lifetime).map(|(issued, life)| issued + life),
        };
        Self {
            access_token: file.access_token,
            token_type: file.token_type.unwrap_or_else(|| "Bearer".to_owned()),
            refresh_token: file.refresh_token,
            scope: file.scope,
            expires_at,
            issued_at,
        }
    }
}

/// Unix seconds of `time`, negative before 1970.
pub(crate) fn unix_seconds(time: SystemTime) -> f64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    }
}

/// A number, or a string holding one (some servers send `"expires_in": "3600"`).
fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

/// A timestamp as Unix seconds or as an ISO-8601 string.
///
/// One that cannot be read counts as unknown rather than making the whole record unreadable:
/// the refresh token beside it is still good.
fn timestamp(field: &'static str, value: &Value) -> Option<f64> {
    if value.is_null() {
        return None;
    }
    let seconds = number(value).or_else(|| value.as_str().and_then(parse_iso8601));
    if seconds.is_none() {
        tracing::warn!(
            field,
            "token file timestamp not understood; treating it as unknown"
        );
    }
    seconds
}

/// Parses the Python proxy's `datetime.isoformat()` output; without an offset it is UTC.
fn parse_iso8601(text: &str) -> Option<f64> {
    use time::format_description::well_known::Iso8601;
    use time::{OffsetDateTime, PrimitiveDateTime};

    // `str(datetime)` writes a space where ISO 8601 wants a `T`.
    let text = text.trim();
    let text = match text.as_bytes().get(10) {
        Some(b' ') => format!("{}T{}", &text[..10], &text[11..]),
        _ => text.to_owned(),
    };
    let moment = OffsetDateTime::parse(&text, &Iso8601::DEFAULT)
        .or_else(|_| PrimitiveDateTime::parse(&text, &Iso8601::DEFAULT).map(|t| t.assume_utc()))
        .ok()?;
    Some(moment.unix_timestamp_nanos() as f64 / 1e9)
}

/// Why a record did not parse, without quoting it: its values may be tokens.
pub(crate) fn describe(error: &serde_json::Error) -> String {
    use serde_json::error::Category;

    let at = format!("line {} column {}", error.line(), error.column());
    match error.classify() {
        Category::Eof => format!("it ends early, at {at}"),
        Category::Syntax => format!("it is not valid JSON, at {at}"),
        Category::Io => "it could not be read".to_owned(),
        Category::Data => {
            // serde's own words name the field for these two and quote no value.
            let message = error.to_string();
            if message.starts_with("missing field") || message.starts_with("duplicate field") {
                message
            } else {
                format!("a field has a value of the wrong type, at {at}")
            }
        }
    }
}

/// A slot's OAuth client, from dynamic client registration (RFC 7591).
///
/// `Debug` shows the client id and the names of the other fields, never their values (a
/// registration response may carry a `registration_access_token`).
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct StoredClient {
    pub(crate) client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) client_secret: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) client_secret_expires_at: Option<u64>,
    #[serde(default)]
    pub(crate) redirect_uris: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) token_endpoint_auth_method: Option<String>,
    /// The authorization server (issuer) this client was registered with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) issuer: Option<String>,
    /// Every other field of the registration response, kept as received.
    #[serde(flatten)]
    pub(crate) extra: Map<String, Value>,
}

impl fmt::Debug for StoredClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredClient")
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("client_secret_expires_at", &self.client_secret_expires_at)
            .field("redirect_uris", &self.redirect_uris)
            .field(
                "token_endpoint_auth_method",
                &self.token_endpoint_auth_method,
            )
            .field("issuer", &self.issuer)
            .field("extra_fields", &self.extra.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A sign-in in progress, as a replica that did not start it needs it to finish it: which
/// route (and, on a per-user route, whose), the PKCE verifier, the client and endpoints it
/// was started with, and the value of the cookie that binds it to the browser.
///
/// `Debug` shows neither the verifier, nor the cookie value, nor the principal.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct StoredFlow {
    pub(crate) route: String,
    /// The route's upstream as configured when the sign-in started.
    pub(crate) upstream: String,
    /// Who started it, on a per-user route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) principal: Option<String>,
    pub(crate) verifier: Secret,
    pub(crate) client: StoredClient,
    pub(crate) authorization_endpoint: String,
    pub(crate) token_endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) resource: Option<String>,
    pub(crate) issuer: String,
    pub(crate) issuer_in_responses: bool,
    /// The binding cookie's value.
    pub(crate) browser: Secret,
    /// When the sign-in started, Unix seconds.
    pub(crate) started_at: u64,
}

impl fmt::Debug for StoredFlow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredFlow")
            .field("route", &self.route)
            .field("upstream", &self.upstream)
            .field("per_user", &self.principal.is_some())
            .field("verifier", &self.verifier)
            .field("client", &self.client)
            .field("authorization_endpoint", &self.authorization_endpoint)
            .field("token_endpoint", &self.token_endpoint)
            .field("resource", &self.resource)
            .field("issuer", &self.issuer)
            .field("issuer_in_responses", &self.issuer_in_responses)
            .field("browser", &self.browser)
            .field("started_at", &self.started_at)
            .finish()
    }
}

/// Why the store could not load or save a slot. No variant ever holds a token.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("token store i/o failed on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "token store file {path} is unreadable ({reason}); it was kept aside as {kept_as} \
         and this slot needs a new sign-in"
    )]
    Corrupt {
        path: PathBuf,
        kept_as: PathBuf,
        reason: String,
    },
    #[error(
        "token store directory {path} is writable by other users (mode {mode:03o}); \
         run `chmod 700 {path}` and start again"
    )]
    InsecureDirectory { path: PathBuf, mode: u32 },
    #[error("cannot serialise the record for {record}")]
    Serialize {
        record: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "token store record {record} is sealed with encryption key `{key_id}`, which is not \
         configured: add that key to [store] encryption_keys"
    )]
    KeyMissing { record: String, key_id: String },
    #[error(
        "token store record {record} cannot be opened; check [store] encryption_keys, or sign \
         in again to replace it"
    )]
    Unsealable {
        record: String,
        #[source]
        source: SealError,
    },
    #[error("token store record {record} is unreadable ({reason}); this slot needs a new sign-in")]
    Unreadable { record: String, reason: String },
    #[error("token store database {target} is unreachable; the next use connects again")]
    Unreachable {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "token store database {target} did not answer within {secs} s; check that it runs \
         (the next use tries again)"
    )]
    TimedOut { target: String, secs: u64 },
    #[error(
        "token store database {target} has schema version {found}, newer than this gateway \
         knows ({known}); run the newer gateway, or point this one at another database"
    )]
    SchemaTooNew {
        target: String,
        found: i32,
        known: i32,
    },
    #[error("cannot read the token store database's CA file {path}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("cannot set up TLS for the token store database")]
    Tls {
        #[source]
        source: rustls::Error,
    },
    #[error("cannot start the token store's connection runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot get a workspace OAuth token to log in to token store database {target}")]
    WorkspaceToken {
        target: String,
        /// Boxed: its messages are long, and store errors travel in every `Result` here.
        #[source]
        source: Box<WorkspaceTokenError>,
    },
    #[error("token store database {target} refused to {action}")]
    Database {
        target: String,
        action: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl StoreError {
    /// A sealed record that did not open: a missing key gets a variant of its own, whose
    /// message says which key to configure.
    pub(crate) fn sealed(record: String, source: SealError) -> Self {
        match source {
            SealError::MissingKey { key_id } => StoreError::KeyMissing { record, key_id },
            source => StoreError::Unsealable { record, source },
        }
    }

    /// Whether the store could not be reached at all, rather than refusing or failing.
    pub(crate) fn is_unreachable(&self) -> bool {
        matches!(
            self,
            StoreError::Unreachable { .. } | StoreError::TimedOut { .. }
        )
    }
}

/// An exclusive hold on one slot, across every process sharing the store; released on drop.
pub(crate) struct SlotLock {
    _held: Box<dyn std::any::Any + Send + Sync>,
}

impl SlotLock {
    /// Wraps whatever a store needs to keep alive for the hold to last.
    pub(crate) fn new(held: impl std::any::Any + Send + Sync) -> Self {
        Self {
            _held: Box::new(held),
        }
    }
}

impl fmt::Debug for SlotLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SlotLock")
    }
}

/// Where slots live. Loads of an empty slot answer `Ok(None)`.
#[async_trait]
pub(crate) trait TokenStore: Send + Sync + fmt::Debug {
    async fn load_tokens(&self, slot: &Slot) -> Result<Option<StoredTokens>, StoreError>;

    /// Replaces the slot's tokens; a reader sees the old record or the new, never a mix.
    async fn save_tokens(&self, slot: &Slot, tokens: &StoredTokens) -> Result<(), StoreError>;

    async fn load_client(&self, slot: &Slot) -> Result<Option<StoredClient>, StoreError>;

    /// Replaces the slot's client registration, as atomically as [`TokenStore::save_tokens`].
    async fn save_client(&self, slot: &Slot, client: &StoredClient) -> Result<(), StoreError>;

    /// Removes the slot's tokens and, with `with_client`, its client registration.
    async fn clear(&self, slot: &Slot, with_client: bool) -> Result<(), StoreError>;

    /// Waits for an exclusive lock on the slot, shared by every task and process using this
    /// store, held while the guard lives. Refreshes take it so a refresh token is spent once.
    async fn lock(&self, slot: &Slot) -> Result<SlotLock, StoreError>;

    /// Whether other gateway processes use this store too: they then see the sign-ins in
    /// progress saved here, so that a callback may land on any of them, and the tokens any
    /// of them saves.
    fn is_shared(&self) -> bool;

    /// Keeps a sign-in in progress, under a digest of its `state` (never the state itself),
    /// until `expires_at`. A store no other process shares keeps nothing: sign-ins then live
    /// in the memory of the process that started them.
    async fn save_flow(
        &self,
        state_digest: &str,
        flow: &StoredFlow,
        expires_at: SystemTime,
    ) -> Result<(), StoreError>;

    /// Removes the sign-in saved under `state_digest` and returns it unless it has expired;
    /// of any number of callers, in any process, one at most gets it.
    async fn take_flow(&self, state_digest: &str) -> Result<Option<StoredFlow>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    const ATLASSIAN: &str = "https://mcp.atlassian.com/v1";

    fn tokens_from(json: &str) -> StoredTokens {
        serde_json::from_str(json).expect("token file parses")
    }

    #[test]
    fn slot_hash_matches_the_python_proxy_layout() {
        let slot = Slot::new("atlassian", ATLASSIAN, None);
        let digest = Sha256::digest(ATLASSIAN.as_bytes());
        let expected: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(slot.hash(), expected[..16]);
        // `printf %s https://mcp.atlassian.com/v1 | sha256sum | cut -c1-16`
        assert_eq!(slot.hash(), "3fd85590b9b16938");
    }

    #[test]
    fn per_principal_slots_hash_apart() {
        let shared = Slot::new("a", ATLASSIAN, None).hash();
        let alice = Slot::new("a", ATLASSIAN, Some("alice@example.com".into())).hash();
        let bob = Slot::new("a", ATLASSIAN, Some("bob@example.com".into())).hash();
        assert_eq!(alice.len(), 16);
        assert!(shared != alice && shared != bob && alice != bob);
        let digest = Sha256::digest(format!("{ATLASSIAN}\nalice@example.com").as_bytes());
        let expected: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(alice, expected[..16]);
    }

    #[test]
    fn python_token_file_with_naive_iso_expiry_loads_as_utc() {
        let tokens = tokens_from(
            r#"{"access_token": "at-1", "token_type": "Bearer", "expires_in": 3600,
                "scope": "read:jira-work", "refresh_token": "rt-1",
                "expires_at": "2025-06-01T12:00:00.123456", "obtained_by": "proxy"}"#,
        );
        assert_eq!(tokens.access_token.secret(), "at-1");
        assert_eq!(
            tokens.refresh_token.as_ref().map(Secret::expose),
            Some("rt-1")
        );
        assert_eq!(tokens.scope.as_deref(), Some("read:jira-work"));
        let expires_at = tokens.expires_at.expect("expiry");
        assert!(
            (expires_at - 1_748_779_200.123_456).abs() < 1e-5,
            "{expires_at}"
        );
    }

    #[test]
    fn iso_expiry_without_fraction_or_with_offset_loads() {
        let cases = [
            ("2025-06-01T12:00:00", 1_748_779_200.0),
            ("2025-06-01T12:00:00Z", 1_748_779_200.0),
            ("2025-06-01T12:00:00+02:00", 1_748_772_000.0),
            ("2025-06-01T12:00:00.5+00:00", 1_748_779_200.5),
            ("2025-06-01 12:00:00.250000", 1_748_779_200.25),
        ];
        for (text, expected) in cases {
            let json = format!(r#"{{"access_token": "at", "expires_at": "{text}"}}"#);
            let expires_at = tokens_from(&json).expires_at.expect(text);
            assert!((expires_at - expected).abs() < 1e-6, "{text}: {expires_at}");
        }
    }

    #[test]
    fn expiry_is_derived_from_expires_in_and_issue_time() {
        let tokens =
            tokens_from(r#"{"access_token": "at", "expires_in": 3600, "issued_at": 1000}"#);
        assert_eq!(tokens.expires_at, Some(4600.0));
        let iso =
            r#"{"access_token": "at", "expires_in": "60", "issued_at": "1970-01-01T00:00:10Z"}"#;
        assert_eq!(tokens_from(iso).expires_at, Some(70.0));
        let no_issue_time = tokens_from(r#"{"access_token": "at", "expires_in": 3600}"#);
        assert_eq!(no_issue_time.expires_at, None);
    }

    #[test]
    fn unreadable_expiry_counts_as_unknown_and_keeps_the_record() {
        let tokens = tokens_from(
            r#"{"access_token": "at", "refresh_token": "rt", "expires_at": "next tuesday"}"#,
        );
        assert_eq!(tokens.expires_at, None);
        assert!(tokens.refresh_token.is_some());
    }

    #[test]
    fn tokens_are_written_with_numeric_expiry_and_default_bearer_type() {
        let tokens = tokens_from(r#"{"access_token": "at", "expires_at": "1970-01-01T00:01:40Z"}"#);
        assert_eq!(tokens.token_type, "Bearer");
        let written = serde_json::to_value(&tokens).expect("serialise");
        assert_eq!(written["expires_at"], serde_json::json!(100.0));
        assert_eq!(written["access_token"], "at");
        assert!(written.get("refresh_token").is_none());
        let again: StoredTokens = serde_json::from_value(written).expect("reads back");
        assert_eq!(again.expires_at, Some(100.0));
    }

    #[test]
    fn expiry_arithmetic_counts_down_to_zero() {
        let tokens = tokens_from(r#"{"access_token": "at", "expires_at": 1000}"#);
        let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(tokens.expires_in(at(400)), Some(Duration::from_secs(600)));
        assert!(!tokens.is_expired(at(999)));
        assert_eq!(tokens.expires_in(at(1000)), Some(Duration::ZERO));
        assert!(tokens.is_expired(at(5000)));
        let unknown = tokens_from(r#"{"access_token": "at"}"#);
        assert_eq!(unknown.expires_in(at(5000)), None);
        assert!(!unknown.is_expired(at(5000)));
    }

    #[test]
    fn python_client_registration_loads_and_keeps_its_other_fields() {
        let client: StoredClient = serde_json::from_str(
            r#"{"client_id": "cid-1", "client_secret": null,
                "redirect_uris": ["http://localhost:8080/oauth/callback"],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"], "client_name": "MCP proxy",
                "client_id_issued_at": 1748779200}"#,
        )
        .expect("client file parses");
        assert_eq!(client.client_id, "cid-1");
        assert!(client.client_secret.is_none());
        assert_eq!(client.token_endpoint_auth_method.as_deref(), Some("none"));
        assert_eq!(client.extra["client_name"], "MCP proxy");
        let written = serde_json::to_value(&client).expect("serialise");
        assert_eq!(written["grant_types"][1], "refresh_token");
        assert_eq!(written["client_id_issued_at"], 1_748_779_200);
    }

    fn flow() -> StoredFlow {
        StoredFlow {
            route: "up".into(),
            upstream: ATLASSIAN.into(),
            principal: Some("alice@example.com".into()),
            verifier: Secret::new("verifier-SECRET"),
            client: serde_json::from_str(r#"{"client_id": "cid", "client_secret": "cs-SECRET"}"#)
                .expect("client parses"),
            authorization_endpoint: "https://as.example/authorize".into(),
            token_endpoint: "https://as.example/token".into(),
            resource: Some(ATLASSIAN.into()),
            issuer: "https://as.example".into(),
            issuer_in_responses: true,
            browser: Secret::new("cookie-SECRET"),
            started_at: 1_748_779_200,
        }
    }

    #[test]
    fn a_stored_flow_reads_back_as_written() {
        let written = serde_json::to_string(&flow()).expect("serialise");
        let read: StoredFlow = serde_json::from_str(&written).expect("reads back");
        assert_eq!(read.verifier.expose(), "verifier-SECRET");
        assert_eq!(read.browser.expose(), "cookie-SECRET");
        assert_eq!(read.principal.as_deref(), Some("alice@example.com"));
        assert_eq!(
            read.client.client_secret.as_ref().map(Secret::expose),
            Some("cs-SECRET")
        );
        assert_eq!(
            (read.route.as_str(), read.upstream.as_str()),
            ("up", ATLASSIAN)
        );
        assert_eq!(read.token_endpoint, "https://as.example/token");
        assert_eq!(read.resource.as_deref(), Some(ATLASSIAN));
        assert!(read.issuer_in_responses);
        assert_eq!(read.started_at, 1_748_779_200);
        assert_eq!(serde_json::to_string(&read).expect("again"), written);
    }

    #[test]
    fn a_stored_flow_debug_shows_no_secret_and_no_principal() {
        let shown = format!("{:?} {:#?}", flow(), flow());
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(!shown.contains("alice"), "{shown}");
        assert!(shown.contains("per_user: true"), "{shown}");
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let tokens = tokens_from(r#"{"access_token": "at-SECRET", "refresh_token": "rt-SECRET"}"#);
        let client: StoredClient = serde_json::from_str(
            r#"{"client_id": "cid", "client_secret": "cs-SECRET",
                "registration_access_token": "rat-SECRET"}"#,
        )
        .expect("client parses");
        let shown = format!("{tokens:?} {client:?} {client:#?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("registration_access_token"), "{shown}");
    }
}
