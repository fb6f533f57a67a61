//! Per-store state: the WASI context a guest sees, and the limits that make
//! it a sandbox (memory cap, wall-clock deadline, log cap).

use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::observe::logs::{LogBuffer, LogLevel};

/// Limits and bookkeeping shared by every kind of guest.
pub struct Sandbox {
    pub limiter: Limiter,
    /// When the current invocation must stop.
    pub deadline: Instant,
    /// Set by the epoch callback when it stops a guest at its deadline.
    pub timed_out: bool,
    pub logs: LogBuffer,
    /// Fuel each invocation starts with; `None` when fuel is not metered.
    pub fuel: Option<u64>,
}

impl Sandbox {
    pub fn new(memory_limit: u64, log_cap: usize, fuel: Option<u64>) -> Sandbox {
        Sandbox {
            limiter: Limiter::new(memory_limit),
            deadline: Instant::now(),
            timed_out: false,
            logs: LogBuffer::new(log_cap),
            fuel,
        }
    }
}

/// Caps the total linear memory of one instance (all its memories together).
pub struct Limiter {
    limit: u64,
    used: u64,
    /// Set when a grow was refused: the failure is a memory-limit error.
    pub hit: bool,
}

impl Limiter {
    pub fn new(limit: u64) -> Limiter {
        Limiter {
            limit,
            used: 0,
            hit: false,
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes the instance may still grow its memory by.
    pub fn available(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        let next = self.used.saturating_sub(current as u64).saturating_add(desired as u64);
        if next > self.limit {
            self.hit = true;
            // An error (rather than `Ok(false)`) traps at once: a guest that
            // ignores a failed grow would otherwise fail somewhere confusing.
            return Err(wasmtime::Error::msg(format!(
                "memory limit exceeded: the function tried to grow to {} bytes, its limit is {} bytes",
                next, self.limit
            )));
        }
        self.used = next;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// Store data for components (evoke functions and WASI preview-2 commands).
pub struct ComponentState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub sandbox: Sandbox,
    /// What the function may do with objects, and who is calling.
    pub objects: super::objects::ObjectAccess,
    pub http_ctx: wasmtime_wasi_http::WasiHttpCtx,
    /// What the function may call over HTTP.
    pub http: super::http::HttpAccess,
}

impl ComponentState {
    pub fn new(
        wasi: WasiCtx,
        sandbox: Sandbox,
        objects: super::objects::ObjectAccess,
        http: super::http::HttpAccess,
    ) -> ComponentState {
        ComponentState {
            wasi,
            table: ResourceTable::new(),
            sandbox,
            objects,
            http_ctx: wasmtime_wasi_http::WasiHttpCtx::new(),
            http,
        }
    }
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Store data for WASI preview-1 core modules.
pub struct ModuleState {
    pub wasi: WasiP1Ctx,
    pub sandbox: Sandbox,
}

/// Access to the sandbox part of any store data.
pub trait HasSandbox: Send + 'static {
    fn sandbox(&mut self) -> &mut Sandbox;

    /// Log lines host work wrote outside the guest's calls (HTTP requests
    /// that ended later), to add to the invocation's log.
    fn take_notes(&mut self) -> Vec<(LogLevel, String)> {
        Vec::new()
    }
}

impl HasSandbox for ComponentState {
    fn sandbox(&mut self) -> &mut Sandbox {
        &mut self.sandbox
    }

    fn take_notes(&mut self) -> Vec<(LogLevel, String)> {
        self.http.take_notes()
    }
}

impl HasSandbox for ModuleState {
    fn sandbox(&mut self) -> &mut Sandbox {
        &mut self.sandbox
    }
}

/// Installs the memory limiter and the deadline check on a new store.
///
/// The epoch ticker advances every [`super::engine::EPOCH_TICK`]; at each tick
/// a running guest yields to the async runtime (so one busy guest never
/// starves other tasks) and is stopped once its deadline has passed.
pub fn arm<T: HasSandbox>(store: &mut Store<T>) {
    store.limiter(|s| &mut s.sandbox().limiter);
    store.epoch_deadline_callback(|mut ctx| {
        let sandbox = ctx.data_mut().sandbox();
        if Instant::now() >= sandbox.deadline {
            sandbox.timed_out = true;
            return Err(wasmtime::Error::msg("the function ran past its timeout"));
        }
        // tokio's yield_now lets the I/O driver and every other task run
        // before the guest continues; a plain wake would not.
        Ok(UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())))
    });
}

/// Starts the clock for one invocation.
pub fn start_clock<T: HasSandbox>(store: &mut Store<T>, deadline: Instant) {
    let s = store.data_mut().sandbox();
    s.deadline = deadline;
    s.timed_out = false;
    let fuel = s.fuel;
    store.set_epoch_deadline(1);
    if let Some(fuel) = fuel {
        // Fails only when the engine does not meter fuel, which `fuel` being
        // set rules out.
        let _ = store.set_fuel(fuel);
    }
}

impl crate::executor::bindings::evoke::function::host::Host for ComponentState {
    fn log(&mut self, level: crate::executor::bindings::evoke::function::host::Level, message: String) {
        use crate::executor::bindings::evoke::function::host::Level as L;
        let level = match level {
            L::Trace => LogLevel::Trace,
            L::Debug => LogLevel::Debug,
            L::Info => LogLevel::Info,
            L::Warn => LogLevel::Warn,
            L::Error => LogLevel::Error,
        };
        self.sandbox.logs.push(level, "log", message);
    }
}
