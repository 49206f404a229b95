//! The legacy transport's open streams, by the endpoint their clients post to.
//!
//! On the legacy HTTP+SSE transport a client posts each message to the `endpoint` URL and
//! reads every answer from its SSE stream; the `POST` itself gets only `202 Accepted`. When
//! the gateway answers a message itself (a plugin refused a tool call), the answer must
//! therefore go down that client's stream. The stream relay registers each legacy stream
//! here under the endpoint it rewrote for the client; an answer for that endpoint is queued
//! to the relay, which writes it between the upstream's events. A stream relayed by another
//! replica is not found here, and the caller answers in the `POST`'s body instead.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;

/// Answers queued for one stream; past this, the client is too slow and they are dropped.
const QUEUE: usize = 64;

#[derive(Debug, Default)]
pub(crate) struct LegacyStreams {
    streams: Mutex<HashMap<String, mpsc::Sender<Bytes>>>,
}

impl LegacyStreams {
    /// Registers the stream whose client posts to `endpoint` (path and query, as rewritten
    /// for the client), until the registration is dropped.
    pub(crate) fn register(
        self: &Arc<Self>,
        endpoint: String,
    ) -> (mpsc::Receiver<Bytes>, Registration) {
        let (sender, receiver) = mpsc::channel(QUEUE);
        self.streams.lock().insert(endpoint.clone(), sender);
        let registration = Registration {
            streams: Arc::clone(self),
            endpoint,
        };
        (receiver, registration)
    }

    /// Queues `message` (a JSON-RPC message) as an SSE event on the stream of `endpoint`;
    /// false when no such stream is open here or it cannot take more.
    pub(crate) fn deliver(&self, endpoint: &str, message: &serde_json::Value) -> bool {
        let Some(sender) = self.streams.lock().get(endpoint).cloned() else {
            return false;
        };
        let event = format!("event: message\ndata: {message}\n\n");
        sender.try_send(Bytes::from(event)).is_ok()
    }
}

/// A registered stream; dropping it removes the stream.
#[derive(Debug)]
pub(crate) struct Registration {
    streams: Arc<LegacyStreams>,
    endpoint: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.streams.streams.lock().remove(&self.endpoint);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_reach_the_registered_stream_until_it_is_gone() {
        let streams = Arc::new(LegacyStreams::default());
        let (mut receiver, registration) = streams.register("/r/message?sessionId=a".into());
        let answer = serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {}});
        assert!(streams.deliver("/r/message?sessionId=a", &answer));
        assert!(!streams.deliver("/r/message?sessionId=b", &answer));
        let event = receiver.recv().await.expect("queued");
        assert!(event.starts_with(b"event: message\ndata: {"));
        assert!(event.ends_with(b"}\n\n"));
        drop(registration);
        assert!(!streams.deliver("/r/message?sessionId=a", &answer));
    }
}
