//! `tidegate replay`: a plugin version against recorded traffic, with a diff of verdicts
//! and edits, and an exit status a CI job can gate on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use tidegate_plugin_sdk::record::{Recording, Report};

use crate::plugins::chain::LoadedPlugin;
use crate::plugins::engine::{self, PluginEngine};
use crate::plugins::services::HostServices;

/// What to replay.
#[derive(Debug)]
pub struct ReplaySettings {
    /// The component to run.
    pub plugin: PathBuf,
    /// Its `[plugin.config]` as JSON.
    pub config_json: Option<PathBuf>,
    /// A records file or a listener's records directory.
    pub records: PathBuf,
    /// The plugin's name in the recording (the file's stem when absent).
    pub name: Option<String>,
}

/// Loads the recording and the plugin (as `tidegate plugin check` does) and replays.
pub async fn replay(settings: &ReplaySettings) -> anyhow::Result<Report> {
    let recording = Recording::load(&settings.records)?;
    let name = match &settings.name {
        Some(name) => name.clone(),
        None => stem(&settings.plugin),
    };
    if recording.calls(&name) == 0 {
        let mut recorded: Vec<&str> = recording
            .sessions
            .iter()
            .flat_map(|(_, s)| s.calls.iter().map(|c| c.plugin.as_str()))
            .collect();
        recorded.sort_unstable();
        recorded.dedup();
        anyhow::bail!(
            "{}: no calls of a plugin named `{name}` (recorded: {}); say which with --as NAME",
            settings.records.display(),
            recorded.join(", ")
        );
    }
    let check = super::plugin::CheckSettings {
        config_json: settings.config_json.clone(),
        gateway: None,
        name: None,
    };
    let (mut plugin, runtime) = super::plugin::plugin_settings(&settings.plugin, &check)?;
    plugin.name = name;
    let limit = usize::try_from(plugin.memory_limit_mib)
        .unwrap_or(usize::MAX)
        .saturating_mul(1024 * 1024);
    let engine: Arc<PluginEngine> =
        PluginEngine::new_uncached(&runtime, 4, engine::memory_slot(limit))
            .map_err(|e| anyhow::anyhow!("plugin engine: {e:#}"))?;
    let services = Arc::new(HostServices::new(
        Default::default(),
        Default::default(),
        Default::default(),
    ));
    let loaded = LoadedPlugin::load(&engine, &plugin, &services)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", settings.plugin.display()))
        .context("loading the plugin")?;
    Ok(crate::plugins::replay::replay(loaded, &engine, &services, &recording).await)
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map_or_else(|| "plugin".into(), |s| s.to_string_lossy().into_owned())
}
