//! The mock MCP upstream's OAuth 2.1 authorization server, served on the same origin as the MCP
//! endpoints so that a gateway can sign in to the mock exactly as it signs in to a real server.
//!
//! It publishes protected-resource metadata (RFC 9728) and authorization-server metadata
//! (RFC 8414 or OpenID discovery), registers clients dynamically (RFC 7591), runs the
//! authorization code grant with PKCE S256 (auto-approving, with no page to click) and issues
//! access tokens and rotating refresh tokens bound to the MCP resource (RFC 8707). Options on
//! [`MockOptions`](super::MockOptions) reproduce the quirks of real servers: metadata in only one
//! place or none, an issuer that differs from the serving origin, a refusal of `resource`.
//!
//! The MCP side asks [`AuthServer::accepts_bearer`] whether a token is live and
//! [`AuthServer::challenge`] what to put in a 401. Everything the AS does is recorded in
//! [`OAuthState`], which tests reach through `MockState::oauth()` to assert on requests and to
//! provoke failures: revoked clients, revoked refresh tokens, expired access tokens, a slow
//! token endpoint.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::rejection::{FormRejection, JsonRejection};
use axum::extract::{Form, Json, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{MockOptions, json_response, lock, new_session_id};

/// How long an authorization code can be exchanged.
/// The elevated scope the `admin_echo` tool needs; never granted unless asked for.
pub(super) const ADMIN_SCOPE: &str = "mcp:admin";
const CODE_LIFETIME: Duration = Duration::from_secs(60);

const PRM_PATH: &str = "/.well-known/oauth-protected-resource";
const OAUTH_METADATA_PATH: &str = "/.well-known/oauth-authorization-server";
const OPENID_METADATA_PATH: &str = "/.well-known/openid-configuration";

/// The default endpoints of the 2025-03-26 MCP spec, used when there is no metadata.
const AUTHORIZE_PATH: &str = "/authorize";
const TOKEN_PATH: &str = "/token";
const REGISTER_PATH: &str = "/register";

// --- Options ---

/// Where protected-resource metadata is published, and whether a 401 points at it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PrmMode {
    /// At the path-insertion URL (`/.well-known/oauth-protected-resource{base}/mcp`) and at the
    /// root; a 401's `WWW-Authenticate` names the former in `resource_metadata`.
    #[default]
    Header,
    /// Only at the path-insertion URL, and a 401 does not say where.
    PathInsertionOnly,
    /// Only at `/.well-known/oauth-protected-resource`, and a 401 does not say where.
    RootOnly,
    /// Nowhere: clients must fall back to the MCP origin as the authorization server.
    None,
}

/// Where authorization-server metadata is published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AsMetadataMode {
    /// RFC 8414: `/.well-known/oauth-authorization-server`.
    #[default]
    Oauth,
    /// OpenID discovery: `/.well-known/openid-configuration`.
    OpenId,
    /// No metadata; the default endpoints `/authorize`, `/token` and `/register` still work.
    None,
}

/// How a client authenticates at the token endpoint (`token_endpoint_auth_method`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientAuthMethod {
    /// A public client: `client_id` in the form, no secret.
    #[default]
    None,
    /// `Authorization: Basic base64(client_id:client_secret)`.
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form.
    ClientSecretPost,
}

impl ClientAuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [Self::None, Self::ClientSecretBasic, Self::ClientSecretPost]
            .into_iter()
            .find(|method| method.as_str() == name)
    }
}

/// A client the AS knows from the start, as for servers without dynamic registration. It
/// may use any redirect URI, because a gateway under test learns its own port only after the
/// mock has started.
#[derive(Debug, Clone)]
pub struct PreregisteredClient {
    pub client_id: String,
    pub client_secret: Option<String>,
    /// `none`, `client_secret_basic` or `client_secret_post`.
    pub auth_method: String,
}

impl PreregisteredClient {
    /// A public client (`none`).
    pub fn public(client_id: &str) -> Self {
        Self {
            client_id: client_id.to_owned(),
            client_secret: None,
            auth_method: "none".to_owned(),
        }
    }

    /// A confidential client using `client_secret_basic` or `client_secret_post`.
    pub fn confidential(client_id: &str, secret: &str, auth_method: &str) -> Self {
        Self {
            client_id: client_id.to_owned(),
            client_secret: Some(secret.to_owned()),
            auth_method: auth_method.to_owned(),
        }
    }

    fn to_registered(&self) -> RegisteredClient {
        let auth_method = ClientAuthMethod::parse(&self.auth_method).unwrap_or_else(|| {
            panic!(
                "preregistered client {}: auth_method {:?} is not none, client_secret_basic or \
                 client_secret_post",
                self.client_id, self.auth_method
            )
        });
        RegisteredClient {
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            auth_method,
            redirect_uris: Vec::new(),
            metadata: Value::Null,
            revoked: false,
            preregistered: true,
        }
    }
}

// --- What the AS records ---

/// A client known to the AS: registered dynamically, or preregistered.
#[derive(Debug, Clone)]
pub struct RegisteredClient {
    pub client_id: String,
    pub client_secret: Option<String>,
    pub auth_method: ClientAuthMethod,
    pub redirect_uris: Vec<String>,
    /// The registration request as sent (`Null` for a preregistered client).
    pub metadata: Value,
    /// Set by [`OAuthState::revoke_all_clients`]; the AS then treats the client as unknown.
    pub revoked: bool,
    preregistered: bool,
}

impl RegisteredClient {
    fn accepts_redirect(&self, uri: &str) -> bool {
        self.preregistered || self.redirect_uris.iter().any(|known| known == uri)
    }
}

/// Request parameters as the AS received them, by name.
pub type RecordedParams = BTreeMap<String, String>;

/// Everything the authorization server has seen and issued, for assertions and for provoking
/// failures.
#[derive(Debug, Default)]
pub struct OAuthState {
    token_requests: AtomicUsize,
    refresh_requests: AtomicUsize,
    token_delay: Mutex<Option<Duration>>,
    ttl_override: Mutex<Option<Duration>>,
    grants: Mutex<Grants>,
}

/// The AS's books, behind one lock so that each grant is checked and issued atomically.
#[derive(Debug, Default)]
struct Grants {
    /// Client ID Metadata Documents fetched at authorization, by URL.
    fetched_documents: Vec<String>,
    clients: Vec<RegisteredClient>,
    codes: HashMap<String, PendingCode>,
    /// Every authorization code ever issued, exchanged or not.
    issued_codes: Vec<String>,
    access: Vec<AccessRecord>,
    refresh: Vec<RefreshRecord>,
    /// Sign-ins whose every token is void, after a refresh token was used twice.
    revoked_families: HashSet<u64>,
    families: u64,
    reuse_detected: bool,
    last_authorize: Option<RecordedParams>,
    last_token: Option<RecordedParams>,
}

/// An authorization code waiting to be exchanged, with what it was issued for.
#[derive(Debug)]
struct PendingCode {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    challenge_method: String,
    resource: Option<String>,
    scope: String,
    expires_at: Instant,
}

#[derive(Debug)]
struct AccessRecord {
    token: String,
    /// The sign-in this token descends from.
    family: u64,
    scope: String,
    expires_at: Instant,
}

#[derive(Debug)]
struct RefreshRecord {
    token: String,
    family: u64,
    client_id: String,
    scope: String,
    resource: Option<String>,
    used: bool,
    revoked: bool,
}

/// What a grant issues tokens for.
struct Grant {
    family: u64,
    client_id: String,
    scope: String,
    resource: Option<String>,
}

impl OAuthState {
    /// How many `POST /token` requests arrived, refused ones included.
    pub fn token_requests(&self) -> usize {
        self.token_requests.load(Ordering::SeqCst)
    }

    /// How many of those asked for `grant_type=refresh_token`.
    /// Every access token, refresh token, client secret and code this server has issued, for
    /// tests that check none of them shows up where it must not.
    pub fn issued_secrets(&self) -> Vec<String> {
        let grants = self.grants.lock().expect("grants lock");
        let access = grants.access.iter().map(|record| record.token.clone());
        let refresh = grants.refresh.iter().map(|record| record.token.clone());
        let secrets = grants
            .clients
            .iter()
            .filter_map(|client| client.client_secret.clone());
        let codes = grants.issued_codes.iter().cloned();
        access.chain(refresh).chain(secrets).chain(codes).collect()
    }

    pub fn refresh_requests(&self) -> usize {
        self.refresh_requests.load(Ordering::SeqCst)
    }

    /// Whether a refresh token was ever presented a second time.
    pub fn refresh_token_reuse_detected(&self) -> bool {
        lock(&self.grants).reuse_detected
    }

    /// Every client registered dynamically, revoked ones included, oldest first.
    /// The Client ID Metadata Documents fetched so far, by URL, once per authorization.
    pub fn fetched_metadata_documents(&self) -> Vec<String> {
        lock(&self.grants).fetched_documents.clone()
    }

    pub fn registered_clients(&self) -> Vec<RegisteredClient> {
        let grants = lock(&self.grants);
        let registered = grants.clients.iter().filter(|client| !client.preregistered);
        registered.cloned().collect()
    }

    /// The query of the latest `GET /authorize`, accepted or not.
    pub fn last_authorize_params(&self) -> Option<RecordedParams> {
        lock(&self.grants).last_authorize.clone()
    }

    /// The form of the latest `POST /token` without `client_secret`; `client_id` is filled in
    /// from HTTP Basic credentials when the form lacks it.
    pub fn last_token_params(&self) -> Option<RecordedParams> {
        lock(&self.grants).last_token.clone()
    }

    /// Makes every client known so far unknown: later authorize and token requests naming one
    /// are refused as `invalid_client`, until the client registers again.
    pub fn revoke_all_clients(&self) {
        for client in &mut lock(&self.grants).clients {
            client.revoked = true;
        }
    }

    /// Voids every refresh token issued so far: using one answers `invalid_grant` (without
    /// counting as reuse). Access tokens keep working.
    pub fn revoke_refresh_tokens(&self) {
        for record in &mut lock(&self.grants).refresh {
            record.revoked = true;
        }
    }

    /// Ends the life of every access token issued so far; tokens issued later work as usual.
    pub fn expire_access_tokens(&self) {
        let now = Instant::now();
        for record in &mut lock(&self.grants).access {
            record.expires_at = now;
        }
    }

    /// Every access token issued, oldest first, live or not.
    pub fn issued_access_tokens(&self) -> Vec<String> {
        let grants = lock(&self.grants);
        grants.access.iter().map(|r| r.token.clone()).collect()
    }

    /// Every refresh token issued, oldest first, used or not.
    pub fn issued_refresh_tokens(&self) -> Vec<String> {
        let grants = lock(&self.grants);
        grants.refresh.iter().map(|r| r.token.clone()).collect()
    }

    /// The scope granted to an access token this AS issued; `None` for any other token.
    pub fn access_token_scope(&self, token: &str) -> Option<String> {
        let grants = lock(&self.grants);
        let record = grants.access.iter().find(|record| record.token == token)?;
        Some(record.scope.clone())
    }

    /// Makes each `POST /token` wait this long before it is handled (`None`: no wait).
    pub fn set_token_delay(&self, delay: Option<Duration>) {
        *lock(&self.token_delay) = delay;
    }

    /// Whether `token` is an access token this AS issued that is unexpired and unrevoked.
    pub fn access_token_is_live(&self, token: &str) -> bool {
        let grants = lock(&self.grants);
        let now = Instant::now();
        grants.access.iter().any(|record| {
            record.token == token
                && record.expires_at > now
                && !grants.revoked_families.contains(&record.family)
        })
    }

    pub(super) fn add_preregistered(&self, clients: &[PreregisteredClient]) {
        let clients = clients.iter().map(PreregisteredClient::to_registered);
        lock(&self.grants).clients.extend(clients);
    }

    fn token_delay(&self) -> Option<Duration> {
        *lock(&self.token_delay)
    }

    /// Gives access tokens issued from now on this lifetime instead of the options' one.
    pub fn set_access_token_ttl(&self, ttl: Duration) {
        *lock(&self.ttl_override) = Some(ttl);
    }

    fn access_token_ttl(&self, options: &MockOptions) -> Duration {
        lock(&self.ttl_override).unwrap_or(options.access_token_ttl)
    }

    fn live_client(&self, client_id: &str) -> Option<RegisteredClient> {
        let grants = lock(&self.grants);
        let client = grants.clients.iter().find(|c| c.client_id == client_id)?;
        (!client.revoked).then(|| client.clone())
    }
}

impl Grants {
    fn new_family(&mut self) -> u64 {
        self.families += 1;
        self.families
    }

    /// An access token, and a refresh token when the options say so, for `grant`.
    fn issue(&mut self, grant: Grant, options: &MockOptions, ttl: Duration) -> Value {
        let access_token = random_token("at-");
        self.access.push(AccessRecord {
            token: access_token.clone(),
            family: grant.family,
            scope: grant.scope.clone(),
            expires_at: Instant::now() + ttl,
        });
        let mut body = json!({
            "access_token": access_token,
            "token_type": "Bearer",
            // Rounded up, so that a test's sub-second lifetime is never announced as 0.
            "expires_in": ttl.as_millis().div_ceil(1000) as u64,
            "scope": grant.scope,
        });
        if options.issue_refresh_tokens {
            let refresh_token = random_token("rt-");
            body["refresh_token"] = Value::String(refresh_token.clone());
            self.refresh.push(RefreshRecord {
                token: refresh_token,
                family: grant.family,
                client_id: grant.client_id,
                scope: grant.scope,
                resource: grant.resource,
                used: false,
                revoked: false,
            });
        }
        body
    }

    /// Spends `token` and returns the grant it stood for. A second use voids its whole
    /// sign-in, as OAuth 2.1 asks of servers that rotate refresh tokens.
    fn spend_refresh_token(&mut self, token: &str, client_id: &str) -> Result<Grant, OAuthError> {
        let unknown = || OAuthError::new("invalid_grant", "unknown refresh token");
        let index = self.refresh.iter().position(|r| r.token == token);
        let record = &mut self.refresh[index.ok_or_else(unknown)?];
        if record.revoked || self.revoked_families.contains(&record.family) {
            return Err(OAuthError::new("invalid_grant", "refresh token revoked"));
        }
        if record.used {
            let family = record.family;
            self.revoked_families.insert(family);
            self.reuse_detected = true;
            let message = "refresh token already used; every token of this sign-in is revoked";
            return Err(OAuthError::new("invalid_grant", message));
        }
        if record.client_id != client_id {
            let message = "refresh token was issued to another client";
            return Err(OAuthError::new("invalid_grant", message));
        }
        record.used = true;
        Ok(Grant {
            family: record.family,
            client_id: record.client_id.clone(),
            scope: record.scope.clone(),
            resource: record.resource.clone(),
        })
    }
}

// --- The server ---

/// The authorization server's routes and the checks the MCP endpoints ask of it.
#[derive(Debug, Clone)]
pub(super) struct AuthServer {
    options: Arc<MockOptions>,
    state: Arc<OAuthState>,
    /// `http://127.0.0.1:PORT`: where the AS is served, whatever its metadata claims.
    origin: Arc<str>,
}

impl AuthServer {
    pub(super) fn new(options: Arc<MockOptions>, state: Arc<OAuthState>, origin: &str) -> Self {
        state.add_preregistered(&options.preregistered);
        state.set_token_delay(options.token_delay);
        Self {
            options,
            state,
            origin: Arc::from(origin),
        }
    }

    /// Discovery documents and the three AS endpoints, all public.
    pub(super) fn router(self) -> Router {
        let mut router = Router::new()
            .route(AUTHORIZE_PATH, get(authorize))
            .route(TOKEN_PATH, post(token))
            .route(REGISTER_PATH, post(register));
        for path in self.prm_paths() {
            router = router.route(&path, get(protected_resource_metadata));
        }
        if let Some(path) = self.metadata_path() {
            router = router.route(path, get(authorization_server_metadata));
        }
        router.with_state(self)
    }

    /// Paths any client may reach without a bearer token.
    pub(super) fn is_public(path: &str) -> bool {
        path.starts_with("/.well-known/")
            || [AUTHORIZE_PATH, TOKEN_PATH, REGISTER_PATH].contains(&path)
    }

    /// Whether `token` opens the MCP endpoints: the static token or a live issued one.
    pub(super) fn accepts_bearer(&self, token: &str) -> bool {
        token == self.options.token || self.state.access_token_is_live(token)
    }

    /// The `WWW-Authenticate` value of a 401 from the MCP endpoints.
    pub(super) fn challenge(&self) -> String {
        let scope = self.default_scope();
        match self.options.prm {
            PrmMode::Header => format!(
                "Bearer resource_metadata=\"{}\", scope=\"{scope}\"",
                self.path_insertion_prm_url()
            ),
            _ => format!("Bearer scope=\"{scope}\""),
        }
    }

    /// The resource the tokens are for: `http://127.0.0.1:PORT{base}/mcp`.
    pub(super) fn mcp_url(&self) -> String {
        format!("{}{}/mcp", self.origin, self.options.base_path)
    }

    /// The `issuer` the metadata claims.
    fn issuer(&self) -> String {
        match &self.options.issuer_override {
            Some(issuer) => issuer.clone(),
            None => self.origin.to_string(),
        }
    }

    fn path_insertion_prm_url(&self) -> String {
        format!("{}{PRM_PATH}{}/mcp", self.origin, self.options.base_path)
    }

    fn prm_paths(&self) -> Vec<String> {
        let inserted = format!("{PRM_PATH}{}/mcp", self.options.base_path);
        match self.options.prm {
            PrmMode::Header => vec![inserted, PRM_PATH.to_owned()],
            PrmMode::PathInsertionOnly => vec![inserted],
            PrmMode::RootOnly => vec![PRM_PATH.to_owned()],
            PrmMode::None => Vec::new(),
        }
    }

    fn metadata_path(&self) -> Option<&'static str> {
        match self.options.as_metadata {
            AsMetadataMode::Oauth => Some(OAUTH_METADATA_PATH),
            AsMetadataMode::OpenId => Some(OPENID_METADATA_PATH),
            AsMetadataMode::None => None,
        }
    }

    /// What a client gets when it asks for no scope: every supported scope but
    /// `offline_access`, which only says a refresh token is wanted, and the elevated
    /// `mcp:admin`, which only a request that names it gets.
    fn default_scope(&self) -> String {
        let scopes = &self.options.scopes_supported;
        let granted: Vec<&str> = scopes
            .iter()
            .map(String::as_str)
            .filter(|scope| *scope != "offline_access" && *scope != ADMIN_SCOPE)
            .collect();
        granted.join(" ")
    }

    /// The requested scope if every part is supported, else the default one.
    fn check_scope(&self, requested: Option<&String>) -> Result<String, OAuthError> {
        let Some(requested) = requested.filter(|s| !s.trim().is_empty()) else {
            return Ok(self.default_scope());
        };
        let supported = &self.options.scopes_supported;
        match requested
            .split(' ')
            .find(|scope| !supported.iter().any(|s| s == scope))
        {
            Some(unknown) => Err(OAuthError::new(
                "invalid_scope",
                format!("unknown scope {unknown}"),
            )),
            None => Ok(requested.clone()),
        }
    }

    /// RFC 8707: a `resource` must name this server's MCP endpoint, unless the server refuses
    /// the parameter altogether.
    fn check_resource(
        &self,
        params: &HashMap<String, String>,
    ) -> Result<Option<String>, OAuthError> {
        let Some(resource) = params.get("resource") else {
            return Ok(None);
        };
        if self.options.reject_resource {
            let message = "this server does not accept the resource parameter";
            return Err(OAuthError::new("invalid_target", message));
        }
        let expected = self.mcp_url();
        if *resource != expected {
            let message = format!("resource must be {expected}");
            return Err(OAuthError::new("invalid_target", message));
        }
        Ok(Some(resource.clone()))
    }
}

// --- Discovery documents ---

async fn protected_resource_metadata(State(server): State<AuthServer>) -> Response {
    // The AS is named by the origin it is reachable at, even when its metadata claims another
    // issuer: that is where a client must fetch the metadata.
    axum::Json(json!({
        "resource": server.mcp_url(),
        "authorization_servers": [server.origin.as_ref()],
        "scopes_supported": server.options.scopes_supported,
        "bearer_methods_supported": ["header"],
    }))
    .into_response()
}

async fn authorization_server_metadata(State(server): State<AuthServer>) -> Response {
    let origin = &server.origin;
    let mut metadata = json!({
        "issuer": server.issuer(),
        "authorization_endpoint": format!("{origin}{AUTHORIZE_PATH}"),
        "token_endpoint": format!("{origin}{TOKEN_PATH}"),
        "scopes_supported": server.options.scopes_supported,
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": server.options.pkce_methods,
        "token_endpoint_auth_methods_supported":
            ["none", "client_secret_basic", "client_secret_post"],
    });
    if server.options.dcr_enabled {
        metadata["registration_endpoint"] = json!(format!("{origin}{REGISTER_PATH}"));
    }
    if server.options.client_metadata_documents {
        metadata["client_id_metadata_document_supported"] = json!(true);
    }
    if server.options.iss_in_responses || server.options.iss_promised_not_sent {
        metadata["authorization_response_iss_parameter_supported"] = json!(true);
    }
    if server.options.as_metadata == AsMetadataMode::OpenId {
        metadata["subject_types_supported"] = json!(["public"]);
        metadata["id_token_signing_alg_values_supported"] = json!(["RS256"]);
    }
    axum::Json(metadata).into_response()
}

// --- Dynamic client registration: POST /register ---

async fn register(
    State(server): State<AuthServer>,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    if !server.options.dcr_enabled {
        return json_response(StatusCode::NOT_FOUND, json!({"error": "not_found"}));
    }
    let Ok(Json(Value::Object(metadata))) = body else {
        let message = "expected a JSON object of client metadata";
        return OAuthError::new("invalid_client_metadata", message).into_response();
    };
    let client = match new_client(Value::Object(metadata)) {
        Ok(client) => client,
        Err(error) => return error.into_response(),
    };
    let reply = registration_reply(&client);
    lock(&server.state.grants).clients.push(client);
    json_response(StatusCode::CREATED, reply)
}

/// A fresh client from RFC 7591 metadata; the auth method defaults to `client_secret_basic`.
fn new_client(metadata: Value) -> Result<RegisteredClient, OAuthError> {
    let redirect_uris: Vec<String> = metadata["redirect_uris"]
        .as_array()
        .map(|uris| {
            uris.iter()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if redirect_uris.is_empty() {
        let message = "redirect_uris must list at least one URI";
        return Err(OAuthError::new("invalid_redirect_uri", message));
    }
    let method_name = metadata["token_endpoint_auth_method"]
        .as_str()
        .unwrap_or("client_secret_basic");
    let Some(auth_method) = ClientAuthMethod::parse(method_name) else {
        let message = format!("unsupported token_endpoint_auth_method {method_name}");
        return Err(OAuthError::new("invalid_client_metadata", message));
    };
    let client_secret = (auth_method != ClientAuthMethod::None).then(|| random_token("secret-"));
    Ok(RegisteredClient {
        client_id: random_token("client-"),
        client_secret,
        auth_method,
        redirect_uris,
        metadata,
        revoked: false,
        preregistered: false,
    })
}

/// The registration response: the metadata echoed back with the credentials added.
fn registration_reply(client: &RegisteredClient) -> Value {
    let mut reply = client.metadata.clone();
    reply["client_id"] = json!(client.client_id);
    reply["client_id_issued_at"] = json!(unix_now());
    reply["token_endpoint_auth_method"] = json!(client.auth_method.as_str());
    if let Some(secret) = &client.client_secret {
        reply["client_secret"] = json!(secret);
        reply["client_secret_expires_at"] = json!(0);
    }
    reply
}

// --- Authorization: GET /authorize ---

/// Auto-approves a valid request with a redirect carrying a code. An unknown client or
/// redirect URI is answered here with 400, since redirecting would trust an unchecked URI.
async fn authorize(
    State(server): State<AuthServer>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    lock(&server.state.grants).last_authorize = Some(params.clone().into_iter().collect());
    if let Err(message) = server.adopt_metadata_document(&params).await {
        return (StatusCode::BAD_REQUEST, message).into_response();
    }
    let redirect_uri = match server.checked_redirect_uri(&params) {
        Ok(uri) => uri,
        Err(message) => return (StatusCode::BAD_REQUEST, message).into_response(),
    };
    if server.options.consent_page && params.get("consent").map(String::as_str) != Some("yes") {
        return consent_page(&params);
    }
    let state = params.get("state").map(String::as_str);
    let iss = server
        .options
        .iss_override
        .clone()
        .or_else(|| server.options.iss_in_responses.then(|| server.issuer()));
    match server.approve(&params, &redirect_uri) {
        Ok(code) => redirect(
            &redirect_uri,
            &[
                ("code", Some(&code)),
                ("state", state),
                ("iss", iss.as_deref()),
            ],
        ),
        Err(error) => error.redirect(&redirect_uri, state),
    }
}

/// The consent page: the request's parameters again, as hidden fields of a form that sends
/// them back with `consent=yes`.
fn consent_page(params: &HashMap<String, String>) -> Response {
    let escape = |text: &str| {
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let fields: String = params
        .iter()
        .map(|(key, value)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                escape(key),
                escape(value)
            )
        })
        .collect();
    let scope = params.get("scope").map_or("(none)", String::as_str);
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Mock sign-in</title></head><body style=\"font:16px system-ui;max-width:32rem;\
         margin:3rem auto\"><h1>Mock authorization server</h1><p>A gateway asks to act for you \
         at the mock MCP server, with scopes <code>{}</code>.</p><form method=\"get\" \
         action=\"\">{fields}<input type=\"hidden\" name=\"consent\" value=\"yes\">\
         <button id=\"approve\" type=\"submit\">Approve</button></form></body></html>",
        escape(scope)
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response()
}

impl AuthServer {
    /// A `client_id` that is a URL names its own metadata document: fetch it, check that it
    /// describes that client and lists the redirect URI, and know the client from then on.
    async fn adopt_metadata_document(
        &self,
        params: &HashMap<String, String>,
    ) -> Result<(), String> {
        let client_id = params.get("client_id").map_or("", String::as_str);
        let is_url = client_id.starts_with("http://") || client_id.starts_with("https://");
        if !self.options.client_metadata_documents || !is_url {
            return Ok(());
        }
        let document: Value = async {
            reqwest::get(client_id)
                .await?
                .error_for_status()?
                .json()
                .await
        }
        .await
        .map_err(|error| format!("invalid_client: cannot fetch {client_id}: {error}"))?;
        if document["client_id"] != client_id {
            return Err(format!(
                "invalid_client: the document at {client_id} names another client_id"
            ));
        }
        let redirect_uris: Vec<String> = document["redirect_uris"]
            .as_array()
            .map(|uris| {
                uris.iter()
                    .filter_map(|uri| uri.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let redirect = params.get("redirect_uri").map_or("", String::as_str);
        if !redirect_uris.iter().any(|uri| uri == redirect) {
            return Err(format!(
                "invalid_request: {redirect} is not in the client's metadata document"
            ));
        }
        let mut grants = lock(&self.state.grants);
        grants.fetched_documents.push(client_id.to_owned());
        if !grants
            .clients
            .iter()
            .any(|client| client.client_id == client_id)
        {
            grants
                .clients
                .push(PreregisteredClient::public(client_id).to_registered());
        }
        Ok(())
    }

    /// The request's redirect URI if its client is known and registered that URI.
    fn checked_redirect_uri(&self, params: &HashMap<String, String>) -> Result<String, String> {
        let client_id = params.get("client_id").map_or("", String::as_str);
        let Some(client) = self.state.live_client(client_id) else {
            return Err(format!("invalid_client: unknown client_id {client_id:?}"));
        };
        match params.get("redirect_uri") {
            Some(uri) if client.accepts_redirect(uri) => Ok(uri.clone()),
            Some(uri) => Err(format!(
                "invalid_request: redirect_uri {uri} is not registered"
            )),
            None => Err("invalid_request: redirect_uri is required".to_owned()),
        }
    }

    /// Checks the rest of the request and stores a code bound to it.
    fn approve(
        &self,
        params: &HashMap<String, String>,
        redirect_uri: &str,
    ) -> Result<String, OAuthError> {
        let param = |name: &str| params.get(name).map(String::as_str);
        if param("response_type") != Some("code") {
            let message = "response_type must be code";
            return Err(OAuthError::new("unsupported_response_type", message));
        }
        let Some(challenge) = param("code_challenge") else {
            return Err(OAuthError::new(
                "invalid_request",
                "code_challenge is required",
            ));
        };
        // RFC 7636: a missing method means `plain`.
        let method = param("code_challenge_method").unwrap_or("plain");
        if !self.options.pkce_methods.iter().any(|m| m == method) {
            let message = format!("code_challenge_method {method} is not supported");
            return Err(OAuthError::new("invalid_request", message));
        }
        if param("state").is_none() {
            return Err(OAuthError::new("invalid_request", "state is required"));
        }
        let resource = self.check_resource(params)?;
        let scope = self.check_scope(params.get("scope"))?;
        if self.options.deny_authorization {
            return Err(OAuthError::new("access_denied", "the user declined"));
        }

        let code = random_token("code-");
        let pending = PendingCode {
            client_id: param("client_id").unwrap_or_default().to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            challenge: challenge.to_owned(),
            challenge_method: method.to_owned(),
            resource,
            scope,
            expires_at: Instant::now() + CODE_LIFETIME,
        };
        let mut grants = lock(&self.state.grants);
        grants.issued_codes.push(code.clone());
        grants.codes.insert(code.clone(), pending);
        Ok(code)
    }
}

/// A 302 to `uri` with `pairs` (those with a value) added to its query.
fn redirect(uri: &str, pairs: &[(&str, Option<&str>)]) -> Response {
    let Ok(mut location) = url::Url::parse(uri) else {
        return (StatusCode::BAD_REQUEST, "redirect_uri is not a URL").into_response();
    };
    {
        let mut query = location.query_pairs_mut();
        for (name, value) in pairs {
            if let Some(value) = value {
                query.append_pair(name, value);
            }
        }
    }
    (
        StatusCode::FOUND,
        [(header::LOCATION, location.to_string())],
    )
        .into_response()
}

// --- Tokens: POST /token ---

async fn token(
    State(server): State<AuthServer>,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let oauth = &server.state;
    oauth.token_requests.fetch_add(1, Ordering::SeqCst);
    let Ok(Form(form)) = form else {
        let message = "expected an application/x-www-form-urlencoded body";
        return OAuthError::new("invalid_request", message).into_response();
    };
    if form.get("grant_type").is_some_and(|g| g == "refresh_token") {
        oauth.refresh_requests.fetch_add(1, Ordering::SeqCst);
    }
    if let Some(delay) = oauth.token_delay() {
        tokio::time::sleep(delay).await;
    }
    oauth.record_token_request(&form, &headers);

    match server.grant(&headers, &form) {
        Ok(body) => ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response(),
        Err(error) => error.into_response(),
    }
}

impl OAuthState {
    fn record_token_request(&self, form: &HashMap<String, String>, headers: &HeaderMap) {
        let mut params: RecordedParams = form.clone().into_iter().collect();
        params.remove("client_secret");
        if let Some((client_id, _)) = basic_credentials(headers) {
            params.entry("client_id".to_owned()).or_insert(client_id);
        }
        lock(&self.grants).last_token = Some(params);
    }
}

impl AuthServer {
    /// Authenticates the client, then runs the grant it asked for.
    fn grant(
        &self,
        headers: &HeaderMap,
        form: &HashMap<String, String>,
    ) -> Result<Value, OAuthError> {
        let client = self.authenticate_client(headers, form)?;
        match form.get("grant_type").map(String::as_str) {
            Some("authorization_code") => self.exchange_code(&client, form),
            Some("refresh_token") => self.refresh(&client, form),
            Some(other) => {
                let message = format!("grant_type {other} is not supported");
                Err(OAuthError::new("unsupported_grant_type", message))
            }
            None => Err(OAuthError::new("invalid_request", "grant_type is required")),
        }
    }

    /// The client, if it authenticated the way it registered to.
    fn authenticate_client(
        &self,
        headers: &HeaderMap,
        form: &HashMap<String, String>,
    ) -> Result<RegisteredClient, OAuthError> {
        let basic = basic_credentials(headers);
        let client_id = basic
            .as_ref()
            .map(|(id, _)| id.clone())
            .or_else(|| form.get("client_id").cloned())
            .ok_or_else(|| OAuthError::invalid_client("client_id is required"))?;
        let client = self
            .state
            .live_client(&client_id)
            .ok_or_else(|| OAuthError::invalid_client("unknown or revoked client"))?;
        let presented = match client.auth_method {
            ClientAuthMethod::None => return Ok(client),
            ClientAuthMethod::ClientSecretBasic => basic.map(|(_, secret)| secret),
            ClientAuthMethod::ClientSecretPost => form.get("client_secret").cloned(),
        };
        if presented.is_some() && presented == client.client_secret {
            return Ok(client);
        }
        let method = client.auth_method.as_str();
        let message = format!("missing or wrong client credentials for {method}");
        Err(OAuthError::invalid_client(message))
    }

    /// `authorization_code`: the code must be fresh, this client's, for this redirect URI and
    /// resource, and the verifier must match its challenge.
    fn exchange_code(
        &self,
        client: &RegisteredClient,
        form: &HashMap<String, String>,
    ) -> Result<Value, OAuthError> {
        let field = |name: &str| form.get(name).map_or("", String::as_str);
        let mut grants = lock(&self.state.grants);
        // A code is spent by its first exchange, successful or not.
        let pending = grants
            .codes
            .remove(field("code"))
            .ok_or_else(|| OAuthError::new("invalid_grant", "unknown or already used code"))?;
        if pending.expires_at <= Instant::now() {
            return Err(OAuthError::new("invalid_grant", "code expired"));
        }
        if pending.client_id != client.client_id {
            let message = "code was issued to another client";
            return Err(OAuthError::new("invalid_grant", message));
        }
        if pending.redirect_uri != field("redirect_uri") {
            let message = "redirect_uri differs from the authorization request";
            return Err(OAuthError::new("invalid_grant", message));
        }
        verify_pkce(&pending, field("code_verifier"))?;
        let resource = self.check_resource(form)?;
        if resource != pending.resource {
            let message = "resource differs from the authorization request";
            return Err(OAuthError::new("invalid_grant", message));
        }

        let grant = Grant {
            family: grants.new_family(),
            client_id: client.client_id.clone(),
            scope: pending.scope,
            resource,
        };
        let ttl = self.state.access_token_ttl(&self.options);
        Ok(grants.issue(grant, &self.options, ttl))
    }

    /// `refresh_token`: rotates the token, keeping the sign-in's scope unless narrowed.
    fn refresh(
        &self,
        client: &RegisteredClient,
        form: &HashMap<String, String>,
    ) -> Result<Value, OAuthError> {
        let presented = form.get("refresh_token").map_or("", String::as_str);
        let resource = self.check_resource(form)?;
        let mut grants = lock(&self.state.grants);
        let mut grant = grants.spend_refresh_token(presented, &client.client_id)?;
        if let Some(scope) = form.get("scope") {
            grant.scope = narrowed_scope(&grant.scope, scope)?;
        }
        grant.resource = resource.or(grant.resource);
        let ttl = self.state.access_token_ttl(&self.options);
        Ok(grants.issue(grant, &self.options, ttl))
    }
}

/// `requested` if it asks for nothing beyond `granted`.
fn narrowed_scope(granted: &str, requested: &str) -> Result<String, OAuthError> {
    let held: Vec<&str> = granted.split(' ').collect();
    match requested.split(' ').find(|scope| !held.contains(scope)) {
        Some(extra) => {
            let message = format!("scope {extra} was not granted at sign-in");
            Err(OAuthError::new("invalid_scope", message))
        }
        None => Ok(requested.to_owned()),
    }
}

/// RFC 7636: a well-formed verifier whose S256 hash (or itself, for `plain`) is the challenge.
fn verify_pkce(pending: &PendingCode, verifier: &str) -> Result<(), OAuthError> {
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    if !well_formed {
        let message = "code_verifier must be 43 to 128 unreserved characters";
        return Err(OAuthError::new("invalid_grant", message));
    }
    let derived = match pending.challenge_method.as_str() {
        "S256" => URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())),
        _ => verifier.to_owned(),
    };
    if derived == pending.challenge {
        Ok(())
    } else {
        let message = "code_verifier does not match the code_challenge";
        Err(OAuthError::new("invalid_grant", message))
    }
}

/// `(client_id, client_secret)` from `Authorization: Basic`, compared as sent: the mock's own
/// identifiers and secrets need no form-encoding.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

// --- Errors and small helpers ---

/// An OAuth error response (RFC 6749 section 5.2).
#[derive(Debug)]
struct OAuthError {
    status: StatusCode,
    code: &'static str,
    description: String,
}

impl OAuthError {
    fn new(code: &'static str, description: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code,
            description: description.into(),
        }
    }

    fn invalid_client(description: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            ..Self::new("invalid_client", description)
        }
    }

    /// The error as an authorization response: a redirect back to the client.
    fn redirect(self, redirect_uri: &str, state: Option<&str>) -> Response {
        let pairs = [
            ("error", Some(self.code)),
            ("error_description", Some(self.description.as_str())),
            ("state", state),
        ];
        redirect(redirect_uri, &pairs)
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.code, "error_description": self.description});
        let response = json_response(self.status, body);
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6749 asks for a challenge naming the scheme the client may authenticate with.
            let challenge = [(header::WWW_AUTHENTICATE, "Basic realm=\"token\"")];
            return (challenge, response).into_response();
        }
        response
    }
}

/// An unguessable token, prefixed with what it is so that test failures read clearly.
fn random_token(prefix: &str) -> String {
    format!("{prefix}{}", new_session_id())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}
