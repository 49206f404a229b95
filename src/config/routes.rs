//! Validation of the `[[routes]]` tables: names, prefixes, upstreams, upstream auth and
//! static headers, each route on its own and then against each other.
//!
//! The prefix rules exist for the router: a prefix is a plain path that can be matched
//! segment by segment, never hides one of the gateway's own paths, and never collides
//! with another route's. Nested prefixes are fine; the longest match wins.

use std::collections::{BTreeMap, HashMap, HashSet};

use toml::Spanned;

use super::location::key_text;
use super::raw::{RawAuth, RawAuthKind, RawRoute};
use super::validate::{Checker, http_url};
use super::{
    BearerSource, FieldErrorKind, PluginConfig, PrincipalMode, RESERVED_PATHS, RouteAuth,
    RouteConfig,
};

const MAX_NAME_LEN: usize = 64;

/// Headers the gateway sets itself or that describe one hop only; a static value would
/// break authentication, virtual hosting or message framing.
const FORBIDDEN_HEADERS: &[&str] = &[
    "authorization",
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// What the `[server]` section says about principals, for each route's own setting.
#[derive(Debug)]
pub(super) struct Principals {
    /// `server.principal`, the mode of OAuth routes that do not name their own.
    pub(super) default: Option<Spanned<PrincipalMode>>,
    /// Some trusted header names the caller.
    pub(super) identity_known: bool,
}

/// Validates all routes; `None` when any rule is broken (each one is recorded).
pub(super) fn check(
    raw: Vec<RawRoute>,
    principals: &Principals,
    checker: &mut Checker<'_>,
) -> Option<Vec<RouteConfig>> {
    if raw.is_empty() {
        checker.fail("routes".into(), None, FieldErrorKind::NoRoutes);
        return None;
    }
    check_unique_names(&raw, checker);
    check_unique_prefixes(&raw, checker);
    let server_wants_per_user = principals
        .default
        .as_ref()
        .is_some_and(|mode| *mode.get_ref() == PrincipalMode::Forwarded);
    if server_wants_per_user && !principals.identity_known {
        let span = principals.default.as_ref().map(Spanned::span);
        let kind = FieldErrorKind::PerUserWithoutIdentity;
        checker.fail("server.principal".into(), span, kind);
    }

    let routes: Vec<Option<RouteConfig>> = raw
        .iter()
        .enumerate()
        .map(|(index, route)| check_route(index, route, principals, checker))
        .collect();
    routes.into_iter().collect()
}

/// Generous for MCP, whose messages are small; large tool arguments still fit.
pub(crate) const DEFAULT_MAX_BODY_BYTES: u64 = 4 * 1024 * 1024;

fn check_route(
    index: usize,
    raw: &RawRoute,
    principals: &Principals,
    checker: &mut Checker<'_>,
) -> Option<RouteConfig> {
    let key = |field: &str| format!("routes[{index}].{field}");

    let name = checked(&raw.name, check_name, key("name"), checker);
    let prefix = checked(&raw.prefix, check_prefix, key("prefix"), checker);
    let upstream = checked(&raw.upstream, http_url, key("upstream"), checker);
    let ca_file = match &raw.ca_file {
        Some(file) => checker.readable_file(&key("ca_file"), file).map(Some),
        None => Some(None),
    };
    let auth = check_auth(index, &raw.auth, checker);
    let per_user = check_principal(index, raw, auth.as_ref(), principals, checker);
    let headers = check_headers(index, &raw.headers, checker);
    let plugins = check_plugins(index, &raw.plugins, checker);
    let api_keys = super::validate::key_hashes(&key("api_keys"), &raw.api_keys, checker);
    let max_body_bytes = match &raw.max_body_bytes {
        None => Some(DEFAULT_MAX_BODY_BYTES),
        Some(limit) if *limit.get_ref() >= 1024 => Some(*limit.get_ref()),
        Some(limit) => {
            checker.fail(
                key("max_body_bytes"),
                Some(limit.span()),
                FieldErrorKind::BodyLimitTooSmall,
            );
            None
        }
    };

    Some(RouteConfig {
        name: name.map(|()| raw.name.get_ref().clone())?,
        prefix: prefix.map(|()| raw.prefix.get_ref().clone())?,
        upstream: upstream?,
        upstream_text: raw.upstream.get_ref().clone(),
        ca_file: ca_file?,
        max_body_bytes: max_body_bytes?,
        transport: raw.transport,
        api_keys: api_keys?,
        auth: auth?,
        per_user: per_user?,
        headers: headers?,
        plugins: plugins?,
    })
}

/// Whether the route is per-user: its own `principal`, else the server's for OAuth routes.
/// A route that asks for it itself must be an OAuth route, and someone must name callers.
fn check_principal(
    index: usize,
    raw: &RawRoute,
    auth: Option<&RouteAuth>,
    principals: &Principals,
    checker: &mut Checker<'_>,
) -> Option<bool> {
    let oauth = matches!(auth, Some(RouteAuth::OAuth(_)));
    let Some(own) = &raw.principal else {
        let server = principals.default.as_ref().map(|mode| *mode.get_ref());
        return Some(oauth && server == Some(PrincipalMode::Forwarded));
    };
    if *own.get_ref() == PrincipalMode::Shared {
        return Some(false);
    }
    let key = format!("routes[{index}].principal");
    if auth.is_some() && !oauth {
        checker.fail(key, Some(own.span()), FieldErrorKind::PerUserWithoutOAuth);
        return None;
    }
    if !principals.identity_known {
        checker.fail(
            key,
            Some(own.span()),
            FieldErrorKind::PerUserWithoutIdentity,
        );
        return None;
    }
    Some(true)
}

/// `[[routes.plugins]]`: each table's `kind` names a registered plugin, which reads the
/// rest of the table.
fn check_plugins(
    index: usize,
    raw: &[Spanned<toml::Table>],
    checker: &mut Checker<'_>,
) -> Option<Vec<PluginConfig>> {
    let known = || {
        let names: Vec<&str> = crate::plugin::KINDS.iter().map(|kind| kind.name).collect();
        names.join(", ")
    };
    let mut plugins = Some(Vec::with_capacity(raw.len()));
    for (at, table) in raw.iter().enumerate() {
        let key = format!("routes[{index}].plugins[{at}]");
        let mut settings = table.get_ref().clone();
        let kind = match settings.remove("kind") {
            Some(toml::Value::String(name)) => {
                crate::plugin::kind(&name).ok_or(FieldErrorKind::UnknownPlugin {
                    kind: name,
                    known: known(),
                })
            }
            _ => Err(FieldErrorKind::PluginKindMissing { known: known() }),
        };
        let env = |name: &str| checker.env.var(name);
        let settings_digest = settings_digest(&settings);
        let parsed = kind.and_then(|kind| {
            let spec =
                kind.parse(settings, &env)
                    .map_err(|message| FieldErrorKind::PluginSettings {
                        kind: kind.name,
                        message,
                    })?;
            Ok(PluginConfig {
                kind: kind.name,
                spec,
                settings_digest,
            })
        });
        match parsed {
            Ok(plugin) => {
                if let Some(list) = plugins.as_mut() {
                    list.push(plugin);
                }
            }
            Err(error) => {
                checker.fail(key, Some(table.span()), error);
                plugins = None;
            }
        }
    }
    plugins
}

/// A digest of a plugin's settings as parsed (comments and layout do not count).
fn settings_digest(settings: &toml::Table) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(settings.to_string().as_bytes()).into()
}

/// Runs `rule` on a spanned string, recording a failure under `key`.
fn checked<T>(
    value: &Spanned<String>,
    rule: impl Fn(&str) -> Result<T, FieldErrorKind>,
    key: String,
    checker: &mut Checker<'_>,
) -> Option<T> {
    rule(value.get_ref())
        .map_err(|kind| checker.fail(key, Some(value.span()), kind))
        .ok()
}

fn check_name(name: &str) -> Result<(), FieldErrorKind> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if first_ok && rest_ok && name.len() <= MAX_NAME_LEN {
        Ok(())
    } else {
        Err(FieldErrorKind::InvalidRouteName {
            name: name.to_owned(),
        })
    }
}

/// Checks the shape of a prefix, then that it leaves the gateway's own paths alone.
pub(super) fn check_prefix(prefix: &str) -> Result<(), FieldErrorKind> {
    let malformed = |reason| {
        Err(FieldErrorKind::MalformedPrefix {
            prefix: prefix.to_owned(),
            reason,
        })
    };
    if !prefix.starts_with('/') {
        return malformed("must start with `/`");
    }
    if prefix.contains(['?', '#']) {
        return malformed("must be a path only, without `?` or `#`");
    }
    if !prefix.chars().all(is_prefix_char) {
        return malformed("may only contain A-Z, a-z, 0-9, `-`, `.`, `_`, `~` and `/`");
    }
    if prefix == "/" {
        return Ok(());
    }
    if prefix.ends_with('/') {
        return malformed("must not end with `/`");
    }
    if prefix.contains("//") {
        return malformed("must not contain an empty segment (`//`)");
    }
    for segment in prefix[1..].split('/') {
        if segment == "." || segment == ".." {
            return malformed("must not contain `.` or `..` segments");
        }
        if segment == "~" {
            return Err(FieldErrorKind::PrefixInternalSegment {
                prefix: prefix.to_owned(),
            });
        }
    }
    check_not_reserved(prefix)
}

fn is_prefix_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | '/')
}

/// `/` is reserved only as the exact path, and the reserved paths win over a `/` route,
/// so `/` itself is a fine prefix. Any other reserved path hides everything below it.
fn check_not_reserved(prefix: &str) -> Result<(), FieldErrorKind> {
    let shadowed = RESERVED_PATHS
        .iter()
        .filter(|reserved| **reserved != "/")
        .find(|reserved| {
            prefix
                .strip_prefix(**reserved)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        });
    match shadowed {
        Some(reserved) => Err(FieldErrorKind::ReservedPrefix {
            prefix: prefix.to_owned(),
            reserved,
        }),
        None => Ok(()),
    }
}

fn check_unique_names(routes: &[RawRoute], checker: &mut Checker<'_>) {
    let mut first_seen: HashMap<&str, &Spanned<String>> = HashMap::new();
    for (index, route) in routes.iter().enumerate() {
        let name = &route.name;
        match first_seen.get(name.get_ref().as_str()) {
            Some(first) => {
                let kind = FieldErrorKind::DuplicateRouteName {
                    name: name.get_ref().clone(),
                    first_line: checker.line(first.span()),
                };
                checker.fail(format!("routes[{index}].name"), Some(name.span()), kind);
            }
            None => {
                first_seen.insert(name.get_ref(), name);
            }
        }
    }
}

fn check_unique_prefixes(routes: &[RawRoute], checker: &mut Checker<'_>) {
    let mut first_seen: HashMap<&str, &RawRoute> = HashMap::new();
    for (index, route) in routes.iter().enumerate() {
        let prefix = &route.prefix;
        match first_seen.get(prefix.get_ref().as_str()) {
            Some(first) => {
                let kind = FieldErrorKind::OverlappingPrefix {
                    prefix: prefix.get_ref().clone(),
                    route: route.name.get_ref().clone(),
                    other_route: first.name.get_ref().clone(),
                    other_line: checker.line(first.prefix.span()),
                };
                checker.fail(format!("routes[{index}].prefix"), Some(prefix.span()), kind);
            }
            None => {
                first_seen.insert(prefix.get_ref(), route);
            }
        }
    }
}

fn check_auth(index: usize, raw: &RawAuth, checker: &mut Checker<'_>) -> Option<RouteAuth> {
    let key = |field: &str| format!("routes[{index}].auth.{field}");
    let kind = raw
        .kind
        .as_ref()
        .map_or(RawAuthKind::OAuth, |kind| *kind.get_ref());

    if kind != RawAuthKind::Bearer {
        let mut stray = false;
        for (field, value) in [
            ("token_env", &raw.token_env),
            ("token_file", &raw.token_file),
        ] {
            if let Some(value) = value {
                let error = FieldErrorKind::TokenSourceWithoutBearer { key: field };
                checker.fail(key(field), Some(value.span()), error);
                stray = true;
            }
        }
        if kind == RawAuthKind::None {
            stray |= oauth_keys_refused(index, raw, checker);
        }
        return match kind {
            _ if stray => None,
            RawAuthKind::None => Some(RouteAuth::None),
            _ => super::oauth::check(index, raw, checker)
                .map(|settings| RouteAuth::OAuth(Box::new(settings))),
        };
    }

    if oauth_keys_refused(index, raw, checker) {
        return None;
    }
    match (&raw.token_env, &raw.token_file) {
        (Some(var), None) => {
            if checker.env.var(var.get_ref()).is_some() {
                Some(RouteAuth::Bearer(BearerSource::Env(var.get_ref().clone())))
            } else {
                let error = FieldErrorKind::TokenEnvUnset {
                    var: var.get_ref().clone(),
                };
                checker.fail(key("token_env"), Some(var.span()), error);
                None
            }
        }
        (None, Some(file)) => checker
            .readable_file(&key("token_file"), file)
            .map(|path| RouteAuth::Bearer(BearerSource::File(path))),
        _ => {
            let span = raw.kind.as_ref().map(Spanned::span);
            checker.fail(key("kind"), span, FieldErrorKind::BearerSourceCount);
            None
        }
    }
}

/// Reports every OAuth key set on a route that is not an OAuth route; true if any was.
fn oauth_keys_refused(index: usize, raw: &RawAuth, checker: &mut Checker<'_>) -> bool {
    let keys = raw.oauth_keys();
    for (field, span) in &keys {
        let error = FieldErrorKind::OAuthKeyWithoutOAuth { key: field };
        checker.fail(
            format!("routes[{index}].auth.{field}"),
            Some(span.clone()),
            error,
        );
    }
    !keys.is_empty()
}

fn check_headers(
    index: usize,
    raw: &BTreeMap<Spanned<String>, Spanned<String>>,
    checker: &mut Checker<'_>,
) -> Option<Vec<(String, String)>> {
    let mut headers = Vec::with_capacity(raw.len());
    let mut seen = HashSet::new();
    let mut all_valid = true;

    for (name, value) in raw {
        let text = name.get_ref();
        let lower = text.to_ascii_lowercase();
        let error = if !is_header_name(text) {
            FieldErrorKind::InvalidHeaderName { name: text.clone() }
        } else if FORBIDDEN_HEADERS.contains(&lower.as_str()) {
            FieldErrorKind::ForbiddenHeader { name: text.clone() }
        } else if !seen.insert(lower) {
            FieldErrorKind::DuplicateHeader { name: text.clone() }
        } else if !is_header_value(value.get_ref()) {
            FieldErrorKind::InvalidHeaderValue { name: text.clone() }
        } else {
            headers.push((text.clone(), value.get_ref().clone()));
            continue;
        };
        let key = format!("routes[{index}].headers.{}", key_text(text));
        checker.fail(key, Some(name.span()), error);
        all_valid = false;
    }
    all_valid.then_some(headers)
}

/// An HTTP token (RFC 9110 `tchar`s).
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}

/// Visible characters, spaces and tabs; anything else could split or smuggle a header.
fn is_header_value(value: &str) -> bool {
    value.chars().all(|c| c == '\t' || !c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(prefix: &str) -> Option<String> {
        check_prefix(prefix).err().map(|error| error.to_string())
    }

    #[test]
    fn accepted_prefixes() {
        for prefix in ["/", "/a", "/a/b", "/a.b~c_d-e", "/authx", "/admins", "/A1"] {
            assert_eq!(reason(prefix), None, "{prefix}");
        }
    }

    #[test]
    fn malformed_prefixes_say_why() {
        let cases = [
            ("a", "must start with `/`"),
            ("", "must start with `/`"),
            ("/a/", "must not end with `/`"),
            ("/a//b", "empty segment"),
            ("/a/./b", "`.` or `..`"),
            ("/..", "`.` or `..`"),
            ("/a?x=1", "without `?` or `#`"),
            ("/a#x", "without `?` or `#`"),
            ("/a b", "may only contain"),
            ("/a%20b", "may only contain"),
            ("/é", "may only contain"),
        ];
        for (prefix, expected) in cases {
            let message = reason(prefix).unwrap_or_default();
            assert!(message.contains(expected), "{prefix:?}: {message}");
        }
    }

    #[test]
    fn tilde_segment_is_kept_for_the_gateway() {
        for prefix in ["/~", "/a/~", "/a/~/b"] {
            assert!(
                matches!(
                    check_prefix(prefix),
                    Err(FieldErrorKind::PrefixInternalSegment { .. })
                ),
                "{prefix}"
            );
        }
    }

    #[test]
    fn reserved_paths_and_paths_below_them_are_refused() {
        for (prefix, reserved) in [
            ("/auth", "/auth"),
            ("/oauth/x", "/oauth"),
            ("/admin/x", "/admin"),
            ("/metrics", "/metrics"),
            ("/healthz", "/healthz"),
            ("/readyz", "/readyz"),
            ("/.well-known/x", "/.well-known"),
        ] {
            match check_prefix(prefix) {
                Err(FieldErrorKind::ReservedPrefix {
                    reserved: found, ..
                }) => {
                    assert_eq!(found, reserved)
                }
                other => panic!("{prefix}: {other:?}"),
            }
        }
    }

    #[test]
    fn route_names() {
        for name in ["a", "jira", "0x", "a_b-c", &"a".repeat(64)] {
            assert!(check_name(name).is_ok(), "{name}");
        }
        for name in ["", "Jira", "-a", "_a", "a.b", "a b", &"a".repeat(65)] {
            assert!(check_name(name).is_err(), "{name}");
        }
    }

    #[test]
    fn header_names_and_values() {
        assert!(is_header_name("X-Api-Version"));
        assert!(!is_header_name("X Api"));
        assert!(!is_header_name("X:Api"));
        assert!(!is_header_name(""));
        assert!(is_header_value("a b\tc é"));
        assert!(!is_header_value("a\r\nX-Evil: 1"));
    }
}
