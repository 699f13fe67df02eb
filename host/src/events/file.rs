//! The file sink: delivery events appended as JSON lines (one object per line) to a file
//! that is rotated by size (`events.jsonl` → `events.jsonl.1` → ... → `.N`, the oldest
//! removed).
//!
//! One writer owns the file and rotates it between two lines (flush, rename, reopen), so
//! no event is lost or split by a rotation, and a reader following the file by name sees
//! every line. Lines are written (flushed to the kernel) once per batch taken from the
//! channel; the file is fdatasynced at rotation and at shutdown only, so a power failure
//! can lose the last lines written, a process crash loses only the events still queued in
//! memory.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// How long events gather between writes when they come fast.
const GATHER: Duration = Duration::from_millis(20);
/// A write this soon after the previous one means events come fast.
const BUSY: Duration = Duration::from_millis(5);
use tokio_util::sync::CancellationToken;

use super::{EventsError, count_dropped};
use crate::config::EventSinkConfig;
use crate::metrics::Metrics;

/// Events taken from the channel and written in one go.
const BATCH: usize = 1024;

/// A JSON-lines file rotated when it would grow over `max_size`.
pub struct RotatingFile {
    path: PathBuf,
    max_size: u64,
    keep: u32,
    file: BufWriter<File>,
    size: u64,
}

impl RotatingFile {
    /// Opens (or creates, with its directory) the file for appending.
    pub fn open(path: &Path, max_size: u64, keep: u32) -> io::Result<RotatingFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_owned(),
            max_size,
            keep: keep.max(1),
            file: BufWriter::with_capacity(64 * 1024, file),
            size,
        })
    }

    /// Appends each line and a newline, rotating first whenever a line would take the file
    /// over its size; returns how many lines were written (all of them, unless an error
    /// stopped it).
    pub fn write_lines(&mut self, lines: &[Arc<str>]) -> (usize, io::Result<()>) {
        for (written, line) in lines.iter().enumerate() {
            let len = line.len() as u64 + 1;
            if self.size > 0
                && self.size.saturating_add(len) > self.max_size
                && let Err(e) = self.rotate()
            {
                return (written, Err(e));
            }
            let result = self
                .file
                .write_all(line.as_bytes())
                .and_then(|()| self.file.write_all(b"\n"));
            if let Err(e) = result {
                return (written, Err(e));
            }
            self.size += len;
        }
        (lines.len(), self.file.flush())
    }

    /// Flushes and fdatasyncs what was written.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_data()
    }

    /// Reopens the file after a write error (a full disk, a file removed under it), so the
    /// next batch starts on a clean handle.
    fn reopen(&mut self) -> io::Result<()> {
        let file = open_append(&self.path)?;
        self.size = file.metadata()?.len();
        // The old handle's buffer may hold part of a failed line: it is discarded, not
        // written after the fact.
        let old = std::mem::replace(&mut self.file, BufWriter::with_capacity(64 * 1024, file));
        let _ = old.into_parts();
        Ok(())
    }

    /// `path.{keep-1}` → `path.{keep}`, ..., `path` → `path.1`, and a new `path`.
    fn rotate(&mut self) -> io::Result<()> {
        self.sync()?;
        for n in (1..self.keep).rev() {
            match std::fs::rename(numbered(&self.path, n), numbered(&self.path, n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, numbered(&self.path, 1))?;
        self.file = BufWriter::with_capacity(64 * 1024, open_append(&self.path)?);
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// `events.jsonl` → `events.jsonl.3`.
fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// A file sink, opened and ready to run.
pub struct FileSink {
    name: String,
    file: RotatingFile,
    metrics: Arc<Metrics>,
}

impl FileSink {
    /// Opens the sink's file, so a bad path fails at start-up rather than at the first event.
    pub fn open(
        name: &str,
        config: &EventSinkConfig,
        metrics: Arc<Metrics>,
    ) -> Result<FileSink, EventsError> {
        let Some(path) = &config.path else {
            return Err(EventsError::Config {
                sink: name.to_owned(),
                problem: "a file sink needs a `path`".into(),
            });
        };
        let file = RotatingFile::open(path, config.file_max_size(), config.file_keep()).map_err(
            |source| EventsError::File {
                sink: name.to_owned(),
                path: path.clone(),
                source,
            },
        )?;
        Ok(FileSink {
            name: name.to_owned(),
            file,
            metrics,
        })
    }

    /// Writes every event received until shutdown, then what is still queued, and syncs.
    pub async fn run(self, mut queue: mpsc::Receiver<Arc<str>>, shutdown: CancellationToken) {
        let FileSink {
            name,
            file,
            metrics,
        } = self;
        let mut file = Some(file);
        let mut batch = Vec::with_capacity(BATCH);
        let mut closing = false;
        let mut last_error_log: Option<Instant> = None;
        let mut last_write: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                n = queue.recv_many(&mut batch, BATCH) => if n == 0 { break },
                () = shutdown.cancelled(), if !closing => {
                    // Take no more, but write what was queued before the shutdown.
                    closing = true;
                    queue.close();
                    continue;
                }
            }
            let Some(mut writer) = file.take() else { break };
            // File I/O blocks: it runs off the runtime's workers, one batch at a time.
            let joined = tokio::task::spawn_blocking(move || {
                let (written, result) = writer.write_lines(&batch);
                let result = result.or_else(|e| writer.reopen().and(Err(e)));
                batch.clear();
                (writer, batch, written, result)
            })
            .await;
            let Ok((writer, returned, written, result)) = joined else {
                tracing::error!(sink = %name, "events file writer failed; the sink stops");
                return;
            };
            let unwritten = returned.len().saturating_sub(written);
            if let Err(e) = result {
                count_dropped(&metrics, &name, "write_error", unwritten.max(1) as u64);
                if last_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    last_error_log = Some(Instant::now());
                    tracing::error!(sink = %name, error = %e, "cannot write delivery events");
                }
            }
            file = Some(writer);
            let busy = last_write.is_some_and(|at: Instant| at.elapsed() < BUSY);
            last_write = Some(Instant::now());
            if busy && written < BATCH && !closing {
                // Events coming fast would otherwise cost a write and a thread hop each:
                // let the next ones gather for a moment (shutdown cuts the wait short). A
                // quiet sink writes each event at once.
                tokio::select! {
                    () = tokio::time::sleep(GATHER) => {}
                    () = shutdown.cancelled() => {}
                }
            }
            batch = returned;
            batch.clear();
        }
        if let Some(mut writer) = file {
            let synced = tokio::task::spawn_blocking(move || writer.sync()).await;
            if let Ok(Err(e)) = synced {
                tracing::error!(sink = %name, error = %e, "cannot sync the events file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(range: std::ops::Range<usize>) -> Vec<Arc<str>> {
        range
            .map(|i| Arc::from(format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(40))))
            .collect()
    }

    fn read_all(path: &Path, keep: u32) -> Vec<String> {
        // Oldest first: .keep ... .1, then the live file.
        let mut files: Vec<PathBuf> = (1..=keep).rev().map(|n| numbered(path, n)).collect();
        files.push(path.to_owned());
        files
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .flat_map(|text| text.lines().map(str::to_owned).collect::<Vec<_>>())
            .collect()
    }

    #[test]
    fn rotation_loses_no_line_and_splits_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("var/events.jsonl");
        let mut file = RotatingFile::open(&path, 1000, 50).unwrap();
        let all = lines(0..300);
        for chunk in all.chunks(7) {
            let (written, result) = file.write_lines(chunk);
            result.unwrap();
            assert_eq!(written, chunk.len());
        }
        file.sync().unwrap();
        let read = read_all(&path, 50);
        let expected: Vec<String> = all.iter().map(|l| l.to_string()).collect();
        assert_eq!(read, expected, "every line once, in order, whole");
        for n in 1..=50 {
            if let Ok(meta) = std::fs::metadata(numbered(&path, n)) {
                assert!(meta.len() <= 1000, "file .{n} is {} octets", meta.len());
            }
        }
        assert!(std::fs::metadata(numbered(&path, 2)).is_ok(), "it rotated");
    }

    #[test]
    fn only_keep_rotated_files_are_kept_the_oldest_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut file = RotatingFile::open(&path, 200, 2).unwrap();
        file.write_lines(&lines(0..40)).1.unwrap();
        assert!(std::fs::metadata(numbered(&path, 2)).is_ok());
        assert!(std::fs::metadata(numbered(&path, 3)).is_err());
        let read = read_all(&path, 2);
        assert!(read.last().unwrap().contains("\"n\":39"), "{read:?}");
    }

    #[test]
    fn a_reopened_file_is_appended_to_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        RotatingFile::open(&path, 1 << 20, 5)
            .unwrap()
            .write_lines(&lines(0..3))
            .1
            .unwrap();
        let mut again = RotatingFile::open(&path, 1 << 20, 5).unwrap();
        again.write_lines(&lines(3..5)).1.unwrap();
        assert_eq!(read_all(&path, 5).len(), 5);
    }
}
