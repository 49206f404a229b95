//! Keeping a route's tokens fresh, off the request path.
//!
//! One task per OAuth route sleeps until its token is due: five minutes before expiry, or at
//! 80% of the lifetime for tokens that live less than 25 minutes, so a short-lived token is
//! never refreshed in a loop. A failed refresh backs off (network errors and 5xx), and
//! `invalid_grant` marks the route as needing sign-in until a person signs in again.
//!
//! [`refresh`] is the single flight that both the task and waiting requests use: a gate per
//! route lets one refresh run while the others wait for its result, and a lock file in the
//! store keeps two gateway processes sharing a store from spending one refresh token twice.
//! A rotated refresh token is persisted before the new access token is used.
//!
//! A per-user route has one scheduler task ([`run_users`]) for all its people instead of a
//! task each, and it leaves alone the tokens of people who have not used them lately.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::exchange::{self, ExchangeError, unix_seconds};
use super::registration;
use super::users::Principal;
use super::{OAuthError, OAuthRoute, SlotStatus, is_stale};
use crate::store::StoredTokens;

const SHORT_LIFETIME: Duration = Duration::from_secs(25 * 60);
const REFRESH_AHEAD: Duration = Duration::from_secs(5 * 60);
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Why a refresh did not produce new tokens.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RefreshError {
    #[error("there is no refresh token: sign in again")]
    NoRefreshToken,
    #[error("the route needs sign-in ({0})")]
    NeedsSignIn(String),
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    #[error(transparent)]
    OAuth(#[from] OAuthError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl RefreshError {
    /// Whether trying again later can help.
    fn is_transient(&self) -> bool {
        match self {
            RefreshError::Exchange(ExchangeError::Transient(_)) => true,
            RefreshError::Exchange(_)
            | RefreshError::NoRefreshToken
            | RefreshError::NeedsSignIn(_) => false,
            RefreshError::OAuth(_) | RefreshError::Store(_) => true,
        }
    }
}

/// Refreshes `route`'s tokens unless someone already did since `seen_generation`.
pub(crate) async fn refresh(route: &OAuthRoute, seen_generation: u64) -> Result<(), RefreshError> {
    let _gate = route.refresh_gate.lock().await;
    if route.generation() != seen_generation {
        return Ok(());
    }
    let _lock = route.store.lock(&route.slot).await?;

    // Another process sharing the store may have refreshed while we waited for the lock:
    // its tokens are newer than ours, and ours may hold a refresh token already spent.
    let mut current = route.tokens();
    let Some(stored) = route.store.load_tokens(&route.slot).await? else {
        // Whoever shares the store signed this slot out (another replica, the CLI): a
        // refresh would bring back what they removed.
        let reason = "signed out";
        tracing::info!(route = %route.name, principal = %route.principal_hash(), "the slot was signed out elsewhere");
        route.forget_tokens(reason);
        return Err(RefreshError::NeedsSignIn(reason.to_owned()));
    };
    if current
        .as_ref()
        .is_none_or(|current| current.access_token != stored.access_token)
    {
        route.install(stored.clone());
        if !is_stale(&stored, SystemTime::now()) {
            return Ok(());
        }
        current = Some(stored);
    }
    let refresh_token = current
        .and_then(|tokens| tokens.refresh_token)
        .ok_or(RefreshError::NoRefreshToken)?;

    let discovered = route.discovered().await?;
    let client = registration::current(route)
        .await
        .map_err(OAuthError::from)?;
    let server = &discovered.auth_server;
    let oauth = exchange::client(
        &client,
        &server.authorization_endpoint,
        &server.token_endpoint,
        &route.redirect_uri,
    );
    let resource = route.resource(&discovered);
    route.refreshing.store(true, Ordering::Relaxed);
    let refreshed =
        exchange::refresh(&oauth, &route.http, &refresh_token, resource.as_deref()).await;
    route.refreshing.store(false, Ordering::Relaxed);
    match refreshed {
        Ok(tokens) => {
            route.store.save_tokens(&route.slot, &tokens).await?;
            route.install(tokens);
            route.record_refresh("ok");
            tracing::info!(route = %route.name, principal = %route.principal_hash(), "tokens refreshed");
            Ok(())
        }
        Err(error @ ExchangeError::InvalidGrant(_)) => {
            tracing::warn!(route = %route.name, principal = %route.principal_hash(), %error, "refresh refused; sign-in needed");
            route.record_refresh("invalid_grant");
            route.needs_sign_in(error.to_string());
            Err(error.into())
        }
        Err(error @ ExchangeError::InvalidClient(_)) => {
            tracing::warn!(route = %route.name, principal = %route.principal_hash(), %error, "client unknown to the authorization server; the next sign-in registers again");
            registration::forget(route).await?;
            route.record_refresh("invalid_client");
            route.needs_sign_in(error.to_string());
            Err(error.into())
        }
        Err(error) => {
            route.record_refresh("error");
            Err(error.into())
        }
    }
}

/// When `tokens` are due for a refresh; `None` when they cannot be refreshed.
pub(crate) fn due_at(tokens: &StoredTokens) -> Option<SystemTime> {
    tokens.refresh_token.as_ref()?;
    let expires_at = tokens.expires_at?;
    let issued_at = tokens
        .issued_at
        .unwrap_or_else(|| unix_seconds(SystemTime::now()));
    let lifetime = Duration::from_secs_f64((expires_at - issued_at).max(0.0));
    let due = if lifetime < SHORT_LIFETIME {
        issued_at + lifetime.as_secs_f64() * 0.8
    } else {
        expires_at - REFRESH_AHEAD.as_secs_f64()
    };
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(due.max(0.0)))
}

/// Runs the refresh schedule of `route` until `stop` fires (or its sender is dropped).
/// It stops only while it waits: a refresh that has begun finishes and saves its tokens,
/// since a refresh token the server already rotated cannot be spent again.
pub(crate) async fn run(route: Arc<OAuthRoute>, mut stop: tokio::sync::oneshot::Receiver<()>) {
    let _counted = route.metrics.refresher_running();
    let mut backoff = MIN_BACKOFF;
    loop {
        let waiting_for_change = route.changed();
        let due = match (route.status(), route.tokens()) {
            (SlotStatus::SignedIn, Some(tokens)) => due_at(&tokens),
            _ => None,
        };
        let wait = due.map(|due| due.duration_since(SystemTime::now()).unwrap_or_default());
        tokio::select! {
            _ = &mut stop => return,
            _ = waiting_for_change => continue,
            _ = sleep_or_forever(wait) => {}
        }
        let pause = match refresh(&route, route.generation()).await {
            Ok(()) => {
                backoff = MIN_BACKOFF;
                continue;
            }
            Err(error) if error.is_transient() => {
                tracing::warn!(route = %route.name, %error, retry_in_secs = backoff.as_secs(), "refresh failed; will retry");
                let pause = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                pause
            }
            Err(_) => {
                backoff = MIN_BACKOFF;
                continue;
            }
        };
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// When `user`'s tokens are due for a scheduled refresh: `None` when they cannot be
/// refreshed, or when their owner has not used them within `window` of `now` (their next
/// request refreshes them instead).
pub(crate) fn user_due(user: &OAuthRoute, now: SystemTime, window: Duration) -> Option<SystemTime> {
    let recently_used = user
        .last_used()
        .is_some_and(|used| now.duration_since(used).unwrap_or_default() <= window);
    match (recently_used, user.status(), user.tokens()) {
        (true, SlotStatus::SignedIn, Some(tokens)) => due_at(&tokens),
        _ => None,
    }
}

/// Runs the refresh schedule of everyone on a per-user route until `stop` fires: one task
/// for the whole route, asleep until the earliest refresh due among the people who used
/// their tokens recently. Each refresh runs in a short task of its own, so one slow token
/// request delays nobody else's, and a refresh that has begun finishes even if the route
/// goes away.
pub(crate) async fn run_users(
    route: Arc<OAuthRoute>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let Some(users) = route.users() else {
        return;
    };
    let _counted = route.metrics.refresher_running();
    let (done, mut finished) = tokio::sync::mpsc::unbounded_channel::<(Principal, bool)>();
    let mut running: HashSet<Principal> = HashSet::new();
    // People whose last refresh failed for a reason that may pass: when to try again.
    let mut retry: HashMap<Principal, (SystemTime, Duration)> = HashMap::new();
    loop {
        let now = SystemTime::now();
        let mut next: Option<SystemTime> = None;
        for user in users.all() {
            let Some(principal) = user.principal().cloned() else {
                continue;
            };
            let Some(mut due) = user_due(&user, now, users.refresh_window) else {
                retry.remove(&principal);
                continue;
            };
            if let Some((after, _)) = retry.get(&principal) {
                due = due.max(*after);
            }
            if running.contains(&principal) {
                continue;
            }
            if due > now {
                next = Some(next.map_or(due, |next| next.min(due)));
                continue;
            }
            running.insert(principal.clone());
            let done = done.clone();
            tokio::spawn(async move {
                let outcome = refresh(&user, user.generation()).await;
                let transient = outcome.as_ref().is_err_and(RefreshError::is_transient);
                let _ = done.send((principal, transient));
            });
        }
        let wait = next.map(|next| next.duration_since(now).unwrap_or_default());
        tokio::select! {
            _ = &mut stop => return,
            _ = users.wake.notified() => {}
            Some((principal, transient)) = finished.recv() => {
                running.remove(&principal);
                if transient {
                    let backoff = retry.get(&principal).map_or(MIN_BACKOFF, |(_, last)| (*last * 2).min(MAX_BACKOFF));
                    tracing::warn!(route = %route.name, principal = %principal.hash(), retry_in_secs = backoff.as_secs(), "refresh failed; will retry");
                    retry.insert(principal, (SystemTime::now() + backoff, backoff));
                } else {
                    retry.remove(&principal);
                }
            }
            _ = sleep_or_forever(wait) => {}
        }
    }
}

async fn sleep_or_forever(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::AccessToken;

    fn tokens(issued: f64, lifetime: f64) -> StoredTokens {
        StoredTokens {
            access_token: AccessToken::new("a".into()),
            token_type: "Bearer".into(),
            refresh_token: Some(crate::secret::Secret::new("r")),
            scope: None,
            expires_at: Some(issued + lifetime),
            issued_at: Some(issued),
        }
    }

    fn at(seconds: f64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs_f64(seconds)
    }

    #[test]
    fn long_lived_tokens_refresh_five_minutes_before_expiry() {
        assert_eq!(
            due_at(&tokens(1000.0, 3600.0)),
            Some(at(1000.0 + 3600.0 - 300.0))
        );
    }

    #[test]
    fn short_lived_tokens_refresh_at_eighty_percent_of_their_lifetime() {
        assert_eq!(due_at(&tokens(1000.0, 600.0)), Some(at(1480.0)));
        assert_eq!(due_at(&tokens(1000.0, 10.0)), Some(at(1008.0)));
    }

    #[test]
    fn tokens_without_a_refresh_token_are_never_due() {
        let mut tokens = tokens(1000.0, 3600.0);
        tokens.refresh_token = None;
        assert_eq!(due_at(&tokens), None);
    }
}
