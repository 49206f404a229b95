//! Requests to the token endpoint: the authorization-code exchange that ends a sign-in, and
//! the refresh grant the refresher sends. Both go through the `oauth2` crate, authenticate
//! the client the way its registration says, and carry the RFC 8707 `resource`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oauth2::basic::{BasicClient, BasicErrorResponseType, BasicTokenResponse};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, EndpointNotSet, EndpointSet,
    PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, TokenResponse, TokenUrl,
};
use url::Url;

use super::registration::auth_method;
use crate::config::ClientAuthMethod;
use crate::secret::Secret;
use crate::store::{StoredClient, StoredTokens};
use crate::token::AccessToken;

/// A client configured for one authorization server.
pub(crate) type OAuthClient =
    BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// How a token request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    /// The grant is dead (revoked, expired, reused): only a new sign-in helps.
    #[error("the authorization server refused the grant (invalid_grant{})", describe(.0))]
    InvalidGrant(Option<String>),
    /// The server no longer knows the client.
    #[error("the authorization server does not know this client (invalid_client{})", describe(.0))]
    InvalidClient(Option<String>),
    #[error("the authorization server answered {code}{}", describe(.description))]
    Refused {
        code: String,
        description: Option<String>,
    },
    /// Network trouble or a server error: worth trying again later.
    #[error("the token request failed: {0}")]
    Transient(String),
}

fn describe(description: &Option<String>) -> String {
    description
        .as_deref()
        .map(|text| format!(": {text}"))
        .unwrap_or_default()
}

/// The client for `registration` at `token_endpoint`, redirecting to `redirect_uri`.
pub(crate) fn client(
    registration: &StoredClient,
    authorization_endpoint: &Url,
    token_endpoint: &Url,
    redirect_uri: &Url,
) -> OAuthClient {
    let mut client = BasicClient::new(ClientId::new(registration.client_id.clone()))
        .set_auth_uri(AuthUrl::from_url(authorization_endpoint.clone()))
        .set_token_uri(TokenUrl::from_url(token_endpoint.clone()))
        .set_redirect_uri(RedirectUrl::from_url(redirect_uri.clone()));
    if let Some(secret) = &registration.client_secret {
        client = client.set_client_secret(ClientSecret::new(secret.expose().to_owned()));
    }
    let auth_type = match auth_method(registration) {
        ClientAuthMethod::ClientSecretBasic => AuthType::BasicAuth,
        ClientAuthMethod::ClientSecretPost | ClientAuthMethod::None => AuthType::RequestBody,
    };
    client.set_auth_type(auth_type)
}

/// Exchanges an authorization code (with its PKCE verifier) for tokens.
pub(crate) async fn exchange_code(
    client: &OAuthClient,
    http: &reqwest::Client,
    code: &Secret,
    verifier: &Secret,
    resource: Option<&str>,
) -> Result<StoredTokens, ExchangeError> {
    let mut request = client
        .exchange_code(AuthorizationCode::new(code.expose().to_owned()))
        .set_pkce_verifier(PkceCodeVerifier::new(verifier.expose().to_owned()));
    if let Some(resource) = resource {
        request = request.add_extra_param("resource", resource.to_owned());
    }
    let response = request.request_async(http).await.map_err(classify)?;
    Ok(stored(&response, None))
}

/// Spends `refresh_token`; a response without a new refresh token keeps the old one.
pub(crate) async fn refresh(
    client: &OAuthClient,
    http: &reqwest::Client,
    refresh_token: &Secret,
    resource: Option<&str>,
) -> Result<StoredTokens, ExchangeError> {
    let token = RefreshToken::new(refresh_token.expose().to_owned());
    let mut request = client.exchange_refresh_token(&token);
    if let Some(resource) = resource {
        request = request.add_extra_param("resource", resource.to_owned());
    }
    let response = request.request_async(http).await.map_err(classify)?;
    Ok(stored(&response, Some(refresh_token)))
}

fn stored(response: &BasicTokenResponse, previous_refresh: Option<&Secret>) -> StoredTokens {
    let now = unix_seconds(SystemTime::now());
    let refresh_token = response
        .refresh_token()
        .map(|token| Secret::new(token.secret().clone()))
        .or_else(|| previous_refresh.cloned());
    let scope = response.scopes().map(|scopes| {
        scopes
            .iter()
            .map(|scope| scope.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    });
    StoredTokens {
        access_token: AccessToken::new(response.access_token().secret().clone()),
        token_type: "Bearer".to_owned(),
        refresh_token,
        scope,
        expires_at: response
            .expires_in()
            .map(|lifetime: Duration| now + lifetime.as_secs_f64()),
        issued_at: Some(now),
    }
}

fn classify<E: std::error::Error>(
    error: RequestTokenError<E, oauth2::StandardErrorResponse<BasicErrorResponseType>>,
) -> ExchangeError {
    match error {
        RequestTokenError::ServerResponse(response) => {
            let description = response.error_description().cloned();
            match response.error() {
                BasicErrorResponseType::InvalidGrant => ExchangeError::InvalidGrant(description),
                BasicErrorResponseType::InvalidClient => ExchangeError::InvalidClient(description),
                other => ExchangeError::Refused {
                    code: other.as_ref().to_owned(),
                    description,
                },
            }
        }
        RequestTokenError::Request(error) => ExchangeError::Transient(error.to_string()),
        RequestTokenError::Parse(error, _) => {
            ExchangeError::Transient(format!("unreadable token response: {error}"))
        }
        RequestTokenError::Other(text) => ExchangeError::Transient(text),
    }
}

pub(crate) fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}
