//! What the operator holds: the whole queue, or destinations (recipient domains). A held
//! destination keeps its mail until it is released, across restarts, so the set is kept
//! in `<spool>/holds.json`, replaced atomically (written beside, fsynced, renamed, the
//! directory fsynced) on every change. Messages held one by one are marked in the index
//! and by a marker file beside their state log instead.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::lock;

/// The holds on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldSet {
    /// The whole queue is held.
    #[serde(default)]
    pub all: bool,
    /// Held recipient domains (ASCII, lower case).
    #[serde(default)]
    pub domains: BTreeSet<String>,
}

/// The operator's holds, in memory and on disk.
#[derive(Debug)]
pub(crate) struct Holds {
    path: PathBuf,
    set: Mutex<HoldSet>,
}

impl Holds {
    /// Reads the holds of the spool at `spool_dir` (none when the file does not exist;
    /// a file that cannot be read is logged and ignored, with every destination released,
    /// rather than stopping the gateway).
    pub(crate) fn load(spool_dir: &Path) -> Holds {
        let path = spool_dir.join("holds.json");
        let set = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::error!(file = %path.display(), error = %e, "cannot read the held destinations; none is held");
                HoldSet::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HoldSet::default(),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot read the held destinations; none is held");
                HoldSet::default()
            }
        };
        if set.all || !set.domains.is_empty() {
            tracing::warn!(all = set.all, domains = ?set.domains, "held by the operator");
        }
        Holds {
            path,
            set: Mutex::new(set),
        }
    }

    /// What is held now.
    pub(crate) fn current(&self) -> HoldSet {
        lock(&self.set).clone()
    }

    /// Whether the whole queue is held.
    pub(crate) fn all(&self) -> bool {
        lock(&self.set).all
    }

    /// Whether mail to `domain` is held.
    pub(crate) fn holds_domain(&self, domain: &str) -> bool {
        let set = lock(&self.set);
        !set.domains.is_empty() && set.domains.contains(&domain.to_ascii_lowercase())
    }

    /// Changes the holds with `change`, durably; returns whether anything changed. On an
    /// error nothing changes, in memory or on disk.
    pub(crate) fn change(&self, change: impl FnOnce(&mut HoldSet)) -> std::io::Result<bool> {
        let mut set = lock(&self.set);
        let mut next = set.clone();
        change(&mut next);
        if next == *set {
            return Ok(false);
        }
        write_atomically(&self.path, &serde_json::to_vec_pretty(&next)?)?;
        *set = next;
        Ok(true)
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_destinations_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let holds = Holds::load(dir.path());
        assert!(!holds.holds_domain("example.test"));
        assert!(
            holds
                .change(|s| {
                    s.domains.insert("example.test".into());
                })
                .unwrap()
        );
        assert!(!holds.change(|s| s.all = false).unwrap(), "nothing changed");
        let again = Holds::load(dir.path());
        assert!(again.holds_domain("Example.TEST"));
        assert!(!again.all());
        again
            .change(|s| {
                s.domains.remove("example.test");
                s.all = true;
            })
            .unwrap();
        let third = Holds::load(dir.path());
        assert!(third.all() && !third.holds_domain("example.test"));
    }
}
