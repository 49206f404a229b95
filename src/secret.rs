//! Secret strings: refresh tokens, client secrets, authorization codes, PKCE verifiers.
//!
//! A [`Secret`] serialises as the plain string (the token store must keep the value) but its
//! `Debug` and `Display` print `[redacted]`, so a secret that ends up in a log line, an error
//! or a panic message shows nothing.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A string that must never be shown.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that must send it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_print_redacted_but_serialise_their_value() {
        let secret = Secret::new("rt-123456");
        assert_eq!(format!("{secret:?} {secret}"), "[redacted] [redacted]");
        assert_eq!(
            serde_json::to_string(&secret).expect("json"),
            "\"rt-123456\""
        );
    }
}
