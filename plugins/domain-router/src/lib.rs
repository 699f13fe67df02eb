//! `domain-router`: sends each recipient to a route chosen by its domain.
//!
//! ```toml
//! [[plugin]]
//! name = "router"
//! path = "plugins/dist/domain_router.wasm"
//! [plugin.config]
//! default = "mx"                        # domains that match nothing; omit to leave them to others
//! [plugin.config.routes]
//! "example.test" = "internal"           # a named [[route]]
//! ".example.test" = "internal"          # any subdomain of example.test (not example.test itself)
//! "lists.example.test" = "local"        # the local maildir transport
//! "void.example.test" = "discard"       # dropped (and logged)
//! "partner.test" = "mx"                 # MX lookup of the recipient's domain
//! [plugin.config.egress]
//! ".bulk.example.test" = "bulk"         # mail it routes to these leaves from [[egress]] "bulk"
//! ```
//!
//! A route is `mx`, `local` or `discard` (any case), or else the name of a `[[route]]` of
//! the gateway's configuration (letters, digits, `.`, `_`, `-`). Domains are matched
//! case-insensitively, ignoring a trailing dot; a key with a leading dot matches every
//! subdomain of that domain, but not the domain itself. When several keys match, the
//! longest wins: `lists.example.test` before `.example.test`, `.a.example.test` before
//! `.example.test`.
//!
//! The plugin answers `on-route` for the queue. It also sets the transaction tag `route` at
//! RCPT TO, so the logs, later stages and other plugins see the choice: the route's name
//! (`internal`, `local`, `mx`, ...), or the distinct names joined with commas in recipient
//! order when the recipients of one transaction go different ways (`internal,local`).
//! Recipients that match nothing (and no `default`) add nothing. Put this plugin after the
//! plugins that may refuse recipients, since a tag set at RCPT TO stays when a later plugin
//! refuses that recipient.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use tidegate_plugin_sdk::prelude::*;

/// The transaction tag set at RCPT TO.
pub const ROUTE_TAG: &str = "route";

/// The plugin's configuration, as written in `[plugin.config]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Domain (or `.domain` for its subdomains) → route.
    #[serde(default)]
    pub routes: BTreeMap<String, String>,
    /// The route of domains no key matches; `None` leaves them to other plugins and the
    /// static routes.
    #[serde(default)]
    pub default: Option<String>,
    /// Domain (or `.domain`) → the `[[egress]]` pool its mail leaves from (the longest
    /// matching key wins, as for routes).
    #[serde(default)]
    pub egress: BTreeMap<String, String>,
}

/// The plugin: the checked routing table.
#[derive(Debug)]
pub struct DomainRouter {
    /// Exact domains, lowercased.
    exact: HashMap<String, Route>,
    /// Subdomain keys, lowercased, each with its leading dot.
    subdomains: HashMap<String, Route>,
    default: Option<Route>,
    /// Domain keys (exact, or `.domain`) → egress pool, lowercased.
    egress: HashMap<String, String>,
}

impl DomainRouter {
    /// Checks a configuration; the error names the offending key.
    pub fn new(config: Config) -> Result<DomainRouter, String> {
        let mut exact = HashMap::new();
        let mut subdomains = HashMap::new();
        for (key, value) in &config.routes {
            let route = parse_route(value).map_err(|e| format!("routes.\"{key}\": {e}"))?;
            let (subdomain, domain) = match key.strip_prefix('.') {
                Some(rest) => (true, rest),
                None => (false, key.as_str()),
            };
            let domain = normalise_domain(domain);
            if !is_domain(&domain) {
                return Err(format!(
                    "routes.\"{key}\": not a domain (write `example.test`, or `.example.test` for its subdomains)"
                ));
            }
            let (table, stored) = if subdomain {
                (&mut subdomains, format!(".{domain}"))
            } else {
                (&mut exact, domain)
            };
            if table.insert(stored.clone(), route).is_some() {
                return Err(format!(
                    "routes.\"{key}\": `{stored}` is given twice (domains are case-insensitive)"
                ));
            }
        }
        let default = match &config.default {
            Some(value) => Some(parse_route(value).map_err(|e| format!("default: {e}"))?),
            None => None,
        };
        let mut egress = HashMap::new();
        for (key, pool) in &config.egress {
            let domain = normalise_domain(key.trim_start_matches('.'));
            let valid_pool =
                !pool.is_empty() && pool.len() <= 64 && pool.bytes().all(|b| b.is_ascii_graphic());
            if !is_domain(&domain) || !valid_pool {
                return Err(format!(
                    "egress.\"{key}\": a domain (or `.domain`) and the name of an [[egress]] pool"
                ));
            }
            let stored = if key.starts_with('.') {
                format!(".{domain}")
            } else {
                domain
            };
            egress.insert(stored, pool.clone());
        }
        Ok(DomainRouter {
            exact,
            subdomains,
            default,
            egress,
        })
    }

    /// The egress pool of a recipient address, if a key matches (the longest wins).
    pub fn egress_for(&self, recipient: &str) -> Option<&str> {
        let domain = recipient
            .rsplit_once('@')
            .map(|(_, domain)| normalise_domain(domain.trim_end_matches('>')))?;
        if let Some(pool) = self.egress.get(&domain) {
            return Some(pool);
        }
        domain
            .match_indices('.')
            .find_map(|(i, _)| self.egress.get(&domain[i..]))
            .map(String::as_str)
    }

    /// The route of a recipient address, if the table or the default has one.
    pub fn route_for(&self, recipient: &str) -> Option<Route> {
        let domain = recipient
            .rsplit_once('@')
            .map(|(_, domain)| normalise_domain(domain.trim_end_matches('>')));
        domain
            .and_then(|d| self.lookup(&d))
            .or(self.default.as_ref())
            .cloned()
    }

    /// The longest key matching a lowercased domain.
    fn lookup(&self, domain: &str) -> Option<&Route> {
        if let Some(route) = self.exact.get(domain) {
            return Some(route);
        }
        // `.b.example.test`, then `.example.test`, then `.test`: longest first.
        domain
            .match_indices('.')
            .find_map(|(i, _)| self.subdomains.get(&domain[i..]))
    }
}

impl Plugin for DomainRouter {
    fn init(host: &dyn Host) -> Result<Self, String> {
        DomainRouter::new(host.config()?)
    }

    /// Nothing here is per session: the checked configuration serves every session.
    fn new_session(&mut self, _host: &dyn Host) -> Result<(), String> {
        Ok(())
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            rcpt_to: true,
            route: true,
            ..Hooks::default()
        }
    }

    fn on_rcpt_to(&mut self, host: &dyn Host, info: &RcptToInfo) -> Response {
        let Some(route) = self.route_for(&info.recipient) else {
            return Response::next();
        };
        let name = route_name(&route);
        host.log(
            Level::Debug,
            "recipient routed",
            &[("recipient", &info.recipient), ("route", name)],
        );
        let tag = match host.tag(ROUTE_TAG) {
            Some(seen) if seen.split(',').any(|n| n == name) => seen,
            Some(seen) if !seen.is_empty() => format!("{seen},{name}"),
            _ => name.to_owned(),
        };
        Response::next().tag(ROUTE_TAG, &tag)
    }

    fn on_route(&mut self, host: &dyn Host, recipient: &str) -> Option<Route> {
        let route = self.route_for(recipient)?;
        if let Some(pool) = self.egress_for(recipient) {
            host.choose_egress(pool);
        }
        Some(route)
    }
}

tidegate_plugin_sdk::export!(DomainRouter);

/// `mx`, `local` and `discard` (any case) are the built-in routes; anything else names a
/// `[[route]]`.
pub fn parse_route(value: &str) -> Result<Route, String> {
    if value.eq_ignore_ascii_case("mx") {
        Ok(Route::Mx)
    } else if value.eq_ignore_ascii_case("local") {
        Ok(Route::Local)
    } else if value.eq_ignore_ascii_case("discard") {
        Ok(Route::Discard)
    } else if !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Ok(Route::Named(value.to_owned()))
    } else {
        Err(format!(
            "`{value}` is not a route: use mx, local, discard or the name of a [[route]] (letters, digits, `.`, `_`, `-`)"
        ))
    }
}

/// The name a route is shown by in the `route` tag and the logs.
pub fn route_name(route: &Route) -> &str {
    match route {
        Route::Mx => "mx",
        Route::Local => "local",
        Route::Discard => "discard",
        Route::Named(name) => name,
    }
}

/// Lowercased, without a trailing dot.
fn normalise_domain(domain: &str) -> String {
    domain.strip_suffix('.').unwrap_or(domain).to_lowercase()
}

/// Non-empty labels separated by dots; no spaces, `@`, `*`, brackets or controls. (Address
/// literals such as `[192.0.2.1]` are not routed by domain; `*.example.test` is written
/// `.example.test`.)
fn is_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.split('.').all(|label| !label.is_empty())
        && !domain.chars().any(|c| {
            c.is_whitespace()
                || c.is_control()
                || matches!(c, '@' | '[' | ']' | '<' | '>' | ',' | '*')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use tidegate_plugin_sdk::testing::{Harness, TestHost};

    fn session(config: Value) -> Harness<DomainRouter> {
        Harness::new(TestHost::new().with_config(config)).expect("config accepted")
    }

    fn refused(config: Value) -> String {
        Harness::<DomainRouter>::new(TestHost::new().with_config(config))
            .err()
            .expect("config refused")
    }

    fn named(name: &str) -> Option<Route> {
        Some(Route::Named(name.to_owned()))
    }

    fn table() -> Harness<DomainRouter> {
        session(json!({ "routes": {
            "example.test": "internal",
            ".example.test": "internal-sub",
            "lists.example.test": "local",
            "void.example.test": "discard",
            ".deep.example.test": "deep",
            "partner.test": "MX",
        }}))
    }

    #[test]
    fn a_routed_domain_can_leave_from_an_egress_pool() {
        let mut s = session(json!({
            "routes": { ".example.test": "internal", "other.test": "mx" },
            "egress": { ".example.test": "bulk", "a.example.test": "special" },
        }));
        assert_eq!(s.route("x@b.example.test"), named("internal"));
        assert_eq!(s.route("x@a.example.test"), named("internal"));
        assert_eq!(s.route("x@other.test"), Some(Route::Mx));
        assert_eq!(s.host.egress_choices(), vec!["bulk", "special"]);
        assert!(refused(json!({ "egress": { "not a domain": "x" } })).contains("egress."));
    }

    #[test]
    fn exact_domains_map_to_their_routes() {
        let mut s = table();
        assert_eq!(s.route("user@example.test"), named("internal"));
        assert_eq!(s.route("list@lists.example.test"), Some(Route::Local));
        assert_eq!(s.route("x@void.example.test"), Some(Route::Discard));
        assert_eq!(s.route("x@partner.test"), Some(Route::Mx));
    }

    #[test]
    fn domains_and_keys_match_case_insensitively() {
        let mut s = session(
            json!({ "routes": { "Example.TEST": "internal", ".Sub.Example.Test": "Lab" } }),
        );
        assert_eq!(s.route("User@EXAMPLE.test"), named("internal"));
        assert_eq!(
            s.route("a@X.SUB.example.TEST"),
            named("Lab"),
            "route names keep their case"
        );
    }

    #[test]
    fn a_leading_dot_matches_subdomains_but_not_the_domain_itself() {
        let mut s = session(json!({ "routes": { ".example.test": "sub" } }));
        assert_eq!(s.route("a@mail.example.test"), named("sub"));
        assert_eq!(s.route("a@a.b.c.example.test"), named("sub"));
        assert_eq!(s.route("a@example.test"), None);
        assert_eq!(
            s.route("a@badexample.test"),
            None,
            "a label boundary is needed"
        );
        assert_eq!(s.route("a@example.test.evil"), None);
    }

    #[test]
    fn the_longest_matching_key_wins() {
        let mut s = table();
        // Exact beats the parent's subdomain key.
        assert_eq!(s.route("a@lists.example.test"), Some(Route::Local));
        // A deeper subdomain key beats a shallower one, and applies to any depth below it.
        assert_eq!(s.route("a@x.deep.example.test"), named("deep"));
        assert_eq!(s.route("a@y.x.deep.example.test"), named("deep"));
        // The domain of a subdomain key itself falls to the shallower key.
        assert_eq!(s.route("a@deep.example.test"), named("internal-sub"));
        assert_eq!(s.route("a@other.example.test"), named("internal-sub"));
        // Subdomains of an exact-only key are not covered by it.
        assert_eq!(s.route("a@x.lists.example.test"), named("internal-sub"));
        assert_eq!(s.route("a@x.partner.test"), None);
    }

    #[test]
    fn without_a_default_unmatched_domains_are_left_to_others() {
        let mut s = table();
        assert_eq!(s.route("a@elsewhere.test"), None);
        assert_eq!(s.route("no-domain"), None);
    }

    #[test]
    fn a_default_catches_everything_else() {
        let mut s = session(json!({ "routes": { "example.test": "internal" }, "default": "mx" }));
        assert_eq!(s.route("a@elsewhere.test"), Some(Route::Mx));
        assert_eq!(s.route("a@example.test"), named("internal"));
        assert_eq!(s.route("postmaster"), Some(Route::Mx));
        let mut s = session(json!({ "default": "smarthost" }));
        assert_eq!(s.route("a@anything.test"), named("smarthost"));
        let mut s = session(json!({ "default": "Discard" }));
        assert_eq!(s.route("a@anything.test"), Some(Route::Discard));
    }

    #[test]
    fn an_empty_configuration_routes_nothing() {
        let mut s = session(json!({}));
        assert_eq!(s.route("a@example.test"), None);
        let r = s.rcpt_to("a@example.test");
        assert_eq!(r, Response::next());
    }

    #[test]
    fn odd_but_valid_recipient_forms_find_their_domain() {
        let mut s = table();
        assert_eq!(
            s.route("user@example.test."),
            named("internal"),
            "trailing dot"
        );
        assert_eq!(
            s.route("<user@example.test>"),
            named("internal"),
            "angle brackets"
        );
        assert_eq!(
            s.route("\"a@b\"@lists.example.test"),
            Some(Route::Local),
            "quoted local part with @"
        );
        assert_eq!(s.route("user@[192.0.2.1]"), None, "address literal");
        assert_eq!(s.route("user@"), None);
    }

    #[test]
    fn keys_with_a_trailing_dot_are_the_same_domain() {
        let mut s = session(json!({ "routes": { "example.test.": "internal" } }));
        assert_eq!(s.route("a@example.test"), named("internal"));
        assert!(
            refused(json!({ "routes": { "example.test.": "a", "example.test": "b" } }))
                .contains("given twice")
        );
    }

    #[test]
    fn rcpt_to_sets_the_route_tag() {
        let mut s = table();
        let r = s.rcpt_to("user@example.test");
        assert_eq!(r.verdict, Verdict::Continue);
        assert_eq!(
            r.edits,
            vec![Edit::SetTag("route".into(), "internal".into())]
        );
        assert_eq!(s.host.tag("route").as_deref(), Some("internal"));
        assert!(
            s.host
                .logs()
                .iter()
                .any(|(level, line)| *level == Level::Debug
                    && line.contains("recipient=user@example.test route=internal"))
        );
    }

    #[test]
    fn recipients_going_different_ways_are_all_named_once_in_order() {
        let mut s = table();
        s.rcpt_to("a@example.test");
        s.rcpt_to("b@example.test");
        assert_eq!(s.host.tag("route").as_deref(), Some("internal"));
        s.rcpt_to("c@lists.example.test");
        assert_eq!(s.host.tag("route").as_deref(), Some("internal,local"));
        s.rcpt_to("d@example.test");
        s.rcpt_to("e@void.example.test");
        assert_eq!(
            s.host.tag("route").as_deref(),
            Some("internal,local,discard")
        );
    }

    #[test]
    fn unrouted_recipients_leave_the_tag_alone() {
        let mut s = table();
        let r = s.rcpt_to("a@elsewhere.test");
        assert_eq!(r, Response::next());
        assert_eq!(s.host.tag("route"), None);
        s.rcpt_to("a@example.test");
        s.rcpt_to("a@elsewhere.test");
        assert_eq!(s.host.tag("route").as_deref(), Some("internal"));
    }

    #[test]
    fn a_route_name_that_merely_contains_another_is_still_added() {
        let mut s = session(json!({ "routes": { "a.test": "int", "b.test": "internal" } }));
        s.rcpt_to("x@b.test");
        s.rcpt_to("x@a.test");
        assert_eq!(s.host.tag("route").as_deref(), Some("internal,int"));
    }

    #[test]
    fn the_default_route_is_tagged_too() {
        let mut s = session(json!({ "default": "mx" }));
        s.rcpt_to("a@anywhere.test");
        assert_eq!(s.host.tag("route").as_deref(), Some("mx"));
    }

    #[test]
    fn it_subscribes_to_rcpt_to_and_route_only() {
        let s = table();
        assert_eq!(
            s.plugin.hooks(),
            Hooks {
                rcpt_to: true,
                route: true,
                ..Hooks::default()
            }
        );
    }

    #[test]
    fn bad_configurations_are_refused_at_load_with_the_key_named() {
        let cases = [
            (json!({ "route": {} }), "unknown field `route`"),
            (
                json!({ "routes": { "example.test": "" } }),
                "routes.\"example.test\": `` is not a route",
            ),
            (
                json!({ "routes": { "example.test": "two words" } }),
                "is not a route",
            ),
            (json!({ "routes": { "": "internal" } }), "not a domain"),
            (json!({ "routes": { ".": "internal" } }), "not a domain"),
            (
                json!({ "routes": { "a..test": "internal" } }),
                "not a domain",
            ),
            (
                json!({ "routes": { "user@example.test": "internal" } }),
                "not a domain",
            ),
            (
                json!({ "routes": { "*.example.test": "internal" } }),
                "routes.\"*.example.test\"",
            ),
            (
                json!({ "routes": { "exa mple.test": "internal" } }),
                "not a domain",
            ),
            (
                json!({ "routes": { "Example.test": "a", "example.TEST": "b" } }),
                "given twice",
            ),
            (
                json!({ "default": "no/slash" }),
                "default: `no/slash` is not a route",
            ),
            (json!({ "routes": { "example.test": 3 } }), "plugin config"),
        ];
        for (config, expected) in cases {
            let error = refused(config.clone());
            assert!(error.contains(expected), "{config}: {error}");
        }
    }

    #[test]
    fn route_names_round_trip() {
        for (text, route) in [
            ("mx", Route::Mx),
            ("LOCAL", Route::Local),
            ("discard", Route::Discard),
            ("smart-host_2.eu", Route::Named("smart-host_2.eu".into())),
        ] {
            assert_eq!(parse_route(text), Ok(route.clone()));
            assert_eq!(route_name(&route), text.to_ascii_lowercase());
        }
    }
}
