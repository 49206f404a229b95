//! A copy of an OAuth route's request body, kept so the request can be sent once more after
//! the upstream refused the route's token.
//!
//! Pingora streams the client's body to the upstream chunk by chunk. For OAuth routes the
//! proxy's `request_body_filter` also hands every chunk to a [`ReplayBody`], which keeps it
//! (the same reference-counted buffer, not a copy of the bytes) while the body stays within
//! [`LIMIT`]. When the upstream answers `401`, the proxy reads whatever the client has not
//! sent yet, refreshes the token and resends the whole body itself. A body over the limit is
//! let go as soon as it passes the limit, so a large upload costs no memory here; such a
//! request is not resent.

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;

/// The largest request body the gateway keeps for a resend.
pub(crate) const LIMIT: usize = 1 << 20;

/// The body of one request, as far as it has been read.
#[derive(Debug)]
pub(crate) struct ReplayBody {
    chunks: Vec<Bytes>,
    len: usize,
    /// The most it keeps: [`LIMIT`] for a resend, more for plugins that read whole bodies.
    limit: usize,
    /// The client has sent its last byte.
    complete: bool,
    /// The body passed the limit; nothing is kept any more.
    too_large: bool,
}

impl Default for ReplayBody {
    fn default() -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
            limit: LIMIT,
            complete: false,
            too_large: false,
        }
    }
}

impl ReplayBody {
    /// A body kept up to `limit` bytes (a route's `max_body_bytes`).
    pub(crate) fn with_limit(limit: u64) -> Self {
        Self {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            ..Self::default()
        }
    }

    /// Whether the body outgrew the limit.
    pub(crate) fn too_large(&self) -> bool {
        self.too_large
    }

    /// Keeps `chunk`, one piece of the body on its way upstream; `end` when it is the last.
    pub(crate) fn keep(&mut self, chunk: Option<&Bytes>, end: bool) {
        if self.too_large {
            return;
        }
        if let Some(chunk) = chunk.filter(|chunk| !chunk.is_empty()) {
            self.len += chunk.len();
            if self.len > self.limit {
                self.too_large = true;
                self.chunks = Vec::new();
                return;
            }
            self.chunks.push(chunk.clone());
        }
        self.complete |= end;
    }

    /// The whole body, reading from the client what it has not sent yet; `None` when the
    /// body is larger than [`LIMIT`] or the client went away before finishing it.
    pub(crate) async fn complete(&mut self, session: &mut Session) -> Option<Bytes> {
        while !self.complete && !self.too_large {
            match session.read_request_body().await {
                Ok(chunk) => {
                    let end = chunk.is_none();
                    self.keep(chunk.as_ref(), end);
                }
                Err(_) => return None,
            }
        }
        if self.too_large {
            return None;
        }
        Some(match self.chunks.as_slice() {
            [] => Bytes::new(),
            [only] => only.clone(),
            chunks => {
                let mut body = BytesMut::with_capacity(self.len);
                for chunk in chunks {
                    body.extend_from_slice(chunk);
                }
                body.freeze()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(body: &ReplayBody) -> Vec<u8> {
        body.chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    #[test]
    fn chunks_are_kept_in_order_until_the_end() {
        let mut body = ReplayBody::default();
        body.keep(Some(&Bytes::from_static(b"{\"a\":")), false);
        body.keep(Some(&Bytes::new()), false);
        body.keep(Some(&Bytes::from_static(b"1}")), true);
        assert!(body.complete && !body.too_large);
        assert_eq!(kept(&body), b"{\"a\":1}");
    }

    #[test]
    fn a_body_over_the_limit_is_dropped_as_soon_as_it_passes_it() {
        let mut body = ReplayBody::default();
        body.keep(Some(&Bytes::from(vec![b'x'; LIMIT])), false);
        assert!(!body.too_large);
        body.keep(Some(&Bytes::from_static(b"y")), false);
        assert!(body.too_large);
        assert!(body.chunks.is_empty());
        body.keep(Some(&Bytes::from_static(b"z")), true);
        assert!(body.chunks.is_empty());
    }
}
