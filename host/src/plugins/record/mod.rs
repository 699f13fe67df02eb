//! Recording a listener's plugin calls (`record = { ... }` in a `[[listener]]`) for
//! `tidegate replay` and the SDK's harness: what each call got as input, what the host
//! answered it, and what came of it. The format is `tidegate_plugin_sdk::record`'s (JSON
//! lines, one session a line, versioned); this module fills it and writes it.
//!
//! Writing never slows a session: a finished session's record is handed to the listener's
//! writer thread through a bounded channel, and when the channel is full it is dropped and
//! counted (`tidegate_records_dropped_total`). The writer starts a new file past
//! `max_file_bytes` and deletes the oldest past `keep_files`.

pub mod convert;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use tidegate_plugin_sdk::record::{
    Answer, Bytes, CallRecord, DataRecord, FORMAT_VERSION, MAX_CALLS_PER_LINE, Outcome,
    SessionRecord, StageRecord, Tape,
};

use super::bindings::tidegate::plugin::types as w;
use super::chain::StageInput;
use super::limits::CallError;
use crate::config::RecordConfig;
use crate::metrics::Metrics;

/// The most answers recorded for one call (a plugin's DNS and KV calls are bounded by
/// its budgets; this bounds the rest).
const MAX_ANSWERS_PER_CALL: usize = 256;
/// Sessions recorded by this process, for their ids.
static SESSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Finished sessions waiting for the writer; past this they are dropped.
const QUEUE: usize = 1024;

/// What one call does with its host answers: write them down, or take them from a
/// recording.
#[derive(Debug)]
pub enum CallTape {
    /// Recording: the answers so far.
    Record(Vec<Answer>),
    /// Replaying: the recorded answers.
    Replay(Tape),
}

impl CallTape {
    /// The recording to answer from, when replaying.
    pub fn replaying(tape: &mut Option<CallTape>) -> Option<&mut Tape> {
        match tape {
            Some(CallTape::Replay(tape)) => Some(tape),
            _ => None,
        }
    }

    /// Notes an answer, when recording (`answer` is only built then).
    pub fn note(tape: &mut Option<CallTape>, answer: impl FnOnce() -> Answer) {
        if let Some(CallTape::Record(answers)) = tape
            && answers.len() < MAX_ANSWERS_PER_CALL
        {
            answers.push(answer());
        }
    }
}

/// One session's record in the making.
#[derive(Debug)]
pub struct SessionRecorder {
    record: SessionRecord,
    body_bytes: usize,
    writer: Option<Arc<RecordWriter>>,
    /// (In a replay) questions the recording had no answer for.
    pub misses: u32,
}

impl SessionRecorder {
    /// A recorder for a session on `listener`; without a writer it only collects (a
    /// replay's).
    pub fn new(listener: &str, writer: Option<Arc<RecordWriter>>, body_bytes: u64) -> Self {
        let started_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let count = SESSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        SessionRecorder {
            record: SessionRecord {
                version: FORMAT_VERSION,
                // Unique enough: lines of one session follow each other in a file.
                id: started_ms.wrapping_mul(1000).wrapping_add(count % 1000),
                part: 0,
                listener: listener.to_owned(),
                started_ms,
                calls: Vec::new(),
            },
            body_bytes: usize::try_from(body_bytes).unwrap_or(usize::MAX),
            writer,
            misses: 0,
        }
    }

    /// Records one call of `plugin`: its input, the facts it could ask for, the host's
    /// answers and the validated outcome.
    #[allow(clippy::too_many_arguments)]
    pub fn call(
        &mut self,
        plugin: &str,
        input: &StageInput,
        session: &w::SessionInfo,
        auth_results: &[w::AuthResult],
        tags: &BTreeMap<String, String>,
        tape: Option<CallTape>,
        result: Result<&w::Response, &CallError>,
    ) {
        let answers = match tape {
            Some(CallTape::Record(answers)) => answers,
            Some(CallTape::Replay(tape)) => {
                self.misses += tape.misses();
                Vec::new()
            }
            None => Vec::new(),
        };
        let outcome = match result {
            Ok(response) => Outcome::Answer(convert::response_to(response)),
            Err(error) => Outcome::Failed(error.kind.as_str().to_owned()),
        };
        self.record.calls.push(CallRecord {
            plugin: plugin.to_owned(),
            input: self.stage(input),
            session: convert::session_to(session),
            auth_results: auth_results.iter().map(convert::auth_result_to).collect(),
            tags: tags.clone(),
            answers,
            outcome,
        });
        // A long session (many messages on one connection) is written in parts, so a line
        // and what waits in memory for it stay bounded.
        if let Some(writer) = &self.writer
            && self.record.calls.len() >= MAX_CALLS_PER_LINE
        {
            let next = SessionRecord {
                version: self.record.version,
                id: self.record.id,
                part: self.record.part.saturating_add(1),
                listener: self.record.listener.clone(),
                started_ms: self.record.started_ms,
                calls: Vec::new(),
            };
            writer.send(std::mem::replace(&mut self.record, next));
        }
    }

    fn stage(&self, input: &StageInput) -> StageRecord {
        match input {
            StageInput::Connect(i) => StageRecord::Connect(convert::connect_to(i)),
            StageInput::Helo(i) => StageRecord::Helo(convert::helo_to(i)),
            StageInput::Auth(i) => StageRecord::Auth(convert::auth_to(i)),
            StageInput::MailFrom(i) => StageRecord::MailFrom(convert::mail_from_to(i)),
            StageInput::RcptTo(i) => StageRecord::RcptTo(convert::rcpt_to_to(i)),
            StageInput::Data(envelope, message) => {
                use tidegate_plugin_sdk::Message as _;
                let raw = message.raw();
                let keep = header_len(raw)
                    .saturating_add(self.body_bytes)
                    .min(raw.len());
                StageRecord::Data(DataRecord {
                    envelope: convert::envelope_to(envelope),
                    size: message.raw_size(),
                    message: Bytes(raw[..keep].to_vec()),
                    truncated: keep < raw.len(),
                })
            }
        }
    }

    /// Takes the outcome of the last call recorded (a replay reads each back).
    pub fn take_last(&mut self) -> Option<Outcome> {
        self.record.calls.pop().map(|c| c.outcome)
    }

    /// The session ended: its record goes to the writer (a session no plugin was called
    /// in writes nothing).
    pub fn finish(self) {
        if let Some(writer) = &self.writer
            && !self.record.calls.is_empty()
        {
            writer.send(self.record);
        }
    }
}

/// The length of a message's header, its blank line included (the whole message when it
/// has no body).
fn header_len(raw: &[u8]) -> usize {
    let crlf = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let lf = raw.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => raw.len(),
    }
}

/// A listener's records writer: a thread that owns the files.
#[derive(Debug)]
pub struct RecordWriter {
    queue: SyncSender<SessionRecord>,
    metrics: Arc<Metrics>,
    /// How much of a body is recorded.
    pub body_bytes: u64,
    sample: f64,
    sessions: std::sync::atomic::AtomicU64,
}

impl RecordWriter {
    /// Creates the records directory and starts the writer.
    pub fn start(config: &RecordConfig, metrics: Arc<Metrics>) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(&config.path)?;
        let (queue, received) = std::sync::mpsc::sync_channel(QUEUE);
        let files = Files {
            dir: config.path.clone(),
            max_file_bytes: config.max_file_bytes,
            keep_files: usize::try_from(config.keep_files).unwrap_or(usize::MAX),
            current: None,
            written: 0,
            sequence: 0,
        };
        let thread_metrics = Arc::clone(&metrics);
        std::thread::Builder::new()
            .name("tidegate-records".into())
            .spawn(move || write_loop(received, files, &thread_metrics))?;
        Ok(Arc::new(RecordWriter {
            queue,
            metrics,
            body_bytes: config.body_bytes,
            sample: config.sample,
            sessions: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// Whether a new session is recorded: `sample` of them, evenly spread (the n-th is
    /// when n x sample passes a whole number), with no randomness to make a test flaky.
    pub fn sampled(&self) -> bool {
        let n = self
            .sessions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed) as f64;
        ((n + 1.0) * self.sample).floor() > (n * self.sample).floor()
    }

    /// Hands a finished session to the writer, or drops and counts it when the writer is
    /// behind: a session never waits for a disk.
    pub fn send(&self, record: SessionRecord) {
        match self.queue.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.metrics.records_dropped.inc();
            }
        }
    }
}

/// The records files of one directory.
struct Files {
    dir: PathBuf,
    max_file_bytes: u64,
    keep_files: usize,
    current: Option<std::io::BufWriter<std::fs::File>>,
    written: u64,
    sequence: u32,
}

impl Files {
    fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        let length = line.len() as u64 + 1;
        if self.current.is_some() && self.written + length > self.max_file_bytes {
            self.rotate()?;
        }
        if self.current.is_none() {
            self.open()?;
        }
        if let Some(file) = self.current.as_mut() {
            file.write_all(line)?;
            file.write_all(b"\n")?;
            self.written += length;
        }
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(mut file) = self.current.take() {
            file.flush()?;
        }
        Ok(())
    }

    fn open(&mut self) -> std::io::Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        self.sequence = self.sequence.wrapping_add(1);
        // Fixed-width numbers: name order is age order (what readers and pruning rely on).
        let name = format!("records-{now:015}-{:06}.jsonl", self.sequence % 1_000_000);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(name))?;
        self.current = Some(std::io::BufWriter::with_capacity(64 * 1024, file));
        self.written = 0;
        prune(&self.dir, self.keep_files);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.current.as_mut() {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

/// Deletes the oldest records files past `keep` (the one just opened counts).
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("records-") && n.ends_with(".jsonl"))
        })
        .collect();
    files.sort();
    let excess = files.len().saturating_sub(keep);
    for old in &files[..excess] {
        if let Err(e) = std::fs::remove_file(old) {
            tracing::warn!(file = %old.display(), error = %e, "cannot delete an old records file");
        }
    }
}

fn write_loop(received: Receiver<SessionRecord>, mut files: Files, metrics: &Metrics) {
    let mut failing = false;
    let mut write = |files: &mut Files, record: SessionRecord| {
        let result = serde_json::to_vec(&record)
            .map_err(std::io::Error::other)
            .and_then(|line| files.write(&line));
        match result {
            Ok(()) => {
                metrics.records_written.inc();
                failing = false;
            }
            Err(e) => {
                metrics.records_dropped.inc();
                if !failing {
                    tracing::warn!(dir = %files.dir.display(), error = %e, "cannot write session records, dropping them");
                }
                failing = true;
                files.current = None;
            }
        }
    };
    while let Ok(record) = received.recv() {
        write(&mut files, record);
        // Whatever else is waiting goes in the same buffered write, then one flush.
        while let Ok(record) = received.try_recv() {
            write(&mut files, record);
        }
        if let Err(e) = files.flush() {
            tracing::warn!(dir = %files.dir.display(), error = %e, "cannot flush session records");
            files.current = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_ends_at_the_first_blank_line() {
        assert_eq!(header_len(b"A: b\r\n\r\nbody"), 8);
        assert_eq!(header_len(b"A: b\n\nbody"), 6);
        assert_eq!(header_len(b"A: b\r\n"), 6);
    }

    #[test]
    fn a_writer_that_cannot_keep_up_drops_and_counts_rather_than_wait() {
        let metrics = Arc::new(Metrics::default());
        // A writer whose thread never reads: the queue fills, then records are dropped.
        let (queue, _stalled) = std::sync::mpsc::sync_channel(2);
        let writer = RecordWriter {
            queue,
            metrics: Arc::clone(&metrics),
            body_bytes: 0,
            sample: 0.25,
            sessions: std::sync::atomic::AtomicU64::new(0),
        };
        let sampled = (0..100).filter(|_| writer.sampled()).count();
        assert_eq!(sampled, 25);
        let started = std::time::Instant::now();
        for _ in 0..5 {
            writer.send(SessionRecorder::new("mx", None, 0).record);
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(metrics.records_dropped.get(), 3);
    }

    #[test]
    fn a_long_session_is_written_in_parts_that_replay_as_one_session() {
        let (queue, written) = std::sync::mpsc::sync_channel(10);
        let writer = Arc::new(RecordWriter {
            queue,
            metrics: Arc::new(Metrics::default()),
            body_bytes: 0,
            sample: 1.0,
            sessions: std::sync::atomic::AtomicU64::new(0),
        });
        let mut recorder = SessionRecorder::new("mx", Some(writer), 0);
        let input = StageInput::Helo(w::HeloInfo {
            name: "client.example.org".into(),
            extended: true,
        });
        let answer = w::Response {
            verdict: w::Verdict::Continue,
            edits: Vec::new(),
        };
        let session = super::super::services::no_session();
        for _ in 0..MAX_CALLS_PER_LINE + 10 {
            recorder.call(
                "p",
                &input,
                &session,
                &[],
                &BTreeMap::new(),
                None,
                Ok(&answer),
            );
        }
        recorder.finish();
        let first = written.try_recv().expect("the first part");
        let second = written.try_recv().expect("the second part");
        assert_eq!((first.part, first.calls.len()), (0, MAX_CALLS_PER_LINE));
        assert_eq!((second.part, second.calls.len()), (1, 10));
        assert_eq!(first.id, second.id);
        assert!(second.continues(Some(&first)));
        assert!(!first.continues(None));
    }

    #[test]
    fn a_records_directory_rotates_by_size_and_keeps_its_bound() {
        let dir = std::env::temp_dir().join(format!("tidegate-records-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut files = Files {
            dir: dir.clone(),
            max_file_bytes: 100,
            keep_files: 3,
            current: None,
            written: 0,
            sequence: 0,
        };
        for _ in 0..10 {
            files.write(&[b'x'; 60]).unwrap();
        }
        files.flush().unwrap();
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
