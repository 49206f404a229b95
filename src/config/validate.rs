//! Raw → validated: the `[server]` section, the environment overlay, and
//! the [`Checker`] that collects every broken rule with its key path and position.
//! Routes are checked in [`super::routes`], the store in [`super::store`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use url::Url;

use super::env::{self, Env};
use super::location::SourceFile;
use super::raw::{RawConfig, RawServer, RawTls};
use super::{
    ApiKeyHash, Config, ConfigSource, FieldError, FieldErrorKind, ServerConfig, TlsConfig, routes,
};

pub(super) const DEFAULT_STORE_DIR: &str = "~/.mcp/auth";
const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8000);
const DEFAULT_SSE_KEEPALIVE_SECS: u64 = 15;
/// Databricks Apps' proxy closes a stream that stays quiet for about half a minute.
const DATABRICKS_MAX_KEEPALIVE_SECS: u64 = 25;
const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 10;
const DEFAULT_READ_TIMEOUT_SECS: u64 = 300;
/// Ten minutes to finish signing in, as the MCP clients' own OAuth flows allow.
const DEFAULT_SIGN_IN_TIMEOUT_SECS: u64 = 600;
/// Far above what a person or the CLI needs, far below what a flood would.
const DEFAULT_CONTROL_REQUESTS_PER_MINUTE: u32 = 120;
/// Each stream holds two sockets and a little memory; this many fit any laptop or VM.
const DEFAULT_MAX_STREAMS: usize = 4096;
/// A person runs a few MCP clients, each holding one or two streams.
const DEFAULT_MAX_STREAMS_PER_CLIENT: usize = 64;
/// nginx's `client_header_timeout` is 60 s; an MCP client sends its header at once.
const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 10;
/// nginx's is 32 KiB (four 8 KiB buffers); MCP's `Mcp-Param-*` headers may need more.
const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
/// Long enough for any tool call a person waits for to finish, short enough for a deploy.
const DEFAULT_DRAIN_SECS: u64 = 10;
/// A day: someone who used the gateway today finds a fresh token tomorrow morning.
const DEFAULT_PER_USER_REFRESH_WINDOW_SECS: u64 = 24 * 60 * 60;
const MIN_HEADER_BYTES: usize = 1024;
/// What Databricks Apps sets after authenticating a caller: the email, else the user name.
const DATABRICKS_IDENTITY_HEADERS: &[&str] = &["x-forwarded-email", "x-forwarded-user"];

/// Collects the broken rules of one file and resolves the paths written in it.
pub(super) struct Checker<'a> {
    file: SourceFile<'a>,
    /// Relative paths in the file are relative to the file's own directory, so a config
    /// behaves the same whatever the working directory.
    base_dir: &'a Path,
    pub(super) env: &'a dyn Env,
    errors: Vec<FieldError>,
}

impl<'a> Checker<'a> {
    pub(super) fn new(file: SourceFile<'a>, env: &'a dyn Env) -> Checker<'a> {
        Checker {
            file,
            base_dir: file.path.parent().unwrap_or(Path::new("")),
            env,
            errors: Vec::new(),
        }
    }

    /// The collected errors in file order; those without a position (from the
    /// environment, or about the file as a whole) come last.
    pub(super) fn into_errors(mut self) -> Vec<FieldError> {
        self.errors.sort_by_key(|error| {
            let position = error.at.as_ref().and_then(|at| at.position);
            position.map_or((usize::MAX, 0), |p| (p.line, p.column))
        });
        self.errors
    }

    /// Records a broken rule at `span`, or at the file as a whole when there is none.
    pub(super) fn fail(&mut self, key: String, span: Option<Range<usize>>, kind: FieldErrorKind) {
        self.errors.push(FieldError {
            key,
            at: Some(self.file.location(span)),
            kind,
        });
    }

    pub(super) fn line(&self, span: Range<usize>) -> Option<usize> {
        self.file.line(span)
    }

    /// A path from the file with `~` expanded and made absolute against the file's
    /// directory.
    pub(super) fn path(&mut self, key: &str, value: &Spanned<String>) -> Option<PathBuf> {
        match env::expand_home(value.get_ref(), self.env) {
            Ok(path) => Some(self.base_dir.join(path)),
            Err(kind) => {
                self.fail(key.to_owned(), Some(value.span()), kind);
                None
            }
        }
    }

    /// Like [`Checker::path`], and the file must exist and be readable now, so that a
    /// typo shows up in `check` rather than on the first request.
    pub(super) fn readable_file(&mut self, key: &str, value: &Spanned<String>) -> Option<PathBuf> {
        let path = self.path(key, value)?;
        match readable_file(&path) {
            Ok(()) => Some(path),
            Err(kind) => {
                self.fail(key.to_owned(), Some(value.span()), kind);
                None
            }
        }
    }
}

/// Validates a whole file, reporting every broken rule.
pub(super) fn file_config(
    raw: RawConfig,
    text: &str,
    path: &Path,
    env: &dyn Env,
) -> Result<Config, Vec<FieldError>> {
    let mut checker = Checker::new(SourceFile { path, text }, env);
    // A key on any route makes every route need one, so callers are known everywhere.
    let route_keys = raw.routes.iter().any(|route| !route.api_keys.is_empty());
    let default_principal = raw.server.principal.clone();
    let server = server(raw.server, route_keys, &mut checker);
    let store = super::store::check(raw.store, &mut checker);
    let admin = super::admin::check(raw.admin, &mut checker);
    let principals = routes::Principals {
        default: default_principal,
        // An invalid [server] section has been reported already; say nothing more.
        identity_known: server
            .as_ref()
            .is_none_or(|server| !server.identity_headers.is_empty()),
    };
    let routes = routes::check(raw.routes, &principals, &mut checker);

    match (server, store, admin, routes) {
        (Some(server), Some(store), Some(admin), Some(routes)) if checker.errors.is_empty() => {
            Ok(Config {
                server,
                store,
                admin,
                routes,
                source: ConfigSource::File(path.to_owned()),
            })
        }
        _ => Err(checker.into_errors()),
    }
}

/// The server settings single-upstream mode uses: all defaults but the listener.
pub(super) fn default_server(listen: SocketAddr, databricks: bool) -> ServerConfig {
    ServerConfig {
        listen,
        public_url: derived_public_url(listen, false),
        learn_public_url: databricks,
        threads: default_threads(),
        allow_anonymous: false,
        api_keys: Vec::new(),
        allowed_hosts: Vec::new(),
        allowed_origins: Vec::new(),
        sse_keepalive: Some(Duration::from_secs(DEFAULT_SSE_KEEPALIVE_SECS)),
        connect_timeout: Duration::from_secs(DEFAULT_CONNECT_TIMEOUT_SECS),
        read_timeout: Duration::from_secs(DEFAULT_READ_TIMEOUT_SECS),
        sign_in_timeout: Duration::from_secs(DEFAULT_SIGN_IN_TIMEOUT_SECS),
        control_requests_per_minute: DEFAULT_CONTROL_REQUESTS_PER_MINUTE,
        max_streams: DEFAULT_MAX_STREAMS,
        max_streams_per_client: DEFAULT_MAX_STREAMS_PER_CLIENT,
        header_timeout: Duration::from_secs(DEFAULT_HEADER_TIMEOUT_SECS),
        max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        idle_timeout: Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS),
        drain: Duration::from_secs(DEFAULT_DRAIN_SECS),
        upgrade_socket: None,
        tls: None,
        databricks,
        identity_headers: default_identity_headers(databricks),
        per_user_refresh_window: Duration::from_secs(DEFAULT_PER_USER_REFRESH_WINDOW_SECS),
    }
}

/// Only Databricks Apps is known to put an authenticating proxy in front by default.
fn default_identity_headers(databricks: bool) -> Vec<http::HeaderName> {
    if !databricks {
        return Vec::new();
    }
    DATABRICKS_IDENTITY_HEADERS
        .iter()
        .map(|name| http::HeaderName::from_static(name))
        .collect()
}

/// `server.trusted_identity_header`, or the platform's default.
fn identity_headers(
    raw: Option<&Spanned<String>>,
    databricks: bool,
    checker: &mut Checker<'_>,
) -> Option<Vec<http::HeaderName>> {
    let Some(name) = raw else {
        return Some(default_identity_headers(databricks));
    };
    match http::HeaderName::from_bytes(name.get_ref().as_bytes()) {
        Ok(header) => Some(vec![header]),
        Err(_) => {
            let kind = FieldErrorKind::InvalidHeaderName {
                name: name.get_ref().clone(),
            };
            checker.fail(
                "server.trusted_identity_header".into(),
                Some(name.span()),
                kind,
            );
            None
        }
    }
}

fn server(raw: RawServer, route_keys: bool, checker: &mut Checker<'_>) -> Option<ServerConfig> {
    let (listen, databricks) = listen_address(raw.listen.as_ref(), checker);
    let tls = match &raw.tls {
        Some(tls) => tls_files(tls, checker).map(Some),
        None => Some(None),
    };
    let public_url = public_url(raw.public_url.as_ref(), listen, tls.as_ref(), checker);
    let threads = threads(raw.threads.as_ref(), checker);
    let api_keys = api_keys(&raw.api_keys, checker);
    let allowed_hosts = allowed_hosts(&raw.allowed_hosts, checker);
    let allowed_origins = allowed_origins(&raw.allowed_origins, checker);
    let connect_timeout = timeout(
        "server.connect_timeout_secs",
        raw.connect_timeout_secs.as_ref(),
        DEFAULT_CONNECT_TIMEOUT_SECS,
        checker,
    );
    let read_timeout = timeout(
        "server.read_timeout_secs",
        raw.read_timeout_secs.as_ref(),
        DEFAULT_READ_TIMEOUT_SECS,
        checker,
    );
    let sign_in_timeout = timeout(
        "server.sign_in_timeout_secs",
        raw.sign_in_timeout_secs.as_ref(),
        DEFAULT_SIGN_IN_TIMEOUT_SECS,
        checker,
    );
    let header_timeout = timeout(
        "server.header_timeout_secs",
        raw.header_timeout_secs.as_ref(),
        DEFAULT_HEADER_TIMEOUT_SECS,
        checker,
    );
    let idle_timeout = timeout(
        "server.idle_timeout_secs",
        raw.idle_timeout_secs.as_ref(),
        DEFAULT_IDLE_TIMEOUT_SECS,
        checker,
    );
    let drain = timeout(
        "server.drain_secs",
        raw.drain_secs.as_ref(),
        DEFAULT_DRAIN_SECS,
        checker,
    );
    let per_user_refresh_window = timeout(
        "server.per_user_refresh_window_secs",
        raw.per_user_refresh_window_secs.as_ref(),
        DEFAULT_PER_USER_REFRESH_WINDOW_SECS,
        checker,
    );
    let upgrade_socket = match &raw.upgrade_socket {
        Some(path) => checker.path("server.upgrade_socket", path).map(Some),
        None => Some(None),
    };
    let max_header_bytes = max_header_bytes(raw.max_header_bytes.as_ref(), checker);
    let identity_headers =
        identity_headers(raw.trusted_identity_header.as_ref(), databricks, checker);

    // Only meaningful once the address and the keys are known to be well-formed.
    if let (Some(listen), Some(keys)) = (listen, &api_keys) {
        let callers_known = !keys.is_empty() || route_keys || raw.allow_anonymous || databricks;
        if !listen.ip().is_loopback() && !callers_known {
            let span = raw.listen.as_ref().map(Spanned::span);
            let kind = FieldErrorKind::UnauthenticatedBind { addr: listen };
            checker.fail("server.listen".into(), span, kind);
        }
    }

    let keepalive_secs = raw.sse_keepalive_secs.unwrap_or(DEFAULT_SSE_KEEPALIVE_SECS);
    if databricks && !(1..=DATABRICKS_MAX_KEEPALIVE_SECS).contains(&keepalive_secs) {
        let kind = FieldErrorKind::PlatformKeepalive {
            max: DATABRICKS_MAX_KEEPALIVE_SECS,
        };
        checker.fail("server.sse_keepalive_secs".into(), None, kind);
    }
    Some(ServerConfig {
        listen: listen?,
        learn_public_url: databricks && raw.public_url.is_none(),
        public_url: public_url?,
        threads: threads?,
        allow_anonymous: raw.allow_anonymous,
        api_keys: api_keys?,
        allowed_hosts: allowed_hosts?,
        allowed_origins: allowed_origins?,
        sse_keepalive: (keepalive_secs > 0).then(|| Duration::from_secs(keepalive_secs)),
        connect_timeout: connect_timeout?,
        read_timeout: read_timeout?,
        sign_in_timeout: sign_in_timeout?,
        control_requests_per_minute: raw
            .control_requests_per_minute
            .unwrap_or(DEFAULT_CONTROL_REQUESTS_PER_MINUTE),
        max_streams: raw.max_streams.unwrap_or(DEFAULT_MAX_STREAMS),
        max_streams_per_client: raw
            .max_streams_per_client
            .unwrap_or(DEFAULT_MAX_STREAMS_PER_CLIENT),
        header_timeout: header_timeout?,
        max_header_bytes: max_header_bytes?,
        idle_timeout: idle_timeout?,
        drain: drain?,
        upgrade_socket: upgrade_socket?,
        tls: tls?,
        databricks,
        identity_headers: identity_headers?,
        per_user_refresh_window: per_user_refresh_window?,
    })
}

/// `server.public_url` as written, or derived from the listener when absent (and when
/// the listener and TLS settings it depends on are valid).
fn public_url(
    raw: Option<&Spanned<String>>,
    listen: Option<SocketAddr>,
    tls: Option<&Option<TlsConfig>>,
    checker: &mut Checker<'_>,
) -> Option<Url> {
    match raw {
        Some(url) => http_url(url.get_ref())
            .map_err(|kind| checker.fail("server.public_url".into(), Some(url.span()), kind))
            .ok(),
        None => Some(derived_public_url(listen?, tls?.is_some())),
    }
}

/// `server.listen`, unless Databricks Apps dictates the address: the platform only
/// routes to `0.0.0.0:$DATABRICKS_APP_PORT`. Returns the address and whether the
/// platform is present.
fn listen_address(
    raw: Option<&Spanned<String>>,
    checker: &mut Checker<'_>,
) -> (Option<SocketAddr>, bool) {
    let from_file = match raw {
        None => Some(DEFAULT_LISTEN),
        Some(text) => match text.get_ref().trim().parse() {
            Ok(addr) => Some(addr),
            Err(source) => {
                let value = text.get_ref().clone();
                let kind = FieldErrorKind::InvalidListen { value, source };
                checker.fail("server.listen".into(), Some(text.span()), kind);
                None
            }
        },
    };

    match env::databricks_listen(checker.env) {
        None => (from_file, false),
        Some(Ok(addr)) => {
            if raw.is_some() {
                tracing::info!(listen = %addr, "DATABRICKS_APP_PORT overrides server.listen");
            }
            (Some(addr), true)
        }
        Some(Err(kind)) => {
            checker.fail(env::DATABRICKS_PORT_VAR.into(), None, kind);
            (None, true)
        }
    }
}

fn tls_files(raw: &RawTls, checker: &mut Checker<'_>) -> Option<TlsConfig> {
    let cert_file = checker.readable_file("server.tls.cert_file", &raw.cert_file);
    let key_file = checker.readable_file("server.tls.key_file", &raw.key_file);
    Some(TlsConfig {
        cert_file: cert_file?,
        key_file: key_file?,
    })
}

/// `http://localhost:PORT` for loopback and all-interfaces listeners, since a browser on
/// the same machine is the usual first visitor; the listener's own IP otherwise.
fn derived_public_url(listen: SocketAddr, tls: bool) -> Url {
    let scheme = if tls { "https" } else { "http" };
    let host = match listen.ip() {
        ip if ip.is_loopback() || ip.is_unspecified() => "localhost".to_owned(),
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    let text = format!("{scheme}://{host}:{}", listen.port());
    Url::parse(&text).expect("a scheme, an IP or localhost, and a port always form a URL")
}

/// An absolute http(s) URL with nothing but scheme, host, port and path: a query or a
/// fragment would be lost when paths are appended, and user info would be a credential
/// in the config file.
pub(super) fn http_url(text: &str) -> Result<Url, FieldErrorKind> {
    let url = Url::parse(text).map_err(|source| FieldErrorKind::InvalidUrl {
        value: text.to_owned(),
        source,
    })?;
    let extra = |part| FieldErrorKind::UrlExtraPart {
        url: text.to_owned(),
        part,
    };
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FieldErrorKind::UrlScheme {
            url: text.to_owned(),
        });
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(extra("user info (put credentials in [routes.auth])"));
    }
    if url.query().is_some() {
        return Err(extra("a query"));
    }
    if url.fragment().is_some() {
        return Err(extra("a fragment"));
    }
    Ok(url)
}

fn threads(raw: Option<&Spanned<usize>>, checker: &mut Checker<'_>) -> Option<usize> {
    match raw {
        None => Some(default_threads()),
        Some(threads) if *threads.get_ref() == 0 => {
            let span = Some(threads.span());
            checker.fail("server.threads".into(), span, FieldErrorKind::ZeroThreads);
            None
        }
        Some(threads) => Some(*threads.get_ref()),
    }
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// `server.allowed_hosts`: bare host names (no scheme, port or path).
fn allowed_hosts(raw: &[Spanned<String>], checker: &mut Checker<'_>) -> Option<Vec<String>> {
    let mut ok = true;
    for (index, host) in raw.iter().enumerate() {
        let text = host.get_ref();
        let bare = !text.is_empty()
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !bare {
            ok = false;
            let kind = FieldErrorKind::InvalidHost {
                value: text.clone(),
            };
            checker.fail(
                format!("server.allowed_hosts[{index}]"),
                Some(host.span()),
                kind,
            );
        }
    }
    ok.then(|| raw.iter().map(|host| host.get_ref().clone()).collect())
}

/// `server.allowed_origins`: `scheme://host[:port]`, exactly as browsers send `Origin`.
fn allowed_origins(raw: &[Spanned<String>], checker: &mut Checker<'_>) -> Option<Vec<String>> {
    let mut origins = Vec::new();
    let mut ok = true;
    for (index, origin) in raw.iter().enumerate() {
        let text = origin.get_ref().trim_end_matches('/');
        let parsed = url::Url::parse(text).ok().filter(|url| {
            matches!(url.scheme(), "http" | "https")
                && url.origin().ascii_serialization() == text.to_ascii_lowercase()
        });
        match parsed {
            Some(url) => origins.push(url.origin().ascii_serialization()),
            None => {
                ok = false;
                let kind = FieldErrorKind::InvalidOrigin {
                    value: origin.get_ref().clone(),
                };
                checker.fail(
                    format!("server.allowed_origins[{index}]"),
                    Some(origin.span()),
                    kind,
                );
            }
        }
    }
    ok.then_some(origins)
}

fn api_keys(raw: &[Spanned<String>], checker: &mut Checker<'_>) -> Option<Vec<ApiKeyHash>> {
    key_hashes("server.api_keys", raw, checker)
}

/// A list of `sha256:<hex>` key hashes at `path`.
pub(super) fn key_hashes(
    path: &str,
    raw: &[Spanned<String>],
    checker: &mut Checker<'_>,
) -> Option<Vec<ApiKeyHash>> {
    let mut keys = Vec::with_capacity(raw.len());
    let mut all_valid = true;
    for (index, text) in raw.iter().enumerate() {
        match ApiKeyHash::parse(text.get_ref().trim()) {
            Some(key) => keys.push(key),
            None => {
                let key = format!("{path}[{index}]");
                checker.fail(key, Some(text.span()), FieldErrorKind::InvalidApiKey);
                all_valid = false;
            }
        }
    }
    all_valid.then_some(keys)
}

fn max_header_bytes(raw: Option<&Spanned<usize>>, checker: &mut Checker<'_>) -> Option<usize> {
    match raw {
        None => Some(DEFAULT_MAX_HEADER_BYTES),
        Some(bytes) if *bytes.get_ref() < MIN_HEADER_BYTES => {
            let kind = FieldErrorKind::HeaderLimitTooSmall;
            checker.fail("server.max_header_bytes".into(), Some(bytes.span()), kind);
            None
        }
        Some(bytes) => Some(*bytes.get_ref()),
    }
}

fn timeout(
    key: &str,
    raw: Option<&Spanned<u64>>,
    default_secs: u64,
    checker: &mut Checker<'_>,
) -> Option<Duration> {
    match raw {
        None => Some(Duration::from_secs(default_secs)),
        Some(secs) if *secs.get_ref() == 0 => {
            checker.fail(key.into(), Some(secs.span()), FieldErrorKind::ZeroTimeout);
            None
        }
        Some(secs) => Some(Duration::from_secs(*secs.get_ref())),
    }
}

pub(super) fn readable_file(path: &Path) -> Result<(), FieldErrorKind> {
    let unreadable = |source| FieldErrorKind::UnreadableFile {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let metadata = file.metadata().map_err(unreadable)?;
    if !metadata.is_file() {
        return Err(FieldErrorKind::NotAFile {
            path: path.to_owned(),
        });
    }
    Ok(())
}
