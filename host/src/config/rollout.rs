//! How a `[[plugin]]` enters service: enforcing (the default), as a shadow beside the
//! plugin it may replace (run on a copy of the same inputs, compared, never applied), or
//! as a canary that takes a fraction of new sessions in place of its primary and is rolled
//! back on its own when it does worse.
//!
//! # Placement
//! A shadow or a canary is never listed in a listener's `plugins`: it goes wherever its
//! primary (`shadow_of`, `canary_of`) goes, in every chain that runs it. A shadow without
//! `shadow_of` runs beside every listener's whole chain and is compared with the chain's
//! decision.

use serde::Deserialize;

use super::{Duration, ListenerConfig, PluginConfig};

/// `mode` of a `[[plugin]]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginMode {
    /// Its verdicts and edits are applied.
    #[default]
    Enforce,
    /// It runs on a copy of its primary's inputs; its answers are only compared.
    Shadow,
    /// It takes `canary` of new sessions in place of its primary.
    Canary,
}

impl PluginMode {
    /// The mode's name, as in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginMode::Enforce => "enforce",
            PluginMode::Shadow => "shadow",
            PluginMode::Canary => "canary",
        }
    }
}

pub(super) fn default_canary_min_sessions() -> u64 {
    100
}

pub(super) fn default_canary_fault_margin() -> f64 {
    0.01
}

pub(super) fn default_canary_refusal_margin() -> f64 {
    0.05
}

pub(super) fn default_shadow_max_sessions() -> u32 {
    64
}

/// The rollback policy of a canary, from its `[[plugin]]` table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CanaryPolicy {
    /// The share of new sessions it takes, 0 to 1.
    pub fraction: f64,
    /// Sessions it must have served before its rates are judged.
    pub min_sessions: u64,
    /// How much its fault rate may exceed its primary's.
    pub max_fault_rate_margin: f64,
    /// How much its refusal (reject, tempfail, disconnect) rate may exceed its primary's.
    pub max_refusal_rate_margin: f64,
    /// Promote it after this long without a regression (and at least `min_sessions`).
    pub soak: Option<std::time::Duration>,
}

impl PluginConfig {
    /// A canary's rollback policy (for a reload that enters as a canary, its share is
    /// `reload_as_canary`).
    pub fn canary_policy(&self) -> CanaryPolicy {
        CanaryPolicy {
            fraction: self.canary.or(self.reload_as_canary).unwrap_or(0.0),
            min_sessions: self.canary_min_sessions,
            max_fault_rate_margin: self.canary_max_fault_rate_margin,
            max_refusal_rate_margin: self.canary_max_refusal_rate_margin,
            soak: self.canary_soak.map(|d: Duration| d.0),
        }
    }
}

/// Checks the rollout keys of every `[[plugin]]` and that listeners leave shadows and
/// canaries out of their chains; returns the key path and the problem.
pub(super) fn validate(
    plugins: &[PluginConfig],
    listeners: &[ListenerConfig],
) -> Result<(), (String, String)> {
    let enforcing = |name: &str| {
        plugins
            .iter()
            .any(|p| p.name == name && p.mode == PluginMode::Enforce)
    };
    let mut canaried = std::collections::HashSet::new();
    for (i, plugin) in plugins.iter().enumerate() {
        let key = |k: &str| format!("plugin[{i}].{k}");
        let misplaced = |k: &str| {
            Err((
                key(k),
                format!(
                    "`{k}` belongs to a plugin with mode = \"{}\", not \"{}\"",
                    if k.starts_with("shadow") {
                        "shadow"
                    } else {
                        "canary"
                    },
                    plugin.mode.as_str()
                ),
            ))
        };
        if plugin.mode != PluginMode::Shadow && plugin.shadow_of.is_some() {
            return misplaced("shadow_of");
        }
        if let Some(share) = plugin.reload_as_canary {
            if plugin.mode != PluginMode::Enforce {
                return Err((
                    key("reload_as_canary"),
                    "only an enforcing plugin enters a reload as a canary".into(),
                ));
            }
            if !(share > 0.0 && share <= 1.0) {
                return Err((
                    key("reload_as_canary"),
                    "the share of sessions is above 0 and at most 1 (e.g. 0.1)".into(),
                ));
            }
            if let Some(j) = plugins
                .iter()
                .position(|p| p.canary_of.as_deref() == Some(plugin.name.as_str()))
            {
                return Err((
                    format!("plugin[{j}].canary_of"),
                    format!(
                        "`{}` enters reloads as a canary (reload_as_canary): one canary at a time",
                        plugin.name
                    ),
                ));
            }
        }
        if plugin.mode != PluginMode::Canary {
            if plugin.canary_of.is_some() {
                return misplaced("canary_of");
            }
            if plugin.canary.is_some() {
                return misplaced("canary");
            }
        }
        match plugin.mode {
            PluginMode::Enforce => {}
            PluginMode::Shadow => {
                if let Some(primary) = &plugin.shadow_of
                    && !enforcing(primary)
                {
                    return Err((
                        key("shadow_of"),
                        format!("no enforcing [[plugin]] is named `{primary}`"),
                    ));
                }
                if !(1..=10_000).contains(&plugin.shadow_max_sessions) {
                    return Err((
                        key("shadow_max_sessions"),
                        "must be between 1 and 10000".into(),
                    ));
                }
            }
            PluginMode::Canary => {
                let Some(primary) = &plugin.canary_of else {
                    return Err((
                        key("mode"),
                        "a canary names the enforcing plugin it stands in for: add canary_of"
                            .into(),
                    ));
                };
                if !enforcing(primary) {
                    return Err((
                        key("canary_of"),
                        format!("no enforcing [[plugin]] is named `{primary}`"),
                    ));
                }
                if !canaried.insert(primary.as_str()) {
                    return Err((
                        key("canary_of"),
                        format!("`{primary}` already has a canary: one at a time"),
                    ));
                }
                match plugin.canary {
                    Some(share) if share > 0.0 && share <= 1.0 => {}
                    Some(_) => {
                        return Err((
                            key("canary"),
                            "the share of sessions is above 0 and at most 1 (e.g. 0.05)".into(),
                        ));
                    }
                    None => {
                        return Err((
                            key("mode"),
                            "a canary needs its share of sessions: add canary = 0.05 (say)".into(),
                        ));
                    }
                }
            }
        }
        if !(1..=100_000_000).contains(&plugin.canary_min_sessions) {
            return Err((
                key("canary_min_sessions"),
                "must be between 1 and 100000000".into(),
            ));
        }
        for (k, margin) in [
            (
                "canary_max_fault_rate_margin",
                plugin.canary_max_fault_rate_margin,
            ),
            (
                "canary_max_refusal_rate_margin",
                plugin.canary_max_refusal_rate_margin,
            ),
        ] {
            if !(0.0..=1.0).contains(&margin) {
                return Err((key(k), "a rate margin is between 0 and 1".into()));
            }
        }
    }
    for (i, listener) in listeners.iter().enumerate() {
        for name in listener.plugins.iter().flatten() {
            if let Some(plugin) = plugins
                .iter()
                .find(|p| p.name == *name && p.mode != PluginMode::Enforce)
            {
                let primary = plugin.shadow_of.as_deref().or(plugin.canary_of.as_deref());
                let beside = match primary {
                    Some(primary) => format!("beside `{primary}` wherever that runs"),
                    None => "beside every listener's whole chain".into(),
                };
                return Err((
                    format!("listener[{i}].plugins"),
                    format!(
                        "`{name}` is a {} (mode = \"{}\"): it runs {beside}; leave it out of `plugins`",
                        plugin.mode.as_str(),
                        plugin.mode.as_str()
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;

    const BASE: &str = r#"
hostname = "relay.example.test"

[[listener]]
name = "mx"
address = "127.0.0.1:2525"

[spool]
path = "var/spool"

[relay]
accept_domains = ["example.test"]

[[plugin]]
name = "content"
path = "content.wasm"
"#;

    fn parse(extra: &str) -> Result<Config, String> {
        Config::parse(&format!("{BASE}{extra}"), Path::new("t.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_documented_shadow_and_canary_tables_are_accepted() {
        let config = parse(
            r#"
[[plugin]]
name = "content-next"
path = "plugins/dist/content_filter_v2.wasm"
mode = "shadow"
shadow_of = "content"

[[plugin]]
name = "content-canary"
path = "v3.wasm"
mode = "canary"
canary_of = "content"
canary = 0.05
canary_min_sessions = 50
canary_soak = "1h"
"#,
        )
        .unwrap();
        assert_eq!(config.plugin_list[1].mode, super::PluginMode::Shadow);
        let policy = config.plugin_list[2].canary_policy();
        assert_eq!(policy.fraction, 0.05);
        assert_eq!(policy.min_sessions, 50);
        assert_eq!(policy.soak, Some(std::time::Duration::from_secs(3600)));
    }

    #[test]
    fn misplaced_or_dangling_rollout_keys_name_their_key() {
        let cases = [
            (
                "[[plugin]]\nname = \"n\"\npath = \"n.wasm\"\nshadow_of = \"content\"\n",
                "plugin[1].shadow_of",
            ),
            (
                "[[plugin]]\nname = \"n\"\npath = \"n.wasm\"\nmode = \"shadow\"\nshadow_of = \"nope\"\n",
                "plugin[1].shadow_of: no enforcing [[plugin]] is named `nope`",
            ),
            (
                "[[plugin]]\nname = \"n\"\npath = \"n.wasm\"\nmode = \"canary\"\ncanary = 0.1\n",
                "plugin[1].mode: a canary names",
            ),
            (
                "[[plugin]]\nname = \"n\"\npath = \"n.wasm\"\nmode = \"canary\"\ncanary_of = \"content\"\ncanary = 1.5\n",
                "plugin[1].canary:",
            ),
            (
                "[[plugin]]\nname = \"n\"\npath = \"n.wasm\"\nmode = \"canary\"\ncanary_of = \"content\"\ncanary = 0.1\ncanary_max_fault_rate_margin = 2.0\n",
                "plugin[1].canary_max_fault_rate_margin",
            ),
            (
                "[[plugin]]\nname = \"n\"\npath = \"n.wasm\"\nmode = \"shadow\"\nreload_as_canary = 0.1\n",
                "plugin[1].reload_as_canary",
            ),
        ];
        for (extra, expected) in cases {
            let err = parse(extra).unwrap_err();
            assert!(err.contains(expected), "{extra}: {err}");
        }
    }
}
