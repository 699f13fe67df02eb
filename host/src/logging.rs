//! The log: human-readable lines by default, JSON lines with `[log] format = "json"`,
//! written to standard error by a background thread through a bounded buffer, so a log
//! that cannot keep up (a slow pipe, a stuck journal) never slows mail: past the buffer,
//! lines are dropped and counted (`tidegate_log_lines_dropped`). The level can be changed
//! while running (`tidegate log-level`).

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::LogFormat;

/// Lines the writer may hold before it drops new ones.
const BUFFERED_LINES: usize = 64 * 1024;

static LEVEL: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();
static DROPPED: OnceLock<tracing_appender::non_blocking::ErrorCounter> = OnceLock::new();

/// Keeps the log writer running; dropping it flushes what is buffered.
pub struct LogGuard(
    #[allow(dead_code, reason = "held for its Drop")] tracing_appender::non_blocking::WorkerGuard,
);

/// Starts logging at `level` (a `tracing` filter; `RUST_LOG` overrides it) in `format`.
pub fn init(level: &str, format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_ansi(false),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(writer),
            )
            .init(),
    }
    let _ = LEVEL.set(handle);
    LogGuard(guard)
}

/// Changes the level while running; `Err` says why a filter was refused.
pub fn set_level(level: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(level).map_err(|e| format!("`{level}`: {e}"))?;
    let handle = LEVEL.get().ok_or("logging is not started")?;
    handle.reload(filter).map_err(|e| e.to_string())
}

/// Log lines dropped because the writer could not keep up.
pub fn dropped_lines() -> u64 {
    DROPPED
        .get()
        .map_or(0, |counter| counter.dropped_lines() as u64)
}
