//! The spool: accepted messages on disk, durably, until the queue is done with them.
//!
//! # Layout
//! ```text
//! <spool>/lock         held (flock) by the running server: one server per spool
//! <spool>/tmp/<ID>     a message being received; garbage after a crash, removed at start-up
//! <spool>/msg/<ID>     a committed message
//! <spool>/corrupt/<ID> a file in msg/ that could not be read, set aside for the operator
//! <spool>/id           the spool's identity (random), which imports recognise it by
//! <spool>/imports      the journal of messages taken in from other spools (`import.rs`)
//! ```
//!
//! # File format (version 1)
//! One file per message, written front to back while DATA streams in:
//! ```text
//! [message octets, `Received:` header first]
//! [envelope record: UTF-8 JSON of `Envelope`, whose `version` field is 1]
//! [footer: envelope length as u64 little-endian (8 octets)]["TGSPOOL1" (8 octets)]
//! ```
//! The envelope goes last because it is only complete once the data has been read; the
//! fixed-size footer lets a reader find it from the end. The magic carries the version.
//!
//! # Durability
//! A message is written to `tmp/`, `fdatasync`ed, renamed into `msg/`, and `msg/` itself is
//! `fsync`ed; only then does the session send 250. A crash at any point before the rename
//! leaves at most a file in `tmp/`, which start-up deletes (that message never got a 250);
//! after the directory fsync the message survives `kill -9` and power loss. Renames are
//! done by one commit task in batches, so one directory fsync serves every session that
//! finished DATA at the same moment (group commit).

mod commit;
pub mod dsn_params;
pub mod envelope;
pub mod import;
pub mod outgoing;
pub mod queue_id;
pub mod space;
mod writer;

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use envelope::Envelope;
pub use queue_id::QueueId;
pub use writer::MessageWriter;

use commit::Committer;
use queue_id::QueueIdGenerator;

/// The footer's magic: it names the format and its version.
const MAGIC: &[u8; 8] = b"TGSPOOL1";
/// Footer length: envelope length (8) plus magic (8).
const FOOTER_LEN: u64 = 16;
/// The largest envelope record a reader accepts; a corrupt length must not make it allocate
/// gigabytes. 1,000 recipients with long parameters fit easily.
const MAX_ENVELOPE_LEN: u64 = 16 * 1024 * 1024;

/// Spool failures.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// An I/O error, with what was being done.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What the spool was doing.
        what: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Another process holds the spool lock.
    #[error("spool {} is in use by another tidegate process", .0.display())]
    Locked(PathBuf),
    /// A file in `msg/` is not a valid spool file.
    #[error("{}: not a valid spool file: {why}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The commit task is gone (the server is stopping).
    #[error("the spool is shutting down")]
    Closed,
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// A handle on an open spool; cheap to clone.
#[derive(Clone, Debug)]
pub struct Spool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    tmp_dir: PathBuf,
    msg_dir: PathBuf,
    ids: QueueIdGenerator,
    committer: Committer,
    /// Held for the life of the spool: the flock is released when the file is closed.
    _lock: File,
}

/// A message found in the spool.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// Its queue ID.
    pub id: QueueId,
    /// Its envelope.
    pub envelope: Envelope,
    /// The length of the message octets (the file minus envelope and footer).
    pub message_len: u64,
}

/// What [`Spool::open`] found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// The committed messages, in queue-ID order; their envelopes are not read yet (the
    /// queue reads them in the background, and sets aside those that cannot be used).
    pub messages: Vec<QueueId>,
    /// Partial files removed from `tmp/`.
    pub removed_partials: usize,
    /// Files in `msg/` not named like a message, moved to `corrupt/`.
    pub set_aside: Vec<PathBuf>,
}

impl Spool {
    /// Opens (creating if needed) the spool at `root`, takes its lock, deletes partial files
    /// and lists the committed messages by name (reading a directory of a million names
    /// takes a moment; reading a million envelopes would take a minute, and is left to the
    /// queue). Must be called inside a tokio runtime: it starts the commit task.
    pub fn open(root: &Path) -> Result<(Spool, Recovery), SpoolError> {
        let tmp_dir = root.join("tmp");
        let msg_dir = root.join("msg");
        for dir in [root, &tmp_dir, &msg_dir] {
            fs::create_dir_all(dir).map_err(io_error("cannot create", dir))?;
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
            Err(fs::TryLockError::WouldBlock) => return Err(SpoolError::Locked(root.to_owned())),
            Err(fs::TryLockError::Error(e)) => return Err(io_error("cannot lock", &lock_path)(e)),
        }

        // Before msg/ is listed: an import cut short is settled while nobody delivers.
        import::settle(root)?;
        import::identity(root)?;
        let mut recovery = Recovery::default();
        for entry in fs::read_dir(&tmp_dir).map_err(io_error("cannot read", &tmp_dir))? {
            let path = entry.map_err(io_error("cannot read", &tmp_dir))?.path();
            fs::remove_file(&path).map_err(io_error("cannot remove", &path))?;
            recovery.removed_partials += 1;
        }
        // The highest queue ID in msg/: new IDs stay above it, so a message set aside
        // later can never share its ID with a new one either.
        let mut floor: Option<QueueId> = None;
        for entry in fs::read_dir(&msg_dir).map_err(io_error("cannot read", &msg_dir))? {
            let path = entry.map_err(io_error("cannot read", &msg_dir))?.path();
            match path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse().ok())
            {
                Some(id) => {
                    floor = floor.max(Some(id));
                    recovery.messages.push(id);
                }
                // Not a file the spool wrote: the operator's to look at, never a reason
                // not to start.
                None => {
                    if let Some(target) = set_aside(root, &path, "the file name is not a queue ID")
                    {
                        recovery.set_aside.push(target);
                    }
                }
            }
        }
        recovery.messages.sort_unstable();
        let inner = Inner {
            root: root.to_owned(),
            ids: QueueIdGenerator::new(floor),
            committer: Committer::start(msg_dir.clone()),
            tmp_dir,
            msg_dir,
            _lock: lock,
        };
        Ok((
            Spool {
                inner: Arc::new(inner),
            },
            recovery,
        ))
    }

    /// Starts a new message: allocates its queue ID. Nothing touches the disk until the
    /// message outgrows the writer's buffer or is committed.
    pub fn new_message(&self) -> MessageWriter {
        let id = self.inner.ids.next();
        MessageWriter::new(self.clone(), id)
    }

    /// Removes a finished message from `msg/` and returns once the removal is on disk
    /// (the directory fsync is shared with the batch of commits and removals it joins).
    /// A message that is already gone counts as removed.
    pub async fn remove(&self, id: QueueId) -> Result<(), SpoolError> {
        self.inner.committer.remove(self.msg_path(id)).await
    }

    /// Moves message `id`, found unusable (`why`), into `corrupt/` for the operator, with
    /// its state log left where it is (the queue keeps the log of a file set aside).
    /// Returns whether it was moved (a failure is logged, and the file left in place).
    pub fn set_aside(&self, id: QueueId, why: &str) -> bool {
        set_aside(&self.inner.root, &self.msg_path(id), why).is_some()
    }

    /// Takes message `id` out of `quarantine/` back into `msg/`, its envelope's
    /// quarantine reason cleared, so that the queue delivers it as it would have been
    /// delivered (header edits and all). Durable like a commit: written to `tmp/`, synced,
    /// renamed, `msg/` synced; only then is the quarantined copy removed.
    pub fn release_quarantined(&self, id: QueueId) -> Result<StoredMessage, SpoolError> {
        let from = self.inner.root.join("quarantine").join(id.to_string());
        let stored = read_stored(&from)?;
        let mut envelope = stored.envelope;
        envelope.quarantine = None;
        // A leftover state log would be read as this message's history (its recipients
        // were recorded as final when it was quarantined).
        let _ = fs::remove_file(self.inner.root.join("state").join(id.to_string()));
        let tmp = self.tmp_path(id);
        let written = (|| -> io::Result<()> {
            let mut out = File::create(&tmp)?;
            let mut source = File::open(&from)?.take(stored.message_len);
            io::copy(&mut source, &mut out)?;
            io::Write::write_all(&mut out, &encode_trailer(&envelope))?;
            out.sync_data()?;
            fs::rename(&tmp, self.msg_path(id))?;
            File::open(&self.inner.msg_dir)?.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io_error("cannot release", &from)(e));
        }
        fs::remove_file(&from).map_err(io_error("cannot remove", &from))?;
        Ok(StoredMessage {
            id,
            envelope,
            message_len: stored.message_len,
        })
    }

    fn tmp_path(&self, id: QueueId) -> PathBuf {
        self.inner.tmp_dir.join(id.to_string())
    }

    fn msg_path(&self, id: QueueId) -> PathBuf {
        self.inner.msg_dir.join(id.to_string())
    }

    /// Lists the committed messages of the spool at `root` without locking or changing it
    /// (for `tidegate spool list`, safe while a server runs).
    pub fn list(root: &Path) -> Result<Vec<Result<StoredMessage, SpoolError>>, SpoolError> {
        let mut found = scan(&root.join("msg"))?;
        found.sort_by_key(|r| r.as_ref().map(|m| m.id).ok());
        Ok(found)
    }
}

/// Moves a file of `msg/` that cannot be used into `corrupt/` and logs it; returns where it
/// went, or `None` (logged) when it could not be moved, in which case it stays where it is
/// and is ignored, as the queue does not know it.
fn set_aside(root: &Path, path: &Path, why: &str) -> Option<PathBuf> {
    let corrupt_dir = root.join("corrupt");
    let target = corrupt_dir.join(path.file_name().unwrap_or_default());
    let moved = fs::create_dir_all(&corrupt_dir).and_then(|()| fs::rename(path, &target));
    match moved {
        Ok(()) => {
            tracing::error!(file = %path.display(), %why, moved_to = %target.display(), "unusable spool file set aside");
            Some(target)
        }
        Err(e) => {
            tracing::error!(file = %path.display(), %why, error = %e, "unusable spool file, and it cannot be set aside: ignored");
            None
        }
    }
}

/// Reads every file of a `msg/` directory.
fn scan(msg_dir: &Path) -> Result<Vec<Result<StoredMessage, SpoolError>>, SpoolError> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(msg_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(io_error("cannot read", msg_dir)(e)),
    };
    for entry in entries {
        let path = entry.map_err(io_error("cannot read", msg_dir))?.path();
        found.push(read_stored(&path));
    }
    Ok(found)
}

/// Reads the envelope of one committed file.
pub fn read_stored(path: &Path) -> Result<StoredMessage, SpoolError> {
    let corrupt = |why: String| SpoolError::Corrupt {
        path: path.to_owned(),
        why,
    };
    let id: QueueId = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| corrupt("the file name is not a queue ID".into()))?;
    let mut file = File::open(path).map_err(io_error("cannot open", path))?;
    let file_len = file
        .metadata()
        .map_err(io_error("cannot stat", path))?
        .len();
    if file_len < FOOTER_LEN {
        return Err(corrupt(format!("{file_len} octets is too short")));
    }
    let mut footer = [0u8; FOOTER_LEN as usize];
    file.seek(SeekFrom::Start(file_len - FOOTER_LEN))
        .and_then(|_| file.read_exact(&mut footer))
        .map_err(io_error("cannot read", path))?;
    let envelope_len = envelope_len_from_footer(&footer, file_len).map_err(corrupt)?;
    let message_len = file_len - FOOTER_LEN - envelope_len;
    let mut record = vec![0u8; envelope_len as usize];
    file.seek(SeekFrom::Start(message_len))
        .and_then(|_| file.read_exact(&mut record))
        .map_err(io_error("cannot read", path))?;
    let envelope = decode_envelope(&record, id).map_err(corrupt)?;
    Ok(StoredMessage {
        id,
        envelope,
        message_len,
    })
}

/// The envelope record's length, from the footer of a file of `file_len` octets.
fn envelope_len_from_footer(
    footer: &[u8; FOOTER_LEN as usize],
    file_len: u64,
) -> Result<u64, String> {
    let (len_bytes, magic) = footer.split_at(8);
    if magic != MAGIC {
        return Err("no TGSPOOL1 footer".into());
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(len_bytes);
    let envelope_len = u64::from_le_bytes(len);
    if envelope_len > MAX_ENVELOPE_LEN || envelope_len > file_len.saturating_sub(FOOTER_LEN) {
        return Err(format!("envelope length {envelope_len} is impossible"));
    }
    Ok(envelope_len)
}

/// Decodes an envelope record and checks that it belongs to the file named `id`.
fn decode_envelope(record: &[u8], id: QueueId) -> Result<Envelope, String> {
    let envelope: Envelope =
        serde_json::from_slice(record).map_err(|e| format!("envelope: {e}"))?;
    if envelope.version != envelope::ENVELOPE_VERSION || envelope.id != id.to_string() {
        return Err(format!(
            "envelope version {} / id {} does not match",
            envelope.version, envelope.id
        ));
    }
    Ok(envelope)
}

/// Parses a whole spool file held in memory, as [`read_stored`] parses one on disk, and
/// returns its envelope and the length of its message octets. It exists for fuzzing
/// (`fuzz/`): it runs the same footer and envelope checks on bytes without a file.
pub fn parse_stored(id: QueueId, file: &[u8]) -> Result<(Envelope, u64), String> {
    let file_len = file.len() as u64;
    let Some(footer_at) = file.len().checked_sub(FOOTER_LEN as usize) else {
        return Err(format!("{file_len} octets is too short"));
    };
    let mut footer = [0u8; FOOTER_LEN as usize];
    footer.copy_from_slice(&file[footer_at..]);
    let envelope_len = envelope_len_from_footer(&footer, file_len)?;
    let message_len = file_len - FOOTER_LEN - envelope_len;
    let record = &file[message_len as usize..footer_at];
    let envelope = decode_envelope(record, id)?;
    Ok((envelope, message_len))
}

/// Encodes the envelope record and footer that close a spool file. Public for fuzzing
/// (`fuzz/`), to check that what [`parse_stored`] accepts encodes back to what it read.
pub fn encode_trailer(envelope: &Envelope) -> Vec<u8> {
    // Serialising plain data with string keys cannot fail; fall back to an empty record
    // (which recovery would flag) rather than panic if that ever changes.
    let mut trailer = serde_json::to_vec(envelope).unwrap_or_default();
    let len = trailer.len() as u64;
    trailer.extend_from_slice(&len.to_le_bytes());
    trailer.extend_from_slice(MAGIC);
    trailer
}

/// Reads the message octets of a stored message (its bytes without the envelope record).
pub fn read_message(path: &Path, message_len: u64) -> Result<Vec<u8>, SpoolError> {
    let file = File::open(path).map_err(io_error("cannot open", path))?;
    let mut bytes = Vec::with_capacity(message_len.min(64 * 1024 * 1024) as usize);
    file.take(message_len)
        .read_to_end(&mut bytes)
        .map_err(io_error("cannot read", path))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(id: QueueId) -> Envelope {
        let mut envelope = envelope::tests_support::envelope(id, 1);
        envelope.recipients[0].address = "bob@example.com".into();
        envelope
    }

    #[test]
    fn a_spool_file_in_memory_parses_like_one_on_disk() {
        let id: QueueId = "0000000000000001".parse().unwrap();
        let mut file = b"hello".to_vec();
        file.extend_from_slice(&encode_trailer(&envelope(id)));
        let (parsed, message_len) = parse_stored(id, &file).unwrap();
        assert_eq!((parsed, message_len), (envelope(id), 5));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(id.to_string());
        fs::write(&path, &file).unwrap();
        let stored = read_stored(&path).unwrap();
        assert_eq!((stored.envelope, stored.message_len), (envelope(id), 5));
    }

    #[test]
    fn truncated_or_garbled_spool_files_are_refused_not_panicked_on() {
        let id: QueueId = "0000000000000001".parse().unwrap();
        let other: QueueId = "0000000000000002".parse().unwrap();
        let mut file = b"hello".to_vec();
        file.extend_from_slice(&encode_trailer(&envelope(id)));
        for len in 0..file.len() {
            assert!(parse_stored(id, &file[..len]).is_err(), "{len}");
        }
        assert!(parse_stored(other, &file).is_err());
        let mut huge = file.clone();
        let at = huge.len() - 16;
        huge[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse_stored(id, &huge).unwrap_err().contains("impossible"));
    }

    /// The fuzz target's seed (`fuzz/corpus/spool/full`) must stay a file the spool
    /// accepts, or the fuzzer would start from nothing but rejections.
    #[test]
    fn the_fuzz_seed_spool_file_is_one_the_spool_accepts() {
        let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/spool/full");
        let file = fs::read(seed).unwrap();
        let id: QueueId = "0000000000000001".parse().unwrap();
        let (envelope, message_len) = parse_stored(id, &file).unwrap();
        assert_eq!(envelope.recipients.len(), 1);
        assert!(!envelope.header_edits.is_empty() && envelope.quarantine.is_some());
        assert!(file[..message_len as usize].starts_with(b"Received:"));
    }
}
