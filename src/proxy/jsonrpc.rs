//! Just enough JSON-RPC for the gateway's own answers: reading a client's request body when
//! the gateway answers it itself, and shaping a "sign in first" answer in the form an MCP
//! client shows to its user.

use bytes::BytesMut;
use http::{Method, header};
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use serde_json::{Value, json};

/// Request bodies larger than this are not read for an answer of the gateway's own.
const MAX_BODY: usize = 1 << 20;

/// The JSON-RPC error code for "authentication required" (server-defined range).
const NEEDS_SIGN_IN: i64 = -32001;

/// The client's JSON body when the request is a `POST` of JSON, read from the client;
/// `None` otherwise, or when the body is too large or not JSON.
pub(crate) async fn request_body(session: &mut Session) -> Option<Value> {
    if !is_json_post(session.req_header()) {
        return None;
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = session.read_request_body().await.ok()? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY {
            return None;
        }
    }
    serde_json::from_slice(&body).ok()
}

/// `body` as JSON, when `request` is a `POST` of JSON.
pub(crate) fn parse_request(request: &RequestHeader, body: &[u8]) -> Option<Value> {
    is_json_post(request)
        .then(|| serde_json::from_slice(body).ok())
        .flatten()
}

fn is_json_post(request: &RequestHeader) -> bool {
    let is_json = request
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    request.method == Method::POST && is_json
}

/// The answer to a request that cannot go upstream until someone signs in: a tool result
/// with `isError` for `tools/call`, a JSON-RPC error for any other request, and for a batch,
/// one answer per request. `None` for notifications and anything that is not JSON-RPC.
pub(crate) fn sign_in_answer(message: &Value, text: &str) -> Option<Value> {
    match message {
        Value::Array(batch) => {
            let answers: Vec<Value> = batch
                .iter()
                .filter_map(|m| sign_in_answer(m, text))
                .collect();
            (!answers.is_empty()).then_some(Value::Array(answers))
        }
        Value::Object(request) => {
            let id = request.get("id").filter(|id| !id.is_null())?;
            let method = request.get("method")?.as_str()?;
            Some(if method == "tools/call" {
                json!({
                    "jsonrpc": "2.0",
                    "id": id,
                    "result": { "content": [{ "type": "text", "text": text }], "isError": true },
                })
            } else {
                json!({
                    "jsonrpc": "2.0",
                    "id": id,
                    "error": { "code": NEEDS_SIGN_IN, "message": text },
                })
            })
        }
        _ => None,
    }
}

/// A JSON-RPC error answering each request of `message` (one per request of a batch);
/// `None` for notifications and anything that is not JSON-RPC.
pub(crate) fn error_answer(message: &Value, code: i64, text: &str) -> Option<Value> {
    match message {
        Value::Array(batch) => {
            let answers: Vec<Value> = batch
                .iter()
                .filter_map(|m| error_answer(m, code, text))
                .collect();
            (!answers.is_empty()).then_some(Value::Array(answers))
        }
        Value::Object(request) => {
            let id = request.get("id").filter(|id| !id.is_null())?;
            request.get("method")?.as_str()?;
            Some(json!({
                "jsonrpc": "2.0",
                "id": id,
                "error": { "code": code, "message": text },
            }))
        }
        _ => None,
    }
}

/// The MCP methods the metrics name; any other method counts as `other`, so that a client
/// cannot grow the label set.
const KNOWN_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
];

/// The JSON-RPC method of a request body, for the metrics, from its first bytes: a known
/// MCP method, `other`, `batch` for an array, or `None` when `body` does not start a JSON
/// object with a top-level string `"method"` in what it holds. Reads no further than the
/// first complete `method` member and never allocates.
pub(crate) fn sniff_method(body: &[u8]) -> Option<&'static str> {
    let mut scanner = Scanner { body, at: 0 };
    match scanner.next_non_space()? {
        b'[' => return Some("batch"),
        b'{' => {}
        _ => return None,
    }
    loop {
        // A member: "key" : value, at the top level of the object.
        if scanner.next_non_space()? != b'"' {
            return None;
        }
        let key = scanner.string()?;
        if scanner.next_non_space()? != b':' {
            return None;
        }
        if key == b"method" {
            if scanner.next_non_space()? != b'"' {
                return None;
            }
            let method = scanner.string()?;
            let known = KNOWN_METHODS.iter().find(|m| m.as_bytes() == method);
            return Some(known.copied().unwrap_or("other"));
        }
        scanner.skip_value()?;
        match scanner.next_non_space()? {
            b',' => continue,
            _ => return None,
        }
    }
}

/// The metrics' name for the method of a parsed request, as [`sniff_method`] gives it.
pub(crate) fn method_label(message: &Value) -> Option<&'static str> {
    match message {
        Value::Array(_) => Some("batch"),
        Value::Object(request) => {
            let method = request.get("method")?.as_str()?;
            let known = KNOWN_METHODS.iter().find(|m| **m == method);
            Some(known.copied().unwrap_or("other"))
        }
        _ => None,
    }
}

/// A cursor over JSON text, just enough to walk an object's top-level members.
struct Scanner<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn next_non_space(&mut self) -> Option<u8> {
        while let Some(&byte) = self.body.get(self.at) {
            self.at += 1;
            if !byte.is_ascii_whitespace() {
                return Some(byte);
            }
        }
        None
    }

    /// The raw bytes of a string whose opening quote was just read, escapes left as they
    /// are (a method name has none).
    fn string(&mut self) -> Option<&'a [u8]> {
        let start = self.at;
        loop {
            match *self.body.get(self.at)? {
                b'\\' => self.at += 2,
                b'"' => {
                    self.at += 1;
                    return Some(&self.body[start..self.at - 1]);
                }
                _ => self.at += 1,
            }
        }
    }

    /// Skips one value: a string, or anything up to the `,` or `}` that ends it at this
    /// depth, counting brackets and skipping strings inside.
    fn skip_value(&mut self) -> Option<()> {
        let mut depth = 0usize;
        loop {
            match *self.body.get(self.at)? {
                b'"' => {
                    self.at += 1;
                    self.string()?;
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth == 0 => return Some(()),
                b'}' | b']' => depth -= 1,
                b',' if depth == 0 => return Some(()),
                _ => {}
            }
            self.at += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_method_is_sniffed_at_the_top_level_only() {
        let sniff = |text: &str| sniff_method(text.as_bytes());
        assert_eq!(
            sniff(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#),
            Some("tools/call")
        );
        assert_eq!(
            sniff(
                r#" { "params" : {"method":"ping", "x":[1,{"a":"}"}]}, "id":"a\"b", "method" : "initialize" }"#
            ),
            Some("initialize")
        );
        assert_eq!(sniff(r#"{"method":"vendor/secret-thing"}"#), Some("other"));
        assert_eq!(sniff(r#"[{"method":"ping"}]"#), Some("batch"));
        assert_eq!(sniff(r#"{"id":1,"result":{}}"#), None);
        assert_eq!(sniff(r#"{"method":"tools/ca"#), None, "cut short");
        assert_eq!(sniff("not json"), None);
        assert_eq!(sniff(""), None);
    }

    #[test]
    fn tool_calls_get_a_tool_result_with_is_error() {
        let answer = sign_in_answer(
            &json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"x"}}),
            "sign in at http://gw/auth/jira/start",
        )
        .expect("answer");
        assert_eq!(answer["id"], 7);
        assert_eq!(answer["result"]["isError"], true);
        assert_eq!(
            answer["result"]["content"][0]["text"],
            "sign in at http://gw/auth/jira/start"
        );
    }

    #[test]
    fn other_requests_get_a_jsonrpc_error_and_notifications_nothing() {
        let answer = sign_in_answer(
            &json!({"jsonrpc":"2.0","id":"a","method":"tools/list"}),
            "t",
        )
        .expect("answer");
        assert_eq!(answer["error"]["code"], NEEDS_SIGN_IN);
        assert_eq!(answer["id"], "a");
        assert!(
            sign_in_answer(
                &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
                "t"
            )
            .is_none()
        );
        assert!(sign_in_answer(&json!({"hello": 1}), "t").is_none());
    }

    #[test]
    fn batches_get_one_answer_per_request() {
        let batch = json!([
            {"jsonrpc":"2.0","id":1,"method":"tools/list"},
            {"jsonrpc":"2.0","method":"notifications/initialized"},
            {"jsonrpc":"2.0","id":2,"method":"tools/call"}
        ]);
        let answer = sign_in_answer(&batch, "t").expect("answer");
        assert_eq!(answer.as_array().map(Vec::len), Some(2));
    }
}
