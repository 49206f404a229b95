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

#[cfg(test)]
mod tests {
    use super::*;

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
