//! What the gateway tells people and tools about its routes: one [`RouteStatus`] per route,
//! the same for the web UI, the JSON index, the admin API and the CLI (which reads it back
//! from the admin API). Nothing in it is a credential: no token, code or client secret.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::gateway::{Routing, Shared};
use crate::oauth::users::Principal;
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
    /// Present on OAuth routes; on a per-user route, the viewer's own sign-in, and absent
    /// when nobody in particular is looking (the admin API, the CLI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sign_in: Option<SignInStatus>,
    /// Present on per-user routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) per_user: Option<PeopleStatus>,
}

/// A per-user route's people: counts for the operator, and who is looking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PeopleStatus {
    /// People who used the route since the gateway started.
    pub(crate) known: usize,
    /// Those of them signed in now.
    pub(crate) signed_in: usize,
    /// The person looking at their own page, as the proxy in front names them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) you: Option<String>,
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
    /// The status of `route`, one of `routing`'s, now, as `viewer` sees it: on a per-user
    /// route a person sees their own sign-in and nobody else's.
    pub(crate) fn of(routing: &Routing, route: &Route, viewer: Option<&Principal>) -> Self {
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
            sign_in: routing
                .oauth_route(&route.name)
                .and_then(|oauth| own_sign_in(oauth, viewer)),
            per_user: routing
                .oauth_route(&route.name)
                .and_then(|oauth| people(oauth, viewer)),
        }
    }

    /// Every route, in the order of the configuration, as `viewer` sees them.
    pub(crate) fn all(shared: &Shared, viewer: Option<&Principal>) -> Vec<Self> {
        let routing = shared.routing();
        routing
            .config
            .routes
            .iter()
            .filter_map(|config| routing.route(&config.name))
            .map(|route| Self::of(&routing, route, viewer))
            .collect()
    }

    /// Whether the route cannot serve clients until someone signs in.
    pub(crate) fn needs_sign_in(&self) -> bool {
        self.sign_in
            .as_ref()
            .is_some_and(|sign_in| sign_in.state == SignInState::NeedsSignIn)
    }
}

/// The sign-in `viewer` sees: the route's, or on a per-user route their own, if the gateway
/// has met them.
fn own_sign_in(route: &OAuthRoute, viewer: Option<&Principal>) -> Option<SignInStatus> {
    let Some(users) = route.users() else {
        return Some(sign_in(route));
    };
    let own = users.get(viewer?)?;
    Some(sign_in(&own))
}

fn people(route: &OAuthRoute, viewer: Option<&Principal>) -> Option<PeopleStatus> {
    let users = route.users()?.all();
    let signed_in = users
        .iter()
        .filter(|user| user.status() == SlotStatus::SignedIn)
        .count();
    Some(PeopleStatus {
        known: users.len(),
        signed_in,
        you: viewer.map(|viewer| viewer.as_str().to_owned()),
    })
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
