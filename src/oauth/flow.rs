//! The sign-in round trip: `GET /auth/{route}/start` → the authorization server → `GET
//! /oauth/callback`.
//!
//! Starting a sign-in creates a pending flow keyed by a random `state`: the route, a PKCE
//! S256 verifier, the client and endpoints it was started with, and an expiry
//! (`server.sign_in_timeout_secs`, ten minutes by default). The callback takes the flow out
//! by its `state` (so a state works once), refuses an expired one, reports the
//! authorization server's `error=`, exchanges the code with the verifier, stores the tokens
//! and installs them. One callback serves every route: the `state` says which flow it ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oauth2::{CsrfToken, PkceCodeChallenge, Scope};
use parking_lot::Mutex;
use url::Url;

use super::exchange::{self, ExchangeError};
use super::registration::{self, RegistrationError};
use super::{OAuthError, OAuthRoute};
use crate::secret::Secret;
use crate::store::StoredClient;

/// Pending flows beyond this many are refused, so that a flood of `start` requests cannot
/// grow memory without bound.
const MAX_PENDING: usize = 1024;

/// Why a callback did not end in stored tokens; the page shows the message.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallbackError {
    #[error("the callback has no state parameter: start the sign-in from the gateway's page")]
    MissingState,
    #[error("this sign-in link is unknown or was already used: start the sign-in again")]
    UnknownState,
    #[error(
        "this sign-in has expired (it must finish within {} s of starting): start it again",
        .lifetime.as_secs()
    )]
    Expired { route: String, lifetime: Duration },
    #[error("the authorization server refused the sign-in: {error}{}", describe(.description))]
    Denied {
        route: Option<String>,
        error: String,
        description: Option<String>,
    },
    #[error("the callback has no authorization code")]
    MissingCode { route: String },
    #[error(
        "the callback says it comes from the authorization server {found}, but the sign-in \
         went to {expected}: it was not completed (RFC 9207 mix-up protection)"
    )]
    WrongIssuer {
        route: String,
        expected: String,
        found: String,
    },
    #[error(
        "the callback does not name its authorization server (iss), which {expected} \
         promises to do: it was not completed"
    )]
    MissingIssuer { route: String, expected: String },
    #[error("exchanging the authorization code failed: {source}")]
    Exchange {
        route: String,
        #[source]
        source: ExchangeError,
    },
    #[error("the tokens could not be stored: {source}")]
    Store {
        route: String,
        #[source]
        source: crate::store::StoreError,
    },
}

impl CallbackError {
    /// The route the failed flow belonged to, when it is known.
    pub(crate) fn route(&self) -> Option<&str> {
        match self {
            CallbackError::MissingState | CallbackError::UnknownState => None,
            CallbackError::Denied { route, .. } => route.as_deref(),
            CallbackError::Expired { route, .. }
            | CallbackError::MissingCode { route }
            | CallbackError::WrongIssuer { route, .. }
            | CallbackError::MissingIssuer { route, .. }
            | CallbackError::Exchange { route, .. }
            | CallbackError::Store { route, .. } => Some(route),
        }
    }
}

fn describe(description: &Option<String>) -> String {
    description
        .as_deref()
        .map(|text| format!(" ({text})"))
        .unwrap_or_default()
}

/// Why a sign-in could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error(transparent)]
    OAuth(#[from] OAuthError),
    #[error("too many sign-ins are in progress; try again in a few minutes")]
    TooMany,
}

impl From<RegistrationError> for StartError {
    fn from(error: RegistrationError) -> Self {
        StartError::OAuth(OAuthError::Registration(error))
    }
}

/// One sign-in in progress.
#[derive(Debug)]
struct PendingFlow {
    route: Arc<OAuthRoute>,
    verifier: Secret,
    client: StoredClient,
    authorization_endpoint: Url,
    token_endpoint: Url,
    resource: Option<String>,
    /// The authorization server's issuer, and whether its callbacks carry `iss`.
    issuer: String,
    issuer_in_responses: bool,
    started: Instant,
}

/// Every sign-in in progress, by `state`.
#[derive(Debug)]
pub(crate) struct PendingFlows {
    flows: Mutex<HashMap<String, PendingFlow>>,
    /// How long a person has to finish signing in.
    lifetime: Duration,
}

/// A completed sign-in, for the success page.
#[derive(Debug)]
pub(crate) struct SignedIn {
    pub(crate) route: String,
    pub(crate) scope: Option<String>,
}

/// RFC 9207: an `iss` in the callback must be the issuer the sign-in went to, and a
/// server that promises `iss` must send it.
fn check_issuer(flow: &PendingFlow, iss: Option<&String>) -> Result<(), CallbackError> {
    let route = || flow.route.name.clone();
    match iss {
        Some(found) if found.trim_end_matches('/') != flow.issuer.trim_end_matches('/') => {
            Err(CallbackError::WrongIssuer {
                route: route(),
                expected: flow.issuer.clone(),
                found: found.clone(),
            })
        }
        None if flow.issuer_in_responses => Err(CallbackError::MissingIssuer {
            route: route(),
            expected: flow.issuer.clone(),
        }),
        _ => Ok(()),
    }
}

impl PendingFlows {
    pub(crate) fn new(lifetime: Duration) -> Self {
        Self {
            flows: Mutex::new(HashMap::new()),
            lifetime,
        }
    }

    /// Starts a sign-in for `route`; returns the authorization URL to send the browser to.
    pub(crate) async fn start(&self, route: &Arc<OAuthRoute>) -> Result<Url, StartError> {
        let discovered = route.discovered().await?;
        let client = registration::ensure(route, &discovered).await?;
        let server = &discovered.auth_server;
        let oauth = exchange::client(
            &client,
            &server.authorization_endpoint,
            &server.token_endpoint,
            &route.redirect_uri,
        );
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let resource = route.resource(&discovered);
        let mut request = oauth
            .authorize_url(CsrfToken::new_random)
            .set_pkce_challenge(challenge)
            .add_scopes(
                route
                    .scopes_to_request(&discovered)
                    .into_iter()
                    .map(Scope::new),
            );
        if let Some(resource) = &resource {
            request = request.add_extra_param("resource", resource.clone());
        }
        for (name, value) in &route.settings.authorize_params {
            request = request.add_extra_param(name.clone(), value.clone());
        }
        let (url, state) = request.url();

        let flow = PendingFlow {
            route: Arc::clone(route),
            verifier: Secret::new(verifier.secret().clone()),
            client,
            authorization_endpoint: server.authorization_endpoint.clone(),
            token_endpoint: server.token_endpoint.clone(),
            resource,
            issuer: server.issuer.clone(),
            issuer_in_responses: server.issuer_in_responses,
            started: Instant::now(),
        };
        let mut flows = self.flows.lock();
        flows.retain(|_, flow| flow.started.elapsed() < self.lifetime);
        if flows.len() >= MAX_PENDING {
            return Err(StartError::TooMany);
        }
        flows.insert(state.secret().clone(), flow);
        Ok(url)
    }

    /// Ends the sign-in that `params` (the callback's query) names.
    pub(crate) async fn complete(
        &self,
        params: &HashMap<String, String>,
    ) -> Result<SignedIn, CallbackError> {
        let state = params.get("state").ok_or(CallbackError::MissingState)?;
        // Taken out before anything else: a state is good for one callback only.
        let flow = self.flows.lock().remove(state);
        if let Some(error) = params.get("error") {
            return Err(CallbackError::Denied {
                route: flow.map(|flow| flow.route.name.clone()),
                error: error.clone(),
                description: params.get("error_description").cloned(),
            });
        }
        let flow = flow.ok_or(CallbackError::UnknownState)?;
        let route = flow.route.name.clone();
        if flow.started.elapsed() >= self.lifetime {
            return Err(CallbackError::Expired {
                route,
                lifetime: self.lifetime,
            });
        }
        check_issuer(&flow, params.get("iss"))?;
        let code =
            params
                .get("code")
                .map(Secret::new)
                .ok_or_else(|| CallbackError::MissingCode {
                    route: route.clone(),
                })?;
        self.finish(flow, &code).await
    }

    async fn finish(&self, flow: PendingFlow, code: &Secret) -> Result<SignedIn, CallbackError> {
        let route = &flow.route;
        let oauth = exchange::client(
            &flow.client,
            &flow.authorization_endpoint,
            &flow.token_endpoint,
            &route.redirect_uri,
        );
        let tokens = exchange::exchange_code(
            &oauth,
            &route.http,
            code,
            &flow.verifier,
            flow.resource.as_deref(),
        )
        .await;
        let tokens = match tokens {
            Ok(tokens) => tokens,
            Err(source) => {
                if matches!(source, ExchangeError::InvalidClient(_)) {
                    // The next start registers afresh instead of reusing a dead client.
                    let _ = registration::forget(route).await;
                }
                return Err(CallbackError::Exchange {
                    route: route.name.clone(),
                    source,
                });
            }
        };
        route
            .store
            .save_tokens(&route.slot, &tokens)
            .await
            .map_err(|source| CallbackError::Store {
                route: route.name.clone(),
                source,
            })?;
        let scope = tokens.scope.clone();
        route.install(tokens);
        tracing::info!(route = %route.name, "signed in");
        Ok(SignedIn {
            route: route.name.clone(),
            scope,
        })
    }
}
