//! The database password on Databricks Lakebase: a short-lived OAuth access token of the
//! app's service principal, from its workspace's token endpoint.
//!
//! A Lakebase database resource gives an app `PGHOST`, `PGUSER` and the rest, but no
//! `PGPASSWORD`: the database accepts an access token of the service principal named by
//! `PGUSER` as its password, checked only at login. The PostgreSQL store asks
//! [`WorkspaceTokens::password`] for one before every connection it opens (the shared
//! connection after a loss, each slot lock's own); an open connection outlives its token.
//!
//! The token comes from the client-credentials grant (`scope=all-apis`, the client id and
//! secret in HTTP Basic auth) at `/oidc/v1/token` of the workspace. It is kept until it is
//! within [`RENEW_MARGIN`] of expiry, so every login gets a token good for minutes more;
//! callers asking at once wait for one request. A refused request is an error that says
//! why (status and OAuth `error`), and the next connection attempt asks again. A kept token
//! the database refuses is forgotten ([`WorkspaceTokens::forget`]), so the store can try
//! once more with a new one.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use crate::secret::Secret;

/// A token is renewed once it has less than this left, so a login never races its expiry.
pub(crate) const RENEW_MARGIN: Duration = Duration::from_secs(5 * 60);
/// How long one token request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The token endpoint's path under the workspace URL.
const TOKEN_PATH: &str = "/oidc/v1/token";
/// The longest OAuth `error_description` repeated in a message.
const MAX_DESCRIPTION: usize = 300;

/// The service principal's credentials and where its tokens come from; the secret never
/// shows in `Debug`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WorkspaceCredentials {
    /// The workspace's token endpoint, `https://HOST/oidc/v1/token`.
    pub(crate) endpoint: url::Url,
    pub(crate) client_id: String,
    pub(crate) client_secret: Secret,
}

/// Why a workspace URL was refused; the text goes after the variable's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WorkspaceHostError {
    #[error("is not a host name or an https:// URL")]
    Unparsable,
    #[error("uses http://, which is only allowed for a loopback host; use https://")]
    PlainHttp,
    #[error("has scheme `{scheme}`; give the host name, or an https:// URL")]
    Scheme { scheme: String },
    #[error("has a path, query or user name; give only the workspace's host name")]
    NotJustAHost,
}

impl WorkspaceCredentials {
    /// The token endpoint of the workspace `host`, as `DATABRICKS_HOST` gives it: a host
    /// name, with or without `https://`. Plain `http://` is accepted for loopback hosts
    /// only, which is where tests serve a mock endpoint.
    pub(crate) fn token_endpoint(host: &str) -> Result<url::Url, WorkspaceHostError> {
        let host = host.trim();
        let text = match host.contains("://") {
            true => host.to_owned(),
            false => format!("https://{host}"),
        };
        let url = url::Url::parse(&text).map_err(|_| WorkspaceHostError::Unparsable)?;
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(&url) => {}
            "http" => return Err(WorkspaceHostError::PlainHttp),
            scheme => {
                return Err(WorkspaceHostError::Scheme {
                    scheme: scheme.to_owned(),
                });
            }
        }
        let just_a_host = matches!(url.path(), "" | "/")
            && url.query().is_none()
            && url.fragment().is_none()
            && url.username().is_empty()
            && url.password().is_none();
        if !just_a_host || url.host().is_none() {
            return Err(WorkspaceHostError::NotJustAHost);
        }
        url.join(TOKEN_PATH)
            .map_err(|_| WorkspaceHostError::Unparsable)
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Why no workspace token could be had. Neither the client secret nor a token is ever part
/// of it.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceTokenError {
    #[error("cannot set up the HTTP client for the workspace token endpoint")]
    Client(#[source] reqwest::Error),
    #[error("the workspace token endpoint {endpoint} could not be reached")]
    Unreachable {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "the workspace token endpoint {endpoint} issued no token: HTTP {status}{}; check \
         DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET (the app's service principal)",
        oauth_reason(.error.as_deref(), .description.as_deref())
    )]
    Refused {
        endpoint: String,
        status: u16,
        error: Option<String>,
        description: Option<String>,
    },
    #[error("the workspace token endpoint {endpoint} answered without a usable access token")]
    Unanswered {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    /// The reason quotes nothing of the answer, which may hold a token.
    #[error(
        "the workspace token endpoint {endpoint} answered without a usable access token \
         ({reason})"
    )]
    Malformed { endpoint: String, reason: String },
}

/// `, error `invalid_client` (description)`, for as much as the endpoint said.
fn oauth_reason(error: Option<&str>, description: Option<&str>) -> String {
    let mut reason = String::new();
    if let Some(error) = error {
        reason.push_str(&format!(", error `{error}`"));
    }
    if let Some(description) = description {
        let short: String = description.chars().take(MAX_DESCRIPTION).collect();
        reason.push_str(&format!(" ({short})"));
    }
    reason
}

/// A token and when it stops being accepted.
struct CachedToken {
    token: Secret,
    expires_at: Instant,
}

impl CachedToken {
    /// Whether a login at `now` should use this token rather than fetch a new one.
    fn good_at(&self, now: Instant) -> bool {
        self.expires_at
            .checked_duration_since(now)
            .is_some_and(|left| left > RENEW_MARGIN)
    }
}

impl fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedToken")
            .field("token", &self.token)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A token for one login, and whether it was a kept one rather than just issued.
#[derive(Debug)]
pub(crate) struct WorkspacePassword {
    pub(crate) token: Secret,
    pub(crate) kept: bool,
}

/// The token endpoint's answer, as far as it is used.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: Secret,
    /// Seconds; without it the token is used once and not kept.
    #[serde(default)]
    expires_in: Option<u64>,
}

/// An OAuth error answer (RFC 6749 §5.2).
#[derive(Deserialize)]
struct OAuthError {
    error: Option<String>,
    error_description: Option<String>,
}

/// Workspace tokens for database logins: the last one kept, a new one asked for when it
/// nears expiry, one request at a time.
pub(crate) struct WorkspaceTokens {
    credentials: WorkspaceCredentials,
    http: reqwest::Client,
    /// Held across a request, so callers arriving meanwhile wait for its token.
    cached: tokio::sync::Mutex<Option<CachedToken>>,
}

impl fmt::Debug for WorkspaceTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkspaceTokens")
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl WorkspaceTokens {
    pub(crate) fn new(credentials: WorkspaceCredentials) -> Result<Self, WorkspaceTokenError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT / 2)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("mcp-u2m-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(WorkspaceTokenError::Client)?;
        Ok(Self {
            credentials,
            http,
            cached: tokio::sync::Mutex::new(None),
        })
    }

    /// A token to log in with now, good for more than [`RENEW_MARGIN`] when the endpoint
    /// issues tokens that long-lived: the kept one, or a new one.
    pub(crate) async fn password(&self) -> Result<WorkspacePassword, WorkspaceTokenError> {
        let mut cached = self.cached.lock().await;
        if let Some(kept) = cached.as_ref().filter(|kept| kept.good_at(Instant::now())) {
            return Ok(WorkspacePassword {
                token: kept.token.clone(),
                kept: true,
            });
        }
        let fresh = self.fetch().await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(WorkspacePassword { token, kept: false })
    }

    /// Stops keeping `token`, which the database refused, so the next login asks for a new
    /// one; a newer token kept meanwhile stays.
    pub(crate) async fn forget(&self, token: &Secret) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|kept| kept.token == *token) {
            *cached = None;
        }
    }

    /// One client-credentials request.
    async fn fetch(&self) -> Result<CachedToken, WorkspaceTokenError> {
        let endpoint = &self.credentials.endpoint;
        let asked = Instant::now();
        let response = self
            .http
            .post(endpoint.clone())
            .basic_auth(
                &self.credentials.client_id,
                Some(self.credentials.client_secret.expose()),
            )
            .form(&[("grant_type", "client_credentials"), ("scope", "all-apis")])
            .send()
            .await
            .map_err(|source| WorkspaceTokenError::Unreachable {
                endpoint: endpoint.to_string(),
                source: source.without_url(),
            })?;
        let status = response.status();
        if !status.is_success() {
            // The body is read only for the OAuth error fields; none of it is a secret.
            let body = response.bytes().await.unwrap_or_default();
            let oauth: Option<OAuthError> = serde_json::from_slice(&body).ok();
            let (error, description) = oauth
                .map(|oauth| (oauth.error, oauth.error_description))
                .unwrap_or_default();
            return Err(WorkspaceTokenError::Refused {
                endpoint: endpoint.to_string(),
                status: status.as_u16(),
                error,
                description,
            });
        }
        let body = response
            .bytes()
            .await
            .map_err(|source| WorkspaceTokenError::Unanswered {
                endpoint: endpoint.to_string(),
                source: source.without_url(),
            })?;
        let answer: TokenResponse =
            serde_json::from_slice(&body).map_err(|error| WorkspaceTokenError::Malformed {
                endpoint: endpoint.to_string(),
                reason: super::describe(&error),
            })?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(0));
        tracing::debug!(endpoint = %endpoint, expires_in_secs = lifetime.as_secs(),
            "workspace token for the token store database obtained");
        Ok(CachedToken {
            token: answer.access_token,
            expires_at: asked + lifetime,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use axum::{Form, Json, Router};

    use super::*;

    #[test]
    fn a_token_is_kept_until_five_minutes_before_it_expires() {
        let now = Instant::now();
        let token = |left: Duration| CachedToken {
            token: Secret::new("tok"),
            expires_at: now + left,
        };
        assert!(token(Duration::from_secs(3600)).good_at(now));
        assert!(token(RENEW_MARGIN + Duration::from_secs(1)).good_at(now));
        assert!(!token(RENEW_MARGIN).good_at(now));
        assert!(!token(Duration::from_secs(60)).good_at(now));
        assert!(!token(Duration::ZERO).good_at(now + Duration::from_secs(1)));
    }

    #[test]
    fn credentials_and_tokens_debug_print_no_secret() {
        let credentials = WorkspaceCredentials {
            endpoint: WorkspaceCredentials::token_endpoint("adb-1.azuredatabricks.net")
                .expect("a host"),
            client_id: "sp-id".into(),
            client_secret: Secret::new("dose-SECRET"),
        };
        let cached = CachedToken {
            token: Secret::new("eyJ-SECRET"),
            expires_at: Instant::now(),
        };
        let tokens = WorkspaceTokens::new(credentials.clone()).expect("client");
        let shown = format!("{credentials:?} {cached:?} {tokens:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(
            shown.contains("[redacted]") && shown.contains("sp-id"),
            "{shown}"
        );
    }

    #[test]
    fn the_workspace_host_may_come_with_or_without_https() {
        let endpoint = |host| WorkspaceCredentials::token_endpoint(host).map(|u| u.to_string());
        let expected = "https://adb-1.azuredatabricks.net/oidc/v1/token";
        for host in [
            "adb-1.azuredatabricks.net",
            "https://adb-1.azuredatabricks.net",
            "https://adb-1.azuredatabricks.net/",
            " adb-1.azuredatabricks.net\n",
        ] {
            assert_eq!(endpoint(host).as_deref(), Ok(expected), "{host}");
        }
        assert_eq!(
            endpoint("http://127.0.0.1:8080").as_deref(),
            Ok("http://127.0.0.1:8080/oidc/v1/token")
        );
        assert_eq!(
            endpoint("http://adb-1.azuredatabricks.net"),
            Err(WorkspaceHostError::PlainHttp)
        );
        assert_eq!(
            endpoint("https://adb-1.azuredatabricks.net/some/path"),
            Err(WorkspaceHostError::NotJustAHost)
        );
        assert!(matches!(
            endpoint("ftp://adb-1"),
            Err(WorkspaceHostError::Scheme { .. })
        ));
        assert_eq!(endpoint("https://"), Err(WorkspaceHostError::Unparsable));
    }

    /// A token endpoint on 127.0.0.1 that issues `tok-N` for `expires_in` seconds, after a
    /// short delay, and counts requests.
    async fn endpoint(expires_in: u64) -> (SocketAddr, Arc<AtomicUsize>) {
        let count = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .route(
                "/oidc/v1/token",
                post(
                    move |State(count): State<Arc<AtomicUsize>>,
                          headers: HeaderMap,
                          Form(form): Form<Vec<(String, String)>>| async move {
                        let basic = headers
                            .get("authorization")
                            .and_then(|value| value.to_str().ok())
                            .unwrap_or_default();
                        let grant = form
                            .iter()
                            .any(|(k, v)| k == "grant_type" && v == "client_credentials");
                        if !basic.starts_with("Basic ") || !grant {
                            let error = serde_json::json!({ "error": "invalid_request" });
                            return (StatusCode::BAD_REQUEST, Json(error));
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                        let body = serde_json::json!({
                            "access_token": format!("tok-{n}"),
                            "token_type": "Bearer",
                            "expires_in": expires_in,
                        });
                        (StatusCode::OK, Json(body))
                    },
                ),
            )
            .with_state(Arc::clone(&count));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (addr, count)
    }

    fn tokens(addr: SocketAddr) -> WorkspaceTokens {
        let endpoint = WorkspaceCredentials::token_endpoint(&format!("http://{addr}"))
            .expect("loopback endpoint");
        WorkspaceTokens::new(WorkspaceCredentials {
            endpoint,
            client_id: "sp".into(),
            client_secret: Secret::new("secret"),
        })
        .expect("client")
    }

    #[tokio::test]
    async fn concurrent_logins_share_one_token_request() {
        let (addr, count) = endpoint(3600).await;
        let tokens = tokens(addr);
        let asked = (0..20).map(|_| tokens.password());
        let passwords = futures::future::join_all(asked).await;
        let fresh = passwords
            .into_iter()
            .map(|password| password.expect("a token"))
            .inspect(|password| assert_eq!(password.token.expose(), "tok-1"))
            .filter(|password| !password.kept)
            .count();
        assert_eq!(fresh, 1, "one caller asked, the others got the kept token");
        let kept = tokens.password().await.expect("kept");
        assert!(kept.kept && kept.token.expose() == "tok-1");
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_forgotten_token_is_replaced_but_a_newer_one_is_not() {
        let (addr, count) = endpoint(3600).await;
        let tokens = tokens(addr);
        let first = tokens.password().await.expect("first").token;
        tokens.forget(&first).await;
        let second = tokens.password().await.expect("second").token;
        assert_eq!(second.expose(), "tok-2");
        tokens.forget(&first).await;
        let kept = tokens.password().await.expect("kept");
        assert!(kept.kept && kept.token.expose() == "tok-2");
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_token_near_expiry_is_replaced_at_the_next_login() {
        // Four minutes: already inside the renewal margin when issued.
        let (addr, count) = endpoint(240).await;
        let tokens = tokens(addr);
        let first = tokens.password().await.expect("first");
        let second = tokens.password().await.expect("second");
        assert_eq!(first.token.expose(), "tok-1");
        assert_eq!(second.token.expose(), "tok-2");
        assert!(!second.kept);
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }
}
