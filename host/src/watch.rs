//! Reload triggers shared by everything that reloads live (plugins and configuration,
//! TLS certificates): changes to watched files, and SIGHUP.
//!
//! Directories are watched rather than files, because editors, renewal tools and
//! Kubernetes secrets replace files by rename, which a watch on the old inode would miss.
//! Bursts of events are debounced, so a certificate and its key written one after the
//! other, or a build writing a component in several steps, make one reload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Quiet time that ends a burst of events.
const DEBOUNCE: Duration = Duration::from_millis(150);
/// The longest a burst may delay a reload.
const DEBOUNCE_CAP: Duration = Duration::from_secs(2);

/// Watches directories and SIGHUP; [`next`](Trigger::next) says when to reload.
pub struct Trigger {
    what: &'static str,
    watcher: Option<RecommendedWatcher>,
    watched: Vec<PathBuf>,
    events: mpsc::UnboundedReceiver<()>,
    hangup: Option<Signal>,
}

impl Trigger {
    /// A trigger for `what` (named in log lines), watching nothing yet.
    pub fn new(what: &'static str) -> Trigger {
        let (tx, events) = mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event
                && !matches!(event.kind, notify::EventKind::Access(_))
            {
                let _ = tx.send(());
            }
        });
        let watcher = match watcher {
            Ok(watcher) => Some(watcher),
            Err(e) => {
                tracing::warn!(what, error = %e, "cannot watch files; reload with SIGHUP");
                None
            }
        };
        let hangup = match signal(SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(e) => {
                tracing::warn!(what, error = %e, "cannot install the SIGHUP handler");
                None
            }
        };
        Trigger {
            what,
            watcher,
            watched: Vec::new(),
            events,
            hangup,
        }
    }

    /// Watches the directories of `files` (and stops watching the previous ones).
    pub fn watch_files<'a>(&mut self, files: impl IntoIterator<Item = &'a Path>) {
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        for dir in self.watched.drain(..) {
            let _ = watcher.unwatch(&dir);
        }
        let mut dirs: Vec<PathBuf> = files.into_iter().map(parent_dir).collect();
        dirs.sort();
        dirs.dedup();
        for dir in dirs {
            match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => self.watched.push(dir),
                Err(e) => {
                    tracing::warn!(what = self.what, dir = %dir.display(), error = %e, "cannot watch")
                }
            }
        }
    }

    /// Waits for a change (debounced) or SIGHUP; `None` at shutdown. Returns what
    /// triggered it, for the log.
    pub async fn next(&mut self, shutdown: &CancellationToken) -> Option<&'static str> {
        let hangup = &mut self.hangup;
        let why = tokio::select! {
            () = shutdown.cancelled() => return None,
            Some(()) = self.events.recv() => "file change",
            Some(()) = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            } => "SIGHUP",
        };
        let deadline = Instant::now() + DEBOUNCE_CAP;
        while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, self.events.recv()).await {
            if Instant::now() >= deadline {
                break;
            }
        }
        while self.events.try_recv().is_ok() {}
        Some(why)
    }
}

/// The directory of a file (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}
