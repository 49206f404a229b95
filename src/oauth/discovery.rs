//! OAuth discovery for one upstream MCP server: from the server's URL to the authorization
//! server endpoints that the sign-in flow needs.
//!
//! The sign-in flow calls [`discover`] before it sends a person to the authorization server.
//! Discovery follows the MCP authorization spec (2025-11-25): an unauthenticated `initialize`
//! probe, whose 401 may carry a Bearer challenge, then RFC 9728 protected-resource metadata
//! (PRM), then RFC 8414 or OpenID Connect metadata for the authorization server that the PRM
//! names. A server that publishes no PRM is treated as a 2025-03-26 server: its origin is the
//! authorization server, with the default `/authorize`, `/token` and `/register` endpoints when
//! it publishes no metadata either. The route's `auth` overrides replace whatever was found.
//! [`Discovered::scopes_to_request`] then decides which scopes to ask for.

use std::fmt;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, WWW_AUTHENTICATE};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use url::Url;

/// Every discovery request gets this limit even when the caller's client has none.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Metadata documents are a few kilobytes; anything far larger is not one.
const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

const RESOURCE_WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";
const OAUTH_WELL_KNOWN: &str = "/.well-known/oauth-authorization-server";
const OPENID_WELL_KNOWN: &str = "/.well-known/openid-configuration";
const OFFLINE_ACCESS: &str = "offline_access";
const PKCE_S256: &str = "S256";

/// Settings from the route's `auth` section that replace what discovery finds.
#[derive(Debug, Clone, Default)]
pub(crate) struct DiscoveryOverrides {
    pub(crate) authorization_endpoint: Option<Url>,
    pub(crate) token_endpoint: Option<Url>,
    pub(crate) registration_endpoint: Option<Url>,
    pub(crate) scopes: Option<Vec<String>>,
    pub(crate) resource: Option<String>,
    pub(crate) allow_issuer_mismatch: bool,
    pub(crate) allow_plain_pkce: bool,
}

/// The authorization server as the sign-in flow sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuthServer {
    pub(crate) issuer: String,
    pub(crate) authorization_endpoint: Url,
    pub(crate) token_endpoint: Url,
    pub(crate) registration_endpoint: Option<Url>,
    pub(crate) scopes_supported: Vec<String>,
    pub(crate) code_challenge_methods_supported: Vec<String>,
    pub(crate) token_endpoint_auth_methods_supported: Vec<String>,
    pub(crate) client_id_metadata_document_supported: bool,
    /// The server puts `iss` in its authorization responses (RFC 9207), so a callback
    /// without it is refused.
    pub(crate) issuer_in_responses: bool,
    /// Where the metadata came from; `None` when no metadata document was found.
    pub(crate) metadata_url: Option<Url>,
}

/// How the protected-resource metadata was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DiscoveryPath {
    /// The `resource_metadata` URL of the probe's `WWW-Authenticate` challenge.
    Header,
    /// `/.well-known/oauth-protected-resource{path}` on the MCP server's origin.
    PathInsertion,
    /// `/.well-known/oauth-protected-resource` at the root of the MCP server's origin.
    Root,
    /// No PRM anywhere: the MCP server's origin is the authorization server (2025-03-26).
    NoProtectedResourceMetadata,
}

/// Which authorization server document supplied the endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AsDocument {
    /// RFC 8414 metadata at this URL.
    Oauth(Url),
    /// OpenID Connect discovery document at this URL.
    OpenId(Url),
    /// No metadata at the MCP server's origin: the 2025-03-26 default endpoints.
    Default2025_03_26,
    /// No metadata for the issuer the PRM names; the route's `auth` section gives the endpoints.
    Configured,
}

/// Everything the sign-in flow needs to know about one upstream.
#[derive(Debug, Clone)]
pub(crate) struct Discovered {
    /// RFC 8707 `resource` parameter: the override, else the PRM's `resource`, else the
    /// MCP URL without its fragment (and without the bare `/` of a root URL).
    pub(crate) resource: String,
    pub(crate) resource_metadata_url: Option<Url>,
    /// `scope` from the probe's `WWW-Authenticate` challenge.
    pub(crate) challenge_scope: Option<String>,
    /// The PRM's `scopes_supported`.
    pub(crate) resource_scopes_supported: Vec<String>,
    pub(crate) auth_server: AuthServer,
    pub(crate) path: DiscoveryPath,
    pub(crate) as_document: AsDocument,
}

impl Discovered {
    /// Scopes to request: the override, else the challenge's scope, else the PRM's
    /// `scopes_supported`, else the authorization server's, else none; plus `offline_access`
    /// when the authorization server advertises it, so that a refresh token is issued.
    pub(crate) fn scopes_to_request(&self, overrides: &DiscoveryOverrides) -> Vec<String> {
        let chosen: Vec<String> = if let Some(scopes) = &overrides.scopes {
            scopes.clone()
        } else if let Some(scope) = &self.challenge_scope {
            scope.split_whitespace().map(str::to_owned).collect()
        } else if !self.resource_scopes_supported.is_empty() {
            self.resource_scopes_supported.clone()
        } else {
            self.auth_server.scopes_supported.clone()
        };

        let mut scopes: Vec<String> = Vec::with_capacity(chosen.len() + 1);
        for scope in chosen {
            if !scope.is_empty() && !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        let advertises_offline = self
            .auth_server
            .scopes_supported
            .iter()
            .any(|s| s == OFFLINE_ACCESS);
        if advertises_offline && !scopes.iter().any(|s| s == OFFLINE_ACCESS) {
            scopes.push(OFFLINE_ACCESS.to_owned());
        }
        scopes
    }
}

/// The parts of a `WWW-Authenticate: Bearer …` challenge that discovery uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BearerChallenge {
    pub(crate) error: Option<String>,
    pub(crate) scope: Option<String>,
    pub(crate) resource_metadata: Option<String>,
}

impl BearerChallenge {
    /// Keeps the first value of each parameter discovery cares about.
    fn record(&mut self, name: &str, value: String) {
        let slot = if name.eq_ignore_ascii_case("error") {
            &mut self.error
        } else if name.eq_ignore_ascii_case("scope") {
            &mut self.scope
        } else if name.eq_ignore_ascii_case("resource_metadata") {
            &mut self.resource_metadata
        } else {
            return;
        };
        if slot.is_none() {
            *slot = Some(value);
        }
    }
}

/// Why discovery could not produce the endpoints for a route.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DiscoveryError {
    #[error(
        "the MCP server at {url} did not answer the discovery probe; check the route's upstream \
         URL and that the server is running"
    )]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    #[error(
        "protected resource metadata at {url} is not valid JSON; the MCP server publishes a \
         broken document"
    )]
    InvalidResourceMetadata {
        url: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("protected resource metadata at {url} is larger than {limit} bytes; refusing it")]
    ResourceMetadataTooLarge { url: String, limit: usize },

    #[error(
        "protected resource metadata at {url} is for resource {found}, which does not cover \
         {expected}; refusing it (RFC 9728 section 3.3): check the route's upstream URL"
    )]
    ResourceMismatch {
        url: String,
        expected: String,
        found: String,
    },

    #[error(
        "protected resource metadata at {url} lists no authorization_servers; set \
         auth.authorization_endpoint and auth.token_endpoint for this route"
    )]
    NoAuthorizationServers { url: String },

    #[error(
        "protected resource metadata at {url} names authorization server {value:?}, which is \
         not a URL"
    )]
    InvalidIssuerUrl {
        url: String,
        value: String,
        #[source]
        source: url::ParseError,
    },

    #[error(
        "no authorization server metadata for issuer {issuer} (tried {}); set \
         auth.authorization_endpoint and auth.token_endpoint for this route",
        .tried.join(", ")
    )]
    NoAuthServerMetadata { issuer: String, tried: Vec<String> },

    #[error(
        "authorization server metadata names issuer {found} but {expected} was expected; set \
         auth.allow_issuer_mismatch = true if this server is known to do this"
    )]
    IssuerMismatch { expected: String, found: String },

    #[error(
        "authorization server {issuer} does not advertise PKCE S256; set \
         auth.allow_plain_pkce = true to try anyway"
    )]
    NoS256 { issuer: String },

    #[error(
        "authorization server metadata at {url} has no {field}; set auth.{field} for this route"
    )]
    MissingEndpoint { url: String, field: &'static str },

    #[error(
        "authorization server metadata at {url} has an invalid {field}; set auth.{field} for \
         this route"
    )]
    InvalidEndpoint {
        url: String,
        field: &'static str,
        #[source]
        source: url::ParseError,
    },
}

/// Finds the authorization server for the MCP server at `mcp_url` and what it supports.
pub(crate) async fn discover(
    http: &reqwest::Client,
    mcp_url: &Url,
    overrides: &DiscoveryOverrides,
) -> Result<Discovered, DiscoveryError> {
    // The probe's challenge may point straight at the PRM and names the scope it wants.
    let challenge = probe(http, mcp_url).await?;
    let challenge_scope = challenge
        .as_ref()
        .and_then(|c| c.scope.clone())
        .filter(|scope| !scope.trim().is_empty());
    let header_url = challenge
        .as_ref()
        .and_then(|c| c.resource_metadata.as_deref())
        .and_then(|value| resolve_header_url(mcp_url, value));

    // Without PRM the server predates 2025-06-18 and its origin is the authorization server.
    let Some(prm) = fetch_resource_metadata(http, mcp_url, header_url).await? else {
        let (auth_server, as_document) = origin_auth_server(http, mcp_url, overrides).await?;
        return Ok(Discovered {
            resource: resource_for(overrides, None, mcp_url),
            resource_metadata_url: None,
            challenge_scope,
            resource_scopes_supported: Vec::new(),
            auth_server,
            path: DiscoveryPath::NoProtectedResourceMetadata,
            as_document,
        });
    };

    // A PRM for some other resource must not steer the sign-in (RFC 9728 section 3.3).
    check_resource(&prm, mcp_url)?;
    let (issuer, issuer_url) = first_authorization_server(&prm)?;
    let (auth_server, as_document) = match fetch_auth_server_metadata(http, &issuer_url).await {
        Ok(found) => {
            let document = found.as_document.clone();
            (
                auth_server_from_metadata(found, &issuer, overrides)?,
                document,
            )
        }
        // Configured endpoints make missing metadata no reason to stop.
        Err(tried) => match configured_auth_server(&issuer, overrides) {
            Some(auth_server) => {
                tracing::warn!(
                    issuer = %issuer,
                    urls_tried = tried.len(),
                    "no authorization server metadata found; using the route's configured endpoints"
                );
                (auth_server, AsDocument::Configured)
            }
            None => return Err(DiscoveryError::NoAuthServerMetadata { issuer, tried }),
        },
    };

    Ok(Discovered {
        resource: resource_for(overrides, prm.document.resource.as_deref(), mcp_url),
        resource_metadata_url: Some(prm.url),
        challenge_scope,
        resource_scopes_supported: prm.document.scopes_supported.unwrap_or_default(),
        auth_server,
        path: prm.path,
        as_document,
    })
}

/// Parses a `WWW-Authenticate` value and returns its first Bearer challenge.
///
/// Accepts several challenges in one value (`Basic realm="x", Bearer scope="a"`), quoted or
/// token parameter values, backslash escapes in quoted values, a token68 after a scheme, and
/// any case in the scheme and parameter names. Returns `None` when there is no Bearer challenge.
pub(crate) fn parse_bearer_challenge(header: &str) -> Option<BearerChallenge> {
    let mut cursor = ChallengeCursor {
        text: header,
        pos: 0,
    };
    let mut bearer: Option<BearerChallenge> = None;
    let mut in_bearer = false;

    loop {
        cursor.skip_while(|c| c == ',' || c.is_ascii_whitespace());
        if cursor.peek().is_none() {
            break;
        }
        let name = cursor.token();
        if name.is_empty() {
            // Not a token: skip the stray character rather than give up on the header.
            cursor.bump();
            continue;
        }
        cursor.skip_spaces();

        if cursor.at_param_value() {
            let value = cursor.param_value();
            if let (true, Some(challenge)) = (in_bearer, bearer.as_mut()) {
                challenge.record(name, value);
            }
        } else {
            // A bare token starts a new challenge; only the first Bearer one counts.
            in_bearer = bearer.is_none() && name.eq_ignore_ascii_case("bearer");
            if in_bearer {
                bearer = Some(BearerChallenge::default());
            }
            cursor.skip_token68();
        }
    }
    bearer
}

/// A position in a `WWW-Authenticate` value (RFC 9110 section 11.6.1 grammar).
#[derive(Clone, Copy)]
struct ChallengeCursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> ChallengeCursor<'a> {
    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn bump(&mut self) {
        if let Some(c) = self.peek() {
            self.pos += c.len_utf8();
        }
    }

    fn skip_while(&mut self, keep: impl Fn(char) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&keep) {
            self.bump();
        }
        &self.text[start..self.pos]
    }

    fn skip_spaces(&mut self) {
        self.skip_while(|c| c == ' ' || c == '\t');
    }

    fn token(&mut self) -> &'a str {
        self.skip_while(is_tchar)
    }

    /// At `=` followed by a token or quoted string, i.e. the value of an auth-param
    /// rather than the padding of a token68.
    fn at_param_value(&self) -> bool {
        let mut ahead = *self;
        if ahead.peek() != Some('=') {
            return false;
        }
        ahead.bump();
        ahead.skip_spaces();
        ahead
            .peek()
            .is_some_and(|c| c == '"' || (c != '=' && is_bare_value_char(c)))
    }

    fn param_value(&mut self) -> String {
        self.bump();
        self.skip_spaces();
        if self.peek() == Some('"') {
            self.quoted()
        } else {
            self.skip_while(is_bare_value_char).to_owned()
        }
    }

    fn quoted(&mut self) -> String {
        self.bump();
        let mut value = String::new();
        while let Some(c) = self.peek() {
            self.bump();
            match c {
                '"' => break,
                '\\' => {
                    if let Some(escaped) = self.peek() {
                        value.push(escaped);
                        self.bump();
                    }
                }
                _ => value.push(c),
            }
        }
        value
    }

    /// Skips a token68 credential after a scheme, but only if one is really there.
    fn skip_token68(&mut self) {
        let start = *self;
        self.skip_spaces();
        self.skip_while(|c| c.is_ascii_alphanumeric() || "-._~+/".contains(c));
        self.skip_while(|c| c == '=');
        self.skip_spaces();
        if !matches!(self.peek(), None | Some(',')) {
            *self = start;
        }
    }
}

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Unquoted values should be tokens, but servers send `scope=files:read` and bare URLs;
/// anything up to the next separator is taken.
fn is_bare_value_char(c: char) -> bool {
    !c.is_whitespace() && !matches!(c, ',' | '"')
}

/// Sends the unauthenticated `initialize` that a protected server answers with a 401.
async fn probe(
    http: &reqwest::Client,
    mcp_url: &Url,
) -> Result<Option<BearerChallenge>, DiscoveryError> {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": { "name": "mcp-u2m-gateway", "version": env!("CARGO_PKG_VERSION") },
        },
    });
    let response = http
        .post(mcp_url.clone())
        .timeout(REQUEST_TIMEOUT)
        .header(ACCEPT, "application/json, text/event-stream")
        .json(&body)
        .send()
        .await
        .map_err(|source| DiscoveryError::Unreachable {
            url: mcp_url.to_string(),
            source: source.without_url(),
        })?;

    // Any answer but a 401 carries no challenge; discovery goes on from well-known URLs.
    let status = response.status();
    if status != StatusCode::UNAUTHORIZED {
        tracing::debug!(url = %mcp_url, status = status.as_u16(), "probe was not challenged");
        return Ok(None);
    }
    let header = response
        .headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ");
    let challenge = parse_bearer_challenge(&header);
    tracing::debug!(url = %mcp_url, bearer = challenge.is_some(), "probe was challenged");
    Ok(challenge)
}

/// The header's `resource_metadata`, if it is an http(s) URL (relative ones resolve against
/// the MCP URL).
fn resolve_header_url(mcp_url: &Url, value: &str) -> Option<Url> {
    match mcp_url.join(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Some(url),
        _ => {
            tracing::debug!(value, "ignoring unusable resource_metadata in challenge");
            None
        }
    }
}

#[derive(Debug, Deserialize)]
struct ResourceMetadataDocument {
    resource: Option<String>,
    authorization_servers: Option<Vec<String>>,
    scopes_supported: Option<Vec<String>>,
}

#[derive(Debug)]
struct FoundResourceMetadata {
    url: Url,
    path: DiscoveryPath,
    document: ResourceMetadataDocument,
}

/// Tries the challenge's URL, then the path-inserted and root well-known URLs.
async fn fetch_resource_metadata(
    http: &reqwest::Client,
    mcp_url: &Url,
    header_url: Option<Url>,
) -> Result<Option<FoundResourceMetadata>, DiscoveryError> {
    let mut candidates: Vec<(Url, DiscoveryPath)> = Vec::with_capacity(3);
    candidates.extend(header_url.map(|url| (url, DiscoveryPath::Header)));
    if mcp_url.path() != "/" {
        let inserted = format!("{RESOURCE_WELL_KNOWN}{}", mcp_url.path());
        candidates.push((at_path(mcp_url, &inserted), DiscoveryPath::PathInsertion));
    }
    candidates.push((at_path(mcp_url, RESOURCE_WELL_KNOWN), DiscoveryPath::Root));

    for (index, (url, path)) in candidates.iter().enumerate() {
        if candidates[..index]
            .iter()
            .any(|(earlier, _)| earlier == url)
        {
            continue;
        }
        match fetch_json::<ResourceMetadataDocument>(http, url, "protected resource metadata").await
        {
            Ok(document) => {
                return Ok(Some(FoundResourceMetadata {
                    url: url.clone(),
                    path: *path,
                    document,
                }));
            }
            Err(FetchFailure::Json(source)) => {
                return Err(DiscoveryError::InvalidResourceMetadata {
                    url: url.to_string(),
                    source,
                });
            }
            Err(FetchFailure::TooLarge) => {
                return Err(DiscoveryError::ResourceMetadataTooLarge {
                    url: url.to_string(),
                    limit: MAX_DOCUMENT_BYTES,
                });
            }
            Err(FetchFailure::Status(_) | FetchFailure::Transport(_)) => {}
        }
    }
    Ok(None)
}

/// The PRM's `resource` must be the MCP URL's origin with a path that contains the MCP URL's.
fn check_resource(prm: &FoundResourceMetadata, mcp_url: &Url) -> Result<(), DiscoveryError> {
    let Some(found) = prm.document.resource.as_deref() else {
        return Ok(());
    };
    let covers = Url::parse(found).is_ok_and(|resource| {
        resource.origin() == mcp_url.origin() && path_covers(resource.path(), mcp_url.path())
    });
    if covers {
        return Ok(());
    }
    Err(DiscoveryError::ResourceMismatch {
        url: prm.url.to_string(),
        expected: canonical_resource(mcp_url),
        found: found.to_owned(),
    })
}

/// Whether `path` is `prefix` or lies below it, segment by segment.
fn path_covers(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    let path = path.trim_end_matches('/');
    prefix.is_empty()
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The issuer to use: the PRM's first authorization server, as written and as a URL.
fn first_authorization_server(
    prm: &FoundResourceMetadata,
) -> Result<(String, Url), DiscoveryError> {
    let Some(issuer) = prm
        .document
        .authorization_servers
        .as_ref()
        .and_then(|s| s.first())
    else {
        return Err(DiscoveryError::NoAuthorizationServers {
            url: prm.url.to_string(),
        });
    };
    let url = Url::parse(issuer).map_err(|source| DiscoveryError::InvalidIssuerUrl {
        url: prm.url.to_string(),
        value: issuer.clone(),
        source,
    })?;
    Ok((issuer.clone(), url))
}

#[derive(Debug, Deserialize)]
struct AuthServerMetadataDocument {
    issuer: Option<String>,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    registration_endpoint: Option<String>,
    scopes_supported: Option<Vec<String>>,
    code_challenge_methods_supported: Option<Vec<String>>,
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    client_id_metadata_document_supported: Option<bool>,
    authorization_response_iss_parameter_supported: Option<bool>,
}

/// A well-known URL and the kind of document it holds.
type MetadataCandidate = (Url, fn(Url) -> AsDocument);

#[derive(Debug)]
struct FoundAuthServerMetadata {
    url: Url,
    as_document: AsDocument,
    document: AuthServerMetadataDocument,
}

/// Tries the RFC 8414 and OpenID well-known URLs for `issuer` in the MCP spec's order.
/// On failure returns each URL tried with its outcome.
async fn fetch_auth_server_metadata(
    http: &reqwest::Client,
    issuer: &Url,
) -> Result<FoundAuthServerMetadata, Vec<String>> {
    let path = issuer.path().trim_end_matches('/');
    let candidates: Vec<MetadataCandidate> = if path.is_empty() {
        vec![
            (at_path(issuer, OAUTH_WELL_KNOWN), AsDocument::Oauth),
            (at_path(issuer, OPENID_WELL_KNOWN), AsDocument::OpenId),
        ]
    } else {
        vec![
            (
                at_path(issuer, &format!("{OAUTH_WELL_KNOWN}{path}")),
                AsDocument::Oauth,
            ),
            (
                at_path(issuer, &format!("{OPENID_WELL_KNOWN}{path}")),
                AsDocument::OpenId,
            ),
            (
                at_path(issuer, &format!("{path}{OPENID_WELL_KNOWN}")),
                AsDocument::OpenId,
            ),
        ]
    };

    let mut tried = Vec::with_capacity(candidates.len());
    for (url, kind) in candidates {
        match fetch_json(http, &url, "authorization server metadata").await {
            Ok(document) => {
                return Ok(FoundAuthServerMetadata {
                    as_document: kind(url.clone()),
                    url,
                    document,
                });
            }
            Err(failure) => tried.push(format!("{url}: {failure}")),
        }
    }
    Err(tried)
}

/// The 2025-03-26 rule: the MCP server's origin is the authorization server, with default
/// endpoints when it publishes no metadata.
async fn origin_auth_server(
    http: &reqwest::Client,
    mcp_url: &Url,
    overrides: &DiscoveryOverrides,
) -> Result<(AuthServer, AsDocument), DiscoveryError> {
    let issuer = mcp_url.origin().ascii_serialization();
    let origin = at_path(mcp_url, "/");
    if let Ok(found) = fetch_auth_server_metadata(http, &origin).await {
        // Before protected-resource metadata, the metadata at the MCP server's origin was
        // that server's own and clients compared no issuer. An issuer on that same origin
        // (an authorization server under a path, such as `/oauth`) is the server's own too;
        // one on another origin is a mismatch like any other.
        let expected = found
            .document
            .issuer
            .as_deref()
            .and_then(|found| Url::parse(found).ok())
            .filter(|found| found.origin() == mcp_url.origin())
            .map_or(issuer, |found| found.to_string());
        let document = found.as_document.clone();
        return Ok((
            auth_server_from_metadata(found, &expected, overrides)?,
            document,
        ));
    }

    tracing::debug!(issuer = %issuer, "no authorization server metadata; using default endpoints");
    let auth_server = AuthServer {
        issuer,
        authorization_endpoint: overrides
            .authorization_endpoint
            .clone()
            .unwrap_or_else(|| at_path(&origin, "/authorize")),
        token_endpoint: overrides
            .token_endpoint
            .clone()
            .unwrap_or_else(|| at_path(&origin, "/token")),
        registration_endpoint: Some(
            overrides
                .registration_endpoint
                .clone()
                .unwrap_or_else(|| at_path(&origin, "/register")),
        ),
        scopes_supported: Vec::new(),
        code_challenge_methods_supported: vec![PKCE_S256.to_owned()],
        token_endpoint_auth_methods_supported: Vec::new(),
        client_id_metadata_document_supported: false,
        issuer_in_responses: false,
        metadata_url: None,
    };
    Ok((auth_server, AsDocument::Default2025_03_26))
}

/// An authorization server known only from the route's `auth` section, if that section
/// gives both endpoints the code flow needs.
fn configured_auth_server(issuer: &str, overrides: &DiscoveryOverrides) -> Option<AuthServer> {
    Some(AuthServer {
        issuer: issuer.to_owned(),
        authorization_endpoint: overrides.authorization_endpoint.clone()?,
        token_endpoint: overrides.token_endpoint.clone()?,
        registration_endpoint: overrides.registration_endpoint.clone(),
        scopes_supported: Vec::new(),
        // Nothing says otherwise, and S256 is what the flow sends.
        code_challenge_methods_supported: vec![PKCE_S256.to_owned()],
        token_endpoint_auth_methods_supported: Vec::new(),
        client_id_metadata_document_supported: false,
        issuer_in_responses: false,
        metadata_url: None,
    })
}

/// Checks a metadata document and applies the overrides to it.
fn auth_server_from_metadata(
    found: FoundAuthServerMetadata,
    expected_issuer: &str,
    overrides: &DiscoveryOverrides,
) -> Result<AuthServer, DiscoveryError> {
    let FoundAuthServerMetadata { url, document, .. } = found;
    let issuer = check_issuer(expected_issuer, document.issuer.as_deref(), overrides)?;

    // The MCP spec requires S256 and tells clients to refuse a server that does not list it.
    let methods = document
        .code_challenge_methods_supported
        .unwrap_or_default();
    if !methods.iter().any(|method| method == PKCE_S256) {
        if !overrides.allow_plain_pkce {
            return Err(DiscoveryError::NoS256 { issuer });
        }
        tracing::warn!(
            issuer = %issuer,
            ?methods,
            "authorization server does not advertise PKCE S256; trying anyway because \
             auth.allow_plain_pkce is set"
        );
    }

    Ok(AuthServer {
        authorization_endpoint: endpoint(
            overrides.authorization_endpoint.as_ref(),
            document.authorization_endpoint.as_deref(),
            "authorization_endpoint",
            &url,
        )?
        .ok_or_else(|| missing(&url, "authorization_endpoint"))?,
        token_endpoint: endpoint(
            overrides.token_endpoint.as_ref(),
            document.token_endpoint.as_deref(),
            "token_endpoint",
            &url,
        )?
        .ok_or_else(|| missing(&url, "token_endpoint"))?,
        registration_endpoint: endpoint(
            overrides.registration_endpoint.as_ref(),
            document.registration_endpoint.as_deref(),
            "registration_endpoint",
            &url,
        )?,
        issuer,
        scopes_supported: document.scopes_supported.unwrap_or_default(),
        code_challenge_methods_supported: methods,
        token_endpoint_auth_methods_supported: document
            .token_endpoint_auth_methods_supported
            .unwrap_or_default(),
        client_id_metadata_document_supported: document
            .client_id_metadata_document_supported
            .unwrap_or(false),
        issuer_in_responses: document
            .authorization_response_iss_parameter_supported
            .unwrap_or(false),
        metadata_url: Some(url),
    })
}

/// The metadata's `issuer` must be the one the metadata was looked up for (RFC 8414
/// section 3.3). Returns the issuer the authorization server calls itself.
fn check_issuer(
    expected: &str,
    found: Option<&str>,
    overrides: &DiscoveryOverrides,
) -> Result<String, DiscoveryError> {
    let same = |found: &str| found.trim_end_matches('/') == expected.trim_end_matches('/');
    match found {
        Some(found) if same(found) => return Ok(found.to_owned()),
        _ if !overrides.allow_issuer_mismatch => {
            return Err(DiscoveryError::IssuerMismatch {
                expected: expected.to_owned(),
                found: found.unwrap_or("(none)").to_owned(),
            });
        }
        _ => {}
    }
    tracing::warn!(
        expected,
        found = found.unwrap_or("(none)"),
        "authorization server metadata names another issuer; continuing because \
         auth.allow_issuer_mismatch is set"
    );
    Ok(found.unwrap_or(expected).to_owned())
}

/// The override if there is one, else the metadata's value parsed.
fn endpoint(
    configured: Option<&Url>,
    advertised: Option<&str>,
    field: &'static str,
    url: &Url,
) -> Result<Option<Url>, DiscoveryError> {
    if let Some(configured) = configured {
        return Ok(Some(configured.clone()));
    }
    advertised
        .map(|value| {
            Url::parse(value).map_err(|source| DiscoveryError::InvalidEndpoint {
                url: url.to_string(),
                field,
                source,
            })
        })
        .transpose()
}

fn missing(url: &Url, field: &'static str) -> DiscoveryError {
    DiscoveryError::MissingEndpoint {
        url: url.to_string(),
        field,
    }
}

/// The RFC 8707 resource: the override, else the PRM's, else the MCP URL itself.
fn resource_for(overrides: &DiscoveryOverrides, advertised: Option<&str>, mcp_url: &Url) -> String {
    overrides
        .resource
        .clone()
        .or_else(|| advertised.map(str::to_owned))
        .unwrap_or_else(|| canonical_resource(mcp_url))
}

/// The MCP URL as a resource identifier: no fragment, path kept as written. `Url` turns
/// `https://host` into `https://host/`, so a root URL loses that added slash.
fn canonical_resource(mcp_url: &Url) -> String {
    let mut url = mcp_url.clone();
    url.set_fragment(None);
    let text = url.to_string();
    if url.path() == "/" && url.query().is_none() {
        text.trim_end_matches('/').to_owned()
    } else {
        text
    }
}

/// `base`'s scheme, host and port with another path and nothing after it.
fn at_path(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    url.set_path(path);
    url.set_query(None);
    url.set_fragment(None);
    url
}

/// Why a well-known document could not be used.
#[derive(Debug)]
enum FetchFailure {
    Status(StatusCode),
    Transport(reqwest::Error),
    TooLarge,
    Json(serde_json::Error),
}

impl fmt::Display for FetchFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(status) => write!(f, "HTTP {}", status.as_u16()),
            Self::Transport(error) => write!(f, "request failed ({error})"),
            Self::TooLarge => write!(f, "larger than {MAX_DOCUMENT_BYTES} bytes"),
            Self::Json(error) => write!(f, "not a metadata document ({error})"),
        }
    }
}

/// GETs a JSON document, logging the URL and the outcome.
async fn fetch_json<T: DeserializeOwned>(
    http: &reqwest::Client,
    url: &Url,
    what: &'static str,
) -> Result<T, FetchFailure> {
    let outcome = fetch_json_quietly(http, url).await;
    match &outcome {
        Ok(_) => tracing::debug!(url = %url, document = what, "found"),
        Err(failure) => {
            tracing::debug!(url = %url, document = what, outcome = %failure, "not usable")
        }
    }
    outcome
}

async fn fetch_json_quietly<T: DeserializeOwned>(
    http: &reqwest::Client,
    url: &Url,
) -> Result<T, FetchFailure> {
    let mut response = http
        .get(url.clone())
        .timeout(REQUEST_TIMEOUT)
        .header(ACCEPT, "application/json")
        .send()
        .await
        .map_err(|error| FetchFailure::Transport(error.without_url()))?;
    if response.status() != StatusCode::OK {
        return Err(FetchFailure::Status(response.status()));
    }
    if response
        .content_length()
        .is_some_and(|len| len > MAX_DOCUMENT_BYTES as u64)
    {
        return Err(FetchFailure::TooLarge);
    }

    // Read in chunks so that a server without Content-Length cannot send an endless body.
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| FetchFailure::Transport(error.without_url()))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(FetchFailure::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(FetchFailure::Json)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::Body;
    use axum::extract::{Request, State};
    use axum::http::{HeaderMap, StatusCode as AxumStatus};
    use axum::response::Response;
    use serde_json::{Value, json};

    use super::*;

    /// One canned answer of a test server.
    #[derive(Clone)]
    struct Canned {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    }

    fn json_doc(value: Value) -> Canned {
        Canned {
            status: 200,
            headers: vec![("content-type", "application/json".to_owned())],
            body: value.to_string(),
        }
    }

    fn challenge(value: String) -> Canned {
        Canned {
            status: 401,
            headers: vec![("www-authenticate", value)],
            body: String::new(),
        }
    }

    fn status(code: u16) -> Canned {
        Canned {
            status: code,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    #[derive(Clone)]
    struct Recorded {
        line: String,
        headers: HeaderMap,
        body: String,
    }

    #[derive(Default)]
    struct Fixture {
        answers: HashMap<String, Canned>,
        seen: Mutex<Vec<Recorded>>,
    }

    /// An in-process HTTP server on a free loopback port that answers from a path table
    /// and 404s everything else.
    struct TestServer {
        base: String,
        fixture: Arc<Fixture>,
    }

    impl TestServer {
        async fn start(answers: impl FnOnce(&str) -> Vec<(String, Canned)>) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind a loopback port");
            let base = format!("http://{}", listener.local_addr().expect("local address"));
            let fixture = Arc::new(Fixture {
                answers: answers(&base).into_iter().collect(),
                seen: Mutex::default(),
            });
            let app = Router::new().fallback(answer).with_state(fixture.clone());
            tokio::spawn(async move { axum::serve(listener, app).await });
            Self { base, fixture }
        }

        fn url(&self, path: &str) -> Url {
            Url::parse(&format!("{}{path}", self.base)).expect("test URL")
        }

        fn seen(&self) -> Vec<Recorded> {
            self.fixture.seen.lock().expect("lock").clone()
        }

        fn requested_paths(&self) -> Vec<String> {
            self.seen().into_iter().map(|r| r.line).collect()
        }
    }

    async fn answer(State(fixture): State<Arc<Fixture>>, request: Request) -> Response {
        let line = format!("{} {}", request.method(), request.uri().path());
        let canned = fixture.answers.get(request.uri().path()).cloned();
        let headers = request.headers().clone();
        let body = axum::body::to_bytes(request.into_body(), 1 << 20)
            .await
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        fixture.seen.lock().expect("lock").push(Recorded {
            line,
            headers,
            body,
        });

        let canned = canned.unwrap_or_else(|| status(404));
        let mut response =
            Response::builder().status(AxumStatus::from_u16(canned.status).expect("status code"));
        for (name, value) in canned.headers {
            response = response.header(name, value);
        }
        response.body(Body::from(canned.body)).expect("response")
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
    }

    fn as_metadata(issuer: &str) -> Value {
        json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/authorize"),
            "token_endpoint": format!("{issuer}/token"),
            "registration_endpoint": format!("{issuer}/register"),
            "scopes_supported": ["read", "write", "offline_access"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none"],
            "client_id_metadata_document_supported": true,
        })
    }

    fn prm(resource: &str, issuer: &str) -> Value {
        json!({
            "resource": resource,
            "authorization_servers": [issuer],
            "scopes_supported": ["mcp:tools"],
        })
    }

    /// An authorization server whose issuer is its own origin plus `issuer_path`, serving
    /// `document` at `metadata_path`.
    async fn auth_server_at(issuer_path: &str, metadata_path: &str) -> TestServer {
        let (issuer_path, metadata_path) = (issuer_path.to_owned(), metadata_path.to_owned());
        TestServer::start(move |base| {
            let issuer = format!("{base}{issuer_path}");
            vec![(metadata_path, json_doc(as_metadata(&issuer)))]
        })
        .await
    }

    async fn run(
        mcp_url: &Url,
        overrides: &DiscoveryOverrides,
    ) -> Result<Discovered, DiscoveryError> {
        discover(&client(), mcp_url, overrides).await
    }

    #[tokio::test]
    async fn header_challenge_leads_to_prm_then_rfc8414_metadata() {
        let auth = auth_server_at("", OAUTH_WELL_KNOWN).await;
        let issuer = auth.base.clone();
        let mcp = TestServer::start(|base| {
            let header = format!(
                concat!(
                    r#"Bearer error="invalid_token", scope="files:read", "#,
                    r#"resource_metadata="{}/meta/prm""#
                ),
                base
            );
            vec![
                ("/mcp".to_owned(), challenge(header)),
                (
                    "/meta/prm".to_owned(),
                    json_doc(prm(&format!("{base}/mcp"), &issuer)),
                ),
            ]
        })
        .await;

        let found = run(&mcp.url("/mcp"), &DiscoveryOverrides::default())
            .await
            .expect("discovered");

        assert_eq!(found.path, DiscoveryPath::Header);
        assert_eq!(found.resource_metadata_url, Some(mcp.url("/meta/prm")));
        assert_eq!(found.resource, format!("{}/mcp", mcp.base));
        assert_eq!(found.challenge_scope.as_deref(), Some("files:read"));
        assert_eq!(found.resource_scopes_supported, vec!["mcp:tools"]);
        let metadata_url = auth.url(OAUTH_WELL_KNOWN);
        assert_eq!(found.as_document, AsDocument::Oauth(metadata_url.clone()));
        let server = &found.auth_server;
        assert_eq!(server.issuer, auth.base);
        assert_eq!(server.authorization_endpoint, auth.url("/authorize"));
        assert_eq!(server.token_endpoint, auth.url("/token"));
        assert_eq!(server.registration_endpoint, Some(auth.url("/register")));
        assert_eq!(server.code_challenge_methods_supported, vec!["S256"]);
        assert_eq!(server.token_endpoint_auth_methods_supported, vec!["none"]);
        assert!(server.client_id_metadata_document_supported);
        assert_eq!(server.metadata_url, Some(metadata_url));
        assert_eq!(mcp.requested_paths(), vec!["POST /mcp", "GET /meta/prm"]);
    }

    #[tokio::test]
    async fn probe_is_an_unauthenticated_initialize_post() {
        let mcp = TestServer::start(|base| {
            vec![(OAUTH_WELL_KNOWN.to_owned(), json_doc(as_metadata(base)))]
        })
        .await;

        run(&mcp.url("/mcp"), &DiscoveryOverrides::default())
            .await
            .expect("discovered");

        let probe = &mcp.seen()[0];
        assert_eq!(probe.line, "POST /mcp");
        assert_eq!(probe.headers["content-type"], "application/json");
        assert_eq!(
            probe.headers["accept"],
            "application/json, text/event-stream"
        );
        assert!(probe.headers.get("authorization").is_none());
        let body: Value = serde_json::from_str(&probe.body).expect("json body");
        assert_eq!(body["jsonrpc"], "2.0");
        assert_eq!(body["method"], "initialize");
    }

    #[tokio::test]
    async fn path_insertion_prm_is_used_when_the_challenge_names_none() {
        let auth = auth_server_at("", OAUTH_WELL_KNOWN).await;
        let issuer = auth.base.clone();
        let mcp = TestServer::start(|base| {
            vec![
                (
                    "/v1/mcp".to_owned(),
                    challenge(r#"Bearer realm="mcp""#.to_owned()),
                ),
                (
                    format!("{RESOURCE_WELL_KNOWN}/v1/mcp"),
                    json_doc(prm(&format!("{base}/v1/mcp"), &issuer)),
                ),
            ]
        })
        .await;

        let found = run(&mcp.url("/v1/mcp"), &DiscoveryOverrides::default())
            .await
            .expect("discovered");

        assert_eq!(found.path, DiscoveryPath::PathInsertion);
        assert_eq!(found.challenge_scope, None);
        assert_eq!(
            found.resource_metadata_url,
            Some(mcp.url(&format!("{RESOURCE_WELL_KNOWN}/v1/mcp")))
        );
        assert!(
            !mcp.requested_paths()
                .contains(&format!("GET {RESOURCE_WELL_KNOWN}"))
        );
    }

    #[tokio::test]
    async fn root_prm_is_used_when_header_url_and_path_insertion_fail() {
        let auth = auth_server_at("", OAUTH_WELL_KNOWN).await;
        let issuer = auth.base.clone();
        let mcp = TestServer::start(|base| {
            let header = format!(r#"Bearer resource_metadata="{base}/gone""#);
            vec![
                ("/mcp".to_owned(), challenge(header)),
                ("/gone".to_owned(), status(500)),
                (RESOURCE_WELL_KNOWN.to_owned(), json_doc(prm(base, &issuer))),
            ]
        })
        .await;

        let found = run(&mcp.url("/mcp"), &DiscoveryOverrides::default())
            .await
            .expect("discovered");

        assert_eq!(found.path, DiscoveryPath::Root);
        assert_eq!(found.resource, mcp.base);
        assert_eq!(
            mcp.requested_paths(),
            vec![
                "POST /mcp".to_owned(),
                "GET /gone".to_owned(),
                format!("GET {RESOURCE_WELL_KNOWN}/mcp"),
                format!("GET {RESOURCE_WELL_KNOWN}"),
            ]
        );
    }

    /// An MCP server whose root PRM names `issuer`.
    async fn mcp_pointing_at(issuer: String) -> TestServer {
        TestServer::start(move |base| {
            vec![(RESOURCE_WELL_KNOWN.to_owned(), json_doc(prm(base, &issuer)))]
        })
        .await
    }

    #[tokio::test]
    async fn issuer_with_path_finds_openid_configuration_by_path_insertion() {
        let metadata_path = format!("{OPENID_WELL_KNOWN}/tenant");
        let auth = auth_server_at("/tenant", &metadata_path).await;
        let mcp = mcp_pointing_at(format!("{}/tenant", auth.base)).await;

        let found = run(&mcp.url("/"), &DiscoveryOverrides::default())
            .await
            .expect("discovered");

        assert_eq!(
            found.as_document,
            AsDocument::OpenId(auth.url(&metadata_path))
        );
        assert_eq!(found.auth_server.issuer, format!("{}/tenant", auth.base));
        assert_eq!(
            auth.requested_paths(),
            vec![
                format!("GET {OAUTH_WELL_KNOWN}/tenant"),
                format!("GET {metadata_path}")
            ]
        );
    }

    #[tokio::test]
    async fn issuer_with_path_finds_openid_configuration_by_path_appending() {
        let metadata_path = format!("/tenant{OPENID_WELL_KNOWN}");
        let auth = auth_server_at("/tenant", &metadata_path).await;
        let mcp = mcp_pointing_at(format!("{}/tenant/", auth.base)).await;

        let found = run(&mcp.url("/"), &DiscoveryOverrides::default())
            .await
            .expect("discovered");

        assert_eq!(
            found.as_document,
            AsDocument::OpenId(auth.url(&metadata_path))
        );
        assert_eq!(
            auth.requested_paths(),
            vec![
                format!("GET {OAUTH_WELL_KNOWN}/tenant"),
                format!("GET {OPENID_WELL_KNOWN}/tenant"),
                format!("GET {metadata_path}"),
            ]
        );
    }

    #[tokio::test]
    async fn issuer_with_path_prefers_rfc8414_path_insertion() {
        let auth = TestServer::start(|base| {
            let issuer = format!("{base}/tenant");
            vec![
                (
                    format!("{OAUTH_WELL_KNOWN}/tenant"),
                    json_doc(as_metadata(&issuer)),
                ),
                (
                    format!("{OPENID_WELL_KNOWN}/tenant"),
                    json_doc(as_metadata(&issuer)),
                ),
            ]
        })
        .await;
        let mcp = mcp_pointing_at(format!("{}/tenant", auth.base)).await;

        let found = run(&mcp.url("/"), &DiscoveryOverrides::default())
            .await
            .expect("discovered");

        let metadata_url = auth.url(&format!("{OAUTH_WELL_KNOWN}/tenant"));
        assert_eq!(found.as_document, AsDocument::Oauth(metadata_url));
    }

    #[tokio::test]
    async fn issuer_without_path_falls_back_to_root_openid_configuration() {
        let auth = auth_server_at("", OPENID_WELL_KNOWN).await;
        let mcp = mcp_pointing_at(auth.base.clone()).await;

        let found = run(&mcp.url("/"), &DiscoveryOverrides::default())
            .await
            .expect("discovered");

        assert_eq!(
            found.as_document,
            AsDocument::OpenId(auth.url(OPENID_WELL_KNOWN))
        );
    }

    #[tokio::test]
    async fn metadata_that_is_not_json_falls_through_to_the_next_url() {
        let auth = TestServer::start(|base| {
            let html = Canned {
                body: "<html>app shell</html>".to_owned(),
                ..status(200)
            };
            vec![
                (OAUTH_WELL_KNOWN.to_owned(), html),
                (OPENID_WELL_KNOWN.to_owned(), json_doc(as_metadata(base))),
            ]
        })
        .await;
        let mcp = mcp_pointing_at(auth.base.clone()).await;

        let found = run(&mcp.url("/"), &DiscoveryOverrides::default())
            .await
            .expect("discovered");

        assert_eq!(
            found.as_document,
            AsDocument::OpenId(auth.url(OPENID_WELL_KNOWN))
        );
    }

    #[tokio::test]
    async fn without_prm_the_origin_metadata_is_used() {
        let mcp = TestServer::start(|base| {
            vec![
                (
                    "/v1/sse".to_owned(),
                    challenge(r#"Bearer realm="x""#.to_owned()),
                ),
                (OAUTH_WELL_KNOWN.to_owned(), json_doc(as_metadata(base))),
            ]
        })
        .await;

        let found = run(&mcp.url("/v1/sse"), &DiscoveryOverrides::default())
            .await
            .expect("discovered");

        assert_eq!(found.path, DiscoveryPath::NoProtectedResourceMetadata);
        assert_eq!(found.resource_metadata_url, None);
        assert_eq!(found.resource, format!("{}/v1/sse", mcp.base));
        assert_eq!(
            found.as_document,
            AsDocument::Oauth(mcp.url(OAUTH_WELL_KNOWN))
        );
        assert_eq!(found.auth_server.issuer, mcp.base);
        assert_eq!(found.auth_server.token_endpoint, mcp.url("/token"));
    }

    #[tokio::test]
    async fn without_prm_or_metadata_the_default_endpoints_are_used() {
        let mcp = TestServer::start(|_| vec![("/mcp".to_owned(), status(401))]).await;

        let found = run(&mcp.url("/mcp"), &DiscoveryOverrides::default())
            .await
            .expect("discovered");

        assert_eq!(found.as_document, AsDocument::Default2025_03_26);
        let server = &found.auth_server;
        assert_eq!(server.issuer, mcp.base);
        assert_eq!(server.authorization_endpoint, mcp.url("/authorize"));
        assert_eq!(server.token_endpoint, mcp.url("/token"));
        assert_eq!(server.registration_endpoint, Some(mcp.url("/register")));
        assert_eq!(server.code_challenge_methods_supported, vec!["S256"]);
        assert_eq!(server.metadata_url, None);
    }

    #[tokio::test]
    async fn a_server_that_is_not_protected_is_still_discovered() {
        let mcp =
            TestServer::start(|_| vec![("/mcp".to_owned(), json_doc(json!({"result": {}})))]).await;

        let found = run(&mcp.url("/mcp"), &DiscoveryOverrides::default())
            .await
            .expect("discovered");

        assert_eq!(found.challenge_scope, None);
        assert_eq!(found.as_document, AsDocument::Default2025_03_26);
    }

    /// Metadata served at the MCP server's origin but naming another issuer, as some
    /// hosted servers do.
    async fn origin_with_foreign_issuer() -> TestServer {
        TestServer::start(|_| {
            vec![(
                OAUTH_WELL_KNOWN.to_owned(),
                json_doc(as_metadata("https://cf.auth.example")),
            )]
        })
        .await
    }

    #[tokio::test]
    async fn issuer_mismatch_is_refused() {
        let mcp = origin_with_foreign_issuer().await;

        let error = run(&mcp.url("/v1/sse"), &DiscoveryOverrides::default())
            .await
            .expect_err("mismatch refused");

        match &error {
            DiscoveryError::IssuerMismatch { expected, found } => {
                assert_eq!(expected, &mcp.base);
                assert_eq!(found, "https://cf.auth.example");
            }
            other => panic!("unexpected error: {other}"),
        }
        assert!(error.to_string().contains("auth.allow_issuer_mismatch"));
    }

    #[tokio::test]
    async fn origin_metadata_may_name_an_issuer_under_a_path_of_the_same_origin() {
        let mcp = TestServer::start(|base| {
            let metadata = as_metadata(&format!("{base}/oauth"));
            vec![(OAUTH_WELL_KNOWN.to_owned(), json_doc(metadata))]
        })
        .await;

        let found = run(&mcp.url("/mcp"), &DiscoveryOverrides::default())
            .await
            .expect("discovered");

        assert_eq!(found.auth_server.issuer, format!("{}/oauth", mcp.base));
        assert_eq!(
            found.auth_server.token_endpoint.as_str(),
            format!("{}/oauth/token", mcp.base)
        );
    }

    #[tokio::test]
    async fn issuer_mismatch_is_allowed_when_configured() {
        let mcp = origin_with_foreign_issuer().await;
        let overrides = DiscoveryOverrides {
            allow_issuer_mismatch: true,
            ..Default::default()
        };

        let found = run(&mcp.url("/v1/sse"), &overrides)
            .await
            .expect("discovered");

        assert_eq!(found.auth_server.issuer, "https://cf.auth.example");
        assert_eq!(
            found.auth_server.token_endpoint.as_str(),
            "https://cf.auth.example/token"
        );
    }

    #[tokio::test]
    async fn issuer_differing_only_by_trailing_slash_matches() {
        let auth = TestServer::start(|base| {
            vec![(
                OAUTH_WELL_KNOWN.to_owned(),
                json_doc(as_metadata(&format!("{base}/"))),
            )]
        })
        .await;
        let mcp = mcp_pointing_at(auth.base.clone()).await;

        let found = run(&mcp.url("/"), &DiscoveryOverrides::default())
            .await
            .expect("discovered");

        assert_eq!(found.auth_server.issuer, format!("{}/", auth.base));
    }

    async fn origin_with_pkce_methods(methods: Option<Value>) -> TestServer {
        TestServer::start(move |base| {
            let mut metadata = as_metadata(base);
            match methods {
                Some(methods) => metadata["code_challenge_methods_supported"] = methods,
                None => {
                    metadata
                        .as_object_mut()
                        .expect("object")
                        .remove("code_challenge_methods_supported");
                }
            }
            vec![(OAUTH_WELL_KNOWN.to_owned(), json_doc(metadata))]
        })
        .await
    }

    #[tokio::test]
    async fn authorization_server_without_s256_is_refused() {
        for methods in [Some(json!(["plain"])), None] {
            let mcp = origin_with_pkce_methods(methods).await;

            let error = run(&mcp.url("/mcp"), &DiscoveryOverrides::default())
                .await
                .expect_err("no S256 refused");

            assert!(matches!(&error, DiscoveryError::NoS256 { issuer } if *issuer == mcp.base));
            assert!(error.to_string().contains("auth.allow_plain_pkce = true"));
        }
    }

    #[tokio::test]
    async fn authorization_server_without_s256_is_allowed_when_configured() {
        let mcp = origin_with_pkce_methods(Some(json!(["plain"]))).await;
        let overrides = DiscoveryOverrides {
            allow_plain_pkce: true,
            ..Default::default()
        };

        let found = run(&mcp.url("/mcp"), &overrides).await.expect("discovered");

        assert_eq!(
            found.auth_server.code_challenge_methods_supported,
            vec!["plain"]
        );
    }

    async fn mcp_with_prm_resource(
        resource: impl Fn(&str) -> String + Send + 'static,
    ) -> TestServer {
        let auth = auth_server_at("", OAUTH_WELL_KNOWN).await;
        TestServer::start(move |base| {
            let document = prm(&resource(base), &auth.base);
            vec![(format!("{RESOURCE_WELL_KNOWN}/v1/mcp"), json_doc(document))]
        })
        .await
    }

    #[tokio::test]
    async fn prm_for_another_resource_is_refused() {
        let others: [fn(&str) -> String; 3] = [
            |_| "https://elsewhere.example/v1/mcp".to_owned(),
            |base| format!("{base}/v2"),
            |base| format!("{base}/v1/mc"),
        ];
        for other in others {
            let mcp = mcp_with_prm_resource(other).await;

            let error = run(&mcp.url("/v1/mcp"), &DiscoveryOverrides::default())
                .await
                .expect_err("mismatched resource refused");

            match &error {
                DiscoveryError::ResourceMismatch { expected, .. } => {
                    assert_eq!(expected, &format!("{}/v1/mcp", mcp.base));
                }
                other => panic!("unexpected error: {other}"),
            }
            assert!(error.to_string().contains("RFC 9728"));
        }
    }

    #[tokio::test]
    async fn prm_for_a_parent_path_is_accepted() {
        let mcp = mcp_with_prm_resource(|base| format!("{base}/v1/")).await;

        let found = run(&mcp.url("/v1/mcp"), &DiscoveryOverrides::default())
            .await
            .expect("discovered");

        assert_eq!(found.resource, format!("{}/v1/", mcp.base));
    }

    #[tokio::test]
    async fn prm_that_is_not_json_is_an_error() {
        let mcp = TestServer::start(|_| {
            vec![(
                RESOURCE_WELL_KNOWN.to_owned(),
                Canned {
                    body: "{oops".to_owned(),
                    ..status(200)
                },
            )]
        })
        .await;

        let error = run(&mcp.url("/"), &DiscoveryOverrides::default())
            .await
            .expect_err("bad PRM");

        assert!(matches!(
            error,
            DiscoveryError::InvalidResourceMetadata { .. }
        ));
        assert!(error.to_string().contains(RESOURCE_WELL_KNOWN));
    }

    #[tokio::test]
    async fn oversized_prm_is_an_error() {
        let mcp = TestServer::start(|_| {
            let body = format!("{{\"padding\":\"{}\"}}", "x".repeat(MAX_DOCUMENT_BYTES));
            vec![(
                RESOURCE_WELL_KNOWN.to_owned(),
                Canned {
                    body,
                    ..status(200)
                },
            )]
        })
        .await;

        let error = run(&mcp.url("/"), &DiscoveryOverrides::default())
            .await
            .expect_err("too large");

        assert!(matches!(
            error,
            DiscoveryError::ResourceMetadataTooLarge { .. }
        ));
    }

    #[tokio::test]
    async fn missing_authorization_server_metadata_is_an_error_naming_the_urls() {
        let auth = TestServer::start(|_| Vec::new()).await;
        let mcp = mcp_pointing_at(auth.base.clone()).await;

        let error = run(&mcp.url("/"), &DiscoveryOverrides::default())
            .await
            .expect_err("no metadata");

        let message = error.to_string();
        assert!(matches!(error, DiscoveryError::NoAuthServerMetadata { .. }));
        assert!(message.contains(&format!("{}{OAUTH_WELL_KNOWN}: HTTP 404", auth.base)));
        assert!(message.contains(&format!("{}{OPENID_WELL_KNOWN}: HTTP 404", auth.base)));
        assert!(message.contains("auth.token_endpoint"));
    }

    #[tokio::test]
    async fn configured_endpoints_make_missing_metadata_non_fatal() {
        let auth = TestServer::start(|_| Vec::new()).await;
        let mcp = mcp_pointing_at(auth.base.clone()).await;
        let overrides = DiscoveryOverrides {
            authorization_endpoint: Some(auth.url("/oauth/authorize")),
            token_endpoint: Some(auth.url("/oauth/token")),
            ..Default::default()
        };

        let found = run(&mcp.url("/"), &overrides).await.expect("discovered");

        assert_eq!(found.as_document, AsDocument::Configured);
        assert_eq!(found.auth_server.issuer, auth.base);
        assert_eq!(
            found.auth_server.authorization_endpoint,
            auth.url("/oauth/authorize")
        );
        assert_eq!(found.auth_server.registration_endpoint, None);
    }

    #[tokio::test]
    async fn overrides_replace_discovered_endpoints_scopes_and_resource() {
        let auth = auth_server_at("", OAUTH_WELL_KNOWN).await;
        let mcp = mcp_pointing_at(auth.base.clone()).await;
        let configured =
            |path: &str| Url::parse(&format!("https://configured.example{path}")).expect("url");
        let overrides = DiscoveryOverrides {
            authorization_endpoint: Some(configured("/a")),
            token_endpoint: Some(configured("/t")),
            registration_endpoint: Some(configured("/r")),
            scopes: Some(vec!["custom".to_owned()]),
            resource: Some("https://configured.example/resource".to_owned()),
            ..Default::default()
        };

        let found = run(&mcp.url("/"), &overrides).await.expect("discovered");

        assert_eq!(found.auth_server.authorization_endpoint, configured("/a"));
        assert_eq!(found.auth_server.token_endpoint, configured("/t"));
        assert_eq!(
            found.auth_server.registration_endpoint,
            Some(configured("/r"))
        );
        assert_eq!(found.resource, "https://configured.example/resource");
        assert_eq!(
            found.scopes_to_request(&overrides),
            vec!["custom", "offline_access"]
        );
        assert_eq!(
            found.as_document,
            AsDocument::Oauth(auth.url(OAUTH_WELL_KNOWN))
        );
    }

    #[tokio::test]
    async fn unreachable_mcp_server_is_an_error_naming_the_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = Url::parse(&format!(
            "http://{}/mcp",
            listener.local_addr().expect("addr")
        ))
        .expect("url");
        drop(listener);

        let error = run(&url, &DiscoveryOverrides::default())
            .await
            .expect_err("unreachable");

        assert!(matches!(error, DiscoveryError::Unreachable { .. }));
        assert!(error.to_string().contains(url.as_str()));
    }

    #[test]
    fn resource_is_the_mcp_url_without_fragment_or_added_root_slash() {
        let cases = [
            ("https://mcp.example.com", "https://mcp.example.com"),
            (
                "https://mcp.example.com/v1/mcp",
                "https://mcp.example.com/v1/mcp",
            ),
            (
                "https://mcp.example.com/v1/mcp/",
                "https://mcp.example.com/v1/mcp/",
            ),
            (
                "https://mcp.example.com:8443/mcp#frag",
                "https://mcp.example.com:8443/mcp",
            ),
        ];
        for (configured, expected) in cases {
            let url = Url::parse(configured).expect("url");
            assert_eq!(canonical_resource(&url), expected, "{configured}");
        }
    }

    fn discovered(
        challenge_scope: Option<&str>,
        resource_scopes: &[&str],
        as_scopes: &[&str],
    ) -> Discovered {
        let url = Url::parse("https://auth.example").expect("url");
        let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        Discovered {
            resource: "https://mcp.example".to_owned(),
            resource_metadata_url: None,
            challenge_scope: challenge_scope.map(str::to_owned),
            resource_scopes_supported: strings(resource_scopes),
            auth_server: AuthServer {
                issuer: "https://auth.example".to_owned(),
                authorization_endpoint: url.clone(),
                token_endpoint: url,
                registration_endpoint: None,
                scopes_supported: strings(as_scopes),
                code_challenge_methods_supported: strings(&["S256"]),
                token_endpoint_auth_methods_supported: Vec::new(),
                client_id_metadata_document_supported: false,
                issuer_in_responses: false,
                metadata_url: None,
            },
            path: DiscoveryPath::Root,
            as_document: AsDocument::Default2025_03_26,
        }
    }

    #[test]
    fn scopes_come_from_the_first_source_that_has_any() {
        let none = DiscoveryOverrides::default();
        let configured = DiscoveryOverrides {
            scopes: Some(vec!["o".to_owned()]),
            ..Default::default()
        };
        let all = discovered(Some("c1  c2"), &["r"], &["a"]);

        assert_eq!(all.scopes_to_request(&configured), vec!["o"]);
        assert_eq!(all.scopes_to_request(&none), vec!["c1", "c2"]);
        assert_eq!(
            discovered(None, &["r"], &["a"]).scopes_to_request(&none),
            vec!["r"]
        );
        assert_eq!(
            discovered(None, &[], &["a", "a"]).scopes_to_request(&none),
            vec!["a"]
        );
        assert!(
            discovered(None, &[], &[])
                .scopes_to_request(&none)
                .is_empty()
        );
    }

    #[test]
    fn offline_access_is_added_once_when_the_authorization_server_offers_it() {
        let none = DiscoveryOverrides::default();
        let configured = DiscoveryOverrides {
            scopes: Some(vec!["o".to_owned()]),
            ..Default::default()
        };

        let offered = discovered(Some("c"), &[], &["a", "offline_access"]);
        assert_eq!(
            offered.scopes_to_request(&none),
            vec!["c", "offline_access"]
        );
        assert_eq!(
            offered.scopes_to_request(&configured),
            vec!["o", "offline_access"]
        );
        let from_as = discovered(None, &[], &["offline_access", "a"]);
        assert_eq!(
            from_as.scopes_to_request(&none),
            vec!["offline_access", "a"]
        );
        assert_eq!(
            discovered(Some("c"), &[], &["a"]).scopes_to_request(&none),
            vec!["c"]
        );
    }

    fn challenge_of(
        error: Option<&str>,
        scope: Option<&str>,
        metadata: Option<&str>,
    ) -> Option<BearerChallenge> {
        Some(BearerChallenge {
            error: error.map(str::to_owned),
            scope: scope.map(str::to_owned),
            resource_metadata: metadata.map(str::to_owned),
        })
    }

    #[test]
    fn bearer_challenge_parameters_are_read_quoted_or_bare() {
        assert_eq!(
            parse_bearer_challenge(
                r#"Bearer error="insufficient_scope", scope="a b", resource_metadata="https://x/m""#
            ),
            challenge_of(Some("insufficient_scope"), Some("a b"), Some("https://x/m"))
        );
        assert_eq!(
            parse_bearer_challenge("bearer Error=invalid_token,SCOPE = files:read"),
            challenge_of(Some("invalid_token"), Some("files:read"), None)
        );
        assert_eq!(
            parse_bearer_challenge("Bearer resource_metadata=https://x/prm?a=b"),
            challenge_of(None, None, Some("https://x/prm?a=b"))
        );
    }

    #[test]
    fn bearer_challenge_is_found_among_several() {
        assert_eq!(
            parse_bearer_challenge(r#"Basic realm="a, b", scope="basic", Bearer scope="mine""#),
            challenge_of(None, Some("mine"), None)
        );
        assert_eq!(
            parse_bearer_challenge(
                r#"Bearer scope="first", Basic realm="x", scope="basic", Bearer scope="second""#
            ),
            challenge_of(None, Some("first"), None)
        );
        assert_eq!(
            parse_bearer_challenge(r#"Negotiate abc+/==, Bearer error="invalid_token""#),
            challenge_of(Some("invalid_token"), None, None)
        );
    }

    #[test]
    fn bearer_challenge_quoted_values_keep_escapes_and_commas() {
        assert_eq!(
            parse_bearer_challenge(r#"Bearer realm="a \"b\", c", scope="x\\y""#),
            challenge_of(None, Some(r"x\y"), None)
        );
        assert_eq!(
            parse_bearer_challenge(r#"Bearer scope="unterminated"#),
            challenge_of(None, Some("unterminated"), None)
        );
    }

    #[test]
    fn bearer_challenge_is_absent_unless_the_scheme_is_bearer() {
        assert_eq!(parse_bearer_challenge(""), None);
        assert_eq!(parse_bearer_challenge(r#"Basic realm="x""#), None);
        assert_eq!(parse_bearer_challenge("Bearerx scope=a"), None);
        assert_eq!(
            parse_bearer_challenge("Bearer"),
            Some(BearerChallenge::default())
        );
        assert_eq!(
            parse_bearer_challenge("Bearer abc=="),
            Some(BearerChallenge::default())
        );
        assert_eq!(
            parse_bearer_challenge("@@ Bearer scope=s"),
            challenge_of(None, Some("s"), None)
        );
    }
}
