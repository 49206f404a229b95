//! The gateway's OAuth client identity at a route's authorization server.
//!
//! In order of preference: a client the operator registered beforehand (from the route's
//! config, its secret from an environment variable or a file), the gateway's Client ID
//! Metadata Document (its URL is the client id) where the authorization server supports
//! those, a registration saved in the slot's `client_info.json`, or a fresh dynamic client
//! registration (RFC 7591) that is then saved. A saved registration made for another
//! redirect URI or another issuer is dropped and made again; after the server answers
//! `invalid_client`, [`forget`] drops it so that the next sign-in registers afresh.

use serde_json::json;

use super::OAuthRoute;
use super::discovery::Discovered;
use crate::config::{BearerSource, ClientAuthMethod};
use crate::secret::Secret;
use crate::store::StoredClient;

/// Why the gateway has no client identity at the authorization server.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RegistrationError {
    #[error(
        "route '{route}': the authorization server {issuer} offers no dynamic client registration; \
         register a client there and set auth.client_id (and client_secret_env or client_secret_file)"
    )]
    NoRegistrationEndpoint { route: String, issuer: String },
    #[error("route '{route}': dynamic client registration at {url} failed")]
    Request {
        route: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "route '{route}': dynamic client registration at {url} was refused with HTTP {status}: {body}"
    )]
    Refused {
        route: String,
        url: String,
        status: u16,
        body: String,
    },
    #[error("route '{route}': cannot read the client secret")]
    Secret {
        route: String,
        #[source]
        source: std::io::Error,
    },
    #[error("route '{route}': the client registration is missing from the store; sign in again")]
    Missing { route: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The client to use for `route`, registering one when there is none that fits.
pub(crate) async fn ensure(
    route: &OAuthRoute,
    discovered: &Discovered,
) -> Result<StoredClient, RegistrationError> {
    if let Some(client) = preregistered(route)? {
        return Ok(client);
    }
    let saved = route.store.load_client(&route.slot).await?;
    if let Some(client) = metadata_document_client(route, discovered) {
        // Saved like any registration, so that refreshes use the client the tokens went to.
        if saved
            .as_ref()
            .is_none_or(|saved| saved.client_id != client.client_id)
        {
            route.store.save_client(&route.slot, &client).await?;
        }
        return Ok(client);
    }
    if let Some(saved) = saved {
        if fits(route, discovered, &saved) {
            return Ok(saved);
        }
        tracing::info!(route = %route.name, "saved client registration is for another redirect URI or issuer; registering again");
    }
    register(route, discovered).await
}

/// The client the route's tokens were issued to, for refreshing them: a refresh must come
/// from that client whatever redirect URI it was registered with, so nothing is registered
/// here.
pub(crate) async fn current(route: &OAuthRoute) -> Result<StoredClient, RegistrationError> {
    if let Some(client) = preregistered(route)? {
        return Ok(client);
    }
    route
        .store
        .load_client(&route.slot)
        .await?
        .ok_or_else(|| RegistrationError::Missing {
            route: route.name.clone(),
        })
}

/// Drops the saved registration (and the tokens issued to it), so that the next sign-in
/// registers again.
pub(crate) async fn forget(route: &OAuthRoute) -> Result<(), crate::store::StoreError> {
    if route.settings.client.is_none() {
        route.store.clear(&route.slot, true).await?;
    }
    Ok(())
}

/// Whether the token request for `client` authenticates with a secret in the body, in a
/// Basic header, or not at all.
pub(crate) fn auth_method(client: &StoredClient) -> ClientAuthMethod {
    client
        .token_endpoint_auth_method
        .as_deref()
        .and_then(ClientAuthMethod::parse)
        .unwrap_or(if client.client_secret.is_some() {
            ClientAuthMethod::ClientSecretBasic
        } else {
            ClientAuthMethod::None
        })
}

fn fits(route: &OAuthRoute, discovered: &Discovered, saved: &StoredClient) -> bool {
    let redirect = route.redirect_uri.as_str();
    let same_issuer = saved
        .issuer
        .as_deref()
        .is_none_or(|issuer| issuer == discovered.auth_server.issuer);
    let expired = saved
        .client_secret_expires_at
        .is_some_and(|at| at != 0 && at <= unix_now());
    saved.redirect_uris.iter().any(|uri| uri == redirect) && same_issuer && !expired
}

fn preregistered(route: &OAuthRoute) -> Result<Option<StoredClient>, RegistrationError> {
    let Some(client) = &route.settings.client else {
        return Ok(None);
    };
    let secret = match &client.secret {
        None => None,
        Some(source) => Some(
            read_secret(source).map_err(|source| RegistrationError::Secret {
                route: route.name.clone(),
                source,
            })?,
        ),
    };
    Ok(Some(StoredClient {
        client_id: client.client_id.clone(),
        client_secret: secret,
        client_secret_expires_at: None,
        redirect_uris: vec![route.redirect_uri.to_string()],
        token_endpoint_auth_method: Some(client.auth_method.as_str().to_owned()),
        issuer: None,
        extra: serde_json::Map::new(),
    }))
}

/// The client whose id is the route's metadata document URL, where the authorization server
/// supports Client ID Metadata Documents: nothing to register with the server.
fn metadata_document_client(route: &OAuthRoute, discovered: &Discovered) -> Option<StoredClient> {
    let url = route.client_metadata_url.as_ref()?;
    if !discovered.auth_server.client_id_metadata_document_supported {
        return None;
    }
    Some(StoredClient {
        client_id: url.to_string(),
        client_secret: None,
        client_secret_expires_at: None,
        redirect_uris: vec![route.redirect_uri.to_string()],
        token_endpoint_auth_method: Some(ClientAuthMethod::None.as_str().to_owned()),
        issuer: Some(discovered.auth_server.issuer.clone()),
        extra: serde_json::Map::new(),
    })
}

/// The Client ID Metadata Document that `route`'s `client_metadata_url` names.
pub(crate) fn metadata_document(route: &OAuthRoute) -> Option<serde_json::Value> {
    let url = route.client_metadata_url.as_ref()?;
    Some(json!({
        "client_id": url.as_str(),
        "client_name": "mcp-u2m-gateway",
        "redirect_uris": [route.redirect_uri.as_str()],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    }))
}

fn read_secret(source: &BearerSource) -> std::io::Result<Secret> {
    let value = match source {
        BearerSource::Env(name) => std::env::var(name).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("{name} is not set"))
        })?,
        BearerSource::File(path) => std::fs::read_to_string(path)?,
    };
    Ok(Secret::new(value.trim()))
}

async fn register(
    route: &OAuthRoute,
    discovered: &Discovered,
) -> Result<StoredClient, RegistrationError> {
    let server = &discovered.auth_server;
    let Some(endpoint) = &server.registration_endpoint else {
        return Err(RegistrationError::NoRegistrationEndpoint {
            route: route.name.clone(),
            issuer: server.issuer.clone(),
        });
    };
    let request = json!({
        "client_name": "mcp-u2m-gateway",
        "redirect_uris": [route.redirect_uri.as_str()],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    });
    let failed = |source| RegistrationError::Request {
        route: route.name.clone(),
        url: endpoint.to_string(),
        source,
    };
    let response = route
        .http
        .post(endpoint.clone())
        .json(&request)
        .send()
        .await
        .map_err(failed)?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(RegistrationError::Refused {
            route: route.name.clone(),
            url: endpoint.to_string(),
            status: status.as_u16(),
            body: body.chars().take(300).collect(),
        });
    }
    let mut client: StoredClient = response.json().await.map_err(failed)?;
    if client.redirect_uris.is_empty() {
        client.redirect_uris = vec![route.redirect_uri.to_string()];
    }
    client.issuer = Some(server.issuer.clone());
    route.store.save_client(&route.slot, &client).await?;
    tracing::info!(route = %route.name, issuer = %server.issuer, "registered the gateway as an OAuth client");
    Ok(client)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}
