//! The sandbox: runs one event through one function on this node.
//!
//! One wasmtime [`Engine`] (pooling allocator, epoch interruption), compiled
//! code cached on disk by sha256, an `InstancePre` per function version so the
//! hot path only instantiates, and a pool of warm component instances per
//! function. Every invocation gets a memory cap, a wall-clock deadline and
//! capped output/logs; a trap kills only that instance.

pub mod cache;
pub mod engine;
pub mod guest;
pub mod pipes;
mod run;
pub mod sandbox;

/// Host bindings generated from `wit/` (the same file the guest SDK uses).
pub mod bindings {
    wasmtime::component::bindgen!({ path: "wit", world: "function" });
}

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use evoke_connectors::Event;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::{OnceCell, Semaphore};
use wasmtime::component::{HasSelf, TypedFunc};
use wasmtime::{Engine, Store};

use crate::observe::logs::LogLine;
use crate::registry::DeployedFunction;
use cache::CodeCache;
use guest::{CodeError, Compiled, GuestKind, Prepared};
use pipes::CappedPipe;
use sandbox::{ComponentState, ModuleState};

/// Node-level executor settings.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Where compiled code is cached.
    pub cache_dir: PathBuf,
    /// Size of the instance pool (component instances on this node).
    pub pool_instances: u32,
    /// Largest output a function may return (stdout for commands).
    pub max_output: usize,
    /// Log bytes kept per invocation.
    pub log_cap: usize,
    /// Meter CPU with fuel, so functions may set a `fuel` budget.
    pub fuel: bool,
}

impl ExecutorConfig {
    pub fn new(cache_dir: PathBuf) -> ExecutorConfig {
        ExecutorConfig {
            cache_dir,
            pool_instances: 1000,
            max_output: 6 << 20,
            log_cap: 64 << 10,
            fuel: false,
        }
    }
}

/// What a function returned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Output {
    pub body: Bytes,
    pub content_type: Option<String>,
    pub status: Option<u16>,
    pub headers: Vec<(String, String)>,
}

/// The kinds of function error (all retried for async invocations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FunctionErrorKind {
    /// The guest returned an error.
    Error,
    /// The guest trapped (panic, unreachable, stack overflow, ...).
    Trap,
    /// The guest ran past its timeout.
    Timeout,
    /// The guest tried to use more memory than its limit.
    MemoryLimit,
    /// The output was larger than the node allows.
    OutputTooLarge,
    /// A WASI command exited with a non-zero code.
    ExitCode,
    /// The guest used up its fuel (CPU) budget.
    FuelExhausted,
}

/// Why an invocation did not produce output.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvokeError {
    /// The function failed: counted against its retries.
    #[error("{message}")]
    Function { kind: FunctionErrorKind, message: String },
    /// evoke could not run the function (code missing, NATS trouble, ...):
    /// retried until the event's maximum age, never counted against retries.
    #[error("{0}")]
    System(String),
    /// Every instance this node may run for the function stayed busy.
    #[error("all {0} instances of the function are busy")]
    Busy(u32),
}

/// Phases of a cold start, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ColdStart {
    /// Fetching code from NATS (0 when it was cached on disk).
    pub fetch_us: u64,
    /// Compiling, or loading the cached compiled code.
    pub compile_or_load_us: u64,
    /// Whether compiled code came from the disk cache.
    pub cached_code: bool,
    pub instantiate_us: u64,
    pub init_us: u64,
}

/// One run of one event.
#[derive(Debug)]
pub struct Run {
    pub result: Result<Output, InvokeError>,
    pub logs: Vec<LogLine>,
    /// `None` when the instance was warm.
    pub cold: Option<ColdStart>,
    pub duration: Duration,
}

type HandleFn = TypedFunc<(bindings::Event,), (Result<bindings::Output, String>,)>;

/// A warm component instance.
struct Warm {
    store: Store<ComponentState>,
    handle: HandleFn,
    stdout: CappedPipe,
    stderr: CappedPipe,
    last_used: Instant,
}

/// One function version loaded on this node.
struct Loaded {
    function: Arc<DeployedFunction>,
    prepared: Prepared,
    idle: Mutex<Vec<Warm>>,
    permits: Arc<Semaphore>,
    busy: AtomicU32,
}

impl Loaded {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Warm>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Slot {
    revision: u64,
    cell: OnceCell<Arc<Loaded>>,
}

/// Instance counts of one function on this node.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceStats {
    pub function: String,
    pub idle: u32,
    pub busy: u32,
}

pub struct Executor {
    engine: Engine,
    cache: CodeCache,
    component_linker: wasmtime::component::Linker<ComponentState>,
    module_linker: wasmtime::Linker<ModuleState>,
    code: Option<async_nats::jetstream::object_store::ObjectStore>,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    config: ExecutorConfig,
}

/// Hex sha256 digest of code, as `sha256:<hex>`.
pub fn digest(code: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(code)))
}

impl Executor {
    /// Builds the engine and linkers. `code` is where function code is
    /// fetched from on a cache miss.
    pub fn new(
        config: ExecutorConfig,
        code: Option<async_nats::jetstream::object_store::ObjectStore>,
    ) -> anyhow::Result<Executor> {
        let engine = engine::build(config.pool_instances, config.fuel).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let cache = CodeCache::new(&config.cache_dir, &engine)?;
        let mut component_linker = wasmtime::component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut component_linker).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        bindings::evoke::function::host::add_to_linker::<_, HasSelf<ComponentState>>(&mut component_linker, |s| s)
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let mut module_linker = wasmtime::Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut module_linker, |s: &mut ModuleState| &mut s.wasi)
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        Ok(Executor {
            engine,
            cache,
            component_linker,
            module_linker,
            code,
            slots: Mutex::new(HashMap::new()),
            config,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Whether this node meters fuel (functions may then set `fuel`).
    pub fn meters_fuel(&self) -> bool {
        self.config.fuel
    }

    /// The fuel a store of `function` starts each invocation with: `None`
    /// when the node does not meter fuel.
    fn fuel_budget(&self, function: &DeployedFunction) -> Option<u64> {
        self.config.fuel.then(|| function.spec.fuel.unwrap_or(u64::MAX))
    }

    /// Validates code for a deploy: compiles it, works out its kind, links it
    /// against what evoke provides, and caches the compiled artifact so the
    /// first invocation does not compile again. Returns the kind and digest.
    pub async fn check_code(&self, code: Bytes) -> Result<(GuestKind, String), CodeError> {
        let engine = self.engine.clone();
        let digest = digest(&code);
        let compiled = tokio::task::spawn_blocking(move || guest::compile(&engine, &code))
            .await
            .map_err(|e| CodeError::Invalid(format!("compiler crashed: {e}")))??;
        let (kind, compiled) = compiled;
        if let Ok(bytes) = compiled.serialize() {
            self.cache.store(&digest, kind, &bytes);
        }
        guest::prepare(kind, compiled, &self.component_linker, &self.module_linker)?;
        Ok((kind, digest))
    }

    /// Runs one event. `wait` bounds how long to wait for a free instance
    /// slot when `max_instances` are busy.
    pub async fn invoke(&self, function: &Arc<DeployedFunction>, event: &Event, wait: Duration) -> Run {
        let started = Instant::now();
        let (loaded, mut cold) = match self.loaded(function).await {
            Ok(x) => x,
            Err(message) => {
                return Run {
                    result: Err(InvokeError::System(message)),
                    logs: vec![],
                    cold: None,
                    duration: started.elapsed(),
                };
            }
        };
        let permit = match tokio::time::timeout(wait, loaded.permits.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => {
                return Run {
                    result: Err(InvokeError::Busy(loaded.function.spec.max_instances)),
                    logs: vec![],
                    cold: None,
                    duration: started.elapsed(),
                };
            }
        };
        loaded.busy.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + loaded.function.spec.timeout;
        let (result, logs, instance_cold) = match &loaded.prepared {
            Prepared::Component { .. } => self.run_component(&loaded, event, deadline).await,
            Prepared::Command { .. } | Prepared::Module { .. } => self.run_command(&loaded, event, deadline).await,
        };
        loaded.busy.fetch_sub(1, Ordering::Relaxed);
        drop(permit);
        if let Some((instantiate_us, init_us)) = instance_cold {
            let c = cold.get_or_insert_with(ColdStart::default);
            c.instantiate_us = instantiate_us;
            c.init_us = init_us;
        } else {
            cold = None;
        }
        Run {
            result,
            logs,
            cold,
            duration: started.elapsed(),
        }
    }

    /// Gets the loaded version of a function, loading it if needed. Returns
    /// load phases only to the caller that did the loading.
    async fn loaded(&self, function: &Arc<DeployedFunction>) -> Result<(Arc<Loaded>, Option<ColdStart>), String> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            match slots.get(function.name.as_str()) {
                Some(s) if s.revision == function.revision => s.clone(),
                Some(s) if s.revision > function.revision => s.clone(),
                _ => {
                    let s = Arc::new(Slot {
                        revision: function.revision,
                        cell: OnceCell::new(),
                    });
                    slots.insert(function.name.to_string(), s.clone());
                    s
                }
            }
        };
        let mut phases = None;
        let loaded = slot
            .cell
            .get_or_try_init(|| async {
                let (loaded, p) = self.load(function).await?;
                phases = Some(p);
                Ok::<_, String>(Arc::new(loaded))
            })
            .await?
            .clone();
        Ok((loaded, phases))
    }

    async fn load(&self, function: &Arc<DeployedFunction>) -> Result<(Loaded, ColdStart), String> {
        let mut phases = ColdStart::default();
        let kind = function.kind;
        let digest = function.digest.clone();
        let t = Instant::now();
        let cached = if kind.is_component() {
            self.cache
                .load_component(&self.engine, &digest, kind)
                .map(Compiled::Component)
        } else {
            self.cache.load_module(&self.engine, &digest).map(Compiled::Module)
        };
        let compiled = match cached {
            Some(c) => {
                phases.cached_code = true;
                phases.compile_or_load_us = t.elapsed().as_micros() as u64;
                c
            }
            None => {
                let code = self.fetch(&digest).await?;
                phases.fetch_us = t.elapsed().as_micros() as u64;
                let t = Instant::now();
                let engine = self.engine.clone();
                let (found, compiled) = tokio::task::spawn_blocking(move || guest::compile(&engine, &code))
                    .await
                    .map_err(|e| format!("compiler crashed: {e}"))?
                    .map_err(|e| format!("stored code for {digest} no longer compiles: {e}"))?;
                if found != kind {
                    return Err(format!("stored code for {digest} is a {found:?}, not a {kind:?}"));
                }
                if let Ok(bytes) = compiled.serialize() {
                    self.cache.store(&digest, kind, &bytes);
                }
                phases.compile_or_load_us = t.elapsed().as_micros() as u64;
                compiled
            }
        };
        let prepared =
            guest::prepare(kind, compiled, &self.component_linker, &self.module_linker).map_err(|e| e.to_string())?;
        let loaded = Loaded {
            function: function.clone(),
            prepared,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(function.spec.max_instances as usize)),
            busy: AtomicU32::new(0),
        };
        Ok((loaded, phases))
    }

    async fn fetch(&self, digest: &str) -> Result<Bytes, String> {
        let store = self
            .code
            .as_ref()
            .ok_or_else(|| format!("code {digest} is not cached and this node has no code store"))?;
        let name = digest.trim_start_matches("sha256:");
        let mut object = store
            .get(name)
            .await
            .map_err(|e| format!("cannot fetch code {digest} from NATS: {e}"))?;
        let mut buf = Vec::new();
        object
            .read_to_end(&mut buf)
            .await
            .map_err(|e| format!("cannot read code {digest} from NATS: {e}"))?;
        if self::digest(&buf) != digest {
            return Err(format!("code fetched for {digest} does not match its digest"));
        }
        Ok(Bytes::from(buf))
    }

    /// Keeps `reserved` instances of a component function warm on this node.
    pub async fn prewarm(&self, function: &Arc<DeployedFunction>) -> Result<u32, String> {
        let want = function.spec.reserved as usize;
        if want == 0 {
            return Ok(0);
        }
        let (loaded, _) = self.loaded(function).await?;
        if !matches!(loaded.prepared, Prepared::Component { .. }) {
            return Ok(0);
        }
        let mut made = 0;
        while loaded.idle().len() + (loaded.busy.load(Ordering::Relaxed) as usize) < want {
            let deadline = Instant::now() + function.spec.timeout;
            let (warm, _, _) = self
                .new_instance(&loaded, deadline)
                .await
                .map_err(|(e, _)| e.to_string())?;
            loaded.idle().push(warm);
            made += 1;
        }
        Ok(made)
    }

    /// Drops idle instances past their function's idle timeout, keeping
    /// `reserved` ones. Returns how many were dropped.
    pub fn reap_idle(&self) -> usize {
        let slots: Vec<Arc<Slot>> = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut dropped = 0;
        for slot in slots {
            let Some(loaded) = slot.cell.get() else { continue };
            let spec = &loaded.function.spec;
            let mut idle = loaded.idle();
            let busy = loaded.busy.load(Ordering::Relaxed) as usize;
            // Oldest first: instances are pushed back at the end when used.
            while let Some(oldest) = idle.first() {
                let expired = oldest.last_used.elapsed() >= spec.idle_timeout;
                if !expired || idle.len() + busy <= spec.reserved as usize {
                    break;
                }
                idle.remove(0);
                dropped += 1;
            }
        }
        dropped
    }

    /// Forgets functions that were deleted or replaced by a newer revision.
    pub fn retain(&self, live: &HashMap<String, u64>) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|name, slot| live.get(name).is_some_and(|rev| *rev == slot.revision));
    }

    /// Instance counts per function, for metrics and status.
    pub fn stats(&self) -> Vec<InstanceStats> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<InstanceStats> = slots
            .iter()
            .filter_map(|(name, slot)| {
                let loaded = slot.cell.get()?;
                Some(InstanceStats {
                    function: name.clone(),
                    idle: loaded.idle().len() as u32,
                    busy: loaded.busy.load(Ordering::Relaxed),
                })
            })
            .collect();
        out.sort_by(|a, b| a.function.cmp(&b.function));
        out
    }
}
