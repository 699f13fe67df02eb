//! What a plugin may ask of the host, and how a call that goes too far is named.
//!
//! Fuel and the memory limit hold guest code to its budget; everything else a plugin can
//! make the host do (wait, store, count, log, look up, hand back) is bounded here, per
//! plugin, so that no plugin can grow the host's memory, logs or metrics, or hold a
//! session, whatever it does. Each limit has a default that contains a hostile plugin
//! (see the README's sandbox section) and a key of its own in the `[[plugin]]` table.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::PluginConfig;

/// The response bounds: what one answer of a plugin may carry (defined in the SDK, so
/// that its native harness holds plugins to the same bounds).
pub use tidegate_plugin_sdk::check::limits as response;

/// The bounds on one plugin's host calls, taken from its `[[plugin]]` table.
#[derive(Debug)]
pub struct PluginLimits {
    /// The wall-clock deadline of one hook call.
    pub time: Duration,
    /// Bytes its key/value namespace may hold.
    pub kv_max_bytes: u64,
    /// Keys its key/value namespace may hold.
    pub kv_max_keys: u64,
    /// Distinct counter names.
    pub max_counters: usize,
    /// DNS queries per call.
    pub dns_per_call: u32,
    /// DNS queries per session.
    pub dns_per_session: u32,
    /// Its log lines, shared by all its instances.
    pub log: LogBudget,
    /// What it may reach over HTTP, and how much.
    pub http: super::http::HttpGrant,
}

impl PluginLimits {
    /// The limits a plugin's configuration sets.
    pub fn new(config: &PluginConfig) -> PluginLimits {
        PluginLimits {
            time: Duration::from_millis(config.time_limit_ms),
            kv_max_bytes: config.kv_max_bytes,
            kv_max_keys: config.kv_max_keys,
            max_counters: usize::try_from(config.max_counters).unwrap_or(usize::MAX),
            dns_per_call: config.dns_queries_per_call,
            dns_per_session: config.dns_queries_per_session,
            log: LogBudget::new(config.log_lines_per_second),
            http: super::http::HttpGrant::new(config),
        }
    }
}

/// The longest log line a plugin may write, in bytes (longer ones are cut).
pub const MAX_LOG_LINE: usize = 1024;
/// Fields per log line.
pub const MAX_LOG_FIELDS: usize = 16;
/// The longest field name and value in a log line.
pub const MAX_LOG_FIELD: usize = 256;

/// A token bucket of log lines: `rate` per second, with a burst of ten seconds' worth.
#[derive(Debug)]
pub struct LogBudget {
    rate: f64,
    burst: f64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    dropped: u64,
}

/// Whether a log line may be written.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Write it; `dropped` lines were dropped since the last one written (say so first).
    Write {
        /// Lines dropped before this one.
        dropped: u64,
    },
    /// Drop it (counted); `first` when it is the first line dropped since the last one
    /// written (say once that lines are being dropped).
    Drop {
        /// The first dropped line of a run.
        first: bool,
    },
}

impl LogBudget {
    /// A budget of `per_second` lines.
    pub fn new(per_second: u32) -> LogBudget {
        let rate = f64::from(per_second);
        let burst = (rate * 10.0).max(1.0);
        LogBudget {
            rate,
            burst,
            state: Mutex::new(Bucket {
                tokens: burst,
                refilled: Instant::now(),
                dropped: 0,
            }),
        }
    }

    /// The rate, in lines per second.
    pub fn per_second(&self) -> f64 {
        self.rate
    }

    /// Takes a line from the budget.
    pub fn admit(&self) -> Admit {
        let Ok(mut bucket) = self.state.lock() else {
            return Admit::Drop { first: false };
        };
        let now = Instant::now();
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.refilled = now;
        if self.rate > 0.0 && bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Admit::Write {
                dropped: std::mem::take(&mut bucket.dropped),
            }
        } else {
            bucket.dropped += 1;
            Admit::Drop {
                first: bucket.dropped == 1,
            }
        }
    }
}

/// Why a plugin call failed: the `kind` label of the failure metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The guest trapped (a panic, an unreachable, a bad memory access).
    Trap,
    /// Its CPU budget (fuel) ran out.
    Cpu,
    /// Its wall-clock deadline (or the stage's) passed.
    Time,
    /// It asked for more memory than its limit.
    Memory,
    /// Its answer broke the contract (a bad reply code, a malformed address or header, too
    /// many edits or tags).
    Invalid,
    /// It asked the host for more than its share: KV quota, counter names.
    Quota,
    /// No instance could be had: the pool is full.
    PoolFull,
    /// It could not be set up for the session (`init` refused).
    Init,
    /// The KV backend (Redis) did not answer in time or at all.
    Kv,
}

impl Failure {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Trap => "trap",
            Failure::Cpu => "cpu",
            Failure::Time => "time",
            Failure::Memory => "memory",
            Failure::Invalid => "invalid",
            Failure::Quota => "quota",
            Failure::PoolFull => "pool_full",
            Failure::Init => "init",
            Failure::Kv => "kv",
        }
    }
}

/// A failed plugin call: its kind and a readable reason for the log.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{why}")]
pub struct CallError {
    /// What kind of failure.
    pub kind: Failure,
    /// The reason.
    pub why: String,
}

impl CallError {
    /// A failure of `kind`.
    pub fn new(kind: Failure, why: impl Into<String>) -> CallError {
        CallError {
            kind,
            why: why.into(),
        }
    }

    /// Names a wasmtime error: fuel, memory, host limits and traps apart.
    pub fn from_wasm(error: &wasmtime::Error) -> CallError {
        if let Some(over) = error.downcast_ref::<OverLimit>() {
            return CallError::new(over.kind, over.why.clone());
        }
        match error.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::OutOfFuel) => {
                CallError::new(Failure::Cpu, "CPU budget exhausted (cpu_limit_ms)")
            }
            Some(trap) => CallError::new(Failure::Trap, format!("trap: {trap}")),
            // The root cause is the useful part; the context above it is a wasm backtrace.
            None => CallError::new(Failure::Trap, format!("trap: {}", error.root_cause())),
        }
    }
}

/// A host call that a plugin took past one of its limits: returned from the host function,
/// it traps the guest and names the limit.
#[derive(Debug, thiserror::Error)]
#[error("{why}")]
pub struct OverLimit {
    /// Memory or quota.
    pub kind: Failure,
    /// Which limit.
    pub why: String,
}

impl OverLimit {
    /// A quota (KV, counters) was exceeded.
    pub fn quota(why: impl Into<String>) -> OverLimit {
        OverLimit {
            kind: Failure::Quota,
            why: why.into(),
        }
    }
}

/// The memory limiter of one instance: refuses growth past the plugin's limit (trapping
/// with [`OverLimit`]) and remembers the high-water mark for the metrics.
#[derive(Debug)]
pub struct MemoryLimiter {
    limit: usize,
    /// The largest linear memory the instance has had, in bytes.
    pub high_water: usize,
}

/// Table elements an instance may have (a Rust guest uses a few hundred).
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl MemoryLimiter {
    /// A limiter at `limit` bytes.
    pub fn new(limit: usize) -> MemoryLimiter {
        MemoryLimiter {
            limit,
            high_water: 0,
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            return Err(wasmtime::Error::new(OverLimit {
                kind: Failure::Memory,
                why: format!(
                    "memory limit: asked for {} MiB, memory_limit_mib is {}",
                    desired.div_ceil(1024 * 1024),
                    self.limit / (1024 * 1024)
                ),
            }));
        }
        self.high_water = self.high_water.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Err(wasmtime::Error::new(OverLimit {
                kind: Failure::Memory,
                why: format!("table limit: asked for {desired} elements"),
            }));
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_budget_lets_a_burst_through_then_counts_what_it_drops() {
        let budget = LogBudget::new(1);
        for _ in 0..10 {
            assert_eq!(budget.admit(), Admit::Write { dropped: 0 });
        }
        assert_eq!(budget.admit(), Admit::Drop { first: true });
        assert_eq!(budget.admit(), Admit::Drop { first: false });
        budget.state.lock().unwrap().refilled -= Duration::from_secs(1);
        assert_eq!(budget.admit(), Admit::Write { dropped: 2 });
    }

    #[test]
    fn a_zero_rate_silences_the_plugin() {
        let budget = LogBudget::new(0);
        assert_eq!(budget.admit(), Admit::Drop { first: true });
    }

    #[test]
    fn memory_past_the_limit_is_refused_and_named() {
        use wasmtime::ResourceLimiter;
        let mut limiter = MemoryLimiter::new(2 * 1024 * 1024);
        assert!(limiter.memory_growing(0, 1024 * 1024, None).unwrap());
        let error = limiter
            .memory_growing(0, 3 * 1024 * 1024, None)
            .unwrap_err();
        assert_eq!(CallError::from_wasm(&error).kind, Failure::Memory);
        assert_eq!(limiter.high_water, 1024 * 1024);
    }
}
