//! Live reconfiguration: SIGHUP, a change to the configuration file (or a plugin file),
//! and `tidegate reload` all come here. The file is read and checked as `tidegate check`
//! would; a configuration that does not load changes nothing. One that does is applied
//! without dropping a session or a queued message:
//!
//! - plugins (all or nothing, see [`crate::plugins::PluginHost::reload`]);
//! - for sessions that start from now on (each keeps what it started with): relay rules,
//!   limits, `[smtp]`, sender authentication and DKIM keys, the host name, and the
//!   certificates a changed `[tls]` table names (they must load first);
//! - for every delivery attempt from now on, queued mail included: routes, retry
//!   intervals, lifetimes, delivery settings.
//!
//! - listeners added (bound before anything else changes: one that cannot be bound
//!   refuses the reload), moved or removed (their sessions finish).
//!
//! What was sized or bound at start (the spool, the admin API, TLS turned on or off, the
//! AUTH users file's location, connection and concurrency limits, the resolver, event sinks, logging, a
//! listener's protocol on the same address) needs a restart: the reply and the log name it. The AUTH users file, recipients lists
//! and TLS certificates reload by themselves when their files change.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dns::Dns;
use crate::inbound::listener::Listeners;
use crate::inbound::{InboundContext, Live};
use crate::plugins::PluginHost;
use crate::queue::Queue;
use crate::watch::Trigger;

/// Top-level tables and keys only a restart applies.
const RESTART: &[&str] = &[
    "spool",
    "admin",
    "auth",
    "dns",
    "events",
    "log",
    "kv",
    "shutdown_grace",
    "drain_delay",
    "tls_report",
];

/// Keys inside live tables that only a restart applies (they sized something at start).
const RESTART_KEYS: &[(&str, &str)] = &[
    ("limits", "max_connections"),
    ("limits", "max_connections_per_ip"),
    ("queue", "max_concurrent_deliveries"),
    ("queue", "max_per_destination"),
    ("queue", "max_active"),
    ("delivery", "pool_idle_timeout"),
    ("delivery", "pool_max_idle"),
    ("delivery", "tls_ca"),
    ("delivery", "mta_sts"),
    ("delivery", "mta_sts_port"),
];

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// Plugins loaded anew.
    pub changed: Vec<String>,
    /// Configuration tables applied (those that changed and apply live).
    pub applied: Vec<String>,
    /// Why the reload was refused (nothing changed), if it was.
    pub failed: Option<String>,
    /// What changed but applies only at the next start.
    pub needs_restart: Vec<String>,
}

/// The parts a reload changes.
#[derive(Debug)]
pub struct Reconfigurer {
    config_path: PathBuf,
    plugins: Arc<PluginHost>,
    queue: Queue,
    inbound: Arc<InboundContext>,
    listeners: Arc<Listeners>,
    dns: Arc<Dns>,
    /// The configuration file's tables as running (what was applied last).
    running: std::sync::Mutex<toml::Table>,
    /// As at start: what needs a restart is measured against it.
    started_with: toml::Table,
    /// One reload at a time.
    busy: tokio::sync::Mutex<()>,
}

fn read_table(path: &std::path::Path) -> toml::Table {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .unwrap_or_default()
}

impl Reconfigurer {
    /// The reloader of a running server.
    pub fn new(
        config_path: PathBuf,
        plugins: Arc<PluginHost>,
        queue: Queue,
        inbound: Arc<InboundContext>,
        listeners: Arc<Listeners>,
        dns: Arc<Dns>,
    ) -> Reconfigurer {
        let started_with = read_table(&config_path);
        Reconfigurer {
            running: std::sync::Mutex::new(started_with.clone()),
            started_with,
            config_path,
            plugins,
            queue,
            inbound,
            listeners,
            dns,
            busy: tokio::sync::Mutex::new(()),
        }
    }

    /// Reads the configuration file again and applies it; `why` is for the log.
    pub async fn reload(&self, why: &str) -> ReloadReport {
        let report = self.try_reload(why).await;
        let result = if report.failed.is_some() {
            "refused"
        } else {
            "applied"
        };
        self.inbound
            .metrics
            .config_reloads
            .get_or_create(&crate::metrics::AuthLabels { result })
            .inc();
        report
    }

    async fn try_reload(&self, why: &str) -> ReloadReport {
        let _one_at_a_time = self.busy.lock().await;
        let mut report = ReloadReport::default();
        let path = self.config_path.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let config = Config::load(&path).map_err(|e| format!("{e:#}"))?;
            Ok::<_, String>((config, read_table(&path)))
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let (config, table) = match loaded {
            Ok(loaded) => loaded,
            Err(why_not) => {
                tracing::error!(trigger = why, error = %why_not, "configuration invalid, nothing changed");
                report.failed = Some(why_not);
                return report;
            }
        };
        // Everything that can fail is built before anything changes.
        let sender_auth = match crate::sender_auth::SenderAuth::new(&config, &self.dns) {
            Ok(built) => Arc::new(built),
            Err(e) => {
                let why_not = format!("DKIM/ARC keys: {e:#}");
                tracing::error!(trigger = why, error = %why_not, "configuration not applied, nothing changed");
                report.failed = Some(why_not);
                return report;
            }
        };
        // Certificates named by a changed [tls] table must load before anything changes.
        let tls = match (&self.inbound.tls, &config.tls) {
            (Some(running), Some(wanted)) => match crate::tls::ServerTls::load(wanted) {
                Ok(_) => Some((Arc::clone(running), wanted.clone())),
                Err(e) => {
                    let why_not = format!("[tls]: {e}");
                    tracing::error!(trigger = why, error = %why_not, "configuration not applied, nothing changed");
                    report.failed = Some(why_not);
                    return report;
                }
            },
            _ => None,
        };
        // New or moved listeners are bound now: an address that cannot be bound refuses
        // the whole reload (and closes what was bound for it).
        let plan = match self.listeners.prepare(&config.listeners).await {
            Ok(plan) => plan,
            Err(why_not) => {
                tracing::error!(trigger = why, error = %why_not, "configuration not applied, nothing changed");
                report.failed = Some(why_not);
                return report;
            }
        };
        match self.plugins.reload(&config).await {
            Ok(changed) => report.changed = changed,
            Err(why_not) => {
                report.failed = Some(why_not);
                return report;
            }
        }
        let running = self.running.lock().map(|t| t.clone()).unwrap_or_default();
        report.applied = changed_keys(&running, &table)
            .into_iter()
            .filter(|k| !RESTART.contains(&k.as_str()))
            .collect();
        report.needs_restart = needs_restart(&self.started_with, &table);
        report
            .needs_restart
            .extend(plan.needs_restart.iter().cloned());
        if self.inbound.tls.is_some() != config.tls.is_some() {
            // TLS turned on or off changes what the listeners offer: a restart.
            report.needs_restart.push("tls".into());
        }
        if let Some((running, wanted)) = &tls
            && let Err(e) = running.reload(wanted)
        {
            // Checked above; a file that changed in between keeps the running ones.
            tracing::error!(error = %e, "TLS certificates not reloaded, keeping the running ones");
        }
        let config = Arc::new(config);
        // The new rules first, so the first session on a new listener has them.
        self.inbound
            .reconfigure(Live::new(Arc::clone(&config), sender_auth));
        self.queue.reconfigure(config);
        let (added, removed) = self.listeners.apply(plan);
        if !added.is_empty() || !removed.is_empty() {
            tracing::info!(
                ?added,
                ?removed,
                "listeners changed; sessions on removed ones finish"
            );
            self.queue.set_listeners(self.listeners.addresses());
        }
        if let Ok(mut running) = self.running.lock() {
            *running = table;
        }
        tracing::info!(
            trigger = why,
            plugins = ?report.changed,
            applied = ?report.applied,
            needs_restart = ?report.needs_restart,
            "configuration reloaded"
        );
        report
    }

    /// Reloads whenever the configuration file or a plugin file changes, or SIGHUP
    /// arrives, until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut trigger = Trigger::new("configuration");
        let watch = |trigger: &mut Trigger, config: Option<&Config>| {
            let plugin_files = config
                .into_iter()
                .flat_map(|c| c.plugin_list.iter().map(|p| p.path.as_path()));
            trigger.watch_files(std::iter::once(self.config_path.as_path()).chain(plugin_files));
        };
        watch(&mut trigger, Config::load(&self.config_path).ok().as_ref());
        while let Some(why) = trigger.next(&shutdown).await {
            self.reload(why).await;
            watch(&mut trigger, Config::load(&self.config_path).ok().as_ref());
        }
    }
}

/// Top-level keys whose values differ between two tables.
fn changed_keys(old: &toml::Table, new: &toml::Table) -> Vec<String> {
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect()
}

/// What differs from the configuration the server started with and applies only at a
/// restart: whole tables, or keys inside live tables.
fn needs_restart(started: &toml::Table, now: &toml::Table) -> Vec<String> {
    let mut restart: Vec<String> = changed_keys(started, now)
        .into_iter()
        .filter(|k| RESTART.contains(&k.as_str()))
        .collect();
    for (table, key) in RESTART_KEYS {
        let value = |t: &toml::Table| t.get(*table).and_then(|v| v.get(*key)).cloned();
        if value(started) != value(now) {
            restart.push(format!("{table}.{key}"));
        }
    }
    restart
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_needs_a_restart_is_named_and_live_tables_are_not() {
        let started: toml::Table = r#"
            hostname = "a.test"
            [[listener]]
            name = "mx"
            address = "127.0.0.1:25"
            [queue]
            retry_intervals = ["1m"]
            max_concurrent_deliveries = 10
        "#
        .parse()
        .unwrap();
        let now: toml::Table = r#"
            hostname = "a.test"
            [[listener]]
            name = "mx"
            address = "127.0.0.1:2525"
            [queue]
            retry_intervals = ["5m"]
            max_concurrent_deliveries = 20
            [[route]]
            name = "r"
            domains = ["x.test"]
            smarthost = "127.0.0.1:26"
        "#
        .parse()
        .unwrap();
        // A listener's address is applied live (it is bound anew).
        assert_eq!(
            needs_restart(&started, &now),
            vec!["queue.max_concurrent_deliveries".to_owned()]
        );
        assert_eq!(
            changed_keys(&started, &now),
            vec![
                "listener".to_owned(),
                "queue".to_owned(),
                "route".to_owned()
            ]
        );
    }
}
