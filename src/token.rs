//! Where a route's upstream bearer token comes from.
//!
//! The proxy asks a route's [`TokenSource`] for a token on every request and never looks
//! inside it. A static token (from an environment variable or a file) serves upstreams that
//! hand out long-lived keys; `none` forwards without credentials; OAuth routes
//! ([`crate::oauth::OAuthRoute`]) hand out the signed-in person's token, refreshed ahead of
//! expiry, or say that the route needs sign-in.

use std::fmt;
use std::path::Path;

use async_trait::async_trait;

/// A bearer token. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub(crate) struct AccessToken(String);

impl AccessToken {
    pub(crate) fn new(value: String) -> Self {
        Self(value)
    }

    /// The token itself, for the `Authorization` header and nothing else.
    pub(crate) fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken([redacted])")
    }
}

impl fmt::Display for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Why a route has no token to offer.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("route '{route}' needs sign-in ({reason}): sign in at {sign_in_url}")]
    NeedsSignIn {
        route: String,
        reason: String,
        sign_in_url: String,
    },
    #[error("route '{route}': the upstream token could not be refreshed; try again shortly")]
    RefreshFailed { route: String },
    #[error(
        "route '{route}': the upstream requires the scope '{scope}', which the sign-in did not \
         grant: sign in again at {sign_in_url} to grant it"
    )]
    InsufficientScope {
        route: String,
        scope: String,
        sign_in_url: String,
    },
    #[error("cannot read the token file {path}")]
    ReadFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the token file {path} is empty")]
    EmptyFile { path: String },
    #[error("environment variable {name} is not set or empty")]
    MissingEnv { name: String },
}

/// A route's supply of upstream credentials.
#[async_trait]
pub(crate) trait TokenSource: Send + Sync + fmt::Debug {
    /// A short name for the kind of source: `oauth`, `bearer` or `none`.
    fn kind(&self) -> &'static str;

    /// The token to send upstream now; `None` when the route sends no credentials.
    async fn bearer(&self) -> Result<Option<AccessToken>, TokenError>;

    /// The upstream refused `token`: refresh it if it is still the current one. Sources that
    /// cannot renew a token do nothing.
    async fn refused(&self, _token: &AccessToken) {}

    /// The upstream wants `scope` beyond what the token carries (`insufficient_scope`): the
    /// answer for the client, and the next sign-in asks for it too. `None` when the source
    /// cannot help.
    fn scope_required(&self, _scope: &str) -> Option<TokenError> {
        None
    }

    /// The upstream refused even a renewed token: stop offering tokens until a person signs
    /// in again, and say so.
    fn give_up(&self, _reason: &str) -> Result<(), TokenError> {
        Ok(())
    }
}

/// A token fixed at start-up.
#[derive(Debug)]
pub(crate) struct StaticToken(AccessToken);

impl StaticToken {
    pub(crate) fn from_env(name: &str) -> Result<Self, TokenError> {
        match std::env::var(name) {
            Ok(value) if !value.trim().is_empty() => {
                Ok(Self(AccessToken::new(value.trim().to_owned())))
            }
            _ => Err(TokenError::MissingEnv {
                name: name.to_owned(),
            }),
        }
    }

    pub(crate) fn from_file(path: &Path) -> Result<Self, TokenError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::ReadFile {
            path: display.clone(),
            source,
        })?;
        let value = text.trim();
        if value.is_empty() {
            return Err(TokenError::EmptyFile { path: display });
        }
        Ok(Self(AccessToken::new(value.to_owned())))
    }
}

#[async_trait]
impl TokenSource for StaticToken {
    fn kind(&self) -> &'static str {
        "bearer"
    }

    async fn bearer(&self) -> Result<Option<AccessToken>, TokenError> {
        Ok(Some(self.0.clone()))
    }
}

/// No credentials: the upstream is open, or authenticates some other way.
#[derive(Debug)]
pub(crate) struct NoToken;

#[async_trait]
impl TokenSource for NoToken {
    fn kind(&self) -> &'static str {
        "none"
    }

    async fn bearer(&self) -> Result<Option<AccessToken>, TokenError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_token_never_prints_its_value() {
        let token = AccessToken::new("s3cr3t-value".into());
        assert!(!format!("{token:?}").contains("s3cr3t"));
        assert!(!format!("{token}").contains("s3cr3t"));
        assert!(!format!("{:?}", StaticToken(token)).contains("s3cr3t"));
    }

    #[test]
    fn token_file_is_trimmed_and_must_not_be_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "abc\n").expect("write");
        let token = StaticToken::from_file(&path).expect("token");
        assert_eq!(token.0.secret(), "abc");
        std::fs::write(&path, "\n").expect("write");
        assert!(matches!(
            StaticToken::from_file(&path),
            Err(TokenError::EmptyFile { .. })
        ));
    }
}
