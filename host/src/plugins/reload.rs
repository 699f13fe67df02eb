//! Hot reload: plugin files and the configuration file are watched with `notify`, and
//! SIGHUP asks for a reload too. Changes are debounced briefly, so an editor's or a
//! build's burst of writes (or a write-then-rename) becomes one reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::PluginHost;
use crate::config::Config;

/// How long to wait for writes to settle before reloading.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Watches the configuration file and the plugin files until `shutdown`, reloading the
/// plugins when any of them changes or SIGHUP arrives.
pub async fn watch(config_path: PathBuf, host: Arc<PluginHost>, shutdown: CancellationToken) {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher =
        match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event
                && !matches!(event.kind, notify::EventKind::Access(_))
            {
                let _ = tx.send(());
            }
        }) {
            Ok(watcher) => Some(watcher),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch files; reload with SIGHUP");
                None
            }
        };
    let mut watched: Vec<PathBuf> = Vec::new();
    let rewatch = |watcher: &mut Option<notify::RecommendedWatcher>,
                   watched: &mut Vec<PathBuf>,
                   config: Option<&Config>| {
        let Some(watcher) = watcher.as_mut() else {
            return;
        };
        for dir in watched.drain(..) {
            let _ = watcher.unwatch(&dir);
        }
        // Directories, not files: a write-then-rename replaces the file's inode, which a
        // watch on the file itself would lose.
        let mut dirs = vec![parent(&config_path)];
        if let Some(config) = config {
            dirs.extend(config.plugin_list.iter().map(|p| parent(&p.path)));
        }
        dirs.sort();
        dirs.dedup();
        for dir in dirs {
            match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => watched.push(dir),
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch"),
            }
        }
    };
    let initial = Config::load(&config_path).ok();
    rewatch(&mut watcher, &mut watched, initial.as_ref());

    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(e) => {
            tracing::warn!(error = %e, "cannot install the SIGHUP handler");
            None
        }
    };
    loop {
        let why = tokio::select! {
            () = shutdown.cancelled() => return,
            Some(()) = rx.recv() => "file change",
            Some(()) = async { match hangup.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => "SIGHUP",
        };
        // Let a burst of events settle, then drain it.
        tokio::time::sleep(DEBOUNCE).await;
        while rx.try_recv().is_ok() {}
        match Config::load(&config_path) {
            Ok(config) => {
                let changed = host.reload(&config).await;
                if !changed.is_empty() {
                    tracing::info!(trigger = why, plugins = ?changed, "plugins reloaded");
                }
                rewatch(&mut watcher, &mut watched, Some(&config));
            }
            Err(e) => {
                tracing::error!(trigger = why, error = %e, "configuration invalid, keeping the running plugins");
            }
        }
    }
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}
