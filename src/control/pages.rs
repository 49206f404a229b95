//! The small HTML pages a person sees while signing in: the callback's success and failure
//! pages and the error page of a sign-in that could not start. Every value is escaped, and
//! no page ever carries a token, a code or a state.

/// A complete page with `title` and already-escaped `body` HTML.
pub(crate) fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · mcp-u2m-gateway</title>\
         <style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;color:#1d2430}}\
         h1{{font-size:1.4rem}} .ok{{color:#1a7f37}} .fail{{color:#b42318}} code{{background:#f3f4f6;padding:0 .25rem}}</style>\
         </head><body>{body}</body></html>\n",
        title = escape(title),
    )
}

/// The page after a successful sign-in.
pub(crate) fn signed_in(route: &str, scope: Option<&str>) -> String {
    let scopes = match scope {
        Some(scope) if !scope.is_empty() => {
            format!("<p>Granted scopes: <code>{}</code></p>", escape(scope))
        }
        _ => String::new(),
    };
    page(
        "Signed in",
        &format!(
            "<h1 class=\"ok\">Signed in to {route}</h1>\
             <p>MCP clients using this route now reach the upstream as you. \
             You can close this window.</p>{scopes}<p><a href=\"/\">Back to the gateway</a></p>",
            route = escape(route),
        ),
    )
}

/// The page after a failed sign-in, or one that could not start: what happened and what to do.
pub(crate) fn failed(route: Option<&str>, message: &str) -> String {
    let title = match route {
        Some(route) => format!("Sign-in to {} failed", escape(route)),
        None => "Sign-in failed".to_owned(),
    };
    let again = match route {
        Some(route) => format!(
            "<p><a href=\"/auth/{0}/start\">Start the sign-in to {0} again</a></p>",
            escape(route)
        ),
        None => "<p><a href=\"/\">Back to the gateway</a></p>".to_owned(),
    };
    page(
        "Sign-in failed",
        &format!(
            "<h1 class=\"fail\">{title}</h1><p>{}</p>{again}",
            escape(message)
        ),
    )
}

/// Escapes text for HTML element content and attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped() {
        let html = failed(Some("<script>"), "a \"quoted\" & <b>bold</b> error");
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("&quot;quoted&quot; &amp; &lt;b&gt;"));
    }
}
