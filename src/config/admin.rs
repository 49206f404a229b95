//! The `[admin]` section: who may use the admin API (`/admin/api/…`).
//!
//! Callers on loopback may use it without a token unless `allow_loopback = false`. Anyone
//! else sends `Authorization: Bearer <token>`, the token coming from `token_env` or
//! `token_file` (never inline), or from `$MCP_GATEWAY_ADMIN_TOKEN` when neither is set.
//! With `listen`, the admin API and `/metrics` move to a listener of their own.

use std::net::SocketAddr;

use toml::Spanned;

use super::env::Env;
use super::raw::RawAdmin;
use super::validate::Checker;
use super::{AdminConfig, BearerSource, FieldErrorKind};

/// The environment variable that holds the admin token when the file names none.
pub(crate) const ADMIN_TOKEN_ENV: &str = "MCP_GATEWAY_ADMIN_TOKEN";

pub(super) fn check(raw: RawAdmin, checker: &mut Checker<'_>) -> Option<AdminConfig> {
    let token = match (&raw.token_env, &raw.token_file) {
        (None, None) => Some(default_token(checker.env)),
        (Some(var), None) => env_token(var, checker).map(Some),
        (None, Some(file)) => checker
            .readable_file("admin.token_file", file)
            .map(|path| Some(BearerSource::File(path))),
        (Some(_), Some(file)) => {
            checker.fail(
                "admin.token_file".into(),
                Some(file.span()),
                FieldErrorKind::AdminTokenSourceCount,
            );
            None
        }
    };
    let listen = match &raw.listen {
        None => Some(None),
        Some(text) => match text.get_ref().parse::<SocketAddr>() {
            Ok(addr) => Some(Some(addr)),
            Err(source) => {
                let kind = FieldErrorKind::InvalidListen {
                    value: text.get_ref().clone(),
                    source,
                };
                checker.fail("admin.listen".into(), Some(text.span()), kind);
                None
            }
        },
    };
    Some(AdminConfig {
        listen: listen?,
        token: token?,
        allow_loopback: raw.allow_loopback.unwrap_or(true),
    })
}

/// `$MCP_GATEWAY_ADMIN_TOKEN`, when it is set.
pub(super) fn default_token(env: &dyn Env) -> Option<BearerSource> {
    env.var(ADMIN_TOKEN_ENV)
        .filter(|value| !value.trim().is_empty())
        .map(|_| BearerSource::Env(ADMIN_TOKEN_ENV.to_owned()))
}

fn env_token(var: &Spanned<String>, checker: &mut Checker<'_>) -> Option<BearerSource> {
    if checker.env.var(var.get_ref()).is_some() {
        return Some(BearerSource::Env(var.get_ref().clone()));
    }
    let kind = FieldErrorKind::TokenEnvUnset {
        var: var.get_ref().clone(),
    };
    checker.fail("admin.token_env".into(), Some(var.span()), kind);
    None
}
