//! U2M OAuth for routes whose `auth.kind` is `oauth`: a person signs in once, the gateway
//! keeps that person's upstream tokens valid, and MCP clients never see an OAuth prompt.
//!
//! Each OAuth route has one [`OAuthRoute`]: its slot in the token store, the tokens in
//! memory, and what discovery found. The pieces, in the order a sign-in meets them:
//! [`discovery`] finds the authorization server, [`registration`] gets a client id,
//! [`flow`] runs the authorization-code + PKCE round trip through `/auth/{route}/start` and
//! `/oauth/callback`, and [`refresher`] refreshes ahead of expiry. The proxy only calls
//! [`TokenSource::bearer`], which never refreshes on its own: it waits on the refresher's
//! single flight, so any number of concurrent requests cause one token request.

pub(crate) mod discovery;
pub(crate) mod exchange;
pub(crate) mod flow;
pub(crate) mod refresher;
pub(crate) mod registration;
pub(crate) mod users;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use parking_lot::RwLock;
use url::Url;

use crate::config::{OAuthSettings, RouteConfig};
use crate::store::{Slot, StoredTokens, TokenStore};
use crate::token::{AccessToken, TokenError, TokenSource};
use discovery::{Discovered, DiscoveryOverrides};
use users::{Principal, UserLink, Users};

/// A token this close to expiry (or a tenth of its lifetime, if that is less) is refreshed
/// before use rather than sent.
const EXPIRY_SKEW: Duration = Duration::from_secs(30);

/// How often a slot that needs sign-in looks in the store for a sign-in made elsewhere.
const STORE_RECHECK: Duration = Duration::from_secs(1);

/// Whether `tokens` are too close to expiry to send.
pub(crate) fn is_stale(tokens: &StoredTokens, now: SystemTime) -> bool {
    let margin = tokens
        .lifetime()
        .map_or(EXPIRY_SKEW, |lifetime| EXPIRY_SKEW.min(lifetime / 10));
    tokens.expires_within(now, margin)
}

/// Why an OAuth step failed; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OAuthError {
    #[error(transparent)]
    Discovery(#[from] discovery::DiscoveryError),
    #[error(transparent)]
    Registration(#[from] registration::RegistrationError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Where a route's sign-in stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SlotStatus {
    SignedIn,
    NeedsSignIn { reason: String },
}

/// The last refresh of a route's tokens: when it ended and how (`ok`, `invalid_grant`,
/// `invalid_client`, `error`), for the status pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RefreshRecord {
    pub(crate) at: SystemTime,
    pub(crate) outcome: &'static str,
}

/// One OAuth route: its settings, its slot, and the signed-in person's tokens. In per-user
/// mode the route's own `OAuthRoute` holds the [`Users`], and each person has one of
/// their own, made by [`OAuthRoute::user`].
#[derive(Debug)]
pub(crate) struct OAuthRoute {
    pub(crate) name: String,
    /// The MCP endpoint the tokens are for; discovery probes it.
    pub(crate) mcp_url: Url,
    pub(crate) settings: OAuthSettings,
    pub(crate) slot: Slot,
    pub(crate) store: Arc<dyn TokenStore>,
    pub(crate) http: reqwest::Client,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// `{public_url}/oauth/callback`.
    pub(crate) redirect_uri: Url,
    /// `{public_url}/auth/{route}/start`.
    pub(crate) sign_in_url: String,
    /// The Client ID Metadata Document's URL, made absolute against the public URL.
    pub(crate) client_metadata_url: Option<Url>,
    tokens: RwLock<Option<StoredTokens>>,
    status: RwLock<SlotStatus>,
    /// Bumped whenever new tokens are installed, so waiters can tell a refresh happened.
    generation: AtomicU64,
    refresh_gate: tokio::sync::Mutex<()>,
    changed: tokio::sync::Notify,
    /// Scopes the upstream asked for (`insufficient_scope`) beyond those requested so far.
    required_scopes: RwLock<BTreeSet<String>>,
    last_refresh: RwLock<Option<RefreshRecord>>,
    /// A refresh is talking to the authorization server right now.
    pub(super) refreshing: AtomicBool,
    /// Shared by the route and each of its principals: one discovery per route.
    discovered: Arc<tokio::sync::Mutex<Option<Arc<Discovered>>>>,
    /// Per-user mode, on the route's own `OAuthRoute`: each person's.
    users: Option<Users>,
    /// Per-user mode, on a person's `OAuthRoute`: whose it is, and their route's scheduler.
    user: Option<UserLink>,
    /// When a request last asked for a token, Unix seconds.
    last_used: AtomicU64,
    /// When a request that found no sign-in last looked in the store.
    store_checked: parking_lot::Mutex<Option<std::time::Instant>>,
    /// The slot's stored tokens have been read.
    loaded: tokio::sync::OnceCell<()>,
}

/// What an `OAuthRoute` is made of, before anyone signs in.
struct Setup {
    name: String,
    mcp_url: Url,
    settings: OAuthSettings,
    slot: Slot,
    store: Arc<dyn TokenStore>,
    http: reqwest::Client,
    metrics: Arc<crate::metrics::Metrics>,
    redirect_uri: Url,
    sign_in_url: String,
    client_metadata_url: Option<Url>,
    discovered: Arc<tokio::sync::Mutex<Option<Arc<Discovered>>>>,
    users: Option<Users>,
    user: Option<UserLink>,
}

impl OAuthRoute {
    /// The OAuth side of `route`, whose `auth` is `settings`; its slot is the route's
    /// upstream with no principal. A per-user route refreshes the tokens of people who
    /// used them within `refresh_window`.
    pub(crate) fn new(
        route: &RouteConfig,
        settings: OAuthSettings,
        store: Arc<dyn TokenStore>,
        http: reqwest::Client,
        metrics: Arc<crate::metrics::Metrics>,
        public_url: &Url,
        refresh_window: Duration,
    ) -> Self {
        let name = route.name.clone();
        let mcp_url = mcp_endpoint(&route.upstream);
        let slot = Slot::new(name.clone(), route.upstream_text.clone(), None);
        let base = public_url.as_str().trim_end_matches('/');
        let redirect_uri = Url::parse(&format!("{base}/oauth/callback"))
            .expect("a valid public URL plus a path is a valid URL");
        let client_metadata_url = settings
            .client_metadata_url
            .as_deref()
            .and_then(|url| public_url.join(url).ok());
        Self::assemble(Setup {
            sign_in_url: format!("{base}/auth/{name}/start"),
            client_metadata_url,
            name,
            mcp_url,
            settings,
            slot,
            store,
            http,
            metrics,
            redirect_uri,
            discovered: Arc::new(tokio::sync::Mutex::new(None)),
            users: route.per_user.then(|| Users::new(refresh_window)),
            user: None,
        })
    }

    /// An `OAuthRoute` of `setup` that nobody has signed in to yet.
    fn assemble(setup: Setup) -> Self {
        Self {
            name: setup.name,
            mcp_url: setup.mcp_url,
            settings: setup.settings,
            slot: setup.slot,
            store: setup.store,
            http: setup.http,
            metrics: setup.metrics,
            redirect_uri: setup.redirect_uri,
            sign_in_url: setup.sign_in_url,
            client_metadata_url: setup.client_metadata_url,
            tokens: RwLock::new(None),
            status: RwLock::new(SlotStatus::NeedsSignIn {
                reason: "not signed in yet".into(),
            }),
            generation: AtomicU64::new(0),
            refresh_gate: tokio::sync::Mutex::new(()),
            changed: tokio::sync::Notify::new(),
            required_scopes: RwLock::new(BTreeSet::new()),
            last_refresh: RwLock::new(None),
            refreshing: AtomicBool::new(false),
            discovered: setup.discovered,
            users: setup.users,
            user: setup.user,
            last_used: AtomicU64::new(0),
            store_checked: parking_lot::Mutex::new(None),
            loaded: tokio::sync::OnceCell::new(),
        }
    }

    /// Whether each person has a slot of their own on this route.
    pub(crate) fn is_per_user(&self) -> bool {
        self.users.is_some()
    }

    /// The people of a per-user route.
    pub(crate) fn users(&self) -> Option<&Users> {
        self.users.as_ref()
    }

    /// `principal`'s own side of this per-user route, with their stored tokens read; `None`
    /// when the route is not per-user.
    pub(crate) async fn user(&self, principal: &Principal) -> Option<Arc<OAuthRoute>> {
        let users = self.users.as_ref()?;
        let user = users.get_or_insert(principal, || self.for_principal(principal, users));
        user.loaded.get_or_init(|| user.load()).await;
        Some(user)
    }

    /// A person's `OAuthRoute`: the route's settings, a slot of their own, fresh state.
    fn for_principal(&self, principal: &Principal, users: &Users) -> OAuthRoute {
        let slot = Slot::new(
            self.name.clone(),
            self.slot.upstream.clone(),
            Some(principal.as_str().to_owned()),
        );
        OAuthRoute::assemble(Setup {
            name: self.name.clone(),
            mcp_url: self.mcp_url.clone(),
            settings: self.settings.clone(),
            slot,
            store: Arc::clone(&self.store),
            http: self.http.clone(),
            metrics: Arc::clone(&self.metrics),
            redirect_uri: self.redirect_uri.clone(),
            sign_in_url: self.sign_in_url.clone(),
            client_metadata_url: self.client_metadata_url.clone(),
            discovered: Arc::clone(&self.discovered),
            users: None,
            user: Some(UserLink {
                principal: principal.clone(),
                wake: Arc::clone(&users.wake),
                refresh_window: users.refresh_window,
            }),
        })
    }

    /// Whose slot this is, in per-user mode.
    pub(crate) fn principal(&self) -> Option<&Principal> {
        self.user.as_ref().map(|user| &user.principal)
    }

    /// The principal's hash for log lines; `-` for a route's shared slot.
    pub(crate) fn principal_hash(&self) -> String {
        self.principal()
            .map_or_else(|| "-".to_owned(), Principal::hash)
    }

    /// When a request last asked for this slot's token.
    pub(crate) fn last_used(&self) -> Option<SystemTime> {
        match self.last_used.load(Ordering::Relaxed) {
            0 => None,
            secs => Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)),
        }
    }

    /// Notes that someone used this slot now (a request, or a sign-in).
    pub(crate) fn note_use(&self) {
        let now = unix_now();
        // Whole seconds are enough for a window of hours; skip the write within one.
        let before = self.last_used.load(Ordering::Relaxed);
        if before == now {
            return;
        }
        self.last_used.store(now, Ordering::Relaxed);
        // Someone back after a while is scheduled again.
        if let Some(user) = &self.user
            && now.saturating_sub(before) > user.refresh_window.as_secs()
        {
            user.wake.notify_one();
        }
    }

    /// Tells whoever schedules this slot's refreshes that its tokens or status changed.
    fn announce_change(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
        if let Some(user) = &self.user {
            user.wake.notify_one();
        }
    }

    /// Loads the slot's tokens from the store; a missing or unreadable file means sign-in.
    pub(crate) async fn load(&self) {
        if self.is_per_user() {
            return; // Each person's slot is read when they first come.
        }
        match self.store.load_tokens(&self.slot).await {
            Ok(Some(tokens)) => self.install(tokens),
            Ok(None) => {}
            Err(error) => {
                let principal = self.principal_hash();
                tracing::warn!(route = %self.name, %principal, %error, "stored tokens unusable; sign-in needed");
                self.needs_sign_in(error.to_string());
            }
        }
    }

    pub(crate) fn status(&self) -> SlotStatus {
        self.status.read().clone()
    }

    pub(crate) fn tokens(&self) -> Option<StoredTokens> {
        self.tokens.read().clone()
    }

    pub(crate) fn last_refresh(&self) -> Option<RefreshRecord> {
        self.last_refresh.read().clone()
    }

    pub(crate) fn is_refreshing(&self) -> bool {
        self.refreshing.load(Ordering::Relaxed)
    }

    /// Notes the outcome of a refresh, for the status pages and the metrics.
    pub(crate) fn record_refresh(&self, outcome: &'static str) {
        *self.last_refresh.write() = Some(RefreshRecord {
            at: SystemTime::now(),
            outcome,
        });
        self.metrics.refresh(&self.name, outcome);
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Makes `tokens` current; callers persist them first.
    pub(crate) fn install(&self, tokens: StoredTokens) {
        *self.tokens.write() = Some(tokens);
        *self.status.write() = SlotStatus::SignedIn;
        self.announce_change();
    }

    /// Marks the route as needing a person to sign in again.
    pub(crate) fn needs_sign_in(&self, reason: impl Into<String>) {
        *self.status.write() = SlotStatus::NeedsSignIn {
            reason: reason.into(),
        };
        self.announce_change();
    }

    /// Forgets the tokens in memory and in the store (the registration stays).
    pub(crate) async fn sign_out(&self) -> Result<(), crate::store::StoreError> {
        self.clear(false).await
    }

    /// Forgets the tokens, and with `registration` the client registration too, so that
    /// the next sign-in registers afresh.
    pub(crate) async fn clear(&self, registration: bool) -> Result<(), crate::store::StoreError> {
        self.store.clear(&self.slot, registration).await?;
        self.forget_tokens("signed out");
        Ok(())
    }

    /// Drops the tokens in memory: the store no longer has them.
    pub(crate) fn forget_tokens(&self, reason: &str) {
        *self.tokens.write() = None;
        self.needs_sign_in(reason);
    }

    /// A slot that needs sign-in looks in the store again, at most once per
    /// [`STORE_RECHECK`]: whoever shares it (another replica, the CLI) may have signed in
    /// since. Returns whether it found tokens it did not know.
    async fn adopt_stored_tokens(&self) -> bool {
        {
            let mut checked = self.store_checked.lock();
            if checked.is_some_and(|at| at.elapsed() < STORE_RECHECK) {
                return false;
            }
            *checked = Some(std::time::Instant::now());
        }
        let Ok(Some(stored)) = self.store.load_tokens(&self.slot).await else {
            return false;
        };
        let known = self.tokens().map(|tokens| tokens.access_token);
        if known.as_ref() == Some(&stored.access_token) {
            return false; // The ones that stopped working, still in the store.
        }
        tracing::info!(route = %self.name, principal = %self.principal_hash(), "signed in elsewhere; using the stored tokens");
        self.install(stored);
        true
    }

    /// Refreshes the tokens now, whether or not they are due.
    pub(crate) async fn refresh_now(&self) -> Result<(), refresher::RefreshError> {
        if let SlotStatus::NeedsSignIn { reason } = self.status() {
            return Err(refresher::RefreshError::NeedsSignIn(reason));
        }
        refresher::refresh(self, self.generation()).await
    }

    /// Discovery's result, fetched once and then reused.
    pub(crate) async fn discovered(&self) -> Result<Arc<Discovered>, OAuthError> {
        let mut cached = self.discovered.lock().await;
        if let Some(found) = cached.as_ref() {
            return Ok(Arc::clone(found));
        }
        let found =
            Arc::new(discovery::discover(&self.http, &self.mcp_url, &self.overrides()).await?);
        tracing::info!(
            route = %self.name,
            issuer = %found.auth_server.issuer,
            resource_metadata = ?found.resource_metadata_url.as_ref().map(Url::as_str),
            path = ?found.path,
            document = ?found.as_document,
            "authorization server discovered"
        );
        *cached = Some(Arc::clone(&found));
        Ok(found)
    }

    /// The scopes a new sign-in asks for: what discovery and the config say, plus any the
    /// upstream has since asked for.
    pub(crate) fn scopes_to_request(&self, discovered: &Discovered) -> Vec<String> {
        let mut scopes = discovered.scopes_to_request(&self.overrides());
        for scope in self.required_scopes.read().iter() {
            if !scopes.contains(scope) {
                scopes.push(scope.clone());
            }
        }
        scopes
    }

    pub(crate) fn overrides(&self) -> DiscoveryOverrides {
        DiscoveryOverrides {
            authorization_endpoint: self.settings.authorization_endpoint.clone(),
            token_endpoint: self.settings.token_endpoint.clone(),
            registration_endpoint: self.settings.registration_endpoint.clone(),
            scopes: self.settings.scopes.clone(),
            resource: self.settings.resource.clone(),
            allow_issuer_mismatch: self.settings.allow_issuer_mismatch,
            allow_plain_pkce: self.settings.allow_plain_pkce,
        }
    }

    /// The RFC 8707 resource to send, unless the route turned it off.
    pub(crate) fn resource(&self, discovered: &Discovered) -> Option<String> {
        self.settings
            .send_resource
            .then(|| discovered.resource.clone())
    }

    fn sign_in_error(&self, reason: String) -> TokenError {
        TokenError::NeedsSignIn {
            route: self.name.clone(),
            reason,
            sign_in_url: self.sign_in_url.clone(),
        }
    }

    /// Resolves when new tokens are installed or the status changes; it registers at once,
    /// so a change between this call and the first poll is not missed.
    pub(crate) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

#[async_trait]
impl TokenSource for OAuthRoute {
    fn kind(&self) -> &'static str {
        "oauth"
    }

    async fn bearer(&self) -> Result<Option<AccessToken>, TokenError> {
        if self.is_per_user() {
            // A per-user route's own slot belongs to nobody; requests use their person's.
            return Err(self.sign_in_error("this route signs each person in separately".into()));
        }
        self.note_use();
        // Two rounds at most: a token that is stale on arrival is refreshed once.
        for _ in 0..2 {
            let generation = self.generation();
            if let SlotStatus::NeedsSignIn { reason } = self.status() {
                if self.adopt_stored_tokens().await {
                    continue;
                }
                return Err(self.sign_in_error(reason));
            }
            let Some(tokens) = self.tokens() else {
                return Err(self.sign_in_error("not signed in yet".into()));
            };
            let now = SystemTime::now();
            if !is_stale(&tokens, now) {
                return Ok(Some(tokens.access_token));
            }
            if tokens.refresh_token.is_none() {
                let reason = "the access token expired and no refresh token was issued";
                return Err(self.sign_in_error(reason.into()));
            }
            if let Err(error) = refresher::refresh(self, generation).await {
                if tokens.is_expired(now) {
                    tracing::warn!(route = %self.name, %error, "refresh failed and the token has expired");
                    return match self.status() {
                        SlotStatus::NeedsSignIn { reason } => Err(self.sign_in_error(reason)),
                        SlotStatus::SignedIn => Err(TokenError::RefreshFailed {
                            route: self.name.clone(),
                        }),
                    };
                }
                // Not expired yet: use it while the refresher keeps trying.
                return Ok(Some(tokens.access_token));
            }
        }
        Err(TokenError::RefreshFailed {
            route: self.name.clone(),
        })
    }

    async fn refused(&self, token: &AccessToken) {
        let generation = self.generation();
        let current = self.tokens().map(|tokens| tokens.access_token);
        if current.as_ref() != Some(token) {
            return; // Already replaced since this request took it.
        }
        tracing::info!(route = %self.name, "upstream refused the access token; refreshing");
        if let Err(error) = refresher::refresh(self, generation).await {
            tracing::warn!(route = %self.name, %error, "refresh after a refused token failed");
        }
    }

    fn scope_required(&self, scope: &str) -> Option<TokenError> {
        let mut required = self.required_scopes.write();
        required.extend(scope.split_whitespace().map(str::to_owned));
        Some(TokenError::InsufficientScope {
            route: self.name.clone(),
            scope: scope.to_owned(),
            sign_in_url: self.sign_in_url.clone(),
        })
    }

    fn give_up(&self, reason: &str) -> Result<(), TokenError> {
        self.needs_sign_in(reason);
        Err(self.sign_in_error(reason.to_owned()))
    }
}

/// Now, in whole Unix seconds.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// The MCP endpoint of an upstream base URL: the base itself when it already names an MCP
/// path (`…/mcp`, `…/sse`), else `{base}/mcp`.
pub(crate) fn mcp_endpoint(base: &Url) -> Url {
    let path = base.path().trim_end_matches('/');
    if path.ends_with("/mcp") || path.ends_with("/sse") {
        return base.clone();
    }
    let mut url = base.clone();
    url.set_path(&format!("{path}/mcp"));
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcp_endpoint_appends_mcp_to_a_bare_base() {
        let url = |text: &str| Url::parse(text).expect("url");
        assert_eq!(
            mcp_endpoint(&url("https://mcp.atlassian.com/v1")).as_str(),
            "https://mcp.atlassian.com/v1/mcp"
        );
        assert_eq!(
            mcp_endpoint(&url("https://mcp.linear.app")).as_str(),
            "https://mcp.linear.app/mcp"
        );
        assert_eq!(
            mcp_endpoint(&url("https://x.example/api/mcp")).as_str(),
            "https://x.example/api/mcp"
        );
    }
}
