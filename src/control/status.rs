//! What the gateway tells people and tools about its routes: one [`RouteStatus`] per route,
//! the same for the web UI, the JSON index, the admin API and the CLI (which reads it back
//! from the admin API). Nothing in it is a credential: no token, code or client secret.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::gateway::{Routing, Shared};
use crate::oauth::{OAuthRoute, SlotStatus};
use crate::route::Route;

/// One route as the control plane shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RouteStatus {
    pub(crate) name: String,
    pub(crate) prefix: String,
    pub(crate) upstream: String,
    /// `oauth`, `bearer` or `none`.
    pub(crate) auth: String,
    /// The URL to give Streamable HTTP clients.
    pub(crate) streamable_http: String,
    /// The URL to give legacy HTTP+SSE clients.
    pub(crate) sse: String,
    /// The last proxied request could not reach the upstream.
    pub(crate) upstream_unreachable: bool,
    /// Present on OAuth routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sign_in: Option<SignInStatus>,
}

/// Where an OAuth route's sign-in stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SignInStatus {
    pub(crate) state: SignInState,
    /// Why the route needs sign-in, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
    pub(crate) sign_in_url: String,
    /// When the access token expires, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) expires_at: Option<u64>,
    /// Seconds until then (negative once expired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) expires_in: Option<i64>,
    /// The scopes the authorization server granted, space-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) scope: Option<String>,
    /// Whether a refresh token is held, so the route can stay signed in by itself.
    pub(crate) refreshable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) last_refresh: Option<LastRefresh>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SignInState {
    SignedIn,
    Refreshing,
    NeedsSignIn,
}

impl SignInState {
    /// The words a person reads.
    pub(crate) fn label(self) -> &'static str {
        match self {
            SignInState::SignedIn => "signed in",
            SignInState::Refreshing => "refreshing",
            SignInState::NeedsSignIn => "needs sign-in",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LastRefresh {
    /// Seconds since the Unix epoch.
    pub(crate) at: u64,
    pub(crate) outcome: String,
}

impl RouteStatus {
    /// The status of `route`, one of `routing`'s, now.
    pub(crate) fn of(routing: &Routing, route: &Route) -> Self {
        let public_url = &routing.config.server.public_url;
        let base = public_url.as_str().trim_end_matches('/');
        let prefix = route.prefix.trim_end_matches('/');
        let summary = route.describe();
        Self {
            name: summary.name.to_owned(),
            prefix: summary.prefix.to_owned(),
            upstream: summary.upstream.to_owned(),
            auth: summary.auth.to_owned(),
            streamable_http: format!("{base}{prefix}/mcp"),
            sse: format!("{base}{prefix}/sse"),
            upstream_unreachable: route.upstream_unreachable(),
            sign_in: routing.oauth_route(&route.name).map(|oauth| sign_in(oauth)),
        }
    }

    /// Every route, in the order of the configuration.
    pub(crate) fn all(shared: &Shared) -> Vec<Self> {
        let routing = shared.routing();
        routing
            .config
            .routes
            .iter()
            .filter_map(|config| routing.route(&config.name))
            .map(|route| Self::of(&routing, route))
            .collect()
    }

    /// Whether the route cannot serve clients until someone signs in.
    pub(crate) fn needs_sign_in(&self) -> bool {
        self.sign_in
            .as_ref()
            .is_some_and(|sign_in| sign_in.state == SignInState::NeedsSignIn)
    }
}

fn sign_in(route: &OAuthRoute) -> SignInStatus {
    let tokens = route.tokens();
    let (state, reason) = match route.status() {
        SlotStatus::NeedsSignIn { reason } => (SignInState::NeedsSignIn, Some(reason)),
        SlotStatus::SignedIn if route.is_refreshing() => (SignInState::Refreshing, None),
        SlotStatus::SignedIn => (SignInState::SignedIn, None),
    };
    let now = unix_now();
    let expires_at = tokens
        .as_ref()
        .and_then(|tokens| tokens.expires_at)
        .map(|at| at.max(0.0) as u64);
    SignInStatus {
        state,
        reason,
        sign_in_url: route.sign_in_url.clone(),
        expires_at,
        expires_in: expires_at.map(|at| at as i64 - now as i64),
        scope: tokens.as_ref().and_then(|tokens| tokens.scope.clone()),
        refreshable: tokens.is_some_and(|tokens| tokens.refresh_token.is_some()),
        last_refresh: route.last_refresh().map(|record| LastRefresh {
            at: unix_seconds(record.at),
            outcome: record.outcome.to_owned(),
        }),
    }
}

pub(crate) fn unix_now() -> u64 {
    unix_seconds(SystemTime::now())
}

fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
