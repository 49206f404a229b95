//! Who opened each Streamable HTTP session on a per-user route.
//!
//! On a per-user route each person's requests carry their own upstream token, and the
//! `Mcp-Session-Id` the upstream hands out belongs to that person. Most upstreams tie a
//! session to the token that opened it, but nothing obliges them to, so the gateway keeps
//! its own record: the session ids it saw in responses, each with the caller it went to. A
//! request naming a session that belongs to someone else gets `404`, the answer MCP gives
//! for a session that does not exist. Ids are kept as digests, the record is bounded (the
//! oldest entries go first), and an id the gateway never saw passes on to the upstream,
//! as it must behind a load balancer where another replica opened the session.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::inbound::Client;

/// The Streamable HTTP session header.
pub(crate) const SESSION_ID: &str = "mcp-session-id";

/// Sessions remembered per route; past it, the oldest is forgotten.
const MAX_SESSIONS: usize = 65_536;

type SessionDigest = [u8; 16];

/// The owners of a per-user route's Streamable HTTP sessions.
#[derive(Debug, Default)]
pub(crate) struct SessionOwners {
    inner: Mutex<Owners>,
}

#[derive(Debug, Default)]
struct Owners {
    by_session: HashMap<SessionDigest, Client>,
    /// Insertion order, for forgetting the oldest.
    order: VecDeque<SessionDigest>,
}

impl SessionOwners {
    /// Notes that the upstream handed session `id` to `owner`.
    pub(crate) fn record(&self, id: &[u8], owner: &Client) {
        let digest = digest(id);
        let mut owners = self.inner.lock();
        if owners.by_session.insert(digest, owner.clone()).is_none() {
            owners.order.push_back(digest);
        }
        while owners.order.len() > MAX_SESSIONS {
            if let Some(oldest) = owners.order.pop_front() {
                owners.by_session.remove(&oldest);
            }
        }
    }

    /// Notes the session a response hands to `owner`, if it hands out one.
    pub(crate) fn note_response(&self, response: &pingora::http::ResponseHeader, owner: &Client) {
        if let Some(id) = response.headers.get(SESSION_ID) {
            self.record(id.as_bytes(), owner);
        }
    }

    /// Whether session `id` is known to belong to someone other than `caller`.
    pub(crate) fn belongs_to_another(&self, id: &[u8], caller: &Client) -> bool {
        self.inner
            .lock()
            .by_session
            .get(&digest(id))
            .is_some_and(|owner| owner != caller)
    }

    /// Forgets session `id` (its owner ended it).
    pub(crate) fn forget(&self, id: &[u8]) {
        let digest = digest(id);
        let mut owners = self.inner.lock();
        if owners.by_session.remove(&digest).is_some() {
            owners.order.retain(|known| *known != digest);
        }
    }
}

fn digest(id: &[u8]) -> SessionDigest {
    let mut digest = [0; 16];
    digest.copy_from_slice(&Sha256::digest(id)[..16]);
    digest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(name: &str) -> Client {
        let principal = crate::oauth::users::Principal::new(name).expect("principal");
        Client::of_principal(&principal)
    }

    #[test]
    fn a_session_belongs_to_whoever_it_was_handed_to() {
        let owners = SessionOwners::default();
        let (alice, bob) = (person("alice@example.com"), person("bob@example.com"));
        owners.record(b"s-1", &alice);
        assert!(!owners.belongs_to_another(b"s-1", &alice));
        assert!(owners.belongs_to_another(b"s-1", &bob));
        // Unknown ids pass: another replica may have opened them.
        assert!(!owners.belongs_to_another(b"s-2", &bob));
        owners.forget(b"s-1");
        assert!(!owners.belongs_to_another(b"s-1", &bob));
    }

    #[test]
    fn the_record_is_bounded_and_forgets_the_oldest_first() {
        let owners = SessionOwners::default();
        let (alice, bob) = (person("alice@example.com"), person("bob@example.com"));
        for index in 0..=MAX_SESSIONS {
            owners.record(index.to_string().as_bytes(), &alice);
        }
        let inner = owners.inner.lock();
        assert_eq!(inner.by_session.len(), MAX_SESSIONS);
        assert_eq!(inner.order.len(), MAX_SESSIONS);
        drop(inner);
        assert!(!owners.belongs_to_another(b"0", &bob));
        assert!(owners.belongs_to_another(MAX_SESSIONS.to_string().as_bytes(), &bob));
    }
}
