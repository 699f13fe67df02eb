//! The wasmtime engine: compilation, the on-disk cache of precompiled components, and the
//! sandbox settings every instance runs under.
//!
//! CPU is budgeted in fuel (instructions), not wall-clock time, so a plugin gets the same
//! budget on an idle machine and on one saturated by other work. Epoch interruption is
//! used only to make long calls yield to tokio every tick, so one busy plugin never holds
//! a worker thread that other sessions need.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::Plugin;
use super::cache::ArtifactCache;
use super::services::PluginState;
use crate::config::PluginRuntimeConfig;

/// Fuel per millisecond of budget. Measured on the development machine (see the README):
/// a tight guest loop burns about 7 million fuel units per millisecond of CPU; code that
/// waits on memory burns fewer, so for it a budget allows somewhat more time. Either way
/// the count is the same on an idle machine and a saturated one.
pub const FUEL_PER_MS: u64 = 7_000_000;
/// The epoch tick: how often a running guest yields to the async runtime.
const EPOCH_TICK: Duration = Duration::from_millis(5);
/// How much of an instance's dirtied memory (and tables) is reset in place for reuse.
const KEEP_RESIDENT: usize = 1024 * 1024;
/// The smallest memory slot the pool reserves per linear memory: room for every plugin
/// at the default limit, and for raising a limit at a reload without a restart.
pub const MIN_MEMORY_SLOT: usize = 256 * 1024 * 1024;
/// The address space the pool may reserve in all (x86-64 gives a process 128 TiB).
const POOL_ADDRESS_SPACE: usize = 32 << 40;
/// Linear memories reserved per instance.
const MEMORIES_PER_INSTANCE: u32 = 2;

/// The memory slot for plugins limited to `largest_limit` bytes: every instance's linear
/// memory is reserved at this size, so it bounds what a reload may raise a limit to.
pub fn memory_slot(largest_limit: usize) -> usize {
    largest_limit
        .max(MIN_MEMORY_SLOT)
        .next_multiple_of(1024 * 1024)
}

/// The most instances the computed default of `max_instances` asks for: each holds memory
/// slots, a fiber stack and its guard page, and a process has a bounded number of
/// mappings (vm.max_map_count, 65,530 by default). A larger pool must be asked for.
pub const DEFAULT_INSTANCES_CAP: u32 = 16_384;

/// How many instances fit in the pool's address space with slots of `slot` bytes.
pub fn instances_that_fit(slot: usize) -> u32 {
    let per_instance = slot.saturating_add(64 * 1024) * MEMORIES_PER_INSTANCE as usize;
    u32::try_from(POOL_ADDRESS_SPACE / per_instance.max(1)).unwrap_or(u32::MAX)
}

/// Why a plugin could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The bytes are not a valid component, or it does not fit the contract.
    #[error("{0:#}")]
    Invalid(wasmtime::Error),
}

/// The shared engine and linker.
pub struct PluginEngine {
    engine: Engine,
    linker: Linker<PluginState>,
    cache_dir: PathBuf,
    /// The precompiled cache, when its directory is safe to load native code from.
    cache: Option<ArtifactCache>,
    idle_instances: usize,
    stage_time_limit: Duration,
    memory_slot: usize,
    /// Every plugin version that may hold idle instances, so a full pool can reclaim them.
    idle_holders: Mutex<Vec<Weak<dyn HoldsIdle>>>,
}

/// Something that keeps instances for reuse and can let them go.
pub trait HoldsIdle: Send + Sync {
    /// Drops every instance kept for reuse, freeing their pool slots.
    fn drop_idle(&self);
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEngine")
            .field("cache_dir", &self.cache_dir)
            .finish_non_exhaustive()
    }
}

impl PluginEngine {
    /// Builds the engine with pooling allocation sized for `instances` instances whose
    /// linear memories are at most `slot` bytes (see [`memory_slot`]).
    pub fn new(
        config: &PluginRuntimeConfig,
        instances: u32,
        slot: usize,
    ) -> wasmtime::Result<Arc<PluginEngine>> {
        Self::build(config, instances, slot, true)
    }

    /// [`PluginEngine::new`] without the precompiled cache: every component is compiled
    /// from its bytes and nothing is written (`tidegate plugin check` measures that).
    pub fn new_uncached(
        config: &PluginRuntimeConfig,
        instances: u32,
        slot: usize,
    ) -> wasmtime::Result<Arc<PluginEngine>> {
        Self::build(config, instances, slot, false)
    }

    fn build(
        config: &PluginRuntimeConfig,
        instances: u32,
        slot: usize,
        use_cache: bool,
    ) -> wasmtime::Result<Arc<PluginEngine>> {
        let mut pool = PoolingAllocationConfig::default();
        let instances = instances.max(1);
        if instances > instances_that_fit(slot) {
            return Err(wasmtime::format_err!(
                "{instances} plugin instances with {} MiB memory slots do not fit in the address \
                 space (at most {}): lower limits.max_connections, [plugins] max_instances or \
                 the plugins' memory_limit_mib",
                slot >> 20,
                instances_that_fit(slot)
            ));
        }
        // Without PAGEMAP_SCAN (Linux < 6.7, other systems) wasmtime would memset the
        // lowest bytes of every memory instead, which a Rust guest barely touches (its
        // stack sits below its data and grows down): then unmapping is the better reset.
        let keep_resident = if PoolingAllocationConfig::is_pagemap_scan_available() {
            KEEP_RESIDENT
        } else {
            0
        };
        pool.total_component_instances(instances)
            // A Rust wasip2 component holds a handful of core modules (the program and
            // the WASI adapter pieces); leave room for them.
            .total_core_instances(instances.saturating_mul(8))
            .total_memories(instances.saturating_mul(MEMORIES_PER_INSTANCE))
            .total_tables(instances.saturating_mul(4))
            .total_stacks(instances)
            .max_memory_size(slot)
            .max_core_instances_per_component(32)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            // Reset a finished instance's memory by copying back only the pages it
            // dirtied (found with PAGEMAP_SCAN where the kernel has it) instead of
            // unmapping them: no TLB shootdowns across workers and no page faults for the
            // next session. A plugin's per-session working set is far below this.
            .pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(keep_resident)
            .table_keep_resident(keep_resident);
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            // Reserve only what a plugin may use: thousands of instances must fit in the
            // address space.
            .memory_reservation(slot as u64)
            .memory_guard_size(64 * 1024)
            .memory_reservation_for_growth(0)
            .max_wasm_stack(1024 * 1024)
            .async_stack_size(2 * 1024 * 1024);
        if std::env::var_os("TIDEGATE_WASM_PERFMAP").is_some() {
            // For profiling plugins with `perf`: names compiled guest functions in
            // /tmp/perf-<pid>.map (useful with components built without `strip`).
            wasm.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&wasm)?;
        let mut linker = Linker::new(&engine);
        link_wasi(&mut linker)?;
        Plugin::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut linker, |s| s)?;
        // The previous version of the contract, beside the current one (see `compat`).
        super::bindings::v1::Plugin::add_to_linker::<PluginState, HasSelf<PluginState>>(
            &mut linker,
            |s| s,
        )?;

        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("tidegate-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(wasmtime::Error::from)?;

        let cache = if !use_cache {
            None
        } else {
            match ArtifactCache::open(&config.cache_dir) {
                Ok(cache) => Some(cache),
                Err(e) => {
                    tracing::warn!(error = %e, "plugin cache not used: plugins are compiled at every start");
                    None
                }
            }
        };
        Ok(Arc::new(PluginEngine {
            memory_slot: slot,
            engine,
            linker,
            cache_dir: config.cache_dir.clone(),
            cache,
            idle_instances: usize::try_from(config.idle_instances).unwrap_or(usize::MAX),
            stage_time_limit: Duration::from_millis(config.stage_time_limit_ms),
            idle_holders: Mutex::new(Vec::new()),
        }))
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// How many finished sessions' instances each plugin version keeps for reuse.
    pub fn idle_instances(&self) -> usize {
        self.idle_instances
    }

    /// The largest linear memory an instance can have in this engine's pool.
    pub fn memory_slot(&self) -> usize {
        self.memory_slot
    }

    /// The deadline of one stage's whole chain.
    pub fn stage_time_limit(&self) -> Duration {
        self.stage_time_limit
    }

    /// Registers a holder of idle instances (a plugin version, for as long as it lives).
    pub fn register_idle_holder(&self, holder: Weak<dyn HoldsIdle>) {
        if let Ok(mut holders) = self.idle_holders.lock() {
            holders.retain(|h| h.strong_count() > 0);
            holders.push(holder);
        }
    }

    /// Drops the idle instances of every plugin version: called when the pool is full, so
    /// instances kept for reuse never stand in the way of a session that needs one.
    pub fn drop_idle_instances(&self) {
        let holders: Vec<_> = match self.idle_holders.lock() {
            Ok(holders) => holders.iter().filter_map(Weak::upgrade).collect(),
            Err(_) => return,
        };
        for holder in holders {
            holder.drop_idle();
        }
    }

    /// The linker with the host's imports.
    pub fn linker(&self) -> &Linker<PluginState> {
        &self.linker
    }

    /// Reads and compiles a component, using the precompiled cache when it holds this exact
    /// file for this exact engine configuration. Blocking: call it off the async runtime.
    pub fn compile(&self, path: &Path) -> Result<(Component, String), LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        let hash = hex(&Sha256::digest(&bytes));
        let name = self.artifact_name(&hash);
        let cache = self.cache.as_ref();
        if let Some(artifact) = cache.and_then(|c| c.read(&name)) {
            // SAFETY: these bytes carry this cache's MAC, so this cache wrote them, from
            // `Component::serialize` of an engine with the same compatibility hash (part
            // of the name), in a directory only the gateway's user can write (checked
            // when the cache was opened); wasmtime also checks the header and refuses
            // artifacts of another configuration.
            match unsafe { Component::deserialize(&self.engine, &artifact) } {
                Ok(component) => return Ok((component, hash)),
                Err(e) => {
                    tracing::warn!(artifact = %name, error = %e, "ignoring a stale plugin cache entry");
                }
            }
        }
        let component = Component::new(&self.engine, &bytes).map_err(LoadError::Invalid)?;
        if let Some(cache) = cache
            && let Ok(artifact) = component.serialize()
            && let Err(e) = cache.write(&name, &artifact)
        {
            tracing::warn!(dir = %self.cache_dir.display(), error = %e, "cannot write the plugin cache");
        }
        Ok((component, hash))
    }

    fn artifact_name(&self, hash: &str) -> String {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut hasher = DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        let engine_key = hasher.finish();
        format!("{hash}-{engine_key:016x}.cwasm")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Links the part of WASI 0.2 that a guest built with Rust's `std` imports, and no more:
/// streams and polling, clocks, random numbers, the CLI interfaces (an empty environment
/// and arguments, stdin empty, stdout and stderr into the log) and the filesystem types
/// and preopens (there are none). Sockets and name lookups are not linked at all: a
/// component that imports them is refused at load ("does not fit the host's imports")
/// instead of running with a network it cannot use.
fn link_wasi(l: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::WasiView;
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
    use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView};
    use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random};
    use wasmtime_wasi::random::WasiRandom;
    type S = PluginState;

    wasmtime_wasi_io::add_to_linker_async(l)?;
    clocks::wall_clock::add_to_linker::<S, WasiClocks>(l, <S as WasiClocksView>::clocks)?;
    clocks::monotonic_clock::add_to_linker::<S, WasiClocks>(l, <S as WasiClocksView>::clocks)?;
    filesystem::types::add_to_linker::<S, WasiFilesystem>(
        l,
        <S as WasiFilesystemView>::filesystem,
    )?;
    filesystem::preopens::add_to_linker::<S, WasiFilesystem>(
        l,
        <S as WasiFilesystemView>::filesystem,
    )?;
    random::random::add_to_linker::<S, WasiRandom>(l, |t| t.ctx().ctx.random())?;
    random::insecure::add_to_linker::<S, WasiRandom>(l, |t| t.ctx().ctx.random())?;
    random::insecure_seed::add_to_linker::<S, WasiRandom>(l, |t| t.ctx().ctx.random())?;
    cli::exit::add_to_linker::<S, WasiCli>(l, <S as WasiCliView>::cli)?;
    cli::environment::add_to_linker::<S, WasiCli>(l, <S as WasiCliView>::cli)?;
    cli::stdin::add_to_linker::<S, WasiCli>(l, <S as WasiCliView>::cli)?;
    cli::stdout::add_to_linker::<S, WasiCli>(l, <S as WasiCliView>::cli)?;
    cli::stderr::add_to_linker::<S, WasiCli>(l, <S as WasiCliView>::cli)?;
    cli::terminal_input::add_to_linker::<S, WasiCli>(l, <S as WasiCliView>::cli)?;
    cli::terminal_output::add_to_linker::<S, WasiCli>(l, <S as WasiCliView>::cli)?;
    cli::terminal_stdin::add_to_linker::<S, WasiCli>(l, <S as WasiCliView>::cli)?;
    cli::terminal_stdout::add_to_linker::<S, WasiCli>(l, <S as WasiCliView>::cli)?;
    cli::terminal_stderr::add_to_linker::<S, WasiCli>(l, <S as WasiCliView>::cli)?;
    Ok(())
}
