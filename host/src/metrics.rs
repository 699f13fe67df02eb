//! Metrics in the Prometheus text format, served by the admin listener at `/metrics`.
//!
//! Counters are cheap atomics updated on the session path; label sets are small and bounded
//! (listener names, plugin names and hooks from the configuration, plugin counter names
//! capped by the host functions).

pub mod rollout;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels naming a listener.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// The listener's name.
    pub listener: String,
}

/// Labels naming a plugin and a hook.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginHookLabels {
    /// The plugin's name.
    pub plugin: String,
    /// The hook, e.g. `on-rcpt-to`.
    pub hook: String,
}

/// Labels naming a plugin.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    /// The plugin's name.
    pub plugin: String,
}

/// Labels of a failed plugin call: the plugin, the hook and the kind of failure (`trap`,
/// `cpu`, `time`, `memory`, `invalid`, `quota`, `pool_full`, `init`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginFailureLabels {
    /// The plugin's name.
    pub plugin: String,
    /// The hook.
    pub hook: String,
    /// The kind of failure.
    pub kind: &'static str,
}

/// A histogram family whose buckets suit plugin calls (10 µs to about 2.6 s).
pub type CallHistogram = Family<PluginHookLabels, Histogram, fn() -> Histogram>;

fn call_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 4.0, 10))
}

/// Labels of a session's plugin instance: which plugin, and whether it was `created` or
/// `reused` (a finished session's instance, re-initialised).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginInstanceLabels {
    /// The plugin's name.
    pub plugin: String,
    /// `created` or `reused`.
    pub source: &'static str,
}

/// Labels of a delivery outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `delivered`, `deferred` or `bounced`.
    pub outcome: String,
}

/// Labels of a `[[shaping]]` entry.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// The entry's name (`built-in` without one).
    pub policy: String,
}

/// Labels with a fixed set of values (a state, a result, a transport).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// `active`, `deferred`, `held` or `quarantined`.
    pub state: &'static str,
}

/// Labels naming a destination (recipient domain) of the queue: the top ones by queued
/// messages, and `other`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabels {
    /// The recipient domain, or `other`.
    pub destination: String,
}

/// Labels of a delivery attempt's outcome by destination class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    /// `delivered`, `deferred`, `bounced`.
    pub outcome: &'static str,
    /// `mx`, `smarthost`, `maildir`, `discard` or `misrouted`.
    pub class: &'static str,
}

/// Labels of a bounce: its enhanced status code's class and subject (`5.1`, `4.4`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BounceLabels {
    /// The first two parts of the enhanced code, or `none`.
    pub code: String,
}

/// Labels of a delivery failure: deferred or bounced, and its class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// `deferred` or `bounced`.
    pub outcome: &'static str,
    /// The failure class (`bad-mailbox`, `rate-limit`, ...).
    pub class: &'static str,
}

/// Labels of a TLS session.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsLabels {
    /// `in` (a client's STARTTLS or implicit TLS) or `out` (to a next hop).
    pub direction: &'static str,
    /// `TLSv1.3`, `TLSv1.2`.
    pub version: String,
}

/// Labels of a result: an AUTH attempt's (`success`, `failure`), a reload's (`applied`,
/// `refused`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    /// What came of it.
    pub result: &'static str,
}

/// Labels of a counter a plugin keeps through `counter-add`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginCounterLabels {
    /// The plugin's name.
    pub plugin: String,
    /// The counter's name, as the plugin chose it.
    pub name: String,
}

/// Labels of a plugin's HTTP calls: the plugin and the outcome (`ok`, `not_allowed`,
/// `invalid`, `timeout`, `too_large`, `budget`, `failed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginHttpLabels {
    /// The plugin's name.
    pub plugin: String,
    /// The outcome.
    pub result: &'static str,
}

/// Labels naming a delivery-event type (`received`, `delivered`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventKindLabels {
    /// The event's `type`.
    pub kind: &'static str,
}

/// Labels naming an event sink (its `name`, or its index in `[[events]]`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventSinkLabels {
    /// The sink.
    pub sink: String,
}

/// Labels of events a sink dropped, and why: `queue_full` (its in-memory queue),
/// `buffer_full` (the webhook's on-disk bound, oldest first), `rejected` (a 4xx answer),
/// `write_error` (the file or buffer could not be written).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventDropLabels {
    /// The sink.
    pub sink: String,
    /// Why.
    pub reason: &'static str,
}

/// Labels of a failed webhook POST: `connect`, `timeout`, `status` (retried) or
/// `rejected` (a 4xx other than 408/429: the batch is dropped).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookFailureLabels {
    /// The sink.
    pub sink: String,
    /// The kind of failure.
    pub kind: &'static str,
}

/// Every metric of the gateway.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Sessions started, per listener.
    pub sessions: Family<ListenerLabels, Counter>,
    /// Sessions running now.
    pub sessions_active: Gauge,
    /// Connections turned away by the connection limits.
    pub connections_refused: Counter,
    /// Messages accepted into the spool, per listener.
    pub messages_accepted: Family<ListenerLabels, Counter>,
    /// Messages refused after DATA (size, syntax, policy), per listener.
    pub messages_refused: Family<ListenerLabels, Counter>,
    /// Plugin calls that failed (trap, limits, invalid answer), by kind.
    pub plugin_failures: Family<PluginFailureLabels, Counter>,
    /// Plugin calls made.
    pub plugin_calls: Family<PluginHookLabels, Counter>,
    /// How long plugin calls took, wall clock.
    pub plugin_call_seconds: CallHistogram,
    /// Fuel (guest instructions, roughly) plugin calls used.
    pub plugin_fuel: Family<PluginHookLabels, Counter>,
    /// The largest linear memory an instance of each plugin has had.
    pub plugin_memory_bytes: Family<PluginLabels, Gauge>,
    /// Keys in each plugin's KV namespace.
    pub plugin_kv_keys: Family<PluginLabels, Gauge>,
    /// Bytes in each plugin's KV namespace.
    pub plugin_kv_bytes: Family<PluginLabels, Gauge>,
    /// Plugin log lines dropped over the plugin's log rate.
    pub plugin_log_dropped: Family<PluginLabels, Counter>,
    /// Reloads that changed nothing because a plugin failed to load.
    pub plugin_reload_failures: Counter,
    /// Session records written by `record` listeners.
    pub records_written: Counter,
    /// Session records dropped because the writer could not keep up (or could not write).
    pub records_dropped: Counter,
    /// KV operations the backend (Redis) failed: unreachable, too slow, a bad reply.
    pub kv_backend_errors: Counter,
    /// Instances handed to sessions, new or recycled.
    pub plugin_instances: Family<PluginInstanceLabels, Counter>,
    /// Counters kept by plugins.
    pub plugin_counters: Family<PluginCounterLabels, Counter>,
    /// Plugins' HTTP calls by outcome.
    pub plugin_http_calls: Family<PluginHttpLabels, Counter>,
    /// Delivery outcomes per recipient and attempt.
    pub deliveries: Family<OutcomeLabels, Counter>,
    /// Replies that suspended a destination or lowered its rates, by shaping entry.
    pub shaping_reactions: Family<PolicyLabels, Counter>,
    /// Destinations whose gate admits nothing now (suspended, curfew, out of tokens),
    /// by shaping entry (set when `/metrics` is read).
    pub shaping_closed: Family<PolicyLabels, Gauge>,
    /// Messages in the queue by state (set when `/metrics` is read).
    pub queue_by_state: Family<StateLabels, Gauge>,
    /// Messages in the queue by destination, the top ones and `other` (set when read).
    pub queue_by_destination: Family<DestinationLabels, Gauge>,
    /// Delivery attempts by outcome and destination class, one per recipient.
    pub delivery_attempts: Family<AttemptLabels, Counter>,
    /// Time from acceptance to delivery, per delivered recipient.
    pub delivery_latency: Histogram,
    /// Bounces by enhanced status code class.
    pub bounces: Family<BounceLabels, Counter>,
    /// Deferrals and bounces by failure class.
    pub delivery_failures: Family<FailureLabels, Counter>,
    /// TLS sessions by direction and version.
    pub tls_sessions: Family<TlsLabels, Counter>,
    /// SMTP AUTH attempts by result.
    pub auth_attempts: Family<AuthLabels, Counter>,
    /// Plugin reloads that applied.
    pub plugin_reloads: Counter,
    /// Configuration reloads by result (`applied`, `refused`).
    pub config_reloads: Family<AuthLabels, Counter>,
    /// Admin API requests refused for a missing or wrong token.
    pub admin_unauthorized: Counter,
    /// Log lines dropped because the log writer could not keep up.
    pub log_lines_dropped: Gauge,
    /// Messages in the queue.
    pub queued: Gauge,
    /// Delivery events emitted, by type.
    pub events_emitted: Family<EventKindLabels, Counter>,
    /// Delivery events a sink dropped, by reason.
    pub events_dropped: Family<EventDropLabels, Counter>,
    /// Events in a webhook sink's on-disk buffer, not yet acknowledged.
    pub webhook_backlog: Family<EventSinkLabels, Gauge>,
    /// Webhook POSTs that failed.
    pub webhook_failures: Family<WebhookFailureLabels, Counter>,
    /// Webhook batches acknowledged (2xx).
    pub webhook_deliveries: Family<EventSinkLabels, Counter>,
    /// Shadow and canary plugins.
    pub rollout: rollout::RolloutMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tidegate");
        let sessions = Family::default();
        let sessions_active = Gauge::default();
        let connections_refused = Counter::default();
        let messages_accepted = Family::default();
        let messages_refused = Family::default();
        let plugin_failures = Family::default();
        let plugin_calls = Family::default();
        let plugin_call_seconds: CallHistogram = Family::new_with_constructor(call_histogram);
        let plugin_fuel = Family::default();
        let plugin_memory_bytes = Family::default();
        let plugin_kv_keys = Family::default();
        let plugin_kv_bytes = Family::default();
        let plugin_log_dropped = Family::default();
        let plugin_reload_failures = Counter::default();
        let records_written = Counter::default();
        let records_dropped = Counter::default();
        let kv_backend_errors = Counter::default();
        let plugin_counters = Family::default();
        let plugin_http_calls = Family::default();
        let plugin_instances = Family::default();
        let deliveries = Family::default();
        let shaping_reactions = Family::default();
        let shaping_closed = Family::default();
        let queued = Gauge::default();
        let queue_by_state = Family::default();
        registry.register(
            "queue_messages",
            "Messages in the queue by state",
            queue_by_state.clone(),
        );
        let queue_by_destination = Family::default();
        registry.register(
            "queue_destination_messages",
            "Messages in the queue by recipient domain (the top 20, and other)",
            queue_by_destination.clone(),
        );
        let delivery_attempts = Family::default();
        registry.register(
            "delivery_attempts",
            "Delivery attempts by outcome and destination class, per recipient",
            delivery_attempts.clone(),
        );
        // From a second to about three days.
        let delivery_latency = Histogram::new(exponential_buckets(1.0, 4.0, 10));
        registry.register(
            "delivery_latency_seconds",
            "Time from acceptance to delivery, per delivered recipient",
            delivery_latency.clone(),
        );
        let bounces = Family::default();
        let delivery_failures = Family::default();
        registry.register(
            "delivery_failures",
            "Deferred and bounced recipients by failure class",
            delivery_failures.clone(),
        );
        registry.register(
            "bounces",
            "Bounces by enhanced status code class",
            bounces.clone(),
        );
        let tls_sessions = Family::default();
        registry.register(
            "tls_sessions",
            "TLS sessions by direction and version",
            tls_sessions.clone(),
        );
        let auth_attempts = Family::default();
        registry.register(
            "auth_attempts",
            "SMTP AUTH attempts by result",
            auth_attempts.clone(),
        );
        let plugin_reloads = Counter::default();
        registry.register(
            "plugin_reloads",
            "Plugin reloads that applied",
            plugin_reloads.clone(),
        );
        let config_reloads = Family::default();
        registry.register(
            "config_reloads",
            "Configuration reloads (SIGHUP, file change, tidegate reload) by result",
            config_reloads.clone(),
        );
        let admin_unauthorized = Counter::default();
        registry.register(
            "admin_unauthorized",
            "Admin API requests refused for a missing or wrong token",
            admin_unauthorized.clone(),
        );
        let log_lines_dropped = Gauge::default();
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because the log writer could not keep up",
            log_lines_dropped.clone(),
        );
        let events_emitted = Family::default();
        let events_dropped = Family::default();
        let webhook_backlog = Family::default();
        let webhook_failures = Family::default();
        let webhook_deliveries = Family::default();
        registry.register(
            "events_emitted",
            "Delivery events emitted, by type",
            events_emitted.clone(),
        );
        registry.register(
            "events_dropped",
            "Delivery events a sink dropped, by sink and reason",
            events_dropped.clone(),
        );
        registry.register(
            "webhook_backlog_events",
            "Events in a webhook sink's on-disk buffer, not yet acknowledged",
            webhook_backlog.clone(),
        );
        registry.register(
            "webhook_failures",
            "Webhook POSTs that failed, by sink and kind",
            webhook_failures.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Webhook batches acknowledged with a 2xx answer",
            webhook_deliveries.clone(),
        );
        registry.register(
            "deliveries",
            "Delivery outcomes, one per recipient per attempt",
            deliveries.clone(),
        );
        registry.register(
            "shaping_reactions",
            "Replies that suspended a destination or lowered its rates, by shaping entry",
            shaping_reactions.clone(),
        );
        registry.register(
            "shaping_closed_destinations",
            "Destinations admitting no mail now (suspended, curfew, no token), by shaping entry",
            shaping_closed.clone(),
        );
        registry.register(
            "queued_messages",
            "Messages in the delivery queue",
            queued.clone(),
        );
        registry.register("sessions", "SMTP sessions started", sessions.clone());
        registry.register(
            "sessions_active",
            "SMTP sessions running now",
            sessions_active.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections turned away by the connection limits",
            connections_refused.clone(),
        );
        registry.register(
            "messages_accepted",
            "Messages accepted into the spool",
            messages_accepted.clone(),
        );
        registry.register(
            "messages_refused",
            "Messages refused after their data was received",
            messages_refused.clone(),
        );
        registry.register(
            "plugin_failures",
            "Plugin calls that trapped, ran out of CPU or memory, or answered nonsense",
            plugin_failures.clone(),
        );
        registry.register("plugin_calls", "Plugin calls made", plugin_calls.clone());
        registry.register(
            "plugin_call_seconds",
            "Wall-clock time of plugin calls",
            plugin_call_seconds.clone(),
        );
        registry.register(
            "plugin_fuel",
            "Fuel (about one per guest instruction) used by plugin calls",
            plugin_fuel.clone(),
        );
        registry.register(
            "plugin_memory_high_water_bytes",
            "The largest linear memory an instance of the plugin has had",
            plugin_memory_bytes.clone(),
        );
        registry.register(
            "plugin_kv_keys",
            "Keys in the plugin's key/value namespace",
            plugin_kv_keys.clone(),
        );
        registry.register(
            "plugin_kv_bytes",
            "Bytes in the plugin's key/value namespace",
            plugin_kv_bytes.clone(),
        );
        registry.register(
            "plugin_log_dropped",
            "Plugin log lines dropped over log_lines_per_second",
            plugin_log_dropped.clone(),
        );
        registry.register(
            "plugin_reload_failures",
            "Reloads refused whole because a plugin failed to load",
            plugin_reload_failures.clone(),
        );
        registry.register(
            "records_written",
            "Session records written by listeners with `record`",
            records_written.clone(),
        );
        registry.register(
            "records_dropped",
            "Session records dropped because the record writer could not keep up or write",
            records_dropped.clone(),
        );
        registry.register(
            "kv_backend_errors",
            "Plugin KV operations the backend (Redis) failed: unreachable, too slow, a bad reply",
            kv_backend_errors.clone(),
        );
        registry.register(
            "plugin_instances",
            "Plugin instances handed to sessions: created, or reused from a finished session",
            plugin_instances.clone(),
        );
        registry.register(
            "plugin_counter",
            "Counters kept by plugins through counter-add",
            plugin_counters.clone(),
        );
        registry.register(
            "plugin_http_calls",
            "HTTP calls made by plugins, by outcome",
            plugin_http_calls.clone(),
        );
        let rollout = rollout::RolloutMetrics::register(&mut registry);
        Metrics {
            rollout,
            registry,
            sessions,
            sessions_active,
            connections_refused,
            messages_accepted,
            messages_refused,
            plugin_failures,
            plugin_calls,
            plugin_call_seconds,
            plugin_fuel,
            plugin_memory_bytes,
            plugin_kv_keys,
            plugin_kv_bytes,
            plugin_log_dropped,
            plugin_reload_failures,
            records_written,
            records_dropped,
            kv_backend_errors,
            plugin_instances,
            plugin_counters,
            plugin_http_calls,
            deliveries,
            shaping_reactions,
            shaping_closed,
            queued,
            queue_by_state,
            queue_by_destination,
            delivery_attempts,
            delivery_latency,
            bounces,
            delivery_failures,
            tls_sessions,
            auth_attempts,
            plugin_reloads,
            config_reloads,
            admin_unauthorized,
            log_lines_dropped,
            events_emitted,
            events_dropped,
            webhook_backlog,
            webhook_failures,
            webhook_deliveries,
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}
