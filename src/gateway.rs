//! Assembling and running a gateway: from a validated [`Config`] to listening pingora
//! services, and back down again.
//!
//! The gateway binds its listening sockets itself before pingora starts, so that start-up
//! fails with a clear error when an address is taken, port 0 works (tests, and the address
//! is known before the first request), and the banner can print the real address. Pingora
//! then adopts the sockets through its listen-fd table, the same table its graceful upgrade
//! hands between processes. `serve --upgrade` takes that table over from a running gateway
//! instead of binding (see [`Gateway::take_over`] and `SIGQUIT` in [`UnixSignals`]).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{IntoRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::connectors::TransportConnector;
use pingora::server::configuration::ServerConf;
use pingora::server::{
    ListenFds, RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch,
};
use pingora::services::listening::Service;
use pingora::services::{ServiceReadyNotifier, ServiceWithDependents};
use url::Url;

use crate::config::{BearerSource, Config, RouteAuth, RouteConfig, StoreKind};
use crate::control::admin::AdminAuth;
use crate::metrics::Metrics;
use crate::oauth::OAuthRoute;
use crate::oauth::flow::PendingFlows;
use crate::proxy::GatewayProxy;
use crate::proxy::downstream::{HeaderGuard, HeaderLimits};
use crate::proxy::inbound::Inbound;
use crate::proxy::lane::Lane;
use crate::proxy::upstream::{Timeouts, Upstream};
use crate::route::{Route, RouteTable};
use crate::store::{FileStore, Keyring, PostgresStore, TokenStore};
use crate::token::{NoToken, StaticToken, TokenError, TokenSource};

pub(crate) mod reload;
mod systemd;
mod upgrade;

/// After the drain bound, how long streams get to end their responses cleanly.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("an upgrade takes the sockets over by address, so {key} needs a fixed port, not 0")]
    UpgradePort { key: &'static str },
    #[error("no running gateway handed its sockets over at {path}")]
    TakeOver {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the running gateway listens on {offered}, not on {wanted} as this configuration asks: \
         upgrade with the same listen addresses, and change them with a restart"
    )]
    AddressMismatch { wanted: String, offered: String },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("route '{route}': cannot load its upstream token")]
    Token {
        route: String,
        #[source]
        source: TokenError,
    },
    #[error("route '{route}': cannot load the CA file {path}")]
    CaFile {
        route: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("route '{route}': header {name} has an invalid value")]
    Header { route: String, name: String },
    #[error("route '{route}': the {kind} plugin cannot start")]
    Plugin {
        route: String,
        kind: &'static str,
        #[source]
        source: crate::plugin::PluginError,
    },
    #[error("cannot open the token store")]
    Store(#[source] crate::store::StoreError),
    #[error("cannot build the HTTP client for OAuth requests")]
    HttpClient(#[source] reqwest::Error),
    #[error("cannot read the admin token file")]
    AdminToken(#[source] std::io::Error),
    #[error("cannot start a runtime to load stored tokens")]
    Runtime(#[source] std::io::Error),
}

/// Everything requests share: routes, settings, the upstream connector and counters.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The routes in force; a reload swaps in a new set while requests keep the one they
    /// started with.
    routing: ArcSwap<Routing>,
    /// Bumped after each swap, so the refreshers follow the routes.
    pub(crate) routing_changed: tokio::sync::watch::Sender<u64>,
    /// One reload at a time.
    pub(crate) reloading: tokio::sync::Mutex<()>,
    pub(crate) keepalive: Option<Duration>,
    /// Opens the connections of the requests the gateway sends upstream itself (TCP, TLS).
    pub(crate) connector: ConnectorDebug,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) inflight: Inflight,
    pub(crate) draining: AtomicBool,
    pub(crate) flows: PendingFlows,
    pub(crate) admin: AdminAuth,
    /// Event streams relayed right now, against the gateway's and each client's bound.
    pub(crate) streams: Arc<crate::proxy::streams::StreamBounds>,
    /// The rate limit on sign-in starts, callbacks, forms and the admin API.
    pub(crate) control_rate: crate::control::rate::RateLimiter,
    /// Which `Host` and `Origin` values requests may carry.
    pub(crate) origins: crate::proxy::origin::OriginPolicy,
    /// The admin listener, when the admin API and `/metrics` have one of their own.
    pub(crate) admin_listener: Option<SocketAddr>,
    /// The token the UI's forms carry, so that a page elsewhere cannot post them.
    pub(crate) csrf: crate::secret::Secret,
    /// Legacy streams relayed here, for answers the gateway gives their clients itself.
    pub(crate) legacy: Arc<crate::proxy::legacy::LegacyStreams>,
    /// Legacy clients' sessions bridged to Streamable HTTP upstreams.
    pub(crate) bridges: crate::proxy::bridge::Bridges,
    /// Streamable HTTP clients' sessions bridged to legacy upstreams.
    pub(crate) legacy_sessions: crate::proxy::legacy_upstream::LegacySessions,
    /// The listeners' shutdown signal: pingora's, which an upgrade also sends by itself
    /// once a new process has the sockets.
    pub(crate) stop_listening: tokio::sync::watch::Sender<bool>,
    /// Set at the drain bound: event streams end their responses now.
    pub(crate) closing: tokio::sync::watch::Sender<bool>,
    /// Pingora's listen-fd table, which an upgrade hands to the new process.
    pub(crate) listen_fds: upgrade::ListenTable,
    /// When this process started, in Unix seconds.
    pub(crate) started_at: u64,
}

impl Shared {
    /// The routes in force now.
    pub(crate) fn routing(&self) -> Arc<Routing> {
        self.routing.load_full()
    }

    /// The base URL people and clients reach the gateway at.
    pub(crate) fn public_url(&self) -> Url {
        self.routing().config.server.public_url.clone()
    }

    /// Learns the public URL from a request behind Databricks Apps' proxy, when nobody
    /// configured one: the OAuth routes are built again with redirect URIs under it (their
    /// tokens come back from the store). Once only; later requests change nothing.
    pub(crate) async fn learn_public_url(&self, url: Url) {
        let _one_at_a_time = self.reloading.lock().await;
        let current = self.routing();
        if !current.config.server.learn_public_url {
            return;
        }
        let mut next = current.config.clone();
        next.server.public_url = url.clone();
        next.server.learn_public_url = false;
        match build_routing(next, &self.metrics, Some(&current)) {
            Ok((routing, fresh, _)) => {
                for route in &fresh {
                    route.load().await;
                }
                self.install(routing);
                tracing::info!(%url, "public URL learnt from the platform's X-Forwarded-Host");
            }
            Err(error) => tracing::error!(%url, %error, "cannot use the forwarded public URL"),
        }
    }

    /// Puts `routing` in force for every request from now on.
    pub(crate) fn install(&self, routing: Routing) {
        self.routing.store(Arc::new(routing));
        self.routing_changed
            .send_modify(|generation| *generation += 1);
    }
}

/// One version of the routes: what a request is routed by from start to end.
#[derive(Debug)]
pub(crate) struct Routing {
    /// The configuration the routes were built from.
    pub(crate) config: Config,
    pub(crate) table: RouteTable,
    /// The OAuth routes by name, for the sign-in pages and the refreshers.
    pub(crate) oauth: HashMap<String, Arc<OAuthRoute>>,
    pub(crate) inbound: Inbound,
    /// The token store, opened with the first OAuth route.
    pub(crate) store: Option<Arc<dyn TokenStore>>,
}

impl Routing {
    pub(crate) fn oauth_route(&self, name: &str) -> Option<&Arc<OAuthRoute>> {
        self.oauth.get(name)
    }

    pub(crate) fn route(&self, name: &str) -> Option<&Arc<Route>> {
        self.table.routes().find(|route| route.name == name)
    }
}

/// Pingora's connector, which has no `Debug` of its own.
pub(crate) struct ConnectorDebug(pub(crate) TransportConnector);

impl std::fmt::Debug for ConnectorDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector")
    }
}

impl std::ops::Deref for ConnectorDebug {
    type Target = TransportConnector;
    fn deref(&self) -> &TransportConnector {
        &self.0
    }
}

/// Counts requests in flight, for a graceful drain.
#[derive(Debug, Default, Clone)]
pub(crate) struct Inflight(Arc<AtomicUsize>);

impl Inflight {
    pub(crate) fn enter(&self) -> InflightGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        InflightGuard(Arc::clone(&self.0))
    }

    pub(crate) fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One request in flight; dropping it ends the request's count.
#[derive(Debug)]
pub(crate) struct InflightGuard(Arc<AtomicUsize>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A configured gateway whose sockets are bound; [`Gateway::run`] or [`Gateway::spawn`] it.
#[derive(Debug)]
pub struct Gateway {
    config: Config,
    shared: Arc<Shared>,
    /// The main socket, unless it was taken over from a running gateway.
    listener: Option<OwnedFd>,
    addr: SocketAddr,
    /// The admin listener's socket and address, when `[admin] listen` asks for one.
    admin: Option<(Option<OwnedFd>, SocketAddr)>,
    /// Sockets taken over from the gateway this one replaces, by address.
    inherited: Vec<(String, RawFd)>,
}

impl Gateway {
    /// Builds the route table and binds the listening socket.
    pub fn bind(mut config: Config) -> Result<Self, StartError> {
        let (listener, addr) = bind(config.server.listen)?;
        // A public URL derived from port 0 learns the port the system chose.
        if config.server.public_url.port() == Some(0) {
            let _ = config.server.public_url.set_port(Some(addr.port()));
        }
        let admin = config.admin.listen.map(bind).transpose()?;
        config.admin.listen = admin.as_ref().map(|(_, addr)| *addr);
        let shared = Arc::new(build_shared(&config)?);
        Ok(Self {
            config,
            shared,
            listener: Some(listener),
            addr,
            admin: admin.map(|(socket, addr)| (Some(socket), addr)),
            inherited: Vec::new(),
        })
    }

    /// Takes the listening sockets over from a running gateway, which hands them over at
    /// the upgrade socket when it gets `SIGQUIT`; waits five seconds for it. Both listen on
    /// the same sockets until the old one stops accepting, so no connection is refused.
    pub fn take_over(config: Config) -> Result<Self, StartError> {
        let addr = config.server.listen;
        if addr.port() == 0 {
            return Err(StartError::UpgradePort {
                key: "server.listen",
            });
        }
        if config.admin.listen.is_some_and(|admin| admin.port() == 0) {
            return Err(StartError::UpgradePort {
                key: "admin.listen",
            });
        }
        let path = config.upgrade_socket();
        let handed = upgrade::receive_sockets(&path).map_err(|source| StartError::TakeOver {
            path: path.clone(),
            source,
        })?;
        let wanted: Vec<String> = std::iter::once(addr)
            .chain(config.admin.listen)
            .map(|addr| addr.to_string())
            .collect();
        let offered = || {
            let mut offered: Vec<&str> = handed.iter().map(|(addr, _)| addr.as_str()).collect();
            offered.sort();
            offered.join(", ")
        };
        if let Some(missing) = wanted
            .iter()
            .find(|want| !handed.iter().any(|(addr, _)| addr == *want))
        {
            return Err(StartError::AddressMismatch {
                wanted: missing.clone(),
                offered: offered(),
            });
        }
        let shared = Arc::new(build_shared(&config)?);
        tracing::info!(socket = %path.display(), "took the listening sockets over");
        Ok(Self {
            admin: config.admin.listen.map(|addr| (None, addr)),
            config,
            shared,
            listener: None,
            addr,
            inherited: handed,
        })
    }

    /// The admin listener's address, when there is one (with its real port).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(_, addr)| *addr)
    }

    /// The address the gateway listens on (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The configuration in force, with the real port filled in.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What the gateway's requests share, for the CLI's own sign-in.
    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Serves until SIGTERM, SIGINT or SIGQUIT (an upgrade), then drains requests in flight
    /// for up to `server.drain_secs`. SIGHUP reloads the configuration. `ready` runs once the
    /// signals are handled, so nobody who saw it kills the gateway with a reload signal.
    pub fn run(self, ready: impl FnOnce() + Send + 'static) {
        let signals = UnixSignals {
            shared: Arc::clone(&self.shared),
            drain: self.config.server.drain,
            upgrade_socket: self.config.upgrade_socket(),
            ready: parking_lot::Mutex::new(Some(Box::new(ready))),
        };
        self.into_server(Runtimes::PerThread).run(RunArgs {
            shutdown_signal: Box::new(signals),
        });
    }

    /// Serves on background threads until the returned handle is stopped or dropped.
    pub fn spawn(self) -> RunningGateway {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let addr = self.addr;
        let admin_addr = self.admin_addr();
        let server = self.into_server(Runtimes::Shared);
        let thread = std::thread::spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(StopSignal(stopped)),
            })
        });
        RunningGateway {
            addr,
            admin_addr,
            stop,
            thread: Some(thread),
        }
    }

    fn into_server(self, runtimes: Runtimes) -> Server {
        let mut conf = ServerConf {
            threads: self.config.server.threads,
            work_stealing: runtimes == Runtimes::Shared,
            grace_period_seconds: Some(0),
            graceful_shutdown_timeout_seconds: Some(0),
            ..ServerConf::default()
        };
        conf.upstream_keepalive_pool_size = 256;
        let mut server = Server::new_with_opt_and_conf(None, conf);
        server.bootstrap();
        let proxy = pingora::proxy::http_proxy(
            &server.configuration,
            GatewayProxy::new(Arc::clone(&self.shared)),
        );
        let limits = HeaderLimits {
            timeout: self.config.server.header_timeout,
            max_bytes: self.config.server.max_header_bytes,
            idle: self.config.server.idle_timeout,
        };
        let guarded = HeaderGuard::new(
            proxy,
            limits,
            Arc::clone(&self.shared.metrics),
            self.shared.closing.subscribe(),
            Lane::new(Arc::clone(&self.shared)),
        );
        let mut service = Service::new("mcp-u2m-gateway".to_owned(), guarded);
        let addr = self.addr.to_string();
        match &self.config.server.tls {
            Some(tls) => {
                let cert = tls.cert_file.to_string_lossy();
                let key = tls.key_file.to_string_lossy();
                if let Err(error) = service.add_tls(&addr, &cert, &key) {
                    tracing::error!(%error, "cannot load the listener's TLS certificate or key");
                }
            }
            None => service.add_tcp(&addr),
        }
        let mut sockets: Vec<(String, RawFd)> = self.inherited;
        if let Some(socket) = self.listener {
            sockets.push((addr, socket.into_raw_fd()));
        }
        if let Some((socket, admin_addr)) = self.admin {
            // Plain HTTP: the admin listener is for loopback or an internal network.
            let admin_addr = admin_addr.to_string();
            service.add_tcp(&admin_addr);
            if let Some(socket) = socket {
                sockets.push((admin_addr, socket.into_raw_fd()));
            }
        }
        server.add_service(Prebound {
            inner: service,
            sockets,
            shared: Arc::clone(&self.shared),
        });
        server.add_service(pingora::services::background::background_service(
            "token refreshers",
            Refreshers(Arc::clone(&self.shared)),
        ));
        server
    }
}

/// How the proxy service's worker threads run its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runtimes {
    /// One single-threaded runtime per thread, a connection and its tasks kept on one: no
    /// wake-ups across threads in a request's path. Only for a process that runs one
    /// gateway to its end: pingora finds a thread's runtime through a thread-local table
    /// whose entries outlive their threads, so a later server in the same process could
    /// be handed the runtimes of one that stopped.
    PerThread,
    /// One work-stealing runtime for all threads, safe to start and stop again and again.
    Shared,
}

/// A gateway serving on background threads; stops when dropped.
#[derive(Debug)]
pub struct RunningGateway {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningGateway {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener's address, when the config asks for one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Stops serving at once and waits for the gateway's threads to end.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The routes, token store and OAuth state of `config` without any listener: what the CLI
/// works on when no gateway is running.
pub(crate) fn offline(config: &Config) -> Result<Arc<Shared>, StartError> {
    build_shared(config).map(Arc::new)
}

fn build_shared(config: &Config) -> Result<Shared, StartError> {
    let metrics = Arc::new(Metrics::new());
    let (routing, fresh, _) = build_routing(config.clone(), &metrics, None)?;
    load_stored_tokens(fresh.iter())?;
    let (routing_changed, _) = tokio::sync::watch::channel(0);
    Ok(Shared {
        routing: ArcSwap::from_pointee(routing),
        routing_changed,
        reloading: tokio::sync::Mutex::new(()),
        keepalive: config.server.sse_keepalive,
        connector: ConnectorDebug(TransportConnector::new(None)),
        metrics,
        inflight: Inflight::default(),
        draining: AtomicBool::new(false),
        flows: PendingFlows::new(config.server.sign_in_timeout),
        admin: AdminAuth::new(&config.admin).map_err(StartError::AdminToken)?,
        admin_listener: config.admin.listen,
        streams: Arc::new(crate::proxy::streams::StreamBounds::new(
            config.server.max_streams,
            config.server.max_streams_per_client,
        )),
        control_rate: crate::control::rate::RateLimiter::new(
            config.server.control_requests_per_minute,
        ),
        origins: crate::proxy::origin::OriginPolicy::new(
            config.server.listen,
            &config.server.public_url,
            &config.server.allowed_hosts,
            &config.server.allowed_origins,
            config.server.databricks,
        ),
        csrf: crate::secret::Secret::new(oauth2::CsrfToken::new_random().secret().clone()),
        legacy: Arc::default(),
        bridges: crate::proxy::bridge::Bridges::default(),
        legacy_sessions: crate::proxy::legacy_upstream::LegacySessions::default(),
        stop_listening: tokio::sync::watch::channel(false).0,
        closing: tokio::sync::watch::channel(false).0,
        listen_fds: upgrade::ListenTable::default(),
        started_at: crate::control::status::unix_now(),
    })
}

/// What a new set of routes did with each route of the one before.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct RouteChanges {
    pub(crate) added: Vec<String>,
    pub(crate) removed: Vec<String>,
    pub(crate) changed: Vec<String>,
    pub(crate) unchanged: Vec<String>,
}

/// Builds the routes of `config`, keeping what it can of `previous`: a route configured
/// exactly as before is the same running route (its plugins' state, its upstream's DNS
/// cache), and an OAuth route whose upstream and auth settings are the same keeps its
/// tokens in memory and its refresher. Also returns the OAuth routes that are new, whose
/// stored tokens still have to be loaded.
pub(crate) fn build_routing(
    config: Config,
    metrics: &Arc<Metrics>,
    previous: Option<&Routing>,
) -> Result<(Routing, Vec<Arc<OAuthRoute>>, RouteChanges), StartError> {
    let timeouts = Timeouts {
        connect: config.server.connect_timeout,
        read: config.server.read_timeout,
    };
    let mut store = previous.and_then(|previous| previous.store.clone());
    let mut oauth = HashMap::new();
    let mut fresh = Vec::new();
    let mut routes = Vec::with_capacity(config.routes.len());
    let mut changes = RouteChanges::default();
    for route in &config.routes {
        let before = previous.and_then(|previous| {
            let config = previous
                .config
                .routes
                .iter()
                .find(|r| r.name == route.name)?;
            Some((previous, config))
        });
        let same_public_url = previous
            .is_some_and(|previous| previous.config.server.public_url == config.server.public_url);
        let kept_oauth = before
            .filter(|(_, config)| same_public_url && same_oauth_slot(config, route))
            .and_then(|(previous, _)| previous.oauth_route(&route.name).cloned());
        if let RouteAuth::OAuth(settings) = &route.auth {
            let kept = match kept_oauth {
                Some(kept) => kept,
                None => {
                    let store = match &store {
                        Some(store) => Arc::clone(store),
                        None => {
                            let opened = open_store(&config)?;
                            store = Some(Arc::clone(&opened));
                            opened
                        }
                    };
                    let created = Arc::new(OAuthRoute::new(
                        route,
                        (**settings).clone(),
                        store,
                        oauth_http_client(route)?,
                        Arc::clone(metrics),
                        &config.server.public_url,
                        config.server.per_user_refresh_window,
                    ));
                    fresh.push(Arc::clone(&created));
                    created
                }
            };
            oauth.insert(route.name.clone(), kept);
        }
        // An OAuth route under a new public URL has a new redirect URI, so a new OAuthRoute.
        let is_oauth = matches!(route.auth, RouteAuth::OAuth(_));
        let same = before.filter(|(_, config)| *config == route && (same_public_url || !is_oauth));
        let running = same.and_then(|(previous, _)| previous.route(&route.name).cloned());
        let list = match (&before, &running) {
            (None, _) => &mut changes.added,
            (Some(_), Some(_)) => &mut changes.unchanged,
            (Some(_), None) => &mut changes.changed,
        };
        list.push(route.name.clone());
        let running = match running {
            Some(running) => running,
            None => {
                let identity = &config.server.identity_headers;
                Arc::new(build_route(
                    route,
                    timeouts,
                    identity,
                    oauth.get(&route.name),
                )?)
            }
        };
        routes.push(running);
    }
    if let Some(previous) = previous {
        changes.removed = previous
            .config
            .routes
            .iter()
            .filter(|old| !config.routes.iter().any(|new| new.name == old.name))
            .map(|old| old.name.clone())
            .collect();
    }
    let inbound = Inbound::new(
        config.server.api_keys.clone(),
        config.routes.iter().any(|route| !route.api_keys.is_empty()),
        config.server.identity_headers.clone(),
    );
    let routing = Routing {
        table: RouteTable::new(routes),
        oauth,
        inbound,
        store,
        config,
    };
    Ok((routing, fresh, changes))
}

/// Whether `after` signs in to the same place as `before`, so that its tokens still apply.
fn same_oauth_slot(before: &RouteConfig, after: &RouteConfig) -> bool {
    matches!(after.auth, RouteAuth::OAuth(_))
        && before.auth == after.auth
        && before.per_user == after.per_user
        && before.upstream_text == after.upstream_text
        && before.ca_file == after.ca_file
}

fn open_store(config: &Config) -> Result<Arc<dyn TokenStore>, StartError> {
    let keyring = Keyring::new(config.store.keys.clone());
    let sealed = !keyring.is_empty();
    match &config.store.kind {
        StoreKind::File => {
            let store =
                FileStore::new(config.store.dir.clone(), keyring).map_err(StartError::Store)?;
            tracing::info!(dir = %store.dir().display(), sealed, "token store");
            Ok(Arc::new(store))
        }
        StoreKind::Postgres(target) => {
            let store =
                PostgresStore::open((**target).clone(), keyring).map_err(StartError::Store)?;
            let workspace_login = target.workspace_login().is_some();
            tracing::info!(database = %target.describe(), sealed, workspace_login, "token store");
            Ok(Arc::new(store))
        }
    }
}

/// The client for discovery, registration and token requests of one route: it trusts the
/// route's CA file too, and follows no redirects (a token request must not be bounced).
fn oauth_http_client(route: &RouteConfig) -> Result<reqwest::Client, StartError> {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("mcp-u2m-gateway/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &route.ca_file {
        let ca_error = |source| StartError::CaFile {
            route: route.name.clone(),
            path: path.clone(),
            source,
        };
        let pem = std::fs::read(path).map_err(ca_error)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            ca_error(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                e.to_string(),
            ))
        })?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(StartError::HttpClient)
}

/// Reads every route's stored tokens before the first request can ask for them. It runs on
/// a thread of its own, so binding works from inside an async runtime too (tests do).
fn load_stored_tokens<'a>(
    routes: impl Iterator<Item = &'a Arc<OAuthRoute>> + Send,
) -> Result<(), StartError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(StartError::Runtime)?;
                runtime.block_on(async {
                    for route in routes {
                        route.load().await;
                    }
                });
                Ok(())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn build_route(
    config: &RouteConfig,
    timeouts: Timeouts,
    identity_headers: &[http::HeaderName],
    oauth: Option<&Arc<OAuthRoute>>,
) -> Result<Route, StartError> {
    let token_error = |source| StartError::Token {
        route: config.name.clone(),
        source,
    };
    let tokens: Arc<dyn TokenSource> = match (&config.auth, oauth) {
        (RouteAuth::OAuth(_), Some(route)) => Arc::clone(route) as Arc<dyn TokenSource>,
        (RouteAuth::OAuth(_), None) => unreachable!("every OAuth route has an OAuthRoute"),
        (RouteAuth::Bearer(BearerSource::Env(name)), _) => {
            Arc::new(StaticToken::from_env(name).map_err(token_error)?)
        }
        (RouteAuth::Bearer(BearerSource::File(path)), _) => {
            Arc::new(StaticToken::from_file(path).map_err(token_error)?)
        }
        (RouteAuth::None, _) => Arc::new(NoToken),
    };
    let ca =
        match &config.ca_file {
            Some(path) => Some(crate::proxy::upstream::load_ca(path).map_err(|source| {
                StartError::CaFile {
                    route: config.name.clone(),
                    path: path.clone(),
                    source,
                }
            })?),
            None => None,
        };
    let plugins = config
        .plugins
        .iter()
        .map(|plugin| {
            plugin
                .spec
                .build(&config.name)
                .map_err(|source| StartError::Plugin {
                    route: config.name.clone(),
                    kind: plugin.kind,
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let extra_headers = config
        .headers
        .iter()
        .map(|(name, value)| {
            let invalid = || StartError::Header {
                route: config.name.clone(),
                name: name.clone(),
            };
            let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
            let value = http::HeaderValue::from_str(value).map_err(|_| invalid())?;
            Ok((name, value))
        })
        .collect::<Result<Vec<_>, StartError>>()?;
    Ok(Route {
        name: config.name.clone(),
        prefix: config.prefix.clone(),
        upstream: Upstream::new(config.upstream.clone(), timeouts, ca),
        tokens,
        per_user: oauth.filter(|route| route.is_per_user()).cloned(),
        session_owners: config.per_user.then(Default::default),
        extra_headers,
        identity_headers: identity_headers.to_vec(),
        keeps_body: plugins.iter().any(|plugin| plugin.wants_request_body()),
        inspects_messages: plugins.iter().any(|plugin| plugin.inspects_messages()),
        plugins,
        max_body_bytes: config.max_body_bytes,
        api_keys: config.api_keys.clone(),
        unreachable: std::sync::atomic::AtomicBool::new(false),
        transport: config.transport,
        no_legacy: std::sync::atomic::AtomicBool::new(false),
        no_streamable: std::sync::atomic::AtomicBool::new(false),
    })
}

/// Binds a listening TCP socket with a backlog fit for bursts of MCP clients.
fn bind(addr: SocketAddr) -> Result<(OwnedFd, SocketAddr), StartError> {
    let error = |source| StartError::Bind { addr, source };
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None).map_err(error)?;
    socket.set_reuse_address(true).map_err(error)?;
    socket.set_nonblocking(true).map_err(error)?;
    socket.bind(&addr.into()).map_err(error)?;
    socket.listen(1024).map_err(error)?;
    let listener: TcpListener = socket.into();
    let local = listener.local_addr().map_err(error)?;
    Ok((OwnedFd::from(listener), local))
}

/// One refresher task per OAuth route in force (for a per-user route, one that schedules
/// everyone's refreshes). After a reload it starts the tasks of new
/// OAuth routes and stops those of routes that are gone; a route that a reload kept keeps
/// its task.
struct Refreshers(Arc<Shared>);

#[async_trait]
impl pingora::services::background::BackgroundService for Refreshers {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut changed = self.0.routing_changed.subscribe();
        // Dropping a route's sender stops its task the next time it waits.
        let mut running: Vec<(Arc<OAuthRoute>, tokio::sync::oneshot::Sender<()>)> = Vec::new();
        loop {
            let routing = self.0.routing();
            running.retain(|(route, _)| {
                routing
                    .oauth
                    .values()
                    .any(|current| Arc::ptr_eq(current, route))
            });
            for route in routing.oauth.values() {
                if !running.iter().any(|(known, _)| Arc::ptr_eq(known, route)) {
                    let (stop, stopped) = tokio::sync::oneshot::channel();
                    let task = Arc::clone(route);
                    if route.is_per_user() {
                        tokio::spawn(crate::oauth::refresher::run_users(task, stopped));
                    } else {
                        tokio::spawn(crate::oauth::refresher::run(task, stopped));
                    }
                    running.push((Arc::clone(route), stop));
                }
            }
            drop(routing);
            tokio::select! {
                changed = changed.changed() => if changed.is_err() { break },
                _ = shutdown.changed() => break,
            }
        }
    }
}

/// Hands pre-bound (or taken-over) sockets to a pingora service through the listen-fd
/// table, and gives the service the gateway's own listener shutdown signal.
struct Prebound<S> {
    inner: S,
    sockets: Vec<(String, RawFd)>,
    shared: Arc<Shared>,
}

#[async_trait]
impl<S: ServiceWithDependents> ServiceWithDependents for Prebound<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        mut shutdown: ShutdownWatch,
        listeners_per_fd: usize,
        ready: ServiceReadyNotifier,
    ) {
        if let Some(table) = &fds {
            self.shared.listen_fds.set(table);
            let mut table = table.lock();
            for (addr, socket) in self.sockets.drain(..) {
                table.add(addr, socket);
            }
        }
        // Pingora's shutdown stops the listeners; so does an upgrade, without pingora.
        let stop = self.shared.stop_listening.subscribe();
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            if shutdown.wait_for(|stop| *stop).await.is_ok() {
                shared.stop_listening.send_replace(true);
            }
        });
        self.inner
            .start_service(fds, stop, listeners_per_fd, ready)
            .await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}

/// SIGHUP: reload the configuration. SIGQUIT: hand the listening sockets to a new process
/// (`serve --upgrade`), stop accepting, drain, stop. SIGTERM or SIGINT: drain requests in
/// flight, then stop. A drain is bounded by `server.drain_secs`; streams still open then
/// end their responses and the process exits, so their clients reconnect (to the new
/// process, after an upgrade). A second signal during a drain stops at once.
struct UnixSignals {
    shared: Arc<Shared>,
    drain: Duration,
    upgrade_socket: PathBuf,
    ready: parking_lot::Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

#[async_trait]
impl ShutdownSignalWatch for UnixSignals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int), Ok(mut hup), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers; stop the gateway with SIGKILL");
            return std::future::pending().await;
        };
        if let Some(ready) = self.ready.lock().take() {
            ready();
        }
        // The sockets are listening already: connections wait in their backlog.
        systemd::notify_ready();
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    // The outcome is logged and counted; a refused file changes nothing.
                    let _ = reload::reload(&self.shared).await;
                }
                _ = quit.recv() => {
                    if self.hand_over().await {
                        break;
                    }
                }
            }
        }
        self.shared.draining.store(true, Ordering::Relaxed);
        let inflight = self.shared.inflight.count();
        tracing::info!(
            inflight,
            bound_secs = self.drain.as_secs(),
            "shutting down: draining requests in flight"
        );
        tokio::select! {
            _ = self.drained() => {
                tracing::info!("drained");
                return ShutdownSignal::FastShutdown;
            }
            _ = tokio::time::sleep(self.drain) => {
                tracing::warn!(inflight = self.shared.inflight.count(), "drain bound reached; closing the rest")
            }
            _ = term.recv() => return ShutdownSignal::FastShutdown,
            _ = int.recv() => return ShutdownSignal::FastShutdown,
        }
        self.shared.closing.send_replace(true);
        tokio::select! {
            _ = self.drained() => {}
            _ = tokio::time::sleep(CLOSE_GRACE) => {}
        }
        ShutdownSignal::FastShutdown
    }
}

impl UnixSignals {
    async fn drained(&self) {
        while self.shared.inflight.count() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends the listening sockets to the process waiting at the upgrade socket, then stops
    /// accepting; `false` (and serving on) when no process takes them.
    async fn hand_over(&self) -> bool {
        let Some(table) = self.shared.listen_fds.get() else {
            tracing::error!("upgrade refused: the listeners are not running yet");
            return false;
        };
        let path = self.upgrade_socket.clone();
        tracing::info!(socket = %path.display(), "upgrade: handing the listening sockets over");
        let sent = tokio::task::spawn_blocking(move || upgrade::send_sockets(&table, &path))
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("the hand-over task failed")));
        match sent {
            Ok(()) => {
                self.shared.draining.store(true, Ordering::Relaxed);
                self.shared.stop_listening.send_replace(true);
                tracing::info!("upgrade: sockets handed over; no longer accepting");
                true
            }
            Err(error) => {
                tracing::error!(
                    socket = %self.upgrade_socket.display(),
                    %error,
                    "upgrade failed: no new process took the sockets (start it with `serve --upgrade` first); still serving"
                );
                false
            }
        }
    }
}

/// The in-process stop switch of a [`RunningGateway`].
struct StopSignal(tokio::sync::watch::Receiver<bool>);

#[async_trait]
impl ShutdownSignalWatch for StopSignal {
    async fn recv(&self) -> ShutdownSignal {
        let mut stopped = self.0.clone();
        let _ = stopped.wait_for(|stop| *stop).await;
        ShutdownSignal::FastShutdown
    }
}
