//! The metrics of shadow and canary plugins: how often a shadow agreed with what was
//! enforced (and how it disagreed), and how each canary fares against its primary.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{PluginHookLabels, PluginLabels};

/// Labels of a shadow's disagreement: the shadow, the hook, and both verdicts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowLabels {
    /// The shadow plugin.
    pub plugin: String,
    /// The hook.
    pub hook: String,
    /// What was enforced (the primary's verdict, or the chain's decision).
    pub enforced: &'static str,
    /// What the shadow answered.
    pub shadow: &'static str,
}

/// Labels of a canary's sessions: which canary, which `version` ran (`primary` or
/// `canary`), and how the session went for it (`ok`, `fault`, `refusal`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CanarySessionLabels {
    /// The canary plugin.
    pub plugin: String,
    /// `primary` or `canary`.
    pub version: &'static str,
    /// `ok`, `fault` or `refusal`.
    pub outcome: &'static str,
}

/// The families, registered with the gateway's registry.
#[derive(Debug, Default)]
pub struct RolloutMetrics {
    /// Shadow answers that differed from what was enforced.
    pub shadow_disagreements: Family<ShadowLabels, Counter>,
    /// Shadow answers that matched what was enforced.
    pub shadow_agreements: Family<PluginHookLabels, Counter>,
    /// Stages a shadow did not see (its sessions all busy, its queue full).
    pub shadow_skipped: Family<PluginLabels, Counter>,
    /// Sessions by canary, version and outcome.
    pub canary_sessions: Family<CanarySessionLabels, Counter>,
    /// Automatic rollbacks.
    pub canary_rollbacks: Family<PluginLabels, Counter>,
    /// A canary's state: 0 serving its share, 1 rolled back, 2 promoted.
    pub canary_state: Family<PluginLabels, Gauge>,
}

impl RolloutMetrics {
    /// Registers the families.
    pub fn register(registry: &mut Registry) -> RolloutMetrics {
        let metrics = RolloutMetrics::default();
        registry.register(
            "plugin_shadow_disagreements",
            "Shadow plugin answers that differed from what was enforced, by verdict pair",
            metrics.shadow_disagreements.clone(),
        );
        registry.register(
            "plugin_shadow_agreements",
            "Shadow plugin answers that matched what was enforced",
            metrics.shadow_agreements.clone(),
        );
        registry.register(
            "plugin_shadow_skipped",
            "Stages a shadow plugin did not see because its sessions or queue were full",
            metrics.shadow_skipped.clone(),
        );
        registry.register(
            "plugin_canary_sessions",
            "Sessions that ran a canary or its primary, by outcome",
            metrics.canary_sessions.clone(),
        );
        registry.register(
            "plugin_canary_rollbacks",
            "Canaries rolled back automatically",
            metrics.canary_rollbacks.clone(),
        );
        registry.register(
            "plugin_canary_state",
            "A canary's state: 0 serving its share, 1 rolled back, 2 promoted",
            metrics.canary_state.clone(),
        );
        metrics
    }
}
