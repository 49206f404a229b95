//! The route table: which route, or which control-plane page, a request path belongs to.
//!
//! Built from the validated [`Config`](crate::config::Config) at start and at each reload,
//! and shared by every request that starts while it is in force. Reserved control paths (`/`, `/healthz`, `/auth/…`, …) always win over routes, so
//! a route at prefix `/` (single-upstream mode) still leaves the gateway's own pages
//! reachable. Among routes, the longest prefix that matches on a segment boundary wins:
//! `/a` matches `/a` and `/a/mcp`, never `/ab`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use url::Url;

use crate::config::RESERVED_PATHS;
use crate::oauth::OAuthRoute;
use crate::oauth::users::Principal;
use crate::proxy::upstream::Upstream;
use crate::token::TokenSource;

/// One configured route, ready to serve: its settings, its upstream and its token source.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) name: String,
    pub(crate) prefix: String,
    pub(crate) upstream: Upstream,
    /// The route's token source. In per-user mode it hands out no token itself: each
    /// request uses its caller's, from [`Route::tokens_for`].
    pub(crate) tokens: Arc<dyn TokenSource>,
    /// In per-user mode, the route's OAuth side, which holds each person's slot.
    pub(crate) per_user: Option<Arc<OAuthRoute>>,
    /// In per-user mode, who opened each Streamable HTTP session.
    pub(crate) session_owners: Option<crate::proxy::owners::SessionOwners>,
    pub(crate) extra_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The headers a trusted proxy in front names callers in, which stay at the gateway.
    pub(crate) identity_headers: Vec<http::HeaderName>,
    /// `[[routes.plugins]]`, in order.
    pub(crate) plugins: Vec<Arc<dyn crate::plugin::Plugin>>,
    /// Some plugin reads the JSON-RPC requests of bodies, so the proxy keeps their start.
    pub(crate) keeps_body: bool,
    /// Some plugin reads and may change messages, so the proxy relays `POST`s itself.
    pub(crate) inspects_messages: bool,
    /// Request bodies larger than this get 413.
    pub(crate) max_body_bytes: u64,
    /// Client keys good for this route only, besides the gateway's.
    pub(crate) api_keys: Vec<crate::config::ApiKeyHash>,
    /// The last attempt to reach the upstream failed; cleared by the next response.
    pub(crate) unreachable: AtomicBool,
    pub(crate) transport: crate::config::Transport,
    /// The upstream answered a legacy `/sse` request with 404 or 405: it speaks only
    /// Streamable HTTP, and legacy clients are bridged from now on.
    pub(crate) no_legacy: AtomicBool,
    /// The upstream answered a session-opening `POST /mcp` with 404 or 405: it speaks only
    /// the legacy transport, and Streamable HTTP clients are bridged from now on.
    pub(crate) no_streamable: AtomicBool,
}

impl Route {
    /// The token source a request from `principal` uses: the route's own, or in per-user
    /// mode that person's; `None` when the route is per-user and the request names nobody.
    pub(crate) async fn tokens_for(
        &self,
        principal: Option<&Principal>,
    ) -> Option<Arc<dyn TokenSource>> {
        let Some(route) = &self.per_user else {
            return Some(Arc::clone(&self.tokens));
        };
        let user = route.user(principal?).await?;
        Some(user as Arc<dyn TokenSource>)
    }

    /// Lets the plugins that read messages change one on its way to the client; the
    /// message as JSON text when one did.
    pub(crate) fn filter_message(&self, data: &str) -> Option<String> {
        let mut message: serde_json::Value = serde_json::from_str(data).ok()?;
        let changed = self.plugins.iter().fold(false, |changed, plugin| {
            plugin.response_message(&mut message) | changed
        });
        changed.then(|| message.to_string())
    }

    /// Runs the plugins' `response_filter` on the response header going to the client.
    pub(crate) fn filter_response(&self, response: &mut pingora::http::ResponseHeader) {
        for plugin in &self.plugins {
            plugin.response_filter(response);
        }
    }

    /// Whether the route's requests need nothing but its token: no plugins, no per-user
    /// sign-ins.
    pub(crate) fn plain(&self) -> bool {
        self.per_user.is_none() && self.plugins.is_empty()
    }

    /// Whether a legacy client's `/sse` stream is served by the bridge.
    pub(crate) fn bridges_legacy(&self) -> bool {
        self.transport == crate::config::Transport::Streamable
            || self.no_legacy.load(Ordering::Relaxed)
    }

    /// Whether a Streamable HTTP client's `{prefix}/mcp` is served by the bridge.
    pub(crate) fn bridges_streamable(&self) -> bool {
        self.transport == crate::config::Transport::Sse
            || self.no_streamable.load(Ordering::Relaxed)
    }

    pub(crate) fn upstream_unreachable(&self) -> bool {
        self.unreachable.load(Ordering::Relaxed)
    }

    /// Records whether the upstream answered; writes only on a change, so the request
    /// path does not contend on the flag.
    pub(crate) fn set_upstream_unreachable(&self, unreachable: bool) {
        if self.unreachable.load(Ordering::Relaxed) != unreachable {
            self.unreachable.store(unreachable, Ordering::Relaxed);
        }
    }

    /// The upstream URL for `rest` (the path after the prefix) and the raw query.
    pub(crate) fn upstream_url(&self, rest: &str, query: Option<&str>) -> Url {
        crate::proxy::sse::upstream_url(self.upstream.base_url(), rest, query)
    }

    /// The settings this route was built from, for `check` and the index page.
    pub(crate) fn describe(&self) -> RouteSummary<'_> {
        RouteSummary {
            name: &self.name,
            prefix: &self.prefix,
            upstream: self.upstream.base_url().as_str(),
            auth: self.tokens.kind(),
        }
    }
}

/// What a person needs to know about a route; never includes a credential.
#[derive(Debug, serde::Serialize)]
pub(crate) struct RouteSummary<'a> {
    pub(crate) name: &'a str,
    pub(crate) prefix: &'a str,
    pub(crate) upstream: &'a str,
    pub(crate) auth: &'static str,
}

/// Where a request path leads.
#[derive(Debug)]
pub(crate) enum Destination<'a> {
    /// One of the gateway's own pages or APIs.
    Control,
    /// A route, with the rest of the path after its prefix (empty or starting with `/`).
    Route(&'a Arc<Route>, &'a str),
    /// Nothing is configured here.
    NotFound,
}

/// All routes, longest prefix first.
#[derive(Debug, Default)]
pub(crate) struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    pub(crate) fn new(mut routes: Vec<Arc<Route>>) -> Self {
        routes.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
        Self { routes }
    }

    pub(crate) fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }

    /// Finds where `path` (without the query) leads.
    pub(crate) fn lookup<'a>(&'a self, path: &'a str) -> Destination<'a> {
        if is_reserved(path) {
            return Destination::Control;
        }
        for route in &self.routes {
            if let Some(rest) = strip_prefix(path, &route.prefix) {
                return Destination::Route(route, rest);
            }
        }
        Destination::NotFound
    }
}

/// Whether `path` is one of the gateway's own: `/` exactly, or a reserved path or below it.
pub(crate) fn is_reserved(path: &str) -> bool {
    path == "/"
        || RESERVED_PATHS
            .iter()
            .filter(|reserved| **reserved != "/")
            .any(|reserved| strip_prefix(path, reserved).is_some())
}

/// The rest of `path` after `prefix`, when `prefix` matches on a segment boundary.
fn strip_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    if prefix == "/" {
        return Some(path);
    }
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_on_segment_boundaries_only() {
        assert_eq!(strip_prefix("/a", "/a"), Some(""));
        assert_eq!(strip_prefix("/a/mcp", "/a"), Some("/mcp"));
        assert_eq!(strip_prefix("/ab", "/a"), None);
        assert_eq!(strip_prefix("/sse", "/"), Some("/sse"));
    }

    #[test]
    fn reserved_paths_include_their_subpaths_but_not_lookalikes() {
        assert!(is_reserved("/"));
        assert!(is_reserved("/healthz"));
        assert!(is_reserved("/auth/jira/start"));
        assert!(is_reserved("/admin/api/routes"));
        assert!(!is_reserved("/authors"));
        assert!(!is_reserved("/sse"));
    }
}
