//! Taking the spool of a stopped gateway into this one (`tidegate spool import`), so that
//! when a node of a fleet dies for good its mail is delivered by another, each message
//! once.
//!
//! Each message of the other spool gets a new queue ID here (IDs are unique per spool,
//! not across a fleet) and keeps its history: the state log with its recipients' outcomes
//! and its hold and delay markers travel with it, so a recipient delivered before the node
//! died is not delivered again. Quarantined messages come into this spool's quarantine.
//!
//! # Never twice, never lost
//! A message is copied, then removed from the other spool; a crash between the two would
//! leave it in both. The journal `<spool>/imports` settles that: before a message is
//! written here, `intent SOURCE OLD NEW` is appended and synced; once it is in `msg/`
//! (synced), `committed SOURCE OLD NEW`. `SOURCE` is the other spool's identity (its `id`
//! file, made when missing), so a copy of a spool moved elsewhere is still recognised.
//!
//! - A message whose `committed` line exists is never imported again: a run after a
//!   crash only removes it from the other spool.
//! - An `intent` without `committed` is settled when this spool opens, before the queue
//!   sees any message: if `msg/NEW` exists the import finished and `committed` is added;
//!   if not, it never happened and the message is imported again by the next run.
//!
//! The journal keeps committed lines for [`KEEP_SECS`] (the time an operator might take
//! to run an import again on a copy of the same spool); older ones are dropped when it is
//! rewritten, so it stays bounded.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{QueueId, Spool, SpoolError, encode_trailer, io_error, read_stored};

/// How long a committed import is remembered.
pub const KEEP_SECS: u64 = 30 * 86_400;
/// The journal's file name in the spool.
const JOURNAL: &str = "imports";
/// The spool's identity's file name.
const ID_FILE: &str = "id";

/// What one batch of an import did.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ImportReport {
    /// Messages taken into `msg/` (new IDs): the queue must take them in.
    pub imported: Vec<String>,
    /// Messages taken into `quarantine/`.
    pub quarantined: usize,
    /// Messages imported by an earlier run (only removed from the other spool now).
    pub already_imported: usize,
    /// Messages that could not be read (left in the other spool, named with the reason).
    pub failed: Vec<String>,
    /// Messages still in the other spool after this batch (not counting failed ones).
    pub remaining: usize,
}

/// The identity of the spool at `root`, made (durably) when it has none yet.
pub fn identity(root: &Path) -> Result<String, SpoolError> {
    let path = root.join(ID_FILE);
    match fs::read_to_string(&path) {
        Ok(text) if valid_identity(text.trim()) => return Ok(text.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("cannot read", &path)(e)),
    }
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).map_err(|_| {
        SpoolError::Io {
            what: "cannot make an identity for",
            path: root.to_owned(),
            source: io::Error::other("no random numbers from the system"),
        }
    })?;
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_durably(root, &path, format!("{id}\n").as_bytes())
        .map_err(io_error("cannot write", &path))?;
    Ok(id)
}

fn valid_identity(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Writes `path` whole (through a temporary file and a rename) and syncs it and `dir`.
fn write_durably(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("new");
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    committed: bool,
    source: String,
    old: QueueId,
    new: QueueId,
    at: u64,
}

impl Line {
    fn parse(text: &str) -> Option<Line> {
        let mut words = text.split(' ');
        let committed = match words.next()? {
            "intent" => false,
            "committed" => true,
            _ => return None,
        };
        let source = words.next().filter(|s| valid_identity(s))?.to_owned();
        let old = words.next()?.parse().ok()?;
        let new = words.next()?.parse().ok()?;
        let at = words.next()?.parse().ok()?;
        words.next().is_none().then_some(Line {
            committed,
            source,
            old,
            new,
            at,
        })
    }

    fn render(&self) -> String {
        let kind = if self.committed {
            "committed"
        } else {
            "intent"
        };
        format!(
            "{kind} {} {} {} {}\n",
            self.source, self.old, self.new, self.at
        )
    }
}

/// Reads the journal; a torn last line (a crash mid-append) is skipped.
fn read_journal(root: &Path) -> Result<Vec<Line>, SpoolError> {
    let path = root.join(JOURNAL);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("cannot read", &path)(e)),
    };
    let mut lines = Vec::new();
    for line in io::BufReader::new(file).lines() {
        let line = line.map_err(io_error("cannot read", &path))?;
        if let Some(parsed) = Line::parse(&line) {
            lines.push(parsed);
        }
    }
    Ok(lines)
}

fn append_journal(root: &Path, line: &Line) -> io::Result<()> {
    let path = root.join(JOURNAL);
    let existed = path.exists();
    let mut file = File::options().create(true).append(true).open(&path)?;
    file.write_all(line.render().as_bytes())?;
    file.sync_data()?;
    if !existed {
        File::open(root)?.sync_all()?;
    }
    Ok(())
}

/// Settles the journal when the spool opens, before the queue reads `msg/`: an intent
/// whose message made it into `msg/` becomes committed, one whose message did not is
/// dropped, and committed lines older than [`KEEP_SECS`] are forgotten.
pub(super) fn settle(root: &Path) -> Result<(), SpoolError> {
    let lines = read_journal(root)?;
    if lines.is_empty() {
        return Ok(());
    }
    let oldest = now_secs().saturating_sub(KEEP_SECS);
    let mut kept: Vec<Line> = Vec::new();
    let committed: HashSet<(String, QueueId)> = lines
        .iter()
        .filter(|l| l.committed)
        .map(|l| (l.source.clone(), l.old))
        .collect();
    for line in lines {
        if line.at < oldest {
            continue;
        }
        if line.committed {
            kept.push(line);
        } else if !committed.contains(&(line.source.clone(), line.old))
            && (root.join("msg").join(line.new.to_string()).exists()
                || root.join("quarantine").join(line.new.to_string()).exists())
        {
            kept.push(Line {
                committed: true,
                ..line
            });
        }
    }
    let text: String = kept.iter().map(Line::render).collect();
    let path = root.join(JOURNAL);
    write_durably(root, &path, text.as_bytes()).map_err(io_error("cannot write", &path))
}

/// The other spool, locked for the import: a gateway cannot start on it meanwhile, and
/// one still running on it makes the import refuse.
struct Source {
    root: PathBuf,
    identity: String,
    _lock: File,
}

impl Source {
    fn open(root: &Path) -> Result<Source, SpoolError> {
        let root = fs::canonicalize(root).map_err(io_error("cannot find", root))?;
        if !root.join("msg").is_dir() {
            return Err(SpoolError::Corrupt {
                path: root,
                why: "not a spool: it has no msg/ directory".into(),
            });
        }
        let lock_path = root.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error("cannot open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(SpoolError::Locked(root)),
            Err(fs::TryLockError::Error(e)) => return Err(io_error("cannot lock", &lock_path)(e)),
        }
        let identity = identity(&root)?;
        Ok(Source {
            root,
            identity,
            _lock: lock,
        })
    }

    /// The IDs in one of its directories (`msg` or `quarantine`), oldest first.
    fn ids(&self, dir: &str) -> Result<Vec<QueueId>, SpoolError> {
        let path = self.root.join(dir);
        let entries = match fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error("cannot read", &path)(e)),
        };
        let mut ids: Vec<QueueId> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// Removes message `id` (in `dir`) and its state files, durably.
    fn remove(&self, dir: &str, id: QueueId) -> io::Result<()> {
        let state = self.root.join("state");
        for name in [
            id.to_string(),
            format!("{id}.held"),
            format!("{id}.delayed"),
        ] {
            match fs::remove_file(state.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let dir = self.root.join(dir);
        match fs::remove_file(dir.join(id.to_string())) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        File::open(&dir)?.sync_all()
    }
}

impl Spool {
    /// Imports at most `max` messages of the stopped gateway's spool at `source` into this
    /// one (see the module's documentation). Blocking: run it off the async runtime. The
    /// queue takes in the returned `imported` IDs.
    pub fn import(&self, source: &Path, max: usize) -> Result<ImportReport, SpoolError> {
        let root = self.inner.root.clone();
        let source = Source::open(source)?;
        if source.identity == identity(&root)? {
            return Err(SpoolError::Corrupt {
                path: source.root,
                why: "this is the gateway's own spool".into(),
            });
        }
        let done: HashSet<QueueId> = read_journal(&root)?
            .into_iter()
            .filter(|l| l.committed && l.source == source.identity)
            .map(|l| l.old)
            .collect();
        let mut report = ImportReport::default();
        let mut budget = max;
        for dir in ["msg", "quarantine"] {
            let ids = source.ids(dir)?;
            let mut ids = ids.into_iter();
            for old in ids.by_ref() {
                if budget == 0 {
                    report.remaining += 1;
                    continue;
                }
                budget -= 1;
                if done.contains(&old) {
                    source
                        .remove(dir, old)
                        .map_err(io_error("cannot remove", &source.root.join(dir)))?;
                    report.already_imported += 1;
                    continue;
                }
                match self.import_one(&source, dir, old) {
                    Ok(new) if dir == "msg" => report.imported.push(new.to_string()),
                    Ok(_) => report.quarantined += 1,
                    Err(ImportError::Message(why)) => {
                        report.failed.push(format!("{dir}/{old}: {why}"));
                    }
                    Err(ImportError::Spool(e)) => return Err(e),
                }
            }
        }
        Ok(report)
    }

    fn import_one(&self, source: &Source, dir: &str, old: QueueId) -> Result<QueueId, ImportError> {
        let root = &self.inner.root;
        let from = source.root.join(dir).join(old.to_string());
        // A file that cannot be read stays where it is, for the operator: the rest goes on.
        let stored = read_stored(&from).map_err(|e| ImportError::Message(e.to_string()))?;
        let new = self.inner.ids.next();
        let mut line = Line {
            committed: false,
            source: source.identity.clone(),
            old,
            new,
            at: now_secs(),
        };
        append_journal(root, &line).map_err(spool_io("cannot write the journal of", root))?;

        // The history first: recovery reads a message's state when it finds the message.
        let state = root.join("state");
        fs::create_dir_all(&state).map_err(spool_io("cannot create", &state))?;
        for suffix in ["", ".held", ".delayed"] {
            let from = source.root.join("state").join(format!("{old}{suffix}"));
            let to = state.join(format!("{new}{suffix}"));
            match fs::read(&from) {
                Ok(bytes) => {
                    write_durably(&state, &to, &bytes).map_err(spool_io("cannot write", &to))?
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(spool_io("cannot read", &from)(e)),
            }
        }

        let mut envelope = stored.envelope;
        envelope.id = new.to_string();
        let target_dir = root.join(dir);
        fs::create_dir_all(&target_dir).map_err(spool_io("cannot create", &target_dir))?;
        let tmp = self.tmp_path(new);
        let written = (|| -> io::Result<()> {
            let mut out = File::create(&tmp)?;
            let mut octets = File::open(&from)?.take(stored.message_len);
            io::copy(&mut octets, &mut out)?;
            out.write_all(&encode_trailer(&envelope))?;
            out.sync_data()?;
            fs::rename(&tmp, target_dir.join(new.to_string()))?;
            File::open(&target_dir)?.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(spool_io("cannot import into", &target_dir)(e));
        }
        line.committed = true;
        append_journal(root, &line).map_err(spool_io("cannot write the journal of", root))?;
        source
            .remove(dir, old)
            .map_err(spool_io("cannot remove", &from))?;
        tracing::info!(queue_id = %new, from = %from.display(), "message imported from another spool");
        Ok(new)
    }
}

/// Why one message was not imported.
enum ImportError {
    /// This message cannot be read: it is skipped.
    Message(String),
    /// The spools cannot be written: the import stops.
    Spool(SpoolError),
}

fn spool_io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ImportError + 'a {
    move |e| ImportError::Spool(io_error(what, path)(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_lines_round_trip_and_torn_ones_are_skipped() {
        let line = Line {
            committed: true,
            source: "0123456789abcdef0123456789abcdef".into(),
            old: "00000000000000AA".parse().unwrap(),
            new: "00000000000000BB".parse().unwrap(),
            at: 17,
        };
        let text = line.render();
        assert_eq!(Line::parse(text.trim_end()), Some(line));
        for len in 0..text.trim_end().len() - 2 {
            assert_eq!(Line::parse(&text[..len]), None, "{len}");
        }
        assert_eq!(
            Line::parse("committed ../x 00000000000000AA 00000000000000BB 1"),
            None
        );
    }

    #[test]
    fn an_intent_whose_message_arrived_is_settled_as_committed_and_one_whose_did_not_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("msg")).unwrap();
        let source = "0123456789abcdef0123456789abcdef".to_string();
        let arrived: QueueId = "00000000000000B1".parse().unwrap();
        fs::write(root.join("msg").join(arrived.to_string()), b"x").unwrap();
        let now = now_secs();
        for (old, new) in [
            ("00000000000000A1", arrived),
            ("00000000000000A2", "00000000000000B2".parse().unwrap()),
        ] {
            append_journal(
                root,
                &Line {
                    committed: false,
                    source: source.clone(),
                    old: old.parse().unwrap(),
                    new,
                    at: now,
                },
            )
            .unwrap();
        }
        append_journal(
            root,
            &Line {
                committed: true,
                source: source.clone(),
                old: "00000000000000A3".parse().unwrap(),
                new: "00000000000000B3".parse().unwrap(),
                at: now - KEEP_SECS - 1,
            },
        )
        .unwrap();
        settle(root).unwrap();
        let lines = read_journal(root).unwrap();
        assert_eq!(lines.len(), 1);
        assert!(lines[0].committed);
        assert_eq!(lines[0].old.to_string(), "00000000000000A1");
    }
}
