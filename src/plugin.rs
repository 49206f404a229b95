//! Plugins: a route's optional behaviour, listed as `[[routes.plugins]]` in gateway.toml and
//! run in the order listed.
//!
//! A plugin implements [`Plugin`], whose hooks are named after the pingora phases the proxy
//! calls them from; each does nothing by default, so a plugin implements only what it
//! needs. [`KINDS`] is the registry: a `kind` name, the function that reads and checks the
//! plugin's settings (with `deny_unknown_fields`, so a misspelt key is an error that names
//! the plugin and the key), and through the settings the constructor. Reading settings has
//! no side effect, so `check` runs it too; the gateway builds the instances at start.
//!
//! Upstream authentication is not a plugin: it is the route's `auth`. Adding a plugin is a
//! module under `plugin/` and one line in [`KINDS`].

pub(crate) mod audit_log;
pub(crate) mod headers;
pub(crate) mod rate_limit;
pub(crate) mod tool_filter;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use pingora::http::{RequestHeader, ResponseHeader};
use serde::de::DeserializeOwned;

use crate::proxy::inbound::Client;

/// The registered plugins, by `kind`.
pub(crate) const KINDS: &[Kind] = &[
    Kind::of::<headers::Headers>(),
    Kind::of::<rate_limit::RateLimit>(),
    Kind::of::<audit_log::AuditLog>(),
    Kind::of::<tool_filter::ToolFilter>(),
];

/// A request as a plugin sees it when it decides, in `request_filter`.
#[derive(Debug)]
pub(crate) struct Call<'a> {
    pub(crate) route: &'a str,
    pub(crate) client: &'a Client,
}

/// A plugin's answer in place of the upstream's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: u16,
    /// The JSON error's `error` code, and the `limited_requests_total` label.
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) retry_after: Option<Duration>,
}

/// A finished request, for `logging`.
#[derive(Debug)]
pub(crate) struct Finished<'a> {
    pub(crate) route: &'a str,
    pub(crate) client: &'a Client,
    pub(crate) status: u16,
    pub(crate) elapsed: Duration,
    /// The JSON-RPC requests its body held (a batch holds several), when a plugin asked
    /// for the body with [`Plugin::wants_request_body`] and it was JSON-RPC.
    pub(crate) calls: &'a [RpcCall],
}

/// One JSON-RPC request of a body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RpcCall {
    pub(crate) method: String,
    /// The tool a `tools/call` names.
    pub(crate) tool: Option<String>,
    pub(crate) arguments: Option<serde_json::Value>,
}

impl RpcCall {
    /// The JSON-RPC requests in `body`: one for an object, each for a batch; none for a
    /// body that is not JSON-RPC.
    pub(crate) fn parse_all(body: &[u8]) -> Vec<RpcCall> {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
            return Vec::new();
        };
        let messages = match value {
            serde_json::Value::Array(messages) => messages,
            message => vec![message],
        };
        messages
            .into_iter()
            .filter_map(Self::from_message)
            .collect()
    }

    fn from_message(mut message: serde_json::Value) -> Option<RpcCall> {
        let method = message.get("method")?.as_str()?.to_owned();
        let params = message.get_mut("params");
        let (tool, arguments) = match params {
            Some(params) if method == "tools/call" => (
                params
                    .get("name")
                    .and_then(|name| name.as_str())
                    .map(str::to_owned),
                params.get_mut("arguments").map(serde_json::Value::take),
            ),
            _ => (None, None),
        };
        Some(RpcCall {
            method,
            tool,
            arguments,
        })
    }
}

/// A route's optional behaviour. Each hook runs in the pingora phase it is named after,
/// for every request of the route, in the order the route lists its plugins.
pub(crate) trait Plugin: Send + Sync + fmt::Debug {
    /// `request_filter`, once the caller is let in and before the route's token is
    /// fetched: `Some` answers the request with the refusal, and later plugins and the
    /// upstream never see it.
    fn request_filter(&self, _call: &Call<'_>) -> Option<Refusal> {
        None
    }

    /// `upstream_request_filter`: the request header as it goes to the upstream, after the
    /// gateway's own rules (the route's token is in it).
    fn upstream_request_filter(&self, _request: &mut RequestHeader) {}

    /// `response_filter`: the response header as it goes to the client.
    fn response_filter(&self, _response: &mut ResponseHeader) {}

    /// Whether the plugin reads the JSON-RPC messages themselves: then the proxy reads
    /// each `POST` body whole before it goes upstream and relays the exchange itself, so
    /// that [`Plugin::request_message`] and [`Plugin::response_message`] see every message.
    fn inspects_messages(&self) -> bool {
        false
    }

    /// A request's JSON-RPC message (an object, or an array for a batch), before it goes
    /// upstream: `Some` is the answer the client gets instead, and the upstream never sees
    /// the request.
    fn request_message(
        &self,
        _call: &Call<'_>,
        _message: &serde_json::Value,
    ) -> Option<serde_json::Value> {
        None
    }

    /// A JSON-RPC message on its way to the client (a JSON body, or one SSE event's data):
    /// the plugin may change it, and says whether it did.
    fn response_message(&self, _message: &mut serde_json::Value) -> bool {
        false
    }

    /// Whether `logging` needs the JSON-RPC requests of the body (the proxy then keeps
    /// the first [`MAX_KEPT_BODY`] bytes of it).
    fn wants_request_body(&self) -> bool {
        false
    }

    /// `logging`: the request is over.
    fn logging(&self, _finished: &Finished<'_>) {}
}

/// How much of a request body the proxy keeps for plugins that want it.
pub(crate) const MAX_KEPT_BODY: usize = 64 * 1024;

/// A plugin whose settings come from a `[[routes.plugins]]` table.
pub(crate) trait Configured: Plugin + Sized + 'static {
    /// The `kind` that names it in gateway.toml.
    const KIND: &'static str;
    /// The settings as written.
    type Settings: DeserializeOwned;
    /// The settings once checked, with values from the environment read.
    type Checked: fmt::Debug + Send + Sync + 'static;

    /// Checks settings beyond their types; `env` reads the environment.
    fn check(settings: Self::Settings, env: EnvLookup<'_>) -> Result<Self::Checked, String>;

    /// The plugin of one route.
    fn build(settings: &Self::Checked, route: &str) -> Result<Self, PluginError>;
}

/// Why a plugin could not start.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot open {path}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the plugin's writer thread")]
    Thread {
        #[source]
        source: std::io::Error,
    },
}

/// Reads an environment variable, through the config loader's environment.
pub(crate) type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Reads and checks one plugin's settings.
type ParseFn = fn(toml::Table, EnvLookup<'_>) -> Result<Arc<dyn Spec>, String>;

/// One registered plugin kind.
#[derive(Clone, Copy)]
pub(crate) struct Kind {
    pub(crate) name: &'static str,
    parse: ParseFn,
}

impl Kind {
    const fn of<P: Configured>() -> Kind {
        Kind {
            name: P::KIND,
            parse: parse::<P>,
        }
    }

    /// Reads and checks a table's settings (without its `kind`).
    pub(crate) fn parse(
        &self,
        settings: toml::Table,
        env: EnvLookup<'_>,
    ) -> Result<Arc<dyn Spec>, String> {
        (self.parse)(settings, env)
    }
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// The kind registered under `name`.
pub(crate) fn kind(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|kind| kind.name == name)
}

/// A plugin's checked settings, ready to build the plugin of a route.
pub(crate) trait Spec: Send + Sync + fmt::Debug {
    fn build(&self, route: &str) -> Result<Arc<dyn Plugin>, PluginError>;
}

/// Checked settings of plugin `P`.
struct SpecOf<P: Configured>(P::Checked);

impl<P: Configured> fmt::Debug for SpecOf<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple(P::KIND).field(&self.0).finish()
    }
}

impl<P: Configured> Spec for SpecOf<P> {
    fn build(&self, route: &str) -> Result<Arc<dyn Plugin>, PluginError> {
        Ok(Arc::new(P::build(&self.0, route)?))
    }
}

fn parse<P: Configured>(
    settings: toml::Table,
    env: EnvLookup<'_>,
) -> Result<Arc<dyn Spec>, String> {
    let settings: P::Settings = toml::Value::Table(settings)
        .try_into()
        .map_err(|error: toml::de::Error| error.message().to_owned())?;
    let settings = P::check(settings, env)?;
    Ok(Arc::new(SpecOf::<P>(settings)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_give_their_json_rpc_requests_with_tool_and_arguments() {
        let one = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call",
            "params":{"name":"echo","arguments":{"text":"hi"}}}"#;
        let calls = RpcCall::parse_all(one);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].tool.as_deref(), Some("echo"));
        assert_eq!(calls[0].arguments, Some(serde_json::json!({"text": "hi"})));

        let batch = br#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},
            {"jsonrpc":"2.0","method":"notifications/initialized"},
            {"jsonrpc":"2.0","id":1,"result":{}}]"#;
        let methods: Vec<String> = RpcCall::parse_all(batch)
            .into_iter()
            .map(|call| call.method)
            .collect();
        assert_eq!(methods, ["tools/list", "notifications/initialized"]);
        assert!(RpcCall::parse_all(b"not json").is_empty());
    }

    #[test]
    fn kinds_are_unique_and_found_by_name() {
        for registered in KINDS {
            assert_eq!(kind(registered.name).map(|k| k.name), Some(registered.name));
        }
        let mut names: Vec<_> = KINDS.iter().map(|kind| kind.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KINDS.len());
        assert!(kind("nope").is_none());
    }
}
