//! Per-user mode: one slot, sign-in and token lifecycle per person on a shared route.
//!
//! A route with `principal = "forwarded"` is used by many people through one gateway (a team
//! sharing one Databricks App, say). The authenticating proxy in front names each caller in
//! a trusted header; that name is the [`Principal`], and each principal gets an
//! [`OAuthRoute`] of their own, with its own slot in the token store, sign-in, tokens and
//! single-flight refresh. The route's own `OAuthRoute` holds the [`Users`] and is never a
//! source of tokens itself.
//!
//! A principal's `OAuthRoute` is made on first use and loads whatever the store holds for
//! it, so a restart loses nobody's sign-in. Refreshing ahead of expiry is one scheduler task
//! per route (`refresher::run_users`), not a task per person, and it refreshes only the
//! tokens of people who used the gateway within `server.per_user_refresh_window_secs`; a
//! token that lapsed while its owner was away is refreshed on their next request.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use sha2::{Digest, Sha256};

use super::OAuthRoute;

/// The longest identity accepted from a forwarded header; longer values are refused rather
/// than cut, so two people can never share a prefix-truncated name.
const MAX_PRINCIPAL_LEN: usize = 320;

/// Who a request acts for in per-user mode: the identity a trusted proxy forwards (an
/// email address on Databricks Apps). `Debug` and [`Principal::hash`] never show it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Principal(String);

impl Principal {
    /// The principal `value` names, if it is a usable identity.
    pub(crate) fn new(value: &str) -> Option<Self> {
        let value = value.trim();
        let usable = !value.is_empty()
            && value.len() <= MAX_PRINCIPAL_LEN
            && !value.chars().any(char::is_control);
        usable.then(|| Self(value.to_owned()))
    }

    /// The first identity header the request carries, in order of preference.
    pub(crate) fn from_headers(
        headers: &http::HeaderMap,
        identity_headers: &[http::HeaderName],
    ) -> Option<Self> {
        identity_headers
            .iter()
            .find_map(|name| Self::new(headers.get(name)?.to_str().ok()?))
    }

    /// The identity itself: for the store's slot name and the person's own page.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// Sixteen hex digits of SHA-256: tells principals apart in logs without naming them.
    pub(crate) fn hash(&self) -> String {
        Sha256::digest(self.0.as_bytes())[..8]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Principal({})", self.hash())
    }
}

/// What ties a person's [`OAuthRoute`] to their route's scheduler.
#[derive(Debug)]
pub(crate) struct UserLink {
    pub(crate) principal: Principal,
    /// The route's refresh scheduler, woken when this person's tokens or status change.
    pub(crate) wake: Arc<tokio::sync::Notify>,
    pub(crate) refresh_window: Duration,
}

/// The people of one per-user route, each with their own [`OAuthRoute`].
pub(crate) struct Users {
    slots: RwLock<HashMap<Principal, Arc<OAuthRoute>>>,
    /// Wakes the route's refresh scheduler when someone's tokens or status change.
    pub(crate) wake: Arc<tokio::sync::Notify>,
    /// Tokens are refreshed ahead of expiry only for people who used them this recently.
    pub(crate) refresh_window: Duration,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Users")
            .field("count", &self.slots.read().len())
            .field("refresh_window", &self.refresh_window)
            .finish()
    }
}

impl Users {
    pub(crate) fn new(refresh_window: Duration) -> Self {
        Self {
            slots: RwLock::new(HashMap::new()),
            wake: Arc::new(tokio::sync::Notify::new()),
            refresh_window,
        }
    }

    /// The slot of `principal` if it has been used since start.
    pub(crate) fn get(&self, principal: &Principal) -> Option<Arc<OAuthRoute>> {
        self.slots.read().get(principal).cloned()
    }

    /// The slot of `principal`, made by `make` the first time.
    pub(crate) fn get_or_insert(
        &self,
        principal: &Principal,
        make: impl FnOnce() -> OAuthRoute,
    ) -> Arc<OAuthRoute> {
        if let Some(found) = self.get(principal) {
            return found;
        }
        let mut slots = self.slots.write();
        let slot = slots
            .entry(principal.clone())
            .or_insert_with(|| Arc::new(make()));
        Arc::clone(slot)
    }

    /// Every principal's slot seen since start.
    pub(crate) fn all(&self) -> Vec<Arc<OAuthRoute>> {
        self.slots.read().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().expect("header value"));
        }
        map
    }

    #[test]
    fn the_first_trusted_header_present_names_the_principal() {
        let trusted = [
            http::HeaderName::from_static("x-forwarded-email"),
            http::HeaderName::from_static("x-forwarded-user"),
        ];
        let both = headers(&[
            ("x-forwarded-user", "1234"),
            ("x-forwarded-email", " alice@example.com "),
        ]);
        let principal = Principal::from_headers(&both, &trusted).expect("principal");
        assert_eq!(principal.as_str(), "alice@example.com");
        let user_only = headers(&[("x-forwarded-user", "1234")]);
        let principal = Principal::from_headers(&user_only, &trusted).expect("principal");
        assert_eq!(principal.as_str(), "1234");
        let untrusted = headers(&[("x-auth-email", "mallory@example.com")]);
        assert!(Principal::from_headers(&untrusted, &trusted).is_none());
    }

    #[test]
    fn empty_overlong_or_control_character_identities_are_refused() {
        assert!(Principal::new("   ").is_none());
        assert!(Principal::new(&"a".repeat(MAX_PRINCIPAL_LEN + 1)).is_none());
        assert!(Principal::new("alice\u{7}@example.com").is_none());
        assert!(Principal::new(&"a".repeat(MAX_PRINCIPAL_LEN)).is_some());
    }

    #[test]
    fn debug_shows_a_hash_not_the_identity() {
        let principal = Principal::new("alice@example.com").expect("principal");
        let shown = format!("{principal:?}");
        assert!(!shown.contains("alice"), "{shown}");
        assert!(shown.contains(&principal.hash()), "{shown}");
        assert_eq!(principal.hash().len(), 16);
    }
}
