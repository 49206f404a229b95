//! The file as written: serde types that mirror `gateway.toml` key for key.
//!
//! Every table denies unknown keys, so a typo is an error rather than a silently ignored
//! setting. Values that a later rule may reject keep their span for the message.
//! Nothing here checks meaning; that is [`super::validate`]'s job.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::location::{SourceFile, key_path_at};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) store: RawStore,
    #[serde(default)]
    pub(super) admin: RawAdmin,
    #[serde(default)]
    pub(super) routes: Vec<RawRoute>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) public_url: Option<Spanned<String>>,
    pub(super) threads: Option<Spanned<usize>>,
    #[serde(default)]
    pub(super) allow_anonymous: bool,
    #[serde(default)]
    pub(super) api_keys: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) allowed_hosts: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) allowed_origins: Vec<Spanned<String>>,
    pub(super) sse_keepalive_secs: Option<u64>,
    pub(super) connect_timeout_secs: Option<Spanned<u64>>,
    pub(super) read_timeout_secs: Option<Spanned<u64>>,
    pub(super) sign_in_timeout_secs: Option<Spanned<u64>>,
    pub(super) control_requests_per_minute: Option<u32>,
    pub(super) max_streams: Option<usize>,
    pub(super) max_streams_per_client: Option<usize>,
    pub(super) trusted_identity_header: Option<Spanned<String>>,
    pub(super) principal: Option<Spanned<crate::config::PrincipalMode>>,
    pub(super) per_user_refresh_window_secs: Option<Spanned<u64>>,
    pub(super) header_timeout_secs: Option<Spanned<u64>>,
    pub(super) max_header_bytes: Option<Spanned<usize>>,
    pub(super) idle_timeout_secs: Option<Spanned<u64>>,
    pub(super) drain_secs: Option<Spanned<u64>>,
    pub(super) upgrade_socket: Option<Spanned<String>>,
    pub(super) tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert_file: Spanned<String>,
    pub(super) key_file: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) token_env: Option<Spanned<String>>,
    pub(super) token_file: Option<Spanned<String>>,
    pub(super) allow_loopback: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) kind: Option<Spanned<RawStoreKind>>,
    pub(super) dir: Option<Spanned<String>>,
    /// Only for `kind = "postgres"`; it may hold a password, so it is never echoed.
    pub(super) url: Option<Spanned<String>>,
    /// Only for `kind = "postgres"` over TLS: extra roots for the database's certificate.
    pub(super) ca_file: Option<Spanned<String>>,
    /// Only for `kind = "postgres"`: where the database password comes from.
    pub(super) password_source: Option<Spanned<RawPasswordSource>>,
    #[serde(default)]
    pub(super) encryption_keys: Vec<Spanned<RawStoreKey>>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawStoreKind {
    #[default]
    File,
    Postgres,
}

/// `[store] password_source`: the configured password, a Databricks workspace OAuth token,
/// or (`auto`) the token only when no password is configured and the app's service
/// principal is in the environment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum RawPasswordSource {
    #[default]
    Auto,
    Static,
    DatabricksOauth,
}

/// One of `[store] encryption_keys`: an id and where its material is (never inline).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStoreKey {
    pub(super) id: Spanned<String>,
    pub(super) env: Option<Spanned<String>>,
    pub(super) file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) name: Spanned<String>,
    pub(super) prefix: Spanned<String>,
    pub(super) upstream: Spanned<String>,
    pub(super) ca_file: Option<Spanned<String>>,
    pub(super) max_body_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    pub(super) transport: crate::config::Transport,
    #[serde(default)]
    pub(super) api_keys: Vec<Spanned<String>>,
    pub(super) principal: Option<Spanned<crate::config::PrincipalMode>>,
    #[serde(default)]
    pub(super) auth: RawAuth,
    #[serde(default)]
    pub(super) headers: BTreeMap<Spanned<String>, Spanned<String>>,
    /// `[[routes.plugins]]`: `kind` plus the plugin's own settings, which the plugin reads.
    #[serde(default)]
    pub(super) plugins: Vec<Spanned<toml::Table>>,
}

/// `[routes.auth]`. There is deliberately no key for an inline token: a token in the file
/// ends up in backups, screenshots and version control.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    pub(super) kind: Option<Spanned<RawAuthKind>>,
    pub(super) token_env: Option<Spanned<String>>,
    pub(super) token_file: Option<Spanned<String>>,
    // The OAuth keys; all optional, all only for `kind = "oauth"`.
    pub(super) client_id: Option<Spanned<String>>,
    pub(super) client_secret_env: Option<Spanned<String>>,
    pub(super) client_secret_file: Option<Spanned<String>>,
    pub(super) token_endpoint_auth_method: Option<Spanned<String>>,
    pub(super) client_metadata_url: Option<Spanned<String>>,
    pub(super) scopes: Option<Spanned<Vec<String>>>,
    pub(super) resource: Option<Spanned<String>>,
    pub(super) send_resource: Option<Spanned<bool>>,
    pub(super) authorization_endpoint: Option<Spanned<String>>,
    pub(super) token_endpoint: Option<Spanned<String>>,
    pub(super) registration_endpoint: Option<Spanned<String>>,
    pub(super) allow_issuer_mismatch: Option<Spanned<bool>>,
    pub(super) allow_plain_pkce: Option<Spanned<bool>>,
    pub(super) authorize_params: Option<Spanned<BTreeMap<String, String>>>,
}

impl RawAuth {
    /// The OAuth keys that are set, with their spans, for "only applies to oauth" errors.
    pub(super) fn oauth_keys(&self) -> Vec<(&'static str, std::ops::Range<usize>)> {
        let mut present = Vec::new();
        macro_rules! note {
            ($($field:ident),*) => {$(
                if let Some(value) = &self.$field {
                    present.push((stringify!($field), value.span()));
                }
            )*};
        }
        note!(
            client_id,
            client_secret_env,
            client_secret_file,
            token_endpoint_auth_method,
            client_metadata_url,
            scopes,
            resource,
            send_resource,
            authorization_endpoint,
            token_endpoint,
            registration_endpoint,
            allow_issuer_mismatch,
            allow_plain_pkce,
            authorize_params
        );
        present
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawAuthKind {
    OAuth,
    Bearer,
    None,
}

/// Parses `text` into the raw form. TOML syntax errors and schema errors (unknown keys,
/// wrong types, missing keys) come back with `file:line:col` and the key path.
pub(super) fn parse(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
    let file = SourceFile { path, text };

    // A syntax check first, so that schema errors below are told apart from bad TOML.
    if let Err(source) = toml::de::DeTable::parse(text) {
        return Err(ConfigError::Syntax {
            at: file.location(source.span()),
            source: Box::new(source),
        });
    }
    toml::from_str(text).map_err(|source| schema_error(file, source))
}

fn schema_error(file: SourceFile<'_>, source: toml::de::Error) -> ConfigError {
    let span = source.span();
    let at = file.location(span.clone());
    let key = span
        .and_then(|span| key_path_at(file.text, span.start))
        .unwrap_or_else(|| "(top level)".to_owned());
    let source = Box::new(source);

    // serde words this message itself; it is the only sign of an unknown key.
    if source.message().starts_with("unknown field") {
        ConfigError::UnknownKey { at, key, source }
    } else {
        ConfigError::Schema { at, key, source }
    }
}
