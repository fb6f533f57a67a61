//! The one wasmtime `Engine` of a node: pooling allocator, epoch
//! interruption, and the ticker thread that drives deadlines.

use std::time::Duration;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances: the resolution of timeouts, and how often a
/// busy guest yields to other tasks.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The most linear memory any one function may be given.
pub const MAX_MEMORY: u64 = 4 << 30;

/// Builds the engine. `fuel` turns on CPU metering (deterministic
/// instruction budgets per invocation, at some cost in speed). `instances` caps how many component instances (and
/// roughly, memories) the pool holds; each slot reserves virtual address
/// space, not RAM.
pub fn build(instances: u32, fuel: bool) -> wasmtime::Result<Engine> {
    let mut pool = PoolingAllocationConfig::new();
    let instances = instances.max(8);
    pool.total_component_instances(instances)
        // A wasip2 component holds a handful of core instances (the program,
        // adapters, shims).
        .total_core_instances(instances * 8)
        .total_memories(instances * 2)
        .total_tables(instances * 8)
        .total_stacks(instances)
        .max_memory_size(MAX_MEMORY as usize)
        .max_memories_per_component(8)
        .max_core_instances_per_component(32)
        .max_tables_per_component(32);
    if pagemap_scan_supported() {
        // A freed slot's touched pages are found with PAGEMAP_SCAN and
        // zeroed in place, up to these sizes (a Rust guest's stack and
        // heap start), instead of being handed back with `madvise`: with
        // instances freed on several threads at once, each `madvise` cost
        // a TLB shootdown across the cores, and the next instance in the
        // slot a page fault per page it touched again.
        pool.pagemap_scan(Enabled::Yes)
            .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY)
            .table_keep_resident(KEEP_RESIDENT_TABLE);
    }
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .consume_fuel(fuel)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = Engine::new(&config)?;
    start_ticker(&engine);
    Ok(engine)
}

/// Bytes of each freed linear memory zeroed in place rather than handed
/// back to the kernel (only its touched pages: see [`build`]).
const KEEP_RESIDENT_MEMORY: usize = 2 << 20;

/// The same for each freed table.
const KEEP_RESIDENT_TABLE: usize = 1 << 20;

/// Whether the kernel has the `PAGEMAP_SCAN` ioctl (Linux 6.7 and later).
fn pagemap_scan_supported() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    cfg!(target_os = "linux") && (major, minor) >= (6, 7)
}

/// Advances the epoch until the engine is dropped. Holds only a weak
/// reference so the thread never keeps an engine alive.
fn start_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new().name("evoke-epoch".into()).spawn(move || {
        while let Some(engine) = weak.upgrade() {
            engine.increment_epoch();
            drop(engine);
            std::thread::sleep(EPOCH_TICK);
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the epoch ticker: timeouts will not fire");
    }
}
