//! The log: human-readable lines by default, JSON lines with `[log] format = "json"`,
//! on standard error. A log that cannot keep up (a slow pipe, a stuck journal) must never
//! slow mail, and writing a line must not cost the session a thread wake-up either: lines
//! are appended to a bounded buffer in memory, and a thread of its own writes the buffer
//! out: at once when the log is quiet, every 20 ms when it is busy. Past the bound, lines
//! are dropped and counted (`tidegate_log_lines_dropped`). The level can be changed while
//! running (`tidegate log-level`).

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::LogFormat;

/// The most the buffer holds before lines are dropped.
const MAX_BUFFERED: usize = 8 * 1024 * 1024;
/// How long the writer pauses between writes when the log is busy.
const INTERVAL: Duration = Duration::from_millis(20);
/// A write this soon after the previous one means the log is busy.
const BUSY: Duration = Duration::from_millis(5);

static LEVEL: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();
static BUFFER: OnceLock<Arc<Buffer>> = OnceLock::new();

/// Lines waiting to be written, shared by every thread that logs and the writer.
#[derive(Debug, Default)]
struct Buffer {
    lines: Mutex<Vec<u8>>,
    wake: Condvar,
    dropped: AtomicU64,
    stopping: AtomicBool,
}

impl Buffer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes out what is buffered until stopped, then the rest. A line that comes when
    /// the log is quiet is written at once; when lines come fast (the last write was a
    /// moment ago), the writer pauses for `INTERVAL` between writes, so that a busy log
    /// costs one wake-up per interval, not one per line.
    fn drain(&self, out: &mut dyn Write) {
        let mut spare = Vec::new();
        let mut last_write: Option<std::time::Instant> = None;
        loop {
            if last_write.is_some_and(|at| at.elapsed() < BUSY) {
                std::thread::sleep(INTERVAL);
            }
            let stopping = {
                let mut lines = self.lock();
                while lines.is_empty() && !self.stopping.load(Ordering::Acquire) {
                    lines = self
                        .wake
                        .wait_timeout(lines, Duration::from_secs(1))
                        .map(|(guard, _)| guard)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
                std::mem::swap(&mut *lines, &mut spare);
                self.stopping.load(Ordering::Acquire)
            };
            if !spare.is_empty() {
                // A failing standard error loses these lines, never the mail.
                let _ = out.write_all(&spare).and_then(|()| out.flush());
                spare.clear();
                last_write = Some(std::time::Instant::now());
            }
            if stopping && self.lock().is_empty() {
                return;
            }
        }
    }
}

/// The `MakeWriter` of the fmt layer: each line goes into the buffer whole.
#[derive(Clone)]
struct Appender(Arc<Buffer>);

impl Write for Appender {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut lines = self.0.lock();
        if lines.len() + line.len() > MAX_BUFFERED {
            self.0.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(line.len());
        }
        let was_empty = lines.is_empty();
        lines.extend_from_slice(line);
        if was_empty {
            // The writer may be waiting for a first line; when it is pausing (a busy log)
            // the notification costs nothing.
            self.0.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Appender {
    type Writer = Appender;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Keeps the log writer running; dropping it writes out what is buffered.
pub struct LogGuard {
    buffer: Arc<Buffer>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.buffer.stopping.store(true, Ordering::Release);
        self.buffer.wake.notify_one();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Starts logging at `level` (a `tracing` filter; `RUST_LOG` overrides it) in `format`.
pub fn init(level: &str, format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let buffer = Arc::new(Buffer::default());
    let _ = BUFFER.set(Arc::clone(&buffer));
    let drainer = Arc::clone(&buffer);
    let writer = std::thread::Builder::new()
        .name("tidegate-log".into())
        .spawn(move || drainer.drain(&mut io::stderr()))
        .ok();
    let appender = Appender(Arc::clone(&buffer));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(appender)
                    .with_ansi(false),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(appender),
            )
            .init(),
    }
    let _ = LEVEL.set(handle);
    LogGuard { buffer, writer }
}

/// Changes the level while running; `Err` says why a filter was refused.
pub fn set_level(level: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(level).map_err(|e| format!("`{level}`: {e}"))?;
    let handle = LEVEL.get().ok_or("logging is not started")?;
    handle.reload(filter).map_err(|e| e.to_string())
}

/// Log lines dropped because the writer could not keep up.
pub fn dropped_lines() -> u64 {
    BUFFER
        .get()
        .map_or(0, |buffer| buffer.dropped.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_written_whole_in_order_and_past_the_bound_dropped_and_counted() {
        let buffer = Arc::new(Buffer::default());
        let mut appender = Appender(Arc::clone(&buffer));
        for n in 0..1000 {
            appender
                .write_all(format!("line {n}\n").as_bytes())
                .unwrap();
        }
        let big = vec![b'x'; MAX_BUFFERED];
        appender.write_all(&big).unwrap();
        assert_eq!(buffer.dropped.load(Ordering::Relaxed), 1);
        buffer.stopping.store(true, Ordering::Release);
        let mut out = Vec::new();
        buffer.drain(&mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1000);
        assert_eq!(lines[999], "line 999");
    }
}
