//! `headers`: sets and removes request headers toward the upstream and response headers
//! toward the client, for what a route's static `headers` cannot do: a value from the
//! environment (an API key some upstreams want beside OAuth), a header removed, a response
//! header.
//!
//! ```toml
//! [[routes.plugins]]
//! kind = "headers"
//! request.set = { "X-Api-Key" = { env = "NOTION_API_KEY" }, "X-Team" = "platform" }
//! request.remove = ["X-Debug"]
//! response.set = { "X-Robots-Tag" = "noindex" }
//! response.remove = ["Server"]
//! ```
//!
//! Values from the environment are read once, at start, and marked sensitive so that they
//! print as `Sensitive`. Headers that carry the gateway's own credentials or frame the
//! message cannot be touched.

use std::collections::BTreeMap;

use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use serde::Deserialize;

use super::{Configured, EnvLookup, Plugin, PluginError};

/// Headers the gateway owns: the upstream credential, virtual hosting, framing.
const UNTOUCHABLE: &[&str] = &[
    "authorization",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    #[serde(default)]
    request: RawSide,
    #[serde(default)]
    response: RawSide,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSide {
    #[serde(default)]
    set: BTreeMap<String, RawValue>,
    #[serde(default)]
    remove: Vec<String>,
}

/// A header value as written: text, or `{ env = "NAME" }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawValue {
    Text(String),
    Env(FromEnv),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FromEnv {
    env: String,
}

/// The headers one side sets and removes.
#[derive(Debug, Default, Clone)]
pub(crate) struct Side {
    set: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

#[derive(Debug)]
pub(crate) struct Checked {
    request: Side,
    response: Side,
}

#[derive(Debug)]
pub(crate) struct Headers {
    request: Side,
    response: Side,
}

impl Configured for Headers {
    const KIND: &'static str = "headers";
    type Settings = Settings;
    type Checked = Checked;

    fn check(settings: Settings, env: EnvLookup<'_>) -> Result<Checked, String> {
        Ok(Checked {
            request: side("request", settings.request, env)?,
            response: side("response", settings.response, env)?,
        })
    }

    fn build(settings: &Checked, _route: &str) -> Result<Self, PluginError> {
        Ok(Headers {
            request: settings.request.clone(),
            response: settings.response.clone(),
        })
    }
}

fn side(which: &str, raw: RawSide, env: EnvLookup<'_>) -> Result<Side, String> {
    let mut side = Side::default();
    for (name, value) in raw.set {
        let header = header_name(which, "set", &name)?;
        let value = match value {
            RawValue::Text(text) => HeaderValue::from_str(&text)
                .map_err(|_| format!("{which}.set.{name}: not a valid header value"))?,
            RawValue::Env(FromEnv { env: var }) => {
                let text = env(&var).ok_or_else(|| {
                    format!("{which}.set.{name}: the environment variable {var} is not set")
                })?;
                let mut value = HeaderValue::from_str(&text).map_err(|_| {
                    format!("{which}.set.{name}: {var} does not hold a valid header value")
                })?;
                value.set_sensitive(true);
                value
            }
        };
        side.set.push((header, value));
    }
    for name in raw.remove {
        side.remove.push(header_name(which, "remove", &name)?);
    }
    Ok(side)
}

fn header_name(which: &str, list: &str, name: &str) -> Result<HeaderName, String> {
    let header = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{which}.{list}: `{name}` is not a header name"))?;
    if UNTOUCHABLE.contains(&header.as_str()) {
        return Err(format!(
            "{which}.{list}: `{name}` is the gateway's own to set and cannot be changed"
        ));
    }
    Ok(header)
}

impl Plugin for Headers {
    fn upstream_request_filter(&self, request: &mut RequestHeader) {
        for name in &self.request.remove {
            request.remove_header(name);
        }
        for (name, value) in &self.request.set {
            let _ = request.insert_header(name.clone(), value.clone());
        }
    }

    fn response_filter(&self, response: &mut ResponseHeader) {
        for name in &self.response.remove {
            response.remove_header(name);
        }
        for (name, value) in &self.response.set {
            let _ = response.insert_header(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(text: &str, env: EnvLookup<'_>) -> Result<Checked, String> {
        let settings: Settings = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        Headers::check(settings, env)
    }

    #[test]
    fn values_come_from_text_or_the_environment_and_hide_when_secret() {
        let env = |name: &str| (name == "KEY").then(|| "s3cr3t-value".to_owned());
        let settings = checked(
            "request.set = { \"X-Api-Key\" = { env = \"KEY\" }, \"X-Team\" = \"core\" }\n\
             response.remove = [\"Server\"]",
            &env,
        )
        .expect("valid");
        assert_eq!(settings.request.set.len(), 2);
        assert!(!format!("{settings:?}").contains("s3cr3t"), "{settings:?}");

        let missing = checked("request.set = { \"X-Api-Key\" = { env = \"NOPE\" } }", &env);
        let error = missing.expect_err("unset variable");
        assert!(error.contains("NOPE is not set"), "{error}");
    }

    #[test]
    fn the_gateways_own_headers_and_unknown_keys_are_refused() {
        let env = |_: &str| None;
        let error = checked("request.remove = [\"Authorization\"]", &env).expect_err("owned");
        assert!(error.contains("cannot be changed"), "{error}");
        let error = checked("request.sett = {}", &env).expect_err("typo");
        assert!(error.contains("sett"), "{error}");
    }
}
