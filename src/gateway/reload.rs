//! Hot reload: read gateway.toml again, check all of it, and swap the routes in one step.
//!
//! `SIGHUP`, `POST /admin/api/reload` and `mcp-u2m-gateway reload` all end here. The new
//! routes are built completely (plugins, CA files, token files, the OAuth side) before
//! anything changes, so a file that does not load leaves the running routes as they are.
//! Requests and streams hold the [`Routing`] they started with and finish on it.
//!
//! A reload changes routes and `server.api_keys`. Settings that belong to the listener or
//! to state made once at start (`listen`, `public_url`, TLS, timeouts, limits, `[admin]`,
//! `[store]`) keep their running values; the answer names those that differ, which take
//! effect at the next start or upgrade.

use super::{RouteChanges, Shared, StartError, build_routing};
use crate::config::{Config, ConfigError, ConfigSource};

/// What a reload changed.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Reloaded {
    #[serde(flatten)]
    pub(crate) routes: RouteChanges,
    /// Sections whose new values wait for a restart.
    pub(crate) restart_needed: Vec<&'static str>,
}

/// Why a reload left the running routes alone.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReloadError {
    #[error(
        "the gateway was configured from the environment (UPSTREAM_MCP_URL); there is no file \
         to reload: restart it to change its settings"
    )]
    NoFile,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the new configuration cannot start: {}", chain(.0))]
    Start(#[from] StartError),
}

impl ReloadError {
    /// The admin API's status and error code for this failure.
    pub(crate) fn status(&self) -> (u16, &'static str) {
        match self {
            ReloadError::NoFile => (409, "no_config_file"),
            ReloadError::Config(_) | ReloadError::Start(_) => (422, "invalid_config"),
        }
    }
}

/// Reads the running gateway's config file again and puts its routes in force.
pub(crate) async fn reload(shared: &Shared) -> Result<Reloaded, ReloadError> {
    let _one_at_a_time = shared.reloading.lock().await;
    let result = rebuild(shared).await;
    match &result {
        Ok(reloaded) => {
            shared.metrics.reload("ok");
            let routes = &reloaded.routes;
            tracing::info!(
                added = ?routes.added,
                removed = ?routes.removed,
                changed = ?routes.changed,
                unchanged = routes.unchanged.len(),
                "configuration reloaded"
            );
            if !reloaded.restart_needed.is_empty() {
                tracing::warn!(
                    sections = ?reloaded.restart_needed,
                    "these settings changed and take effect at the next start"
                );
            }
        }
        Err(error) => {
            shared.metrics.reload("invalid");
            tracing::error!("reload refused; the running configuration stays: {error}");
        }
    }
    result
}

async fn rebuild(shared: &Shared) -> Result<Reloaded, ReloadError> {
    let current = shared.routing();
    let ConfigSource::File(path) = &current.config.source else {
        return Err(ReloadError::NoFile);
    };
    // A small file, read once per reload: not worth a blocking-pool hop.
    let mut next = Config::load(Some(path))?;
    let restart_needed = keep_running_settings(&current.config, &mut next);
    let (routing, fresh, routes) = build_routing(next, &shared.metrics, Some(&current))?;
    for route in &fresh {
        route.load().await;
    }
    for name in &routes.removed {
        shared.metrics.token_expiry(name, None);
    }
    shared.install(routing);
    drop(current);
    Ok(Reloaded {
        routes,
        restart_needed,
    })
}

/// Gives `next` the running values of everything a reload does not change, and names the
/// sections where the file now says something else.
fn keep_running_settings(running: &Config, next: &mut Config) -> Vec<&'static str> {
    let mut differ = Vec::new();
    let api_keys = std::mem::take(&mut next.server.api_keys);
    let mut written = std::mem::replace(&mut next.server, running.server.clone());
    next.server.api_keys = api_keys;
    // Port 0 in the file means "any", and no URL on Databricks means "as forwarded": the
    // running value, with its real port or as learnt, is the same.
    if written.public_url.port() == Some(0) || written.learn_public_url {
        written.public_url = running.server.public_url.clone();
        written.learn_public_url = running.server.learn_public_url;
    }
    written.api_keys = running.server.api_keys.clone();
    if written != running.server {
        differ.push("server");
    }
    if next.admin.listen.is_some_and(|addr| addr.port() == 0) {
        next.admin.listen = running.admin.listen;
    }
    if next.admin != running.admin {
        differ.push("admin");
    }
    if next.store != running.store {
        differ.push("store");
    }
    next.admin = running.admin.clone();
    next.store = running.store.clone();
    differ
}

/// `error` and its causes on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
