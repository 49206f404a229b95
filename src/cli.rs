//! The command line: `serve` (the default) runs the gateway, `check` validates a
//! configuration and prints the routes it resolves to, and the operator's commands
//! (`status`, `list`, `auth`, `refresh`, `clear`, in [`admin`]) manage sign-ins through the
//! running gateway or, when none runs, on the token store directly.
//!
//! Exit codes: 0 success, 1 an error (the message says what to fix), 2 a usage error, 3 a
//! route needs a person to sign in.

mod admin;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigSource, StoreKind};
use crate::gateway::Gateway;

/// A gateway in front of OAuth-protected MCP servers.
#[derive(Debug, Parser)]
#[command(name = "mcp-u2m-gateway", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default when no command is given).
    Serve(ServeArgs),
    /// Validate the configuration and print the resolved routes; exit 1 on an error.
    Check(ConfigArg),
    /// Show each route's sign-in status; exit 3 when one needs sign-in.
    Status {
        /// Only this route, in detail.
        route: Option<String>,
        #[command(flatten)]
        output: JsonArg,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List what the token store holds for each OAuth route.
    List {
        #[command(flatten)]
        output: JsonArg,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Sign in to a route: print the URL to open, open a browser if there is one, wait.
    Auth {
        route: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Refresh a route's tokens now; exit 3 when the route needs sign-in instead.
    Refresh {
        route: String,
        #[command(flatten)]
        output: JsonArg,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Tell the running gateway to read its configuration file again and apply the routes.
    Reload {
        #[command(flatten)]
        output: JsonArg,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Replace the running gateway with a new process of this binary, without refusing or
    /// dropping a connection: the new one takes the sockets over, the old one drains.
    Upgrade {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Make a new API key for a client, and print the line that lets it in.
    Keygen,
    /// Sign a route out (or every OAuth route), removing its stored tokens.
    Clear {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        route: Option<String>,
        /// Every OAuth route.
        #[arg(long)]
        all: bool,
        /// Also forget the client registration, so the next sign-in registers again.
        #[arg(long)]
        registration: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Default, clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Log lines as text for people, JSON for collectors, or text on a terminal and JSON
    /// otherwise. What is logged follows RUST_LOG (default: info).
    #[arg(long, value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
    /// Take the listening sockets over from the running gateway (send it SIGQUIT once this
    /// one waits) instead of binding them; `mcp-u2m-gateway upgrade` does both.
    #[arg(long)]
    upgrade: bool,
}

#[derive(Debug, Default, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    #[default]
    Auto,
    Text,
    Json,
}

#[derive(Debug, Default, clap::Args)]
struct JsonArg {
    /// Print JSON, stable for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Default, clap::Args)]
struct ConfigArg {
    /// Configuration file; otherwise $MCP_GATEWAY_CONFIG, then single-upstream mode when
    /// UPSTREAM_MCP_URL is set, then ./gateway.toml.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

impl Cli {
    /// Runs the chosen command.
    pub fn run(self) -> ExitCode {
        let result = match self.command.unwrap_or(Command::Serve(ServeArgs::default())) {
            Command::Serve(args) => serve(args).map(|()| admin::Done::Ok),
            Command::Check(args) => check(args).map(|()| admin::Done::Ok),
            Command::Keygen => {
                keygen();
                Ok(admin::Done::Ok)
            }
            Command::Status {
                route,
                output,
                config,
            } => load(&config).and_then(|c| admin::status(&c, route.as_deref(), output.json)),
            Command::List { output, config } => {
                load(&config).and_then(|c| admin::list(&c, output.json))
            }
            Command::Auth { route, config } => load(&config).and_then(|c| admin::auth(c, &route)),
            Command::Refresh {
                route,
                output,
                config,
            } => load(&config).and_then(|c| admin::refresh(&c, &route, output.json)),
            Command::Upgrade { config } => {
                load(&config).and_then(|c| admin::upgrade(&c, config.config.as_deref()))
            }
            Command::Reload { output, config } => {
                load(&config).and_then(|c| admin::reload(&c, output.json))
            }
            Command::Clear {
                route,
                registration,
                config,
                ..
            } => load(&config).and_then(|c| admin::clear(&c, route.as_deref(), registration)),
        };
        match result {
            Ok(admin::Done::Ok) => ExitCode::SUCCESS,
            Ok(admin::Done::NeedsSignIn) => ExitCode::from(3),
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        }
    }
}

/// Prints a fresh API key (256 random bits) and its hash for `server.api_keys`. The key goes
/// to the client; only the hash goes in the config.
fn keygen() {
    use sha2::Digest;
    let key = format!("mgw_{}", oauth2::CsrfToken::new_random_len(32).secret());
    let digest = sha2::Sha256::digest(key.as_bytes());
    let hash: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    println!("API key (give it to the client, which sends it as Authorization: Bearer <key>):");
    println!();
    println!("  {key}");
    println!();
    println!("Add its hash to [server] api_keys in gateway.toml:");
    println!();
    println!("  api_keys = [\"sha256:{hash}\"]");
}

fn load(args: &ConfigArg) -> anyhow::Result<Config> {
    Ok(Config::load(args.config.as_deref())?)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let config = Config::load(args.config.config.as_deref())?;
    let gateway = if args.upgrade {
        Gateway::take_over(config)?
    } else {
        Gateway::bind(config)?
    };
    let (config, addr) = (gateway.config().clone(), gateway.local_addr());
    gateway.run(move || print_banner(&config, addr));
    Ok(())
}

/// Where the token store is, as an operator reads it: the file store's directory, or the
/// database and how the gateway logs in to it; never a password or a key.
pub(crate) fn describe_store(store: &crate::config::StoreConfig) -> String {
    let place = match &store.kind {
        StoreKind::File => store.dir.display().to_string(),
        StoreKind::Postgres(target) => match target.workspace_login() {
            Some(login) => format!(
                "postgres {} (password: workspace OAuth token of {} from {})",
                target.describe(),
                login.client_id,
                login.endpoint
            ),
            None => format!("postgres {}", target.describe()),
        },
    };
    match store.keys.first() {
        Some(key) => format!("{place} (sealed with key {})", key.id),
        None => place,
    }
}

fn check(args: ConfigArg) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref())?;
    let source = match &config.source {
        ConfigSource::File(path) => path.display().to_string(),
        ConfigSource::Environment => "environment (UPSTREAM_MCP_URL)".to_owned(),
    };
    println!("configuration: {source}: ok");
    println!("listen:        {}", config.server.listen);
    println!("public url:    {}", config.server.public_url);
    println!("token store:   {}", describe_store(&config.store));
    println!("routes:");
    let width = config
        .routes
        .iter()
        .map(|r| r.prefix.len())
        .max()
        .unwrap_or(0);
    for route in &config.routes {
        let per_user = if route.per_user { ", per-user" } else { "" };
        println!(
            "  {:<width$}  -> {}  (route '{}', auth {}{per_user})",
            route.prefix,
            route.upstream,
            route.name,
            route.auth.kind(),
        );
    }
    Ok(())
}

/// Prints where the gateway listens and each route's endpoints. Write errors are ignored: a
/// closed stdout must not stop a gateway.
fn print_banner(config: &Config, addr: std::net::SocketAddr) {
    if config.server.databricks {
        tracing::info!("Databricks Apps environment: the platform authenticates callers");
    } else if config.server.allow_anonymous && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "allow_anonymous: anyone who can reach this address can use every route");
    }
    let scheme = if config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "mcp-u2m-gateway {} listening on {scheme}://{addr}",
        env!("CARGO_PKG_VERSION")
    );
    let base = config.server.public_url.as_str().trim_end_matches('/');
    let _ = writeln!(out, "  sign-in page      {base}/");
    for route in &config.routes {
        let prefix = route.prefix.trim_end_matches('/');
        let _ = writeln!(
            out,
            "  route {:<12} {base}{prefix}/mcp  (legacy SSE: {base}{prefix}/sse)  -> {}",
            route.name, route.upstream
        );
    }
}

/// The gateway's lifecycle at `info`; pingora's own start-up and shutdown chatter only when
/// something is wrong. Its connection pool says nothing: it logs an error when a kept
/// connection's idle watcher still holds it, and a warning when one had unasked bytes,
/// and in both cases quietly opens a new connection, so neither is anything to act on.
const DEFAULT_LOG_FILTER: &str =
    "info,pingora_core=warn,pingora_core::connectors=off,pingora_proxy=warn";

/// `RUST_LOG`-style filtering, to stderr, as text or JSON lines.
///
/// Whatever `RUST_LOG` says, other crates log at `info` at most: pingora prints whole request
/// headers (the injected token among them) at `trace`, and response headers (session ids) at
/// `debug`. The gateway's own events never carry a secret, at any level.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer, filter};

    let env =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    // The hint keeps the global level at what `RUST_LOG` asks for: without one, every
    // disabled `log` call in pingora's request path would still be built and then filtered.
    let wanted = env.max_level_hint();
    let ours_or_info = filter::filter_fn(|meta| {
        meta.target().starts_with("mcp_u2m_gateway") || *meta.level() <= tracing::Level::INFO
    });
    let ours_or_info = match wanted {
        Some(level) => ours_or_info.with_max_level_hint(level),
        None => ours_or_info,
    };
    let json = match format {
        LogFormat::Auto => !std::io::stderr().is_terminal(),
        LogFormat::Text => false,
        LogFormat::Json => true,
    };
    let output = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let output = if json {
        output.json().boxed()
    } else {
        output.boxed()
    };
    let _ = tracing_subscriber::registry()
        .with(output.with_filter(env).with_filter(ours_or_info))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::DEFAULT_LOG_FILTER;
    use tracing_subscriber::EnvFilter;

    #[test]
    fn the_default_log_filter_parses_whole() {
        // `EnvFilter::new` drops a directive it cannot read without a word.
        let filter = EnvFilter::try_new(DEFAULT_LOG_FILTER).expect("a valid filter");
        let shown = filter.to_string();
        assert!(shown.contains("pingora_core::connectors=off"), "{shown}");
    }
}
