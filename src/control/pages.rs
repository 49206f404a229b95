//! The small HTML pages a person sees while signing in: the callback's success and failure
//! pages and the error page of a sign-in that could not start. Every value is escaped, and
//! no page ever carries a token, a code or a state.

/// The stylesheet every page shares: plain, readable, light and dark.
const STYLE: &str = "\
:root{color-scheme:light dark;--fg:#1d2430;--muted:#5b6472;--bg:#fff;--card:#f7f8fa;--line:#dde1e6;\
--ok:#1a7f37;--warn:#9a6700;--fail:#b42318;--accent:#2456c7}\
@media (prefers-color-scheme:dark){:root{--fg:#e6e8eb;--muted:#a0a8b4;--bg:#12151a;--card:#1b1f26;\
--line:#2c323c;--ok:#4ac26b;--warn:#d29922;--fail:#f47067;--accent:#6e9bff}}\
body{font:16px/1.5 system-ui,sans-serif;max-width:46rem;margin:2.5rem auto;padding:0 1rem;\
color:var(--fg);background:var(--bg)}\
h1{font-size:1.5rem;margin:0 0 .25rem}h2{font-size:1.2rem;margin:0 0 .5rem}h3{font-size:1rem;margin:1rem 0 .25rem}\
header p,.hint,footer{color:var(--muted)}.hint{font-size:.9rem}\
footer{margin-top:2rem;font-size:.85rem}\
.card{background:var(--card);border:1px solid var(--line);border-radius:.5rem;padding:1rem 1.25rem;margin:1.25rem 0}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem;margin:.5rem 0}dt{color:var(--muted)}dd{margin:0}\
code,pre{font:14px ui-monospace,monospace;background:var(--bg);border:1px solid var(--line);border-radius:.25rem;padding:0 .3rem;word-break:break-all}\
pre{padding:.5rem;white-space:pre-wrap}\
.status{font-size:.8rem;font-weight:600;border-radius:1rem;padding:.1rem .6rem;margin-left:.5rem;vertical-align:middle;border:1px solid}\
.ok{color:var(--ok)}.warn{color:var(--warn)}.fail{color:var(--fail)}\
.actions{display:flex;flex-wrap:wrap;gap:.5rem;margin-top:1rem}form{margin:0}\
button,.button{font:inherit;font-size:.9rem;padding:.35rem .9rem;border-radius:.35rem;border:1px solid var(--line);\
background:var(--bg);color:var(--fg);cursor:pointer;text-decoration:none;display:inline-block}\
.primary{background:var(--accent);border-color:var(--accent);color:#fff}.danger{color:var(--fail)}";

/// A complete page with `title` and already-escaped `body` HTML.
pub(crate) fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · mcp-u2m-gateway</title><style>{STYLE}</style>\
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
