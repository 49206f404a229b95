//! The web UI at `/`: one card per route with its client endpoint, a ready-to-paste client
//! config, its sign-in status and the buttons to sign in, refresh and sign out.
//!
//! Server-rendered, no build step, nothing fetched from elsewhere, and complete without
//! JavaScript: the small script at [`SCRIPT_PATH`] only adds live expiry countdowns and copy
//! buttons. Forms that change state carry the gateway's CSRF token. Every value is escaped;
//! no token, code or secret is ever part of a page.

use std::fmt::Write;

use super::pages::{escape, page};
use super::status::{PeopleStatus, RouteStatus, SignInState, SignInStatus, unix_now};

/// Where the page's script is served (under `/auth`, a path no upstream can own).
pub(crate) const SCRIPT_PATH: &str = "/auth/assets/gateway.js";

/// Live countdowns for `[data-expires-at]` and copy buttons for `[data-copy]`.
pub(crate) const SCRIPT: &str = r#""use strict";
function remaining(seconds) {
  if (seconds <= 0) return "expired";
  const h = Math.floor(seconds / 3600), m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
  return "in " + (h ? h + " h " : "") + (h || m ? m + " min " : "") + (h ? "" : s + " s");
}
function tick() {
  const now = Math.floor(Date.now() / 1000);
  for (const el of document.querySelectorAll("[data-expires-at]")) {
    el.textContent = remaining(Number(el.dataset.expiresAt) - now);
  }
}
for (const button of document.querySelectorAll("button[data-copy]")) {
  button.hidden = false;
  button.addEventListener("click", async () => {
    const text = document.getElementById(button.dataset.copy).textContent;
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch (e) {
      button.textContent = "Select and copy";
    }
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  });
}
tick();
setInterval(tick, 1000);
"#;

/// The whole index page.
pub(crate) fn index(routes: &[RouteStatus], csrf: &str) -> String {
    let mut body = String::from(
        "<header><h1>mcp-u2m-gateway</h1><p>Sign in to each upstream once; MCP clients then \
         use the endpoints below without credentials of their own.</p></header>",
    );
    if routes.is_empty() {
        body.push_str("<p>No routes are configured.</p>");
    }
    for (index, route) in routes.iter().enumerate() {
        card(&mut body, index, route, csrf);
    }
    let _ = write!(
        body,
        "<footer><a href=\"/metrics\">Metrics</a> · <a href=\"/readyz\">Readiness</a> · \
         version {}</footer><script src=\"{SCRIPT_PATH}\"></script>",
        env!("CARGO_PKG_VERSION")
    );
    page("Routes", &body)
}

fn card(out: &mut String, index: usize, route: &RouteStatus, csrf: &str) {
    let name = escape(&route.name);
    let (class, label) = status_label(route);
    let _ = write!(
        out,
        "<section class=\"card\" id=\"route-{name}\"><h2>{name} \
         <span class=\"status {class}\" data-status>{label}</span></h2>\
         <dl><dt>Prefix</dt><dd><code>{}</code></dd><dt>Upstream</dt><dd><code>{}</code></dd>",
        escape(&route.prefix),
        escape(&route.upstream),
    );
    if let Some(people) = &route.per_user {
        people_details(out, people);
    }
    if let Some(sign_in) = &route.sign_in {
        sign_in_details(out, sign_in);
    }
    out.push_str("</dl>");
    endpoint(out, index, route);
    if let Some(sign_in) = &route.sign_in {
        actions(out, &name, sign_in, csrf);
    }
    out.push_str("</section>");
}

fn status_label(route: &RouteStatus) -> (&'static str, String) {
    if route.upstream_unreachable {
        return ("warn", "upstream unreachable".to_owned());
    }
    match &route.sign_in {
        None if route.per_user.is_some() => ("warn", "sign-in per person".to_owned()),
        None => ("ok", format!("ready ({} auth)", escape(&route.auth))),
        Some(sign_in) => {
            let class = match sign_in.state {
                SignInState::SignedIn => "ok",
                SignInState::Refreshing => "warn",
                SignInState::NeedsSignIn => "fail",
            };
            (class, sign_in.state.label().to_owned())
        }
    }
}

/// A per-user route: whose page this is, or how to reach one's own.
fn people_details(out: &mut String, people: &PeopleStatus) {
    match &people.you {
        Some(you) => {
            let _ = write!(
                out,
                "<dt>Signed in to the gateway as</dt><dd>{}</dd>\
                 <dt>Your sign-in</dt><dd>yours alone: nobody else's requests use it</dd>",
                escape(you)
            );
        }
        None => out.push_str(
            "<dt>Sign-in</dt><dd>each person signs in for themselves: open this page \
             through the proxy that signs you in</dd>",
        ),
    }
}

fn sign_in_details(out: &mut String, sign_in: &SignInStatus) {
    if let Some(reason) = &sign_in.reason {
        let _ = write!(out, "<dt>Why</dt><dd>{}</dd>", escape(reason));
    }
    if sign_in.state != SignInState::NeedsSignIn {
        if let Some(at) = sign_in.expires_at {
            let left = at as i64 - unix_now() as i64;
            let _ = write!(
                out,
                "<dt>Access token expires</dt><dd><span data-expires-at=\"{at}\">{}</span>{}</dd>",
                escape(&static_remaining(left)),
                if sign_in.refreshable {
                    " (refreshed ahead of time)"
                } else {
                    " (no refresh token: sign in again then)"
                }
            );
        }
        if let Some(scope) = sign_in.scope.as_deref().filter(|scope| !scope.is_empty()) {
            let _ = write!(
                out,
                "<dt>Scopes</dt><dd><code>{}</code></dd>",
                escape(scope)
            );
        }
    }
    if let Some(last) = &sign_in.last_refresh {
        let ago = unix_now().saturating_sub(last.at);
        let _ = write!(
            out,
            "<dt>Last refresh</dt><dd>{} ({} ago)</dd>",
            escape(&last.outcome),
            escape(&static_remaining(ago as i64).replace("in ", ""))
        );
    }
}

/// "in 52 min" without the script's live update.
fn static_remaining(seconds: i64) -> String {
    if seconds <= 0 {
        return "expired".to_owned();
    }
    let (h, m, s) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    match (h, m) {
        (0, 0) => format!("in {s} s"),
        (0, _) => format!("in {m} min {s} s"),
        _ => format!("in {h} h {m} min"),
    }
}

fn endpoint(out: &mut String, index: usize, route: &RouteStatus) {
    let config =
        serde_json::json!({ "mcpServers": { &route.name: { "url": &route.streamable_http } } });
    let config = serde_json::to_string_pretty(&config).unwrap_or_default();
    let _ = write!(
        out,
        "<h3>Endpoint for MCP clients</h3>\
         <p class=\"copyable\"><code id=\"endpoint-{index}\">{url}</code> \
         <button type=\"button\" data-copy=\"endpoint-{index}\" hidden>Copy</button></p>\
         <p class=\"hint\">Legacy HTTP+SSE clients: <code>{sse}</code></p>\
         <details><summary>Client configuration</summary>\
         <pre id=\"config-{index}\">{config}</pre>\
         <button type=\"button\" data-copy=\"config-{index}\" hidden>Copy</button>\
         <p class=\"hint\">Clients that only speak stdio: <code>npx mcp-remote {url}</code></p>\
         </details>",
        url = escape(&route.streamable_http),
        sse = escape(&route.sse),
        config = escape(&config),
    );
}

fn actions(out: &mut String, name: &str, sign_in: &SignInStatus, csrf: &str) {
    let csrf = escape(csrf);
    let sign_in_url = escape(&sign_in.sign_in_url);
    let verb = match sign_in.state {
        SignInState::NeedsSignIn => "Sign in",
        _ => "Sign in again",
    };
    let _ = write!(
        out,
        "<div class=\"actions\"><a class=\"button primary\" href=\"/auth/{name}/start\">{verb}</a>"
    );
    if sign_in.state != SignInState::NeedsSignIn {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/auth/{name}/refresh\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button type=\"submit\">Refresh now</button></form>\
             <form method=\"post\" action=\"/auth/{name}/clear\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button type=\"submit\" class=\"danger\">Sign out</button></form>"
        );
    }
    let _ = write!(
        out,
        "</div><p class=\"hint\">No browser on this machine? Open <code>{sign_in_url}</code> on \
         any device that can reach the gateway.</p>"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::status::LastRefresh;

    fn route(sign_in: Option<SignInStatus>) -> RouteStatus {
        RouteStatus {
            name: "jira".into(),
            prefix: "/jira".into(),
            upstream: "https://mcp.example/v1".into(),
            auth: "oauth".into(),
            streamable_http: "http://localhost:8000/jira/mcp".into(),
            sse: "http://localhost:8000/jira/sse".into(),
            upstream_unreachable: false,
            sign_in,
            per_user: None,
        }
    }

    fn signed_in() -> SignInStatus {
        SignInStatus {
            state: SignInState::SignedIn,
            reason: None,
            sign_in_url: "http://localhost:8000/auth/jira/start".into(),
            expires_at: Some(unix_now() + 3000),
            expires_in: Some(3000),
            scope: Some("read <write>".into()),
            refreshable: true,
            last_refresh: Some(LastRefresh {
                at: unix_now() - 60,
                outcome: "ok".into(),
            }),
        }
    }

    #[test]
    fn a_signed_in_route_shows_its_expiry_scopes_and_state_changing_forms_with_csrf() {
        let html = index(&[route(Some(signed_in()))], "tok-123");
        assert!(html.contains("signed in"));
        assert!(html.contains("data-expires-at=\""));
        assert!(html.contains("in 50 min"));
        assert!(html.contains("read &lt;write&gt;"));
        assert_eq!(html.matches("name=\"csrf\" value=\"tok-123\"").count(), 2);
        assert!(html.contains("http://localhost:8000/jira/mcp"));
        assert!(html.contains("&quot;mcpServers&quot;"));
    }

    #[test]
    fn a_route_needing_sign_in_shows_why_and_the_url_to_open_elsewhere() {
        let mut status = signed_in();
        status.state = SignInState::NeedsSignIn;
        status.reason = Some("the refresh token was revoked".into());
        let html = index(&[route(Some(status))], "t");
        assert!(html.contains("needs sign-in"));
        assert!(html.contains("the refresh token was revoked"));
        assert!(html.contains("<code>http://localhost:8000/auth/jira/start</code>"));
        assert!(!html.contains("Refresh now"));
    }

    #[test]
    fn routes_without_oauth_have_no_sign_in_buttons() {
        let mut plain = route(None);
        plain.auth = "bearer".into();
        let html = index(&[plain], "t");
        assert!(html.contains("ready (bearer auth)"));
        assert!(!html.contains("/auth/jira/start"));
    }

    #[test]
    fn a_per_user_route_shows_whose_page_it_is_or_how_to_reach_ones_own() {
        let mut own = route(Some(signed_in()));
        own.per_user = Some(PeopleStatus {
            known: 2,
            signed_in: 1,
            you: Some("ada@example.com".into()),
        });
        let html = index(&[own], "tok");
        assert!(html.contains("ada@example.com"));
        assert!(html.contains("nobody else"));

        let mut nobody = route(None);
        nobody.per_user = Some(PeopleStatus {
            known: 2,
            signed_in: 1,
            you: None,
        });
        let html = index(&[nobody], "tok");
        assert!(html.contains("sign-in per person"));
        assert!(html.contains("through the proxy that signs you in"));
        assert!(!html.contains("name=\"csrf\""));
    }
}
