//! Validation of a route's OAuth keys in `[routes.auth]`: a pre-registered client and its
//! secret source, endpoint overrides, scopes, the resource indicator and the escape hatches
//! for authorization servers that bend the rules.

use toml::Spanned;

use super::raw::RawAuth;
use super::validate::{Checker, http_url};
use super::{BearerSource, ClientAuthMethod, FieldErrorKind, OAuthSettings, PreregisteredClient};

/// Builds the settings of OAuth route `index`, or records why it cannot.
pub(super) fn check(
    index: usize,
    raw: &RawAuth,
    checker: &mut Checker<'_>,
) -> Option<OAuthSettings> {
    let key = |field: &str| format!("routes[{index}].auth.{field}");
    let client = client(index, raw, checker);
    let mut endpoint = |field: &str, value: &Option<Spanned<String>>| match value {
        None => Some(None),
        Some(value) => match http_url(value.get_ref()) {
            Ok(url) => Some(Some(url)),
            Err(kind) => {
                checker.fail(key(field), Some(value.span()), kind);
                None
            }
        },
    };
    let authorization_endpoint = endpoint("authorization_endpoint", &raw.authorization_endpoint);
    let token_endpoint = endpoint("token_endpoint", &raw.token_endpoint);
    let registration_endpoint = endpoint("registration_endpoint", &raw.registration_endpoint);
    let client_metadata_url = metadata_url(index, raw, checker);
    let flag = |value: &Option<Spanned<bool>>, default: bool| {
        value.as_ref().map_or(default, |value| *value.get_ref())
    };
    Some(OAuthSettings {
        client: client?,
        client_metadata_url: client_metadata_url?,
        scopes: raw.scopes.as_ref().map(|scopes| scopes.get_ref().clone()),
        resource: raw
            .resource
            .as_ref()
            .map(|resource| resource.get_ref().clone()),
        send_resource: flag(&raw.send_resource, true),
        authorization_endpoint: authorization_endpoint?,
        token_endpoint: token_endpoint?,
        registration_endpoint: registration_endpoint?,
        allow_issuer_mismatch: flag(&raw.allow_issuer_mismatch, false),
        allow_plain_pkce: flag(&raw.allow_plain_pkce, false),
        authorize_params: raw
            .authorize_params
            .as_ref()
            .map(|params| params.get_ref().clone().into_iter().collect())
            .unwrap_or_default(),
    })
}

/// `client_metadata_url`: an absolute http(s) URL, or a path under `/oauth/` (served by the
/// gateway at its public URL). `Some(None)` when absent.
fn metadata_url(index: usize, raw: &RawAuth, checker: &mut Checker<'_>) -> Option<Option<String>> {
    let Some(value) = &raw.client_metadata_url else {
        return Some(None);
    };
    let text = value.get_ref();
    if text.starts_with('/') {
        if text.starts_with("/oauth/") && !text.contains(['?', '#']) {
            return Some(Some(text.clone()));
        }
        let kind = FieldErrorKind::MetadataPath {
            value: text.clone(),
        };
        checker.fail(
            format!("routes[{index}].auth.client_metadata_url"),
            Some(value.span()),
            kind,
        );
        return None;
    }
    match http_url(text) {
        Ok(url) => Some(Some(url.to_string())),
        Err(kind) => {
            checker.fail(
                format!("routes[{index}].auth.client_metadata_url"),
                Some(value.span()),
                kind,
            );
            None
        }
    }
}

/// The pre-registered client, if any: `Some(None)` when the gateway registers itself.
fn client(
    index: usize,
    raw: &RawAuth,
    checker: &mut Checker<'_>,
) -> Option<Option<PreregisteredClient>> {
    let key = |field: &str| format!("routes[{index}].auth.{field}");
    let method = match &raw.token_endpoint_auth_method {
        None => None,
        Some(value) => match ClientAuthMethod::parse(value.get_ref()) {
            Some(method) => Some(method),
            None => {
                let kind = FieldErrorKind::UnknownClientAuthMethod {
                    value: value.get_ref().clone(),
                };
                checker.fail(key("token_endpoint_auth_method"), Some(value.span()), kind);
                return None;
            }
        },
    };
    let secret = match (
        &raw.client_id,
        &raw.client_secret_env,
        &raw.client_secret_file,
    ) {
        (_, None, None) => None,
        (Some(_), Some(var), None) => {
            if checker.env.var(var.get_ref()).is_none() {
                let kind = FieldErrorKind::TokenEnvUnset {
                    var: var.get_ref().clone(),
                };
                checker.fail(key("client_secret_env"), Some(var.span()), kind);
                return None;
            }
            Some(BearerSource::Env(var.get_ref().clone()))
        }
        (Some(_), None, Some(file)) => Some(BearerSource::File(
            checker.readable_file(&key("client_secret_file"), file)?,
        )),
        (_, env, file) => {
            let span = env.as_ref().or(file.as_ref()).map(Spanned::span);
            checker.fail(key("client_id"), span, FieldErrorKind::ClientSecretSource);
            return None;
        }
    };
    let Some(client_id) = &raw.client_id else {
        return Some(None);
    };
    let auth_method = match (method, &secret) {
        (Some(method), _) => method,
        (None, Some(_)) => ClientAuthMethod::ClientSecretBasic,
        (None, None) => ClientAuthMethod::None,
    };
    if auth_method != ClientAuthMethod::None && secret.is_none() {
        let kind = FieldErrorKind::ClientSecretMissing {
            method: auth_method.as_str(),
        };
        checker.fail(
            key("token_endpoint_auth_method"),
            Some(client_id.span()),
            kind,
        );
        return None;
    }
    Some(Some(PreregisteredClient {
        client_id: client_id.get_ref().clone(),
        secret,
        auth_method,
    }))
}
