//! The operator's commands: `status`, `list`, `auth`, `refresh`, `clear`, `reload` and
//! `upgrade`.
//!
//! Each asks the running gateway's admin API first, at the address the configuration
//! names. When no gateway answers there, the command works on the token store directly,
//! with the same code the gateway runs; `auth` then serves the sign-in pages and the OAuth
//! callback itself, on the configured address, for as long as the sign-in takes. Output is
//! plain aligned text, or with `--json` the admin API's own JSON, stable for scripts.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use url::Url;

use crate::config::{BearerSource, Config};
use crate::control::status::{RouteStatus, SignInState, unix_now};
use crate::gateway::{self, Gateway, Shared};

/// How long `auth` waits for the person to finish signing in.
const SIGN_IN_WAIT: Duration = Duration::from_secs(300);

/// How a command ended, beyond success and error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Done {
    Ok,
    /// A route the command is about needs a person to sign in (exit code 3).
    NeedsSignIn,
}

/// Where the commands get their answers.
enum Backend {
    Gateway(AdminClient),
    Store(Arc<Shared>),
}

/// The running gateway's admin API.
struct AdminClient {
    base: Url,
    http: reqwest::Client,
    token: Option<String>,
}

impl AdminClient {
    fn new(config: &Config) -> anyhow::Result<Self> {
        let listen = admin_address(config);
        let base = if config.server.tls.is_some() && config.admin.listen.is_none() {
            config.server.public_url.clone()
        } else {
            // The gateway listens on every address or on this one; loopback reaches both.
            let host = match listen.ip() {
                ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
                ip if ip.is_unspecified() => "[::1]".to_owned(),
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            };
            Url::parse(&format!("http://{host}:{}/", listen.port()))?
        };
        let token = match &config.admin.token {
            None => None,
            Some(BearerSource::Env(name)) => std::env::var(name).ok(),
            Some(BearerSource::File(path)) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading the admin token {}", path.display()))?,
            ),
        };
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        Ok(Self {
            base,
            http,
            token: token.map(|token| token.trim().to_owned()),
        })
    }

    fn url(&self, path: &str) -> anyhow::Result<Url> {
        Ok(self.base.join(&format!("admin/api/{path}"))?)
    }

    /// Sends one request; `None` when no gateway listens there.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> anyhow::Result<Option<(u16, Value)>> {
        let mut request = self.http.request(method, self.url(path)?);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) if error.is_connect() => return Ok(None),
            Err(error) => {
                return Err(error).with_context(|| format!("asking the gateway at {}", self.base));
            }
        };
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        if status == 401 {
            bail!(
                "the gateway at {} refused the admin API: {}",
                self.base,
                message(&body)
            );
        }
        Ok(Some((status, body)))
    }

    /// The pid of the process answering; `None` when none does.
    async fn process(&self) -> anyhow::Result<Option<u32>> {
        let Some((_, body)) = self.send(reqwest::Method::GET, "process").await? else {
            return Ok(None);
        };
        let pid = body["pid"]
            .as_u64()
            .context("the gateway did not say its pid")?;
        Ok(Some(u32::try_from(pid)?))
    }

    async fn routes(&self) -> anyhow::Result<Vec<RouteStatus>> {
        let (_, body) = self
            .send(reqwest::Method::GET, "routes")
            .await?
            .context("the gateway stopped answering")?;
        Ok(serde_json::from_value(body["routes"].clone())?)
    }
}

/// Where the admin API listens: the admin listener, or else the main one.
fn admin_address(config: &Config) -> std::net::SocketAddr {
    config.admin.listen.unwrap_or(config.server.listen)
}

fn message(body: &Value) -> String {
    body["message"]
        .as_str()
        .map_or_else(|| body.to_string(), str::to_owned)
}

impl Backend {
    /// The running gateway when one answers, else the store.
    async fn connect(config: &Config) -> anyhow::Result<Self> {
        if admin_address(config).port() != 0 {
            let client = AdminClient::new(config)?;
            if client.send(reqwest::Method::GET, "routes").await?.is_some() {
                return Ok(Backend::Gateway(client));
            }
        }
        Ok(Backend::Store(gateway::offline(config)?))
    }

    async fn routes(&self) -> anyhow::Result<Vec<RouteStatus>> {
        match self {
            Backend::Gateway(client) => client.routes().await,
            Backend::Store(shared) => Ok(RouteStatus::all(shared, None)),
        }
    }

    async fn route(&self, name: &str) -> anyhow::Result<RouteStatus> {
        let routes = self.routes().await?;
        let names: Vec<String> = routes.iter().map(|route| route.name.clone()).collect();
        routes
            .into_iter()
            .find(|route| route.name == name)
            .with_context(|| format!("there is no route '{name}'; routes: {}", names.join(", ")))
    }

    fn source(&self) -> &'static str {
        match self {
            Backend::Gateway(_) => "gateway",
            Backend::Store(_) => "store",
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `status [ROUTE] [--json]`.
pub(crate) fn status(config: &Config, route: Option<&str>, json: bool) -> anyhow::Result<Done> {
    runtime()?.block_on(async {
        let backend = Backend::connect(config).await?;
        let routes = match route {
            Some(name) => vec![backend.route(name).await?],
            None => backend.routes().await?,
        };
        let done = if routes.iter().any(RouteStatus::needs_sign_in) {
            Done::NeedsSignIn
        } else {
            Done::Ok
        };
        if json {
            let body = match route {
                Some(_) => serde_json::to_value(&routes[0])?,
                None => json!({ "source": backend.source(), "routes": routes }),
            };
            println!("{}", serde_json::to_string_pretty(&body)?);
        } else if route.is_some() {
            print_details(&routes[0]);
        } else {
            print_table(&routes);
        }
        Ok(done)
    })
}

/// `reload [--json]`: only a running gateway can reload, so there is no store fallback.
pub(crate) fn reload(config: &Config, json: bool) -> anyhow::Result<Done> {
    runtime()?.block_on(async {
        let client = AdminClient::new(config)?;
        let Some((status, body)) = client.send(reqwest::Method::POST, "reload").await? else {
            bail!(
                "no gateway answers at {}; a gateway reads the file when it starts",
                client.base
            );
        };
        if status != 200 {
            bail!(
                "the gateway kept its running configuration: {}",
                message(&body)
            );
        }
        if json {
            println!("{}", serde_json::to_string_pretty(&body)?);
            return Ok(Done::Ok);
        }
        let names = |key: &str| -> Vec<String> {
            body[key]
                .as_array()
                .map(|list| {
                    list.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        println!("reloaded {}", client.base);
        for (label, key) in [
            ("added", "added"),
            ("removed", "removed"),
            ("changed", "changed"),
        ] {
            let list = names(key);
            if !list.is_empty() {
                println!("  {label}: {}", list.join(", "));
            }
        }
        println!("  unchanged: {}", names("unchanged").len());
        let restart = names("restart_needed");
        if !restart.is_empty() {
            println!(
                "  changed in [{}], which applies at the next start",
                restart.join("], [")
            );
        }
        Ok(Done::Ok)
    })
}

/// How long `upgrade` waits for the new process to answer in the old one's place.
const UPGRADE_WAIT: Duration = Duration::from_secs(20);

/// `upgrade`: starts `serve --upgrade` from this binary, waits until it listens at the
/// upgrade socket, sends the running gateway SIGQUIT, and returns once the admin API
/// answers from the new process. The new process keeps this command's stdout and stderr.
pub(crate) fn upgrade(
    config: &Config,
    config_path: Option<&std::path::Path>,
) -> anyhow::Result<Done> {
    runtime()?.block_on(async {
        let client = AdminClient::new(config)?;
        let Some(old) = client.process().await? else {
            bail!(
                "no gateway answers at {}: start one with `mcp-u2m-gateway serve`",
                client.base
            );
        };
        let socket = config.upgrade_socket();
        let _ = std::fs::remove_file(&socket);
        let mut command = std::process::Command::new(
            std::env::current_exe().context("finding this binary")?,
        );
        command.args(["serve", "--upgrade"]);
        if let Some(path) = config_path {
            command.arg("--config").arg(path);
        }
        // A process group of its own: a signal to this command's group leaves it alone.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
            .stdin(std::process::Stdio::null())
            .spawn()
            .context("starting the new gateway process")?;
        let new = child.id();
        let deadline = Instant::now() + UPGRADE_WAIT;
        let exited = |child: &mut std::process::Child| -> anyhow::Result<()> {
            if let Some(status) = child.try_wait()? {
                bail!("the new process exited ({status}); the running gateway (pid {old}) keeps serving");
            }
            Ok(())
        };
        while !socket.exists() {
            exited(&mut child)?;
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("the new process did not wait at {}", socket.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let pid = i32::try_from(old).context("the running gateway's pid")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGQUIT,
        )
        .with_context(|| format!("signalling the running gateway (pid {old})"))?;
        loop {
            exited(&mut child)?;
            if client.process().await.ok().flatten() == Some(new) {
                break;
            }
            if Instant::now() > deadline {
                bail!("the new process (pid {new}) did not take over within {UPGRADE_WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "upgraded: pid {old} -> {new}; pid {old} drains its requests for up to {} s",
            config.server.drain.as_secs()
        );
        Ok(Done::Ok)
    })
}

fn expiry_text(route: &RouteStatus) -> String {
    let Some(sign_in) = &route.sign_in else {
        return "-".to_owned();
    };
    match (sign_in.state, sign_in.expires_in) {
        (SignInState::NeedsSignIn, _) | (_, None) => "-".to_owned(),
        (_, Some(left)) if left <= 0 => "expired".to_owned(),
        (_, Some(left)) => format!("in {}", duration_text(left as u64)),
    }
}

fn duration_text(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{} min", seconds / 60),
        _ => format!("{} h {} min", seconds / 3600, seconds % 3600 / 60),
    }
}

fn state_text(route: &RouteStatus) -> String {
    let state = match (&route.sign_in, &route.per_user) {
        (Some(sign_in), _) => sign_in.state.label().to_owned(),
        (None, Some(people)) => format!(
            "per-user: {} of {} signed in",
            people.signed_in, people.known
        ),
        (None, None) => "ready".to_owned(),
    };
    if route.upstream_unreachable {
        format!("{state} (upstream unreachable)")
    } else {
        state
    }
}

/// Prints rows under a header, each column as wide as its widest cell.
fn print_rows(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    let header: Vec<String> = header.iter().map(|cell| (*cell).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (index, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if index + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

fn print_table(routes: &[RouteStatus]) {
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|route| {
            vec![
                route.name.clone(),
                route.auth.clone(),
                state_text(route),
                expiry_text(route),
                route.streamable_http.clone(),
            ]
        })
        .collect();
    print_rows(&["ROUTE", "AUTH", "STATUS", "EXPIRES", "ENDPOINT"], &rows);
}

fn print_details(route: &RouteStatus) {
    let mut rows = vec![
        ("route", route.name.clone()),
        ("status", state_text(route)),
        ("prefix", route.prefix.clone()),
        ("upstream", route.upstream.clone()),
        ("auth", route.auth.clone()),
        ("endpoint", route.streamable_http.clone()),
        ("legacy SSE", route.sse.clone()),
    ];
    if let Some(sign_in) = &route.sign_in {
        if let Some(reason) = &sign_in.reason {
            rows.push(("reason", reason.clone()));
        }
        rows.push(("expires", expiry_text(route)));
        if let Some(scope) = &sign_in.scope {
            rows.push(("scopes", scope.clone()));
        }
        if let Some(last) = &sign_in.last_refresh {
            let ago = duration_text(unix_now().saturating_sub(last.at));
            rows.push(("last refresh", format!("{} ({ago} ago)", last.outcome)));
        }
        rows.push(("sign in at", sign_in.sign_in_url.clone()));
    }
    let width = rows.iter().map(|(key, _)| key.len()).max().unwrap_or(0);
    for (key, value) in rows {
        println!("{:<width$}  {value}", format!("{key}:"), width = width + 1);
    }
}

/// `list`: what the token store holds for each OAuth route.
pub(crate) fn list(config: &Config, json: bool) -> anyhow::Result<Done> {
    runtime()?.block_on(async {
        let shared = gateway::offline(config)?;
        let mut entries = Vec::new();
        for route in config.routes.iter() {
            let Some(oauth) = shared.routing().oauth_route(&route.name).cloned() else {
                continue;
            };
            let tokens = oauth.store.load_tokens(&oauth.slot).await.ok().flatten();
            let client = oauth.store.load_client(&oauth.slot).await.ok().flatten();
            entries.push(json!({
                "route": route.name,
                "upstream": route.upstream_text,
                "slot": oauth.slot.hash(),
                "tokens": tokens.is_some(),
                "refresh_token": tokens.as_ref().is_some_and(|t| t.refresh_token.is_some()),
                "client_registered": client.is_some(),
            }));
        }
        if json {
            let store = crate::cli::describe_store(&config.store);
            let body = json!({ "store": store, "slots": entries });
            println!("{}", serde_json::to_string_pretty(&body)?);
            return Ok(Done::Ok);
        }
        println!("token store: {}", crate::cli::describe_store(&config.store));
        let yes = |value: &Value| if value == true { "yes" } else { "no" }.to_owned();
        let rows: Vec<Vec<String>> = entries
            .iter()
            .map(|entry| {
                vec![
                    entry["route"].as_str().unwrap_or_default().to_owned(),
                    yes(&entry["tokens"]),
                    yes(&entry["refresh_token"]),
                    yes(&entry["client_registered"]),
                    format!("{}_*", entry["slot"].as_str().unwrap_or_default()),
                ]
            })
            .collect();
        print_rows(&["ROUTE", "TOKENS", "REFRESH", "CLIENT", "FILES"], &rows);
        Ok(Done::Ok)
    })
}

/// `refresh ROUTE`.
pub(crate) fn refresh(config: &Config, name: &str, json: bool) -> anyhow::Result<Done> {
    runtime()?.block_on(async {
        let backend = Backend::connect(config).await?;
        backend.route(name).await?;
        let outcome = match &backend {
            Backend::Gateway(client) => {
                let path = format!("routes/{name}/refresh");
                let (status, body) = client
                    .send(reqwest::Method::POST, &path)
                    .await?
                    .context("the gateway stopped answering")?;
                match status {
                    200 => Ok(()),
                    409 if body["error"] == "needs_sign_in" => Err((true, message(&body))),
                    _ => Err((false, message(&body))),
                }
            }
            Backend::Store(shared) => {
                let route = shared
                    .routing()
                    .oauth_route(name)
                    .cloned()
                    .with_context(|| format!("route '{name}' does not sign in with OAuth"))?;
                per_user_refused(&route)?;
                route.refresh_now().await.map_err(|error| {
                    let needs = route.status() != crate::oauth::SlotStatus::SignedIn;
                    (needs, format!("route '{name}': {error}"))
                })
            }
        };
        let status = backend.route(name).await?;
        match outcome {
            Ok(()) => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&status)?);
                } else {
                    println!(
                        "route '{name}': refreshed; the access token expires {}",
                        expiry_text(&status)
                    );
                }
                Ok(Done::Ok)
            }
            Err((true, message)) => {
                eprintln!("{message}");
                if let Some(sign_in) = &status.sign_in {
                    eprintln!(
                        "sign in with: mcp-u2m-gateway auth {name}   (or open {})",
                        sign_in.sign_in_url
                    );
                }
                Ok(Done::NeedsSignIn)
            }
            Err((false, message)) => bail!("{message}"),
        }
    })
}

/// `clear ROUTE` or `clear --all`.
pub(crate) fn clear(
    config: &Config,
    name: Option<&str>,
    registration: bool,
) -> anyhow::Result<Done> {
    runtime()?.block_on(async {
        let backend = Backend::connect(config).await?;
        let names: Vec<String> = match name {
            Some(name) => vec![backend.route(name).await?.name],
            None => backend
                .routes()
                .await?
                .into_iter()
                .filter(|route| route.sign_in.is_some())
                .map(|route| route.name)
                .collect(),
        };
        for name in names {
            match &backend {
                Backend::Gateway(client) => {
                    let query = if registration {
                        "?registration=true"
                    } else {
                        ""
                    };
                    let path = format!("routes/{name}/clear{query}");
                    let (status, body) = client
                        .send(reqwest::Method::POST, &path)
                        .await?
                        .context("the gateway stopped answering")?;
                    if status != 200 {
                        bail!("route '{name}': {}", message(&body));
                    }
                }
                Backend::Store(shared) => {
                    let route = shared
                        .routing()
                        .oauth_route(&name)
                        .cloned()
                        .with_context(|| format!("route '{name}' does not sign in with OAuth"))?;
                    per_user_refused(&route)?;
                    route
                        .clear(registration)
                        .await
                        .with_context(|| format!("clearing route '{name}'"))?;
                }
            }
            println!("route '{name}': signed out");
        }
        Ok(Done::Ok)
    })
}

/// Refuses to act on a per-user route's own slot, which holds nobody's sign-in.
fn per_user_refused(route: &crate::oauth::OAuthRoute) -> anyhow::Result<()> {
    if route.is_per_user() {
        bail!(
            "route '{}' keeps a sign-in per person: with the gateway running, use its admin \
             API with ?principal=<identity> (POST /admin/api/routes/{}/refresh or /clear)",
            route.name,
            route.name
        );
    }
    Ok(())
}

/// `auth ROUTE`: prints the URL to sign in at, opens a browser where there is one, and waits
/// for the sign-in to finish.
pub(crate) fn auth(config: Config, name: &str) -> anyhow::Result<Done> {
    runtime()?.block_on(async {
        let backend = Backend::connect(&config).await?;
        let before = backend.route(name).await?;
        if before.per_user.is_some() {
            bail!(
                "route '{name}' keeps a sign-in per person: each person signs in on the \
                 gateway's page, reached through the proxy that names them"
            );
        }
        let Some(sign_in) = &before.sign_in else {
            bail!("route '{name}' does not sign in with OAuth");
        };
        let started = Instant::now();
        match backend {
            Backend::Gateway(client) => {
                show_url(name, &sign_in.sign_in_url);
                wait_for_gateway(&client, name, &before, started).await
            }
            Backend::Store(_) => {
                // No gateway is running: serve the callback here for as long as it takes.
                drop(backend);
                let gateway =
                    Gateway::bind(config).context("starting a listener for the OAuth callback")?;
                let shared = gateway.shared();
                let running = gateway.spawn();
                let route = shared
                    .routing()
                    .oauth_route(name)
                    .cloned()
                    .context("the route has no OAuth state")?;
                // The browser starts at the gateway's own start page, which binds the
                // sign-in to it with a cookie.
                show_url(name, &route.sign_in_url);
                let result = wait_for_store(&route, started).await;
                // The callback that completed the sign-in is still writing its page.
                let idle_by = Instant::now() + Duration::from_secs(5);
                while shared.inflight.count() > 0 && Instant::now() < idle_by {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                running.stop();
                result
            }
        }
    })
}

fn show_url(name: &str, url: &str) {
    println!("Sign in to route '{name}' by opening this URL in a browser:");
    println!();
    println!("  {url}");
    println!();
    if open_browser(url) {
        println!("A browser was opened; waiting for the sign-in (up to 5 minutes)...");
    } else {
        println!(
            "Could not open a browser: open the URL above on any device that can reach this \
             machine. Waiting for the sign-in (up to 5 minutes)..."
        );
    }
}

/// Opens `url` in the desktop's browser; false where there is no desktop to open it on.
fn open_browser(url: &str) -> bool {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        let desktop =
            std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
        if !desktop {
            return false;
        }
        "xdg-open"
    };
    std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn signed_in_now(route: &RouteStatus, before: &RouteStatus) -> bool {
    let (Some(now), Some(then)) = (&route.sign_in, &before.sign_in) else {
        return false;
    };
    now.state == SignInState::SignedIn
        && (then.state == SignInState::NeedsSignIn || now.expires_at != then.expires_at)
}

async fn wait_for_gateway(
    client: &AdminClient,
    name: &str,
    before: &RouteStatus,
    started: Instant,
) -> anyhow::Result<Done> {
    while started.elapsed() < SIGN_IN_WAIT {
        // Once a second: well within the admin API's rate limit.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let routes = client.routes().await?;
        if let Some(route) = routes.iter().find(|route| route.name == name)
            && signed_in_now(route, before)
        {
            println!("Signed in to route '{name}'.");
            return Ok(Done::Ok);
        }
    }
    bail!("no sign-in to route '{name}' finished within 5 minutes")
}

async fn wait_for_store(
    route: &crate::oauth::OAuthRoute,
    started: Instant,
) -> anyhow::Result<Done> {
    let generation = route.generation();
    while started.elapsed() < SIGN_IN_WAIT {
        let changed = route.changed();
        if route.generation() != generation && route.status() == crate::oauth::SlotStatus::SignedIn
        {
            println!("Signed in to route '{}'.", route.name);
            return Ok(Done::Ok);
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), changed).await;
    }
    bail!(
        "no sign-in to route '{}' finished within 5 minutes",
        route.name
    )
}
