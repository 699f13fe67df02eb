//! Hot reload of plugins: the configuration file and every plugin file are watched, and
//! SIGHUP asks for a reload too (see [`crate::watch`]).

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::PluginHost;
use crate::config::Config;
use crate::watch::Trigger;

/// Watches the configuration file and the plugin files until `shutdown`, reloading the
/// plugins when any of them changes or SIGHUP arrives.
pub async fn watch(config_path: PathBuf, host: Arc<PluginHost>, shutdown: CancellationToken) {
    let mut trigger = Trigger::new("plugins");
    let watch = |trigger: &mut Trigger, config: Option<&Config>| {
        let plugin_files = config
            .into_iter()
            .flat_map(|c| c.plugin_list.iter().map(|p| p.path.as_path()));
        trigger.watch_files(std::iter::once(config_path.as_path()).chain(plugin_files));
    };
    watch(&mut trigger, Config::load(&config_path).ok().as_ref());
    while let Some(why) = trigger.next(&shutdown).await {
        match Config::load(&config_path) {
            Ok(config) => {
                // A refused reload is logged and counted by the host.
                if let Ok(changed) = host.reload(&config).await
                    && !changed.is_empty()
                {
                    tracing::info!(trigger = why, plugins = ?changed, "plugins reloaded");
                }
                watch(&mut trigger, Some(&config));
            }
            Err(e) => {
                tracing::error!(trigger = why, error = %e, "configuration invalid, keeping the running plugins");
            }
        }
    }
}
