//! `examples/monitoring/grafana-dashboard.json` is a Grafana dashboard whose every query
//! names a metric that the gateway exposes at `/metrics`, and graphs counters only through
//! a range (`rate(...[...])`, `increase(...[...])`), never their raw totals.
//!
//! A family shows in the exposition only once it has a sample (a labelled family before
//! its first label set has none, not even its `# TYPE` line), and most need plugins,
//! deliveries or event sinks to get one. So the families are read from the registry in
//! `host/src/metrics.rs`, and a running gateway vouches for that reading: every family it
//! exposes must be there, with the same type.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient, sample_message};

/// Every string in `value` found under `key`, anywhere in the tree.
fn strings_under<'a>(value: &'a serde_json::Value, key: &str, out: &mut Vec<&'a str>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match v {
                    serde_json::Value::String(s) if k == key => out.push(s),
                    _ => strings_under(v, key, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| strings_under(v, key, out)),
        _ => {}
    }
}

/// The `tidegate_...` names in an expression, each with what follows it (past any label
/// matchers in braces).
fn metric_names(expr: &str) -> Vec<(&str, &str)> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("tidegate_") {
        let preceded_by_word = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let (name, mut after) = tail.split_at(end);
        if after.starts_with('{') {
            after = after.find('}').map_or("", |close| &after[close + 1..]);
        }
        if !preceded_by_word {
            found.push((name, after));
        }
        rest = &tail[end..];
    }
    found
}

/// The sample names of a family of type `kind`.
fn sample_names(family: &str, kind: &str) -> Vec<String> {
    match kind {
        "counter" => vec![format!("{family}_total")],
        "histogram" => ["_bucket", "_sum", "_count"]
            .iter()
            .map(|s| format!("{family}{s}"))
            .collect(),
        _ => vec![family.to_owned()],
    }
}

/// The families `host/src/metrics.rs` registers, prefixed, with their types: each
/// `registry.register("name", "help", field.clone())`, typed by the field's declaration.
fn registered() -> BTreeMap<String, &'static str> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/src/metrics.rs");
    let source =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut families = BTreeMap::new();
    for call in source.split("registry.register(").skip(1) {
        let call = &call[..call.find(");").expect("the end of a register call")];
        let name = call.split('"').nth(1).expect("a name literal");
        let field = call
            .rsplit(',')
            .find_map(|arg| arg.trim().strip_suffix(".clone()"))
            .unwrap_or_else(|| panic!("no `field.clone()` in register({call})"));
        let declared = source
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("pub {field}: ")))
            .unwrap_or_else(|| panic!("no `pub {field}:` in metrics.rs"));
        let kind = if declared.contains("Histogram") {
            "histogram"
        } else if declared.contains("Counter") {
            "counter"
        } else if declared.contains("Gauge") {
            "gauge"
        } else {
            panic!("{field}: {declared} is of no type this test knows")
        };
        families.insert(format!("tidegate_{name}"), kind);
    }
    families
}

#[test]
fn every_dashboard_query_names_an_exposed_metric() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/monitoring/grafana-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    assert!(
        dashboard["__inputs"]
            .as_array()
            .is_some_and(|inputs| inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS")),
        "a DS_PROMETHEUS datasource input"
    );
    let mut expressions = Vec::new();
    strings_under(&dashboard, "expr", &mut expressions);
    let mut definitions = Vec::new();
    strings_under(&dashboard["templating"], "definition", &mut definitions);
    assert!(expressions.len() >= 20, "{} queries", expressions.len());

    let families = registered();
    assert!(families.len() >= 20, "{families:#?}");
    // A running gateway, after a session and a message (labelled families get samples).
    let gateway = Gateway::start_with(&GatewayConfig {
        top: vec![("admin".into(), r#"{ address = "127.0.0.1:0" }"#.into())],
        ..Default::default()
    });
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .send_mail(
            "a@example.org",
            &["user@example.test"],
            &sample_message("m1", "ok"),
        )
        .expect(250, "2.0.0");
    client.command("QUIT");
    let (status, metrics) = gateway.admin_get("/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let exposed: BTreeMap<&str, &str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' '))
        .collect();
    for family in [
        "tidegate_sessions",
        "tidegate_messages_accepted",
        "tidegate_queued_messages",
    ] {
        assert!(exposed.contains_key(family), "{family} not in\n{metrics}");
    }
    for (family, kind) in &exposed {
        assert_eq!(
            families.get(*family),
            Some(kind),
            "the gateway exposes {family} ({kind}); metrics.rs read as {families:#?}"
        );
    }
    let mut names = BTreeSet::new();
    let mut counters = BTreeSet::new();
    for (family, kind) in &families {
        let samples = sample_names(family, kind);
        if *kind != "gauge" {
            counters.extend(samples.iter().cloned());
        }
        names.extend(samples);
    }

    let mut used = BTreeSet::new();
    let mut problems = Vec::new();
    for expr in expressions.iter().chain(&definitions) {
        let found = metric_names(expr);
        if found.is_empty() {
            problems.push(format!("no tidegate metric in `{expr}`"));
        }
        for (name, after) in found {
            used.insert(name);
            if !names.contains(name) {
                problems.push(format!("`{name}` is not exposed (in `{expr}`)"));
            } else if counters.contains(name) && !after.starts_with('[') {
                problems.push(format!(
                    "counter `{name}` graphed without rate() in `{expr}`"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}\nexposed: {names:#?}");
    // The families the dashboard is there for.
    for family in [
        "tidegate_sessions_total",
        "tidegate_sessions_active",
        "tidegate_messages_accepted_total",
        "tidegate_messages_refused_total",
        "tidegate_deliveries_total",
        "tidegate_queued_messages",
        "tidegate_plugin_calls_total",
        "tidegate_plugin_failures_total",
        "tidegate_plugin_fuel_total",
        "tidegate_plugin_memory_high_water_bytes",
        "tidegate_plugin_reload_failures_total",
        "tidegate_events_emitted_total",
        "tidegate_events_dropped_total",
        "tidegate_webhook_backlog_events",
        "tidegate_webhook_failures_total",
        "tidegate_admin_unauthorized_total",
        "tidegate_log_lines_dropped",
    ] {
        assert!(
            used.contains(family),
            "the dashboard does not show {family}"
        );
    }
}

#[test]
fn the_name_scanner_sees_names_and_ranges() {
    assert_eq!(
        metric_names(r#"sum(rate(tidegate_a_total{x="y"}[5m])) / tidegate_b"#),
        vec![
            ("tidegate_a_total", "[5m])) / tidegate_b"),
            ("tidegate_b", "")
        ]
    );
    assert!(metric_names("my_tidegate_x").is_empty());
}
