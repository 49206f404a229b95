//! `rate_limit`: requests per client per route, as a token bucket.
//!
//! ```toml
//! [[routes.plugins]]
//! kind = "rate_limit"
//! requests_per_minute = 120
//! burst = 20          # requests at once after a quiet spell; default: a minute's worth
//! ```
//!
//! A client is who the gateway takes the caller to be (its API key, a trusted forwarded
//! identity, or its address). Past the limit the request gets 429 with `Retry-After`; a
//! JSON-RPC request gets it as a JSON-RPC error with its own id, so that an MCP client can
//! tell which call it was.

use std::time::Instant;

use serde::Deserialize;

use super::{Call, Configured, EnvLookup, Plugin, PluginError, Refusal};
use crate::control::rate::RateLimiter;
use crate::proxy::inbound::Client;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    requests_per_minute: u32,
    burst: Option<u32>,
}

#[derive(Debug)]
pub(crate) struct Checked {
    per_minute: u32,
    burst: u32,
}

#[derive(Debug)]
pub(crate) struct RateLimit {
    limiter: RateLimiter<Client>,
    per_minute: u32,
}

impl Configured for RateLimit {
    const KIND: &'static str = "rate_limit";
    type Settings = Settings;
    type Checked = Checked;

    fn check(settings: Settings, _env: EnvLookup<'_>) -> Result<Checked, String> {
        if settings.requests_per_minute == 0 {
            return Err("requests_per_minute: must be at least 1".into());
        }
        if settings.burst == Some(0) {
            return Err("burst: must be at least 1".into());
        }
        Ok(Checked {
            per_minute: settings.requests_per_minute,
            burst: settings.burst.unwrap_or(settings.requests_per_minute),
        })
    }

    fn build(settings: &Checked, _route: &str) -> Result<Self, PluginError> {
        Ok(RateLimit {
            limiter: RateLimiter::with_burst(settings.per_minute, settings.burst),
            per_minute: settings.per_minute,
        })
    }
}

impl Plugin for RateLimit {
    fn request_filter(&self, call: &Call<'_>) -> Option<Refusal> {
        let wait = self
            .limiter
            .check(call.client.clone(), Instant::now())
            .err()?;
        Some(Refusal {
            status: 429,
            code: "rate_limited",
            message: format!(
                "this client made more than {} requests a minute to route '{}'; try again in \
                 {} s",
                self.per_minute,
                call.route,
                wait.as_secs().max(1)
            ),
            retry_after: Some(wait),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_rates_are_refused_and_burst_defaults_to_a_minutes_worth() {
        let env = |_: &str| None;
        let parse = |text: &str| {
            let settings: Settings = toml::from_str(text).expect("toml");
            RateLimit::check(settings, &env)
        };
        assert!(parse("requests_per_minute = 0").is_err());
        assert!(parse("requests_per_minute = 5\nburst = 0").is_err());
        assert_eq!(parse("requests_per_minute = 30").expect("ok").burst, 30);
        assert_eq!(
            parse("requests_per_minute = 30\nburst = 3")
                .expect("ok")
                .burst,
            3
        );
    }
}
