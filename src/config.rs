//! The gateway's configuration: `gateway.toml` plus an environment overlay, turned into
//! validated types that the rest of the crate uses without further checks.
//!
//! Loading has two halves. `raw` mirrors the file with serde and rejects unknown keys;
//! `validate` and `routes` turn the raw form into [`Config`], collecting every problem
//! so that `check` can report them all at once, each with its key path and `file:line:col`.
//! `env` holds the environment lookups: discovery of the file, the Databricks Apps port
//! overlay, and single-upstream mode (`UPSTREAM_MCP_URL`) that needs no file at all.
//!
//! Lookups of the process environment go through the `Env` trait, so tests pass a map
//! instead of mutating the process.

mod admin;
mod api_key;
mod env;
mod location;
mod oauth;
mod raw;
mod routes;
mod store;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) use api_key::ApiKeyHash;
pub(crate) use env::{Env, ProcessEnv};
pub use location::Location;

/// Paths the gateway serves itself. They win over every route, so no route prefix may
/// equal one or sit below one. `/` is reserved only as the exact path (the sign-in page):
/// a route with prefix `/` still receives everything else.
pub(crate) const RESERVED_PATHS: &[&str] = &[
    "/",
    "/auth",
    "/oauth",
    "/admin",
    "/metrics",
    "/healthz",
    "/readyz",
    "/.well-known",
];

/// The file name looked up in the working directory when nothing else names a config.
pub(crate) const DEFAULT_CONFIG_FILE: &str = "gateway.toml";

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) server: ServerConfig,
    pub(crate) store: StoreConfig,
    pub(crate) admin: AdminConfig,
    pub(crate) routes: Vec<RouteConfig>,
    pub(crate) source: ConfigSource,
}

/// Where a [`Config`] came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    File(PathBuf),
    /// Single-upstream mode: one route built from `UPSTREAM_MCP_URL`.
    Environment,
}

/// The `[server]` section: the listener and everything about the downstream side.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ServerConfig {
    pub(crate) listen: SocketAddr,
    /// The base URL browsers and MCP clients use to reach the gateway; OAuth redirect
    /// URIs are built from it.
    pub(crate) public_url: url::Url,
    /// Nobody configured `public_url` and the gateway runs behind Databricks Apps' proxy:
    /// the first request's `X-Forwarded-Host` says what it is.
    pub(crate) learn_public_url: bool,
    pub(crate) threads: usize,
    pub(crate) allow_anonymous: bool,
    pub(crate) api_keys: Vec<ApiKeyHash>,
    /// Host names beyond `localhost` and the public URL's host that requests may name.
    pub(crate) allowed_hosts: Vec<String>,
    /// Origins (`scheme://host[:port]`) of browser-based clients allowed cross-origin.
    pub(crate) allowed_origins: Vec<String>,
    /// `None` turns the keepalive comments on idle SSE streams off.
    pub(crate) sse_keepalive: Option<Duration>,
    pub(crate) connect_timeout: Duration,
    pub(crate) read_timeout: Duration,
    /// How long a person has between starting a sign-in and the callback.
    pub(crate) sign_in_timeout: Duration,
    /// Per client address, for sign-in starts, callbacks, forms and the admin API; 0 is off.
    pub(crate) control_requests_per_minute: u32,
    /// Event streams the gateway relays at once; past it, new ones get 503.
    pub(crate) max_streams: usize,
    /// Event streams one client may hold at once; past it, new ones get 429.
    pub(crate) max_streams_per_client: usize,
    /// A request header must be complete this long after its first byte (the first one
    /// on a connection: after connecting), or the client gets 408.
    pub(crate) header_timeout: Duration,
    /// A request header larger than this gets 431.
    pub(crate) max_header_bytes: usize,
    /// How long a kept-alive connection may wait for its next request.
    pub(crate) idle_timeout: Duration,
    /// How long a stopping or upgraded gateway lets requests and streams in flight run on
    /// before it closes them.
    pub(crate) drain: Duration,
    /// Where an upgrading gateway takes the listening sockets over from the running one;
    /// `None` is `upgrade.sock` in the store directory.
    pub(crate) upgrade_socket: Option<PathBuf>,
    pub(crate) tls: Option<TlsConfig>,
    /// Running on Databricks Apps, which authenticates callers in front of the gateway
    /// and forwards their identity.
    pub(crate) databricks: bool,
    /// The request headers, in order of preference, that name the caller, set by an
    /// authenticating proxy in front that the operator trusts; empty when none is.
    pub(crate) identity_headers: Vec<http::HeaderName>,
    /// A per-user token is refreshed ahead of expiry only while its user made a request
    /// within this long; an idle user's token is refreshed on their next request instead.
    pub(crate) per_user_refresh_window: Duration,
}

/// `[server.tls]`: serve HTTPS with this certificate chain and key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsConfig {
    pub(crate) cert_file: PathBuf,
    pub(crate) key_file: PathBuf,
}

/// The `[admin]` section: who may use the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AdminConfig {
    /// A listener of its own for the admin API and `/metrics`, which the main listener then
    /// no longer serves.
    pub(crate) listen: Option<SocketAddr>,
    /// Where the admin token is read from; `None` when there is none.
    pub(crate) token: Option<BearerSource>,
    /// Callers on loopback need no token.
    pub(crate) allow_loopback: bool,
}

/// The `[store]` section: where tokens and client registrations live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoreConfig {
    pub(crate) kind: StoreKind,
    /// The file store's directory; with any kind, where the upgrade socket lives by default.
    pub(crate) dir: PathBuf,
    /// `encryption_keys`, read and checked: the first seals, all open. Empty: records stay
    /// plain JSON.
    pub(crate) keys: Vec<crate::store::StoreKey>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreKind {
    File,
    /// Rows of a PostgreSQL database, shared by replicas.
    Postgres(Box<crate::store::PostgresTarget>),
}

/// The transport the route's upstream speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Transport {
    /// Whatever it offers: legacy `/sse` streams pass through when the upstream serves
    /// them, and are bridged to its Streamable HTTP endpoint when it answers 404 or 405
    /// (learnt from the first one, then remembered).
    #[default]
    Auto,
    /// Streamable HTTP only: legacy clients are always bridged.
    Streamable,
    /// The legacy transport only: legacy clients pass through, and Streamable HTTP clients
    /// are bridged to it.
    Sse,
}

/// Whose upstream tokens a route's requests use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PrincipalMode {
    /// One sign-in for the route, shared by every client.
    #[default]
    Shared,
    /// Each person signs in for themselves: the principal is the caller's identity as the
    /// trusted proxy in front forwards it (`server.trusted_identity_header`).
    Forwarded,
}

/// One `[[routes]]` table. Two are equal when a reload can keep the route as it runs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RouteConfig {
    pub(crate) name: String,
    /// `/` or `/segment[/segment…]` without a trailing slash.
    pub(crate) prefix: String,
    pub(crate) upstream: url::Url,
    /// The upstream URL exactly as written: the token store's slot names hash it, as the
    /// Python proxy did, so its sign-ins keep working.
    pub(crate) upstream_text: String,
    /// Extra trust anchors for the upstream's TLS certificate.
    pub(crate) ca_file: Option<PathBuf>,
    /// Request bodies larger than this get 413.
    pub(crate) max_body_bytes: u64,
    pub(crate) transport: Transport,
    /// Client keys good for this route only, besides `server.api_keys`.
    pub(crate) api_keys: Vec<ApiKeyHash>,
    pub(crate) auth: RouteAuth,
    /// Each caller has their own slot (only OAuth routes can be per-user).
    pub(crate) per_user: bool,
    /// Static request headers for the upstream, names as written in the file.
    pub(crate) headers: Vec<(String, String)>,
    /// `[[routes.plugins]]`, in order, their settings checked.
    pub(crate) plugins: Vec<PluginConfig>,
}

/// One `[[routes.plugins]]` table: which plugin, and its checked settings.
#[derive(Debug, Clone)]
pub(crate) struct PluginConfig {
    pub(crate) kind: &'static str,
    pub(crate) spec: std::sync::Arc<dyn crate::plugin::Spec>,
    /// SHA-256 of the settings table as written, which tells a reload whether they changed
    /// without keeping values (a header's, say) around.
    pub(crate) settings_digest: [u8; 32],
}

impl PartialEq for PluginConfig {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.settings_digest == other.settings_digest
    }
}

/// How the gateway authenticates to a route's upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RouteAuth {
    /// A person signs in through the gateway; the gateway keeps the tokens fresh.
    OAuth(Box<OAuthSettings>),
    /// A fixed token, read from outside the config file.
    Bearer(BearerSource),
    /// The upstream needs no credentials.
    None,
}

impl RouteAuth {
    /// The `kind` value that selects this variant in `[routes.auth]`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            RouteAuth::OAuth(_) => "oauth",
            RouteAuth::Bearer(_) => "bearer",
            RouteAuth::None => "none",
        }
    }
}

/// A route's OAuth settings; every field overrides or steers discovery and registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OAuthSettings {
    /// A client registered with the authorization server beforehand; otherwise the gateway
    /// registers itself dynamically.
    pub(crate) client: Option<PreregisteredClient>,
    /// This gateway's Client ID Metadata Document, used as the client id where the
    /// authorization server supports such documents: an absolute URL, or a path under
    /// `/oauth/` that the gateway serves itself at its public URL.
    pub(crate) client_metadata_url: Option<String>,
    pub(crate) scopes: Option<Vec<String>>,
    /// The RFC 8707 resource to ask tokens for; discovered when absent.
    pub(crate) resource: Option<String>,
    /// Send `resource` at all (some identity providers reject it).
    pub(crate) send_resource: bool,
    pub(crate) authorization_endpoint: Option<url::Url>,
    pub(crate) token_endpoint: Option<url::Url>,
    pub(crate) registration_endpoint: Option<url::Url>,
    /// Accept authorization-server metadata whose issuer differs from where it was fetched.
    pub(crate) allow_issuer_mismatch: bool,
    /// Accept an authorization server that does not advertise PKCE S256.
    pub(crate) allow_plain_pkce: bool,
    /// Extra parameters for the authorization request (`prompt`, `access_type`, …).
    pub(crate) authorize_params: Vec<(String, String)>,
}

impl Default for OAuthSettings {
    fn default() -> Self {
        Self {
            client: None,
            client_metadata_url: None,
            scopes: None,
            resource: None,
            send_resource: true,
            authorization_endpoint: None,
            token_endpoint: None,
            registration_endpoint: None,
            allow_issuer_mismatch: false,
            allow_plain_pkce: false,
            authorize_params: Vec::new(),
        }
    }
}

/// A client id (and secret) the operator registered with the authorization server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PreregisteredClient {
    pub(crate) client_id: String,
    /// Where the secret is read from; `None` for a public client.
    pub(crate) secret: Option<BearerSource>,
    pub(crate) auth_method: ClientAuthMethod,
}

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientAuthMethod {
    None,
    ClientSecretBasic,
    ClientSecretPost,
}

impl ClientAuthMethod {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ClientAuthMethod::None => "none",
            ClientAuthMethod::ClientSecretBasic => "client_secret_basic",
            ClientAuthMethod::ClientSecretPost => "client_secret_post",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "none" => Some(ClientAuthMethod::None),
            "client_secret_basic" => Some(ClientAuthMethod::ClientSecretBasic),
            "client_secret_post" => Some(ClientAuthMethod::ClientSecretPost),
            _ => None,
        }
    }
}

/// Where a bearer token comes from. The config never holds the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BearerSource {
    /// The name of an environment variable.
    Env(String),
    File(PathBuf),
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no configuration found: create ./{DEFAULT_CONFIG_FILE}, pass --config PATH, \
         set MCP_GATEWAY_CONFIG=PATH, or set UPSTREAM_MCP_URL to proxy a single upstream"
    )]
    NotFound,

    #[error("cannot read config file {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file is not valid TOML.
    #[error("{at}: {}", source.message())]
    Syntax {
        at: Location,
        #[source]
        source: Box<toml::de::Error>,
    },

    /// A key the schema does not know, usually a typo.
    #[error("{at}: {key}: {}", source.message())]
    UnknownKey {
        at: Location,
        key: String,
        #[source]
        source: Box<toml::de::Error>,
    },

    /// A value of the wrong type, a missing required key or an unknown enum value.
    #[error("{at}: {key}: {}", source.message())]
    Schema {
        at: Location,
        key: String,
        #[source]
        source: Box<toml::de::Error>,
    },

    /// The file parsed but breaks one or more rules; every broken rule is listed.
    #[error("{} in {origin}:{}", plural(errors.len()), ErrorLines(errors))]
    Invalid {
        origin: ConfigSource,
        errors: Vec<FieldError>,
    },
}

/// One broken rule: which key, where, and what is wrong with it.
#[derive(Debug)]
pub struct FieldError {
    /// The key path, like `routes[1].prefix`, or an environment variable's name.
    pub(crate) key: String,
    pub(crate) at: Option<Location>,
    pub(crate) kind: FieldErrorKind,
}

/// The rules a configuration must follow, one variant each.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FieldErrorKind {
    #[error("`{value}` is not a socket address like 127.0.0.1:8000")]
    InvalidListen {
        value: String,
        #[source]
        source: std::net::AddrParseError,
    },

    #[error("`{value}` is not a host name: give the bare name, like mcp.example.com")]
    InvalidHost { value: String },

    #[error(
        "`{value}` is not an origin: give scheme, host and port only, like http://localhost:6274"
    )]
    InvalidOrigin { value: String },

    #[error("must be at least 1024 bytes; an MCP initialize alone is several hundred")]
    BodyLimitTooSmall,

    #[error("must be at least 1024 bytes; an MCP client's request header is several hundred")]
    HeaderLimitTooSmall,

    #[error("a plugin needs a `kind`: one of {known}")]
    PluginKindMissing { known: String },

    #[error("`{kind}` is not a plugin: use one of {known}")]
    UnknownPlugin { kind: String, known: String },

    #[error("plugin {kind}: {message}")]
    PluginSettings { kind: &'static str, message: String },

    #[error("`{value}` is not a port number")]
    InvalidPort { value: String },

    #[error("`{value}` is not a URL")]
    InvalidUrl {
        value: String,
        #[source]
        source: url::ParseError,
    },

    #[error("`{url}` must use http or https")]
    UrlScheme { url: String },

    #[error("`{url}` must not contain {part}")]
    UrlExtraPart { url: String, part: &'static str },

    #[error("must be at least 1")]
    ZeroThreads,

    #[error("must be at least 1 second")]
    ZeroTimeout,

    #[error(
        "on Databricks Apps the platform's proxy ends event streams that stay quiet too long: \
         set 1 to {max} seconds"
    )]
    PlatformKeepalive { max: u64 },

    /// The value is never echoed: someone may have pasted a raw key instead of its hash.
    #[error(
        "an api key must be written as `sha256:` and 64 hex digits, the hash of the key; \
         make one with: printf %s \"$KEY\" | sha256sum"
    )]
    InvalidApiKey,

    #[error(
        "{addr} is reachable beyond loopback but nothing authenticates callers: set \
         server.api_keys (hashes made with: printf %s \"$KEY\" | sha256sum), or set \
         server.allow_anonymous = true to accept anyone who can reach the port, \
         or listen on 127.0.0.1"
    )]
    UnauthenticatedBind { addr: SocketAddr },

    #[error("`{path}` needs $HOME to expand `~`, and HOME is not set")]
    HomeUnset { path: String },

    #[error("cannot read {}", path.display())]
    UnreadableFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{} is not a regular file", path.display())]
    NotAFile { path: PathBuf },

    #[error(
        "route name `{name}` must be 1 to 64 characters of a-z, 0-9, `_` and `-`, \
         starting with a letter or digit"
    )]
    InvalidRouteName { name: String },

    #[error("route name `{name}` is already used{}", at_line(*first_line))]
    DuplicateRouteName {
        name: String,
        first_line: Option<usize>,
    },

    #[error("prefix `{prefix}` {reason}")]
    MalformedPrefix {
        prefix: String,
        reason: &'static str,
    },

    #[error("prefix `{prefix}` uses the segment `~`, which the gateway keeps for its own paths")]
    PrefixInternalSegment { prefix: String },

    #[error("prefix `{prefix}` shadows the gateway's own path `{reserved}`")]
    ReservedPrefix {
        prefix: String,
        reserved: &'static str,
    },

    #[error(
        "overlapping prefix `{prefix}`: routes `{route}` and `{other_route}`{} both use it",
        at_line(*other_line)
    )]
    OverlappingPrefix {
        prefix: String,
        route: String,
        other_route: String,
        other_line: Option<usize>,
    },

    #[error("kind = \"bearer\" needs exactly one of token_env or token_file")]
    BearerSourceCount,

    #[error("set token_env or token_file, not both")]
    AdminTokenSourceCount,

    #[error("{key} only applies to kind = \"bearer\"")]
    TokenSourceWithoutBearer { key: &'static str },

    #[error("{key} only applies to kind = \"oauth\"")]
    OAuthKeyWithoutOAuth { key: &'static str },

    #[error("`{value}` is not one of none, client_secret_basic, client_secret_post")]
    UnknownClientAuthMethod { value: String },

    #[error(
        "client_secret_env and client_secret_file need a client_id, and only one of them may be set"
    )]
    ClientSecretSource,

    #[error("{method} needs client_secret_env or client_secret_file")]
    ClientSecretMissing { method: &'static str },

    #[error(
        "`{value}`: a path here must be under /oauth/ (the gateway serves it) and have no query"
    )]
    MetadataPath { value: String },

    /// Only the variable's name is shown, never a value.
    #[error("environment variable {var} is not set or is empty")]
    TokenEnvUnset { var: String },

    #[error("{key} only applies to kind = \"postgres\"")]
    PostgresOnlyKey { key: &'static str },

    #[error(
        "kind = \"postgres\" needs a database: set url = \"postgres://USER@HOST:PORT/DATABASE\" \
         (the password may come from PGPASSWORD), or set PGHOST, PGPORT, PGUSER, PGPASSWORD and \
         PGDATABASE in the environment"
    )]
    PostgresUnconfigured,

    /// The value is never echoed: it may hold a password.
    #[error(
        "is not a PostgreSQL connection URL like postgres://USER@HOST:PORT/DATABASE?sslmode=disable \
         (check the scheme, the port, percent-encoding and the sslmode value)"
    )]
    InvalidPostgresUrl,

    #[error("environment variable {var} has a value that is not valid for it")]
    InvalidPostgresEnv { var: &'static str },

    #[error("`{value}` is not a token store: use file (the default) or postgres")]
    UnknownStoreKind { value: String },

    #[error(
        "postgres needs a database: set PGHOST, PGPORT, PGUSER and PGDATABASE (Databricks Apps \
         sets them for a database resource), and PGPASSWORD unless the password is the app's \
         workspace token"
    )]
    PostgresEnvUnconfigured,

    #[error("no database user: put one in url (postgres://USER@…), or set PGUSER")]
    PostgresUserMissing,

    #[error(
        "sslmode `{mode}` is not one of disable, allow, prefer, require, verify-ca, verify-full"
    )]
    InvalidSslMode { mode: String },

    #[error("ca_file needs sslmode require, verify-ca or verify-full: without TLS it is unused")]
    CaFileWithoutTls,

    #[error(
        "the database login uses a Databricks workspace token: {missing} must be set in the \
         environment (Databricks Apps sets DATABRICKS_HOST, DATABRICKS_CLIENT_ID and \
         DATABRICKS_CLIENT_SECRET), or set password_source = \"static\""
    )]
    WorkspaceCredentialsMissing { missing: String },

    #[error(
        "environment variable DATABRICKS_HOST is not a workspace URL; set it to the \
         workspace's host name"
    )]
    InvalidWorkspaceHost {
        #[source]
        source: crate::store::WorkspaceHostError,
    },

    /// The URL is never echoed: it holds a password.
    #[error(
        "password_source = \"databricks-oauth\" logs in with a workspace token: remove the \
         password from url, or set password_source = \"static\""
    )]
    PasswordWithWorkspaceLogin,

    #[error("encryption key `{id}` needs exactly one of env or file")]
    StoreKeySourceCount { id: String },

    #[error(
        "encryption key id `{id}` must be 1 to 64 characters of A-Z, a-z, 0-9, `_`, `-` and `.`"
    )]
    InvalidStoreKeyId { id: String },

    #[error("encryption key id `{id}` is listed more than once")]
    DuplicateStoreKey { id: String },

    /// The key's text is never shown.
    #[error("encryption key `{id}` is not usable")]
    InvalidStoreKey {
        id: String,
        #[source]
        source: crate::store::KeyError,
    },

    #[error("`{name}` is not a valid HTTP header name")]
    InvalidHeaderName { name: String },

    #[error("`{name}` is set by the gateway and cannot be configured")]
    ForbiddenHeader { name: String },

    #[error("header `{name}` is listed more than once (names ignore case)")]
    DuplicateHeader { name: String },

    /// The value itself is not shown: static headers often carry keys.
    #[error("the value of header `{name}` contains control characters")]
    InvalidHeaderValue { name: String },

    #[error(
        "principal = \"forwarded\" needs to know who each caller is: set \
         server.trusted_identity_header to the header your authenticating proxy sets \
         (on Databricks Apps it is X-Forwarded-Email, trusted by default)"
    )]
    PerUserWithoutIdentity,

    #[error("`{value}` is not a principal mode: use shared or forwarded")]
    UnknownPrincipal { value: String },

    #[error("principal = \"forwarded\" only applies to auth.kind = \"oauth\"")]
    PerUserWithoutOAuth,

    #[error(
        "no routes: add a [[routes]] table, or set UPSTREAM_MCP_URL to proxy a single upstream"
    )]
    NoRoutes,
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::File(path) => write!(f, "{}", path.display()),
            ConfigSource::Environment => f.write_str("the environment (UPSTREAM_MCP_URL)"),
        }
    }
}

/// `file:line:col: key: what is wrong: cause`. The cause is printed here because a list
/// of errors has no other place to show each one's chain.
impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(at) = &self.at {
            write!(f, "{at}: ")?;
        }
        write!(f, "{}: {}", self.key, self.kind)?;
        if let Some(cause) = std::error::Error::source(&self.kind) {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.kind)
    }
}

/// Renders errors one per line, each line starting on its own.
struct ErrorLines<'a>(&'a [FieldError]);

impl fmt::Display for ErrorLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for error in self.0 {
            write!(f, "\n{error}")?;
        }
        Ok(())
    }
}

fn plural(count: usize) -> String {
    if count == 1 {
        "1 error".to_owned()
    } else {
        format!("{count} errors")
    }
}

fn at_line(line: Option<usize>) -> String {
    line.map(|line| format!(" at line {line}"))
        .unwrap_or_default()
}

impl Config {
    /// The Unix socket of the hand-over between an old and a new gateway process. It lives
    /// in the store directory by default: the directory is the gateway's own (0700), and
    /// whoever can reach the socket can take over the listeners and so the traffic.
    pub(crate) fn upgrade_socket(&self) -> PathBuf {
        self.server
            .upgrade_socket
            .clone()
            .unwrap_or_else(|| self.store.dir.join("upgrade.sock"))
    }

    /// Finds and loads the configuration: `explicit` (from `--config`), else
    /// `$MCP_GATEWAY_CONFIG`, else single-upstream mode when `UPSTREAM_MCP_URL` is set,
    /// else `./gateway.toml`.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        env::discover(explicit, &ProcessEnv, Path::new(DEFAULT_CONFIG_FILE))
    }

    /// Reads and validates one config file.
    pub(crate) fn from_file(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml_str(&text, path, env)
    }

    /// Validates `text` as the contents of the file at `path`. The path is used in
    /// messages and as the base for relative paths inside the file.
    pub(crate) fn from_toml_str(
        text: &str,
        path: &Path,
        env: &dyn Env,
    ) -> Result<Config, ConfigError> {
        let raw = raw::parse(text, path)?;
        validate::file_config(raw, text, path, env).map_err(|errors| ConfigError::Invalid {
            origin: ConfigSource::File(path.to_owned()),
            errors,
        })
    }

    /// Single-upstream mode: one route named `default` at `/`, built from
    /// `UPSTREAM_MCP_URL` and the port variables, with no file.
    pub(crate) fn from_env(env: &dyn Env) -> Result<Config, ConfigError> {
        env::single_upstream(env).map_err(|errors| ConfigError::Invalid {
            origin: ConfigSource::Environment,
            errors,
        })
    }
}

#[cfg(test)]
mod tests;
