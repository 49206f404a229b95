//! What the process environment contributes: which file to load, the Databricks Apps
//! port overlay, `~` expansion, and single-upstream mode (`UPSTREAM_MCP_URL`), which
//! builds a whole configuration without a file.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use super::validate;
use super::{
    AdminConfig, Config, ConfigError, ConfigSource, FieldError, FieldErrorKind, RouteAuth,
    RouteConfig, StoreConfig,
};

/// Names a config file; checked before anything else but `--config`.
pub(super) const CONFIG_VAR: &str = "MCP_GATEWAY_CONFIG";
/// Single-upstream mode's upstream base URL.
pub(super) const UPSTREAM_VAR: &str = "UPSTREAM_MCP_URL";
/// Set by Databricks Apps: the port the platform routes to. Its presence also says the
/// platform authenticates callers in front of the gateway.
pub(super) const DATABRICKS_PORT_VAR: &str = "DATABRICKS_APP_PORT";
/// Single-upstream mode's principal: `shared` (the default) or `forwarded`, one sign-in per
/// person named by the platform in front.
pub(super) const PRINCIPAL_VAR: &str = "MCP_GATEWAY_PRINCIPAL";
/// Single-upstream mode's token store: `file` (the default) or `postgres`, the database
/// named by the libpq variables.
pub(super) const STORE_VAR: &str = "MCP_GATEWAY_STORE";
/// Port variables in order of precedence for single-upstream mode.
const PORT_VARS: &[&str] = &[DATABRICKS_PORT_VAR, "PORT", "OAUTH_CALLBACK_PORT"];
const DEFAULT_PORT: u16 = 8000;

/// Read access to environment variables. Production uses [`ProcessEnv`]; tests pass a
/// `HashMap` or an array of pairs.
pub(crate) trait Env {
    /// The variable's value, or `None` when it is unset, empty or not UTF-8.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|value| !value.is_empty())
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).filter(|value| !value.is_empty()).cloned()
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| (*value).to_owned())
            .filter(|value| !value.is_empty())
    }
}

/// Finds the configuration in the documented order: `explicit`, `$MCP_GATEWAY_CONFIG`,
/// single-upstream mode, then `default_file` if it exists.
pub(super) fn discover(
    explicit: Option<&Path>,
    env: &dyn Env,
    default_file: &Path,
) -> Result<Config, ConfigError> {
    let named = explicit
        .map(Path::to_owned)
        .or_else(|| env.var(CONFIG_VAR).map(PathBuf::from));
    if let Some(path) = named {
        warn_if_upstream_ignored(env, &path);
        return Config::from_file(&path, env);
    }
    if env.var(UPSTREAM_VAR).is_some() {
        return Config::from_env(env);
    }
    if default_file.is_file() {
        return Config::from_file(default_file, env);
    }
    Err(ConfigError::NotFound)
}

fn warn_if_upstream_ignored(env: &dyn Env, path: &Path) {
    if env.var(UPSTREAM_VAR).is_some() {
        tracing::warn!(
            config = %path.display(),
            "UPSTREAM_MCP_URL is ignored because a config file is named"
        );
    }
}

/// Builds the single-upstream configuration from the environment.
pub(super) fn single_upstream(env: &dyn Env) -> Result<Config, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut fail = |key: &str, kind| {
        errors.push(FieldError {
            key: key.to_owned(),
            at: None,
            kind,
        })
    };

    let upstream = match env.var(UPSTREAM_VAR) {
        None => {
            fail(UPSTREAM_VAR, FieldErrorKind::NoRoutes);
            None
        }
        Some(text) => validate::http_url(&text)
            .map(|url| (url, text))
            .map_err(|kind| fail(UPSTREAM_VAR, kind))
            .ok(),
    };
    let listen = single_upstream_listen(env).map_err(|(var, kind)| fail(var, kind));
    let store_dir =
        expand_home(validate::DEFAULT_STORE_DIR, env).map_err(|kind| fail("HOME", kind));
    let databricks = env.var(DATABRICKS_PORT_VAR).is_some();
    let per_user =
        single_upstream_principal(env, databricks).map_err(|kind| fail(PRINCIPAL_VAR, kind));
    let store = super::store::from_env(env).map_err(|store_errors| errors.extend(store_errors));

    match (upstream, listen, store_dir, per_user, store) {
        (Some((upstream, upstream_text)), Ok(listen), Ok(dir), Ok(per_user), Ok(store))
            if errors.is_empty() =>
        {
            Ok(Config {
                server: validate::default_server(listen, databricks),
                store: StoreConfig {
                    kind: store,
                    dir,
                    keys: Vec::new(),
                },
                admin: AdminConfig {
                    listen: None,
                    token: super::admin::default_token(env),
                    allow_loopback: true,
                },
                routes: vec![RouteConfig {
                    name: "default".to_owned(),
                    prefix: "/".to_owned(),
                    upstream,
                    upstream_text,
                    ca_file: None,
                    max_body_bytes: super::routes::DEFAULT_MAX_BODY_BYTES,
                    transport: super::Transport::Auto,
                    api_keys: Vec::new(),
                    auth: RouteAuth::OAuth(Box::default()),
                    per_user,
                    headers: Vec::new(),
                    plugins: Vec::new(),
                }],
                source: ConfigSource::Environment,
            })
        }
        _ => Err(errors),
    }
}

/// `MCP_GATEWAY_PRINCIPAL`: whether each person signs in for themselves. Only a platform
/// that names its callers (Databricks Apps) can tell people apart without a file.
fn single_upstream_principal(env: &dyn Env, databricks: bool) -> Result<bool, FieldErrorKind> {
    match env.var(PRINCIPAL_VAR).as_deref().map(str::trim) {
        None | Some("shared") => Ok(false),
        Some("forwarded") if databricks => Ok(true),
        Some("forwarded") => Err(FieldErrorKind::PerUserWithoutIdentity),
        Some(other) => Err(FieldErrorKind::UnknownPrincipal {
            value: other.to_owned(),
        }),
    }
}

/// The first port variable that is set wins, even when its value is bad: falling through
/// to the next would listen somewhere nobody expects. Databricks Apps routes to all
/// interfaces; otherwise the gateway stays on loopback.
fn single_upstream_listen(env: &dyn Env) -> Result<SocketAddr, (&'static str, FieldErrorKind)> {
    let chosen = PORT_VARS
        .iter()
        .find_map(|var| env.var(var).map(|value| (*var, value)));
    let port = match chosen {
        Some((var, value)) => parse_port(&value).map_err(|kind| (var, kind))?,
        None => DEFAULT_PORT,
    };
    let ip = if env.var(DATABRICKS_PORT_VAR).is_some() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    };
    Ok(SocketAddr::new(ip, port))
}

/// The listen address Databricks Apps dictates, when the gateway runs there.
pub(super) fn databricks_listen(env: &dyn Env) -> Option<Result<SocketAddr, FieldErrorKind>> {
    let value = env.var(DATABRICKS_PORT_VAR)?;
    Some(parse_port(&value).map(|port| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)))
}

fn parse_port(value: &str) -> Result<u16, FieldErrorKind> {
    value
        .trim()
        .parse()
        .map_err(|_| FieldErrorKind::InvalidPort {
            value: value.to_owned(),
        })
}

/// Replaces a leading `~` (alone or before `/`) with `$HOME`. Other paths, including
/// `~name`, are returned as they are.
pub(super) fn expand_home(path: &str, env: &dyn Env) -> Result<PathBuf, FieldErrorKind> {
    let rest = match path.strip_prefix('~') {
        Some("") => "",
        Some(rest) if rest.starts_with('/') => rest.trim_start_matches('/'),
        _ => return Ok(PathBuf::from(path)),
    };
    let home = env.var("HOME").ok_or_else(|| FieldErrorKind::HomeUnset {
        path: path.to_owned(),
    })?;
    Ok(Path::new(&home).join(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_home_replaces_only_a_leading_tilde() {
        let env = &[("HOME", "/home/ada")];
        assert_eq!(expand_home("~", env).ok(), Some(PathBuf::from("/home/ada")));
        assert_eq!(
            expand_home("~/.mcp/auth", env).ok(),
            Some(PathBuf::from("/home/ada/.mcp/auth"))
        );
        assert_eq!(
            expand_home("~bob/x", env).ok(),
            Some(PathBuf::from("~bob/x"))
        );
        assert_eq!(
            expand_home("/srv/~/x", env).ok(),
            Some(PathBuf::from("/srv/~/x"))
        );
    }

    #[test]
    fn expand_home_without_home_is_an_error() {
        let env = &[("HOME", "")];
        assert!(matches!(
            expand_home("~/x", env),
            Err(FieldErrorKind::HomeUnset { .. })
        ));
        assert_eq!(expand_home("/x", env).ok(), Some(PathBuf::from("/x")));
    }

    #[test]
    fn empty_variables_count_as_unset() {
        let map = HashMap::from([("PORT".to_owned(), String::new())]);
        assert_eq!(map.var("PORT"), None);
        let pairs = [("PORT", "")];
        assert_eq!(pairs.var("PORT"), None);
    }
}
