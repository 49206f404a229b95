//! The sign-in round trip: `GET /auth/{route}/start` → the authorization server → `GET
//! /oauth/callback`.
//!
//! Starting a sign-in creates a pending flow keyed by a random `state`: the route, a PKCE
//! S256 verifier, the client and endpoints it was started with, an expiry
//! (`server.sign_in_timeout_secs`, ten minutes by default) and a random value that binds
//! the flow to the browser that started it, which the start page sets as a cookie. The
//! callback takes the flow out by its `state` (so a state works once), refuses an expired
//! one and one arriving from a browser without the cookie, reports the authorization
//! server's `error=`, exchanges the code with the verifier, stores the tokens and installs
//! them. One callback serves every route: the `state` says which flow it ends.
//!
//! Replicas behind a load balancer may share one store ([`TokenStore::is_shared`]): a
//! flow is then also saved there, sealed, under a digest of its `state`, and a callback that
//! lands on another replica takes it from there and rebuilds it against the routes in force
//! on that replica. Whichever replica a callback reaches, the flow is removed from the store
//! too, so a state works once across all of them. When saving fails, the sign-in still works
//! on the replica that started it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use oauth2::{CsrfToken, PkceCodeChallenge, Scope};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use url::Url;

use super::exchange::{self, ExchangeError};
use super::registration::{self, RegistrationError};
use super::users::Principal;
use super::{OAuthError, OAuthRoute};
use crate::secret::Secret;
use crate::store::{StoreError, StoredClient, StoredFlow, TokenStore};

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
        "the callback repeats the parameter '{name}', which an authorization server sends \
         once: it was not completed"
    )]
    Repeated { name: &'static str },
    #[error(
        "the callback carries '{name}' in its URL, but the gateway asks only for an \
         authorization code and never accepts tokens in a URL: it was not completed"
    )]
    TokenInUrl { name: String },
    #[error(
        "this sign-in was started in another browser, or this browser did not keep the \
         gateway's sign-in cookie: start the sign-in again from this browser"
    )]
    OtherBrowser { route: String },
    #[error(
        "this sign-in was started by someone else: each person signs in to this route \
         for themselves, from their own session"
    )]
    OtherPerson { route: String },
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
        source: StoreError,
    },
    #[error(
        "this sign-in could not be looked up in the token store the gateway's replicas share \
         ({source}): start the sign-in again once the store is reachable"
    )]
    SharedStore {
        route: Option<String>,
        #[source]
        source: StoreError,
    },
    #[error(
        "the route '{route}' this sign-in was started for is no longer configured as it was: \
         start the sign-in again"
    )]
    RouteChanged { route: String },
}

impl CallbackError {
    /// The route the failed flow belonged to, when it is known.
    pub(crate) fn route(&self) -> Option<&str> {
        match self {
            CallbackError::MissingState
            | CallbackError::UnknownState
            | CallbackError::Repeated { .. }
            | CallbackError::TokenInUrl { .. } => None,
            CallbackError::Denied { route, .. } | CallbackError::SharedStore { route, .. } => {
                route.as_deref()
            }
            CallbackError::Expired { route, .. }
            | CallbackError::OtherBrowser { route }
            | CallbackError::OtherPerson { route }
            | CallbackError::MissingCode { route }
            | CallbackError::WrongIssuer { route, .. }
            | CallbackError::MissingIssuer { route, .. }
            | CallbackError::Exchange { route, .. }
            | CallbackError::Store { route, .. }
            | CallbackError::RouteChanged { route } => Some(route),
        }
    }
}

fn describe(description: &Option<String>) -> String {
    description
        .as_deref()
        .map(|text| format!(" ({text})"))
        .unwrap_or_default()
}

/// The parameters of a callback that the gateway reads (RFC 6749 §4.1.2, RFC 9207).
///
/// Others are ignored, as RFC 6749 requires of a client: providers add their own, such as
/// `session_state` or `scope`. Two kinds are refused instead: a parameter the gateway
/// reads that appears twice, since the two values could be read differently by the
/// gateway and by whatever checked the URL before it; and a token in the URL, which only
/// an implicit or hybrid response carries and the gateway never asks for.
#[derive(Debug, Default)]
pub(crate) struct CallbackParams {
    state: Option<String>,
    code: Option<Secret>,
    iss: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Response parameters that carry a credential, which the code flow never puts in a URL.
const TOKEN_PARAMS: &[&str] = &["access_token", "id_token", "refresh_token", "token"];

impl CallbackParams {
    /// Reads a callback's query string.
    pub(crate) fn parse(query: &str) -> Result<Self, CallbackError> {
        let mut params = Self::default();
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            if TOKEN_PARAMS.contains(&name.as_ref()) {
                return Err(CallbackError::TokenInUrl {
                    name: name.into_owned(),
                });
            }
            let (name, slot) = match name.as_ref() {
                "state" => ("state", &mut params.state),
                "iss" => ("iss", &mut params.iss),
                "error" => ("error", &mut params.error),
                "error_description" => ("error_description", &mut params.error_description),
                "code" => {
                    if params.code.replace(Secret::new(value)).is_some() {
                        return Err(CallbackError::Repeated { name: "code" });
                    }
                    continue;
                }
                _ => continue,
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(CallbackError::Repeated { name });
            }
        }
        Ok(params)
    }

    /// The `state` parameter, which names the flow the callback ends.
    pub(crate) fn state(&self) -> Option<&str> {
        self.state.as_deref()
    }
}

/// The cookie that binds a sign-in to the browser that started it.
#[derive(Debug)]
pub(crate) struct BrowserBinding {
    /// The cookie's name, one per flow, so that sign-ins in two tabs do not collide.
    pub(crate) name: String,
    pub(crate) value: Secret,
}

/// The name of the binding cookie of the flow with this `state`: a digest of the state,
/// so the cookie's name says nothing the callback URL does not.
pub(crate) fn binding_cookie_name(state: &str) -> String {
    let digest = Sha256::digest(state.as_bytes());
    let mut name = String::from("mcp_gateway_sign_in_");
    for byte in &digest[..8] {
        name.push_str(&format!("{byte:02x}"));
    }
    name
}

/// The digest of a `state` under which a shared store keeps its flow: SHA-256, in hex, so
/// that the store never holds a state a callback would accept.
pub(crate) fn state_digest(state: &str) -> String {
    Sha256::digest(state.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A sign-in that has begun: where to send the browser, and the cookie to set on it.
#[derive(Debug)]
pub(crate) struct Started {
    pub(crate) authorize_url: Url,
    pub(crate) binding: BrowserBinding,
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
    /// The value of the binding cookie set on the browser that started the flow.
    browser: Secret,
    began: Began,
    /// Also saved in the route's shared store, from which its callback must remove it.
    saved: bool,
}

impl PendingFlow {
    /// The flow as the other replicas sharing the store need it; it began at `started_at`.
    fn record(&self, started_at: SystemTime) -> StoredFlow {
        let route = &self.route;
        StoredFlow {
            route: route.name.clone(),
            upstream: route.slot.upstream.clone(),
            principal: route.principal().map(|own| own.as_str().to_owned()),
            verifier: self.verifier.clone(),
            client: self.client.clone(),
            authorization_endpoint: self.authorization_endpoint.to_string(),
            token_endpoint: self.token_endpoint.to_string(),
            resource: self.resource.clone(),
            issuer: self.issuer.clone(),
            issuer_in_responses: self.issuer_in_responses,
            browser: self.browser.clone(),
            started_at: started_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_secs()),
        }
    }
}

/// When a flow began, as the replica holding it can tell.
#[derive(Debug)]
enum Began {
    /// On this replica: the monotonic clock, which no clock adjustment moves.
    Here(Instant),
    /// On another replica, at this wall-clock time, the only clock replicas share.
    Elsewhere(SystemTime),
}

impl Began {
    fn elapsed(&self) -> Duration {
        match self {
            Began::Here(at) => at.elapsed(),
            // A start in the future (two replicas' clocks disagree) counts as just now.
            Began::Elsewhere(at) => at.elapsed().unwrap_or_default(),
        }
    }
}

/// What a replica needs to finish a sign-in another one started: the store the routes
/// share, and the OAuth routes in force, by name.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Handover<'a> {
    pub(crate) store: Option<&'a Arc<dyn TokenStore>>,
    pub(crate) routes: &'a HashMap<String, Arc<OAuthRoute>>,
}

impl Handover<'_> {
    /// The flow `record` describes, on the route of that name in force here; on a per-user
    /// route, on the side of the person who started it.
    async fn rebuild(&self, record: StoredFlow) -> Result<PendingFlow, CallbackError> {
        let name = record.route.clone();
        let changed = || CallbackError::RouteChanged {
            route: name.clone(),
        };
        let route = self
            .routes
            .get(&record.route)
            .filter(|route| route.slot.upstream == record.upstream)
            .ok_or_else(changed)?;
        let route = match record.principal.as_deref() {
            None if route.is_per_user() => return Err(changed()),
            None => Arc::clone(route),
            Some(own) => {
                let own = Principal::new(own).ok_or(CallbackError::UnknownState)?;
                route.user(&own).await.ok_or_else(changed)?
            }
        };
        let endpoint = |text: &str| Url::parse(text).map_err(|_| CallbackError::UnknownState);
        Ok(PendingFlow {
            route,
            verifier: record.verifier,
            client: record.client,
            authorization_endpoint: endpoint(&record.authorization_endpoint)?,
            token_endpoint: endpoint(&record.token_endpoint)?,
            resource: record.resource,
            issuer: record.issuer,
            issuer_in_responses: record.issuer_in_responses,
            browser: record.browser,
            began: Began::Elsewhere(UNIX_EPOCH + Duration::from_secs(record.started_at)),
            saved: false,
        })
    }
}

/// Every sign-in in progress, by `state`.
#[derive(Debug)]
pub(crate) struct PendingFlows {
    flows: Mutex<HashMap<String, PendingFlow>>,
    /// How long a person has to finish signing in.
    lifetime: Duration,
    /// The last save to a shared store failed, which is logged once until one succeeds.
    save_failing: AtomicBool,
}

/// A completed sign-in, for the success page.
#[derive(Debug)]
pub(crate) struct SignedIn {
    pub(crate) route: String,
    pub(crate) scope: Option<String>,
    /// The route the sign-in began on, which a reload may have replaced since.
    pub(crate) signed_in: Arc<OAuthRoute>,
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
            save_failing: AtomicBool::new(false),
        }
    }

    /// Starts a sign-in for `route`: the authorization URL to send the browser to, and the
    /// cookie that must come back with the callback.
    pub(crate) async fn start(&self, route: &Arc<OAuthRoute>) -> Result<Started, StartError> {
        let (authorize_url, state, flow) = prepare(route).await?;
        let binding = BrowserBinding {
            name: binding_cookie_name(&state),
            value: flow.browser.clone(),
        };
        let record = route
            .store
            .is_shared()
            .then(|| flow.record(SystemTime::now()));
        self.admit(&state, flow)?;
        if let Some(record) = record {
            self.share(route, &state, &record).await;
        }
        Ok(Started {
            authorize_url,
            binding,
        })
    }

    /// Keeps `flow` in memory, unless too many are in progress.
    fn admit(&self, state: &str, flow: PendingFlow) -> Result<(), StartError> {
        let mut flows = self.flows.lock();
        flows.retain(|_, flow| flow.began.elapsed() < self.lifetime);
        if flows.len() >= MAX_PENDING {
            return Err(StartError::TooMany);
        }
        flows.insert(state.to_owned(), flow);
        Ok(())
    }

    /// Saves the flow of `state` in the route's shared store, so that its callback may land
    /// on any replica. When that fails, only this replica can finish it, which still works
    /// for a browser the load balancer keeps here.
    async fn share(&self, route: &OAuthRoute, state: &str, record: &StoredFlow) {
        let expires_at = SystemTime::now() + self.lifetime;
        let saved = route
            .store
            .save_flow(&state_digest(state), record, expires_at)
            .await;
        match saved {
            Ok(()) => {
                if let Some(flow) = self.flows.lock().get_mut(state) {
                    flow.saved = true;
                }
                if self.save_failing.swap(false, Ordering::AcqRel) {
                    tracing::info!(route = %route.name, "sign-ins are shared with the other replicas again");
                }
            }
            Err(error) => {
                if !self.save_failing.swap(true, Ordering::AcqRel) {
                    tracing::warn!(route = %route.name, %error,
                        "sign-in not shared with the other replicas; its callback must reach this one");
                }
            }
        }
    }

    /// Ends the sign-in that `params` names. `cookie` is the value of the flow's binding
    /// cookie as the callback's browser sent it; on a per-user route, `principal` must be
    /// whoever started the sign-in. A flow another replica started is found through
    /// `handover`.
    pub(crate) async fn complete(
        &self,
        params: &CallbackParams,
        cookie: Option<&str>,
        principal: Option<&Principal>,
        handover: Handover<'_>,
    ) -> Result<SignedIn, CallbackError> {
        let state = params.state().ok_or(CallbackError::MissingState)?;
        // Taken out before anything else, here and from a shared store: a state is good for
        // one callback only.
        let flow = self.take(state, handover).await;
        if let Some(error) = &params.error {
            return Err(CallbackError::Denied {
                route: flow.ok().flatten().map(|flow| flow.route.name.clone()),
                error: error.clone(),
                description: params.error_description.clone(),
            });
        }
        let flow = flow?.ok_or(CallbackError::UnknownState)?;
        let route = flow.route.name.clone();
        if flow.began.elapsed() >= self.lifetime {
            return Err(CallbackError::Expired {
                route,
                lifetime: self.lifetime,
            });
        }
        let same_browser = cookie.is_some_and(|cookie| {
            bool::from(cookie.as_bytes().ct_eq(flow.browser.expose().as_bytes()))
        });
        if !same_browser {
            return Err(CallbackError::OtherBrowser { route });
        }
        if flow
            .route
            .principal()
            .is_some_and(|own| Some(own) != principal)
        {
            return Err(CallbackError::OtherPerson { route });
        }
        check_issuer(&flow, params.iss.as_ref())?;
        let code = params
            .code
            .as_ref()
            .ok_or_else(|| CallbackError::MissingCode {
                route: route.clone(),
            })?;
        self.finish(flow, code).await
    }

    /// Removes the flow of `state` from memory and from the shared store: the one this
    /// replica started, or else the one the store holds, rebuilt here.
    async fn take(
        &self,
        state: &str,
        handover: Handover<'_>,
    ) -> Result<Option<PendingFlow>, CallbackError> {
        let local = self.flows.lock().remove(state);
        let digest = state_digest(state);
        match local {
            Some(flow) if flow.saved => {
                let taken = flow.route.store.take_flow(&digest).await;
                let taken = taken.map_err(|source| CallbackError::SharedStore {
                    route: Some(flow.route.name.clone()),
                    source,
                })?;
                // Gone from the store while not yet expired: another replica used it.
                let fresh = flow.began.elapsed() < self.lifetime;
                Ok((taken.is_some() || !fresh).then_some(flow))
            }
            Some(flow) => Ok(Some(flow)),
            None => {
                let Some(store) = handover.store.filter(|store| store.is_shared()) else {
                    return Ok(None);
                };
                let taken = store.take_flow(&digest).await;
                let taken = taken.map_err(|source| CallbackError::SharedStore {
                    route: None,
                    source,
                })?;
                match taken {
                    Some(record) => handover.rebuild(record).await.map(Some),
                    None => Ok(None),
                }
            }
        }
    }

    /// How long a person has to finish signing in, which is also the binding cookie's life.
    pub(crate) fn lifetime(&self) -> Duration {
        self.lifetime
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
        // Signing in is a use: the new tokens are kept fresh for the window that follows.
        route.note_use();
        tracing::info!(route = %route.name, "signed in");
        Ok(SignedIn {
            route: route.name.clone(),
            scope,
            signed_in: Arc::clone(route),
        })
    }
}

/// Discovers, registers if need be and builds the authorization request for a sign-in to
/// `route`: the URL, its `state`, and the flow to keep until the callback.
async fn prepare(route: &Arc<OAuthRoute>) -> Result<(Url, String, PendingFlow), StartError> {
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
        browser: Secret::new(CsrfToken::new_random_len(32).secret().clone()),
        began: Began::Here(Instant::now()),
        saved: false,
    };
    Ok((url, state.secret().clone(), flow))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_parameters_are_read_once_each_and_others_ignored() {
        let params = CallbackParams::parse("code=c%2B1&state=s&iss=https%3A%2F%2Fas&x=1&x=2")
            .expect("a well-formed callback");
        assert_eq!(params.state(), Some("s"));
        assert_eq!(params.code.as_ref().map(Secret::expose), Some("c+1"));
        assert_eq!(params.iss.as_deref(), Some("https://as"));
        assert!(
            !format!("{params:?}").contains("c+1"),
            "the code is redacted"
        );

        let repeated = CallbackParams::parse("state=a&code=1&code=2");
        assert!(matches!(
            repeated,
            Err(CallbackError::Repeated { name: "code" })
        ));
        let token = CallbackParams::parse("state=a&access_token=t");
        assert!(matches!(token, Err(CallbackError::TokenInUrl { .. })));
        assert!(CallbackParams::parse("").expect("empty").state().is_none());
    }

    #[test]
    fn binding_cookie_names_are_per_state_and_carry_no_state() {
        let one = binding_cookie_name("state-one");
        assert_ne!(one, binding_cookie_name("state-two"));
        assert!(one.starts_with("mcp_gateway_sign_in_") && !one.contains("state"));
        assert_eq!(one.len(), "mcp_gateway_sign_in_".len() + 16);
    }
}
