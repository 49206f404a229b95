//! `tool_filter`: which of the upstream's tools MCP clients see and may call.
//!
//! ```toml
//! [[routes.plugins]]
//! kind = "tool_filter"
//! allow = ["jira_*", "confluence_search"]   # only these (default: all)
//! deny = ["*_delete*"]                      # never these, even when allowed
//! ```
//!
//! Patterns are globs over the whole tool name: `*` matches any run of characters, `?` one.
//! A `tools/list` result (a JSON body, an SSE event, on either transport) loses the tools
//! that are filtered out, page by page, with `nextCursor` kept; a `tools/call` of a filtered
//! tool is answered by the gateway with a JSON-RPC error and never reaches the upstream.
//! `notifications/tools/list_changed` passes untouched, and the client's next `tools/list`
//! is filtered again.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Call, Configured, EnvLookup, Plugin, PluginError};

/// JSON-RPC's "invalid params", which MCP servers answer an unknown tool with.
const UNKNOWN_TOOL: i64 = -32602;
/// JSON-RPC's "invalid request", for the other requests of a batch that calls a filtered tool.
const INVALID_REQUEST: i64 = -32600;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    allow: Option<Vec<String>>,
    #[serde(default)]
    deny: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Checked {
    allow: Option<Vec<String>>,
    deny: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct ToolFilter {
    rules: Checked,
}

impl Configured for ToolFilter {
    const KIND: &'static str = "tool_filter";
    type Settings = Settings;
    type Checked = Checked;

    fn check(settings: Settings, _env: EnvLookup<'_>) -> Result<Checked, String> {
        if settings.allow.is_none() && settings.deny.is_empty() {
            return Err("give `allow`, `deny` or both: without them it filters nothing".into());
        }
        let patterns = settings.allow.iter().flatten().chain(&settings.deny);
        if let Some(empty) = patterns.into_iter().find(|pattern| pattern.is_empty()) {
            return Err(format!("`{empty}`: an empty pattern matches no tool"));
        }
        Ok(Checked {
            allow: settings.allow,
            deny: settings.deny,
        })
    }

    fn build(settings: &Checked, _route: &str) -> Result<Self, PluginError> {
        Ok(ToolFilter {
            rules: settings.clone(),
        })
    }
}

impl ToolFilter {
    /// Whether clients may see and call the tool `name`.
    fn permits(&self, name: &str) -> bool {
        let allowed = self
            .rules
            .allow
            .as_ref()
            .is_none_or(|allow| allow.iter().any(|pattern| glob_match(pattern, name)));
        allowed
            && !self
                .rules
                .deny
                .iter()
                .any(|pattern| glob_match(pattern, name))
    }

    /// The filtered tool a `tools/call` request names, if it names one.
    fn blocked_call<'a>(&self, message: &'a Value) -> Option<&'a str> {
        if message.get("method")?.as_str()? != "tools/call" {
            return None;
        }
        let name = message.get("params")?.get("name")?.as_str()?;
        (!self.permits(name)).then_some(name)
    }

    /// Removes filtered tools from a `tools/list` result; true when it changed.
    fn filter_result(&self, message: &mut Value) -> bool {
        let Some(tools) = message
            .get_mut("result")
            .and_then(|result| result.get_mut("tools"))
            .and_then(Value::as_array_mut)
        else {
            return false;
        };
        let before = tools.len();
        tools.retain(|tool| {
            tool.get("name")
                .and_then(Value::as_str)
                .is_some_and(|name| self.permits(name))
        });
        tools.len() != before
    }
}

fn error(id: &Value, code: i64, message: String) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } })
}

fn unavailable(name: &str) -> String {
    format!("tool '{name}' is not available through this gateway")
}

impl Plugin for ToolFilter {
    fn inspects_messages(&self) -> bool {
        true
    }

    fn request_message(&self, _call: &Call<'_>, message: &Value) -> Option<Value> {
        match message {
            Value::Array(batch) => {
                let blocked = batch.iter().find_map(|m| self.blocked_call(m))?;
                let answers = batch
                    .iter()
                    .filter_map(|m| {
                        let id = m.get("id").filter(|id| !id.is_null())?;
                        Some(match self.blocked_call(m) {
                            Some(name) => error(id, UNKNOWN_TOOL, unavailable(name)),
                            None => error(
                                id,
                                INVALID_REQUEST,
                                format!("the batch was refused: {}", unavailable(blocked)),
                            ),
                        })
                    })
                    .collect();
                Some(Value::Array(answers))
            }
            message => {
                let name = self.blocked_call(message)?;
                let id = message.get("id").cloned().unwrap_or(Value::Null);
                Some(error(&id, UNKNOWN_TOOL, unavailable(name)))
            }
        }
    }

    fn response_message(&self, message: &mut Value) -> bool {
        match message {
            Value::Array(batch) => batch
                .iter_mut()
                .fold(false, |changed, m| self.filter_result(m) | changed),
            message => self.filter_result(message),
        }
    }
}

/// Whether `text` matches the glob `pattern` as a whole (`*` any run, `?` one character).
fn glob_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it matched up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                // Let the last `*` take one more character and try again from there.
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_names() {
        for (pattern, name, matches) in [
            ("jira_*", "jira_search", true),
            ("jira_*", "jira_", true),
            ("jira_*", "confluence_jira_x", false),
            ("*_delete*", "jira_delete_issue", true),
            ("*_delete*", "delete", false),
            ("get_?", "get_a", true),
            ("get_?", "get_ab", false),
            ("*", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(glob_match(pattern, name), matches, "{pattern} vs {name}");
        }
    }

    fn filter(allow: Option<&[&str]>, deny: &[&str]) -> ToolFilter {
        let own = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        ToolFilter {
            rules: Checked {
                allow: allow.map(own),
                deny: own(deny),
            },
        }
    }

    #[test]
    fn deny_wins_over_allow_and_lists_keep_their_cursor() {
        let filter = filter(Some(&["jira_*", "echo"]), &["*_delete*"]);
        assert!(filter.permits("jira_search") && filter.permits("echo"));
        assert!(!filter.permits("jira_delete_issue") && !filter.permits("slow"));

        let mut page = json!({"jsonrpc": "2.0", "id": 1, "result": {
            "tools": [{"name": "jira_search"}, {"name": "jira_delete_issue"}, {"name": "x"}],
            "nextCursor": "page-2"}});
        assert!(filter.response_message(&mut page));
        assert_eq!(page["result"]["tools"], json!([{"name": "jira_search"}]));
        assert_eq!(page["result"]["nextCursor"], "page-2");
        let mut other = json!({"jsonrpc": "2.0", "id": 2, "result": {"content": []}});
        assert!(!filter.response_message(&mut other));
    }

    #[test]
    fn a_filtered_call_is_answered_and_a_batch_with_one_is_refused_whole() {
        let filter = filter(None, &["danger*"]);
        let call = Call {
            route: "r",
            client: &crate::proxy::inbound::Client::Unknown,
        };
        let one = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "dangerous", "arguments": {}}});
        let answer = filter.request_message(&call, &one).expect("blocked");
        assert_eq!(answer["id"], 7);
        assert_eq!(answer["error"]["code"], UNKNOWN_TOOL);

        let fine = json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
            "params": {"name": "echo"}});
        assert!(filter.request_message(&call, &fine).is_none());

        let batch = json!([fine, one, {"jsonrpc": "2.0", "method": "notifications/x"}]);
        let answers = filter.request_message(&call, &batch).expect("refused");
        let codes: Vec<i64> = answers
            .as_array()
            .expect("array")
            .iter()
            .map(|a| a["error"]["code"].as_i64().expect("code"))
            .collect();
        assert_eq!(codes, [INVALID_REQUEST, UNKNOWN_TOOL]);
    }
}
