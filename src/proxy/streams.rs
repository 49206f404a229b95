//! Bounds on the event streams the gateway relays at once: for the whole gateway
//! (`server.max_streams`, past it 503) and for each client (`server.max_streams_per_client`,
//! past it 429), so that one client opening streams in a loop cannot take every place.
//!
//! Who a client is, [`Client`], is the inbound side's to say.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::inbound::Client;

/// Which bound a new stream would break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exceeded {
    Gateway { max: usize },
    Client { max: usize },
}

/// The streams open right now, in all and per client.
#[derive(Debug)]
pub(crate) struct StreamBounds {
    open: Mutex<Open>,
    max_total: usize,
    max_per_client: usize,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_client: HashMap<Client, usize>,
}

impl StreamBounds {
    pub(crate) fn new(max_total: usize, max_per_client: usize) -> Self {
        Self {
            open: Mutex::new(Open::default()),
            max_total,
            max_per_client,
        }
    }

    /// Takes a place for one stream of `client`, held until the slot is dropped.
    pub(crate) fn enter(self: &Arc<Self>, client: Client) -> Result<StreamSlot, Exceeded> {
        let mut open = self.open.lock();
        if open.total >= self.max_total {
            return Err(Exceeded::Gateway {
                max: self.max_total,
            });
        }
        let held = open.per_client.entry(client.clone()).or_default();
        if *held >= self.max_per_client {
            return Err(Exceeded::Client {
                max: self.max_per_client,
            });
        }
        *held += 1;
        open.total += 1;
        Ok(StreamSlot {
            bounds: Arc::clone(self),
            client,
        })
    }
}

/// One open stream's place; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct StreamSlot {
    bounds: Arc<StreamBounds>,
    client: Client,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.bounds.open.lock();
        open.total -= 1;
        if let Some(held) = open.per_client.get_mut(&self.client) {
            *held -= 1;
            if *held == 0 {
                open.per_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn address(last: u8) -> Client {
        Client::Address(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn each_client_has_its_own_bound_within_the_gateways() {
        let bounds = Arc::new(StreamBounds::new(3, 2));
        let a1 = bounds.enter(address(1)).expect("first of a");
        let _a2 = bounds.enter(address(1)).expect("second of a");
        assert_eq!(
            bounds.enter(address(1)).err(),
            Some(Exceeded::Client { max: 2 })
        );
        let _b1 = bounds.enter(address(2)).expect("b has its own places");
        assert_eq!(
            bounds.enter(address(3)).err(),
            Some(Exceeded::Gateway { max: 3 })
        );
        drop(a1);
        assert_eq!(bounds.open.lock().total, 2);
        let _a3 = bounds.enter(address(1)).expect("a's freed place");
        assert_eq!(bounds.open.lock().per_client.len(), 2);
    }
}
