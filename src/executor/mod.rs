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
pub mod http;
pub mod objects;
pub mod pipes;
mod run;
pub mod sandbox;

/// Host bindings generated from `wit/` (the same file the guest SDK uses).
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "function",
        imports: { "evoke:function/objects": async, "evoke:function/http": async },
    });
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
use guest::{CodeError, GuestKind, Prepared};
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
    /// Let functions' outbound HTTP reach link-local and cloud metadata
    /// addresses (refused by default).
    pub allow_link_local_http: bool,
    /// Bytes of compiled code kept in memory beside the disk cache, so a new
    /// version of a function with the same code loads at once (0: none).
    pub code_memory_bytes: usize,
}

impl ExecutorConfig {
    pub fn new(cache_dir: PathBuf) -> ExecutorConfig {
        ExecutorConfig {
            cache_dir,
            pool_instances: 1000,
            max_output: 6 << 20,
            log_cap: 64 << 10,
            fuel: false,
            allow_link_local_http: false,
            code_memory_bytes: cache::RECENT_BYTES,
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
    /// The guest returned something evoke cannot pass on (e.g. an HTTP
    /// status outside 200-599).
    InvalidOutput,
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
    /// The node's instance pool is full (every slot used by running or
    /// reserved instances): a system error, retried later, never the
    /// function's fault.
    #[error("{0}")]
    Capacity(String),
}

/// The most bytes of a guest's error message kept (in records, dead letters
/// and HTTP answers); longer messages are cut and marked.
pub const MAX_ERROR_BYTES: usize = 8 << 10;

/// Cuts `text` to at most `max` bytes (on a character boundary), saying how
/// long it was.
pub fn cap_text(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let total = text.len();
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(&format!("... [truncated: {total} bytes in all]"));
    text
}

impl InvokeError {
    /// A function error with its message capped at [`MAX_ERROR_BYTES`].
    pub fn function(kind: FunctionErrorKind, message: String) -> InvokeError {
        InvokeError::Function {
            kind,
            message: cap_text(message, MAX_ERROR_BYTES),
        }
    }

    /// Whether the failure is evoke's, not the function's (retried until
    /// the event's max age, never counted against `retries`).
    pub fn is_system(&self) -> bool {
        !matches!(self, InvokeError::Function { .. })
    }
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
    /// Held while reserved instances are being created, so a burst of
    /// registry changes prewarms once, not once per change.
    prewarming: tokio::sync::Mutex<()>,
}

/// One running invocation in a function's `busy` count.
struct Busy<'a>(&'a AtomicU32);

impl<'a> Busy<'a> {
    fn enter(count: &'a AtomicU32) -> Busy<'a> {
        count.fetch_add(1, Ordering::Relaxed);
        Busy(count)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The error of a guest stopped at its deadline.
fn timeout_error(timeout: Duration) -> InvokeError {
    InvokeError::Function {
        kind: FunctionErrorKind::Timeout,
        message: format!(
            "the function ran past its timeout of {}",
            crate::units::format_duration(timeout)
        ),
    }
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
    cache: Arc<CodeCache>,
    component_linker: wasmtime::component::Linker<ComponentState>,
    module_linker: wasmtime::Linker<ModuleState>,
    code: Option<async_nats::jetstream::object_store::ObjectStore>,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    config: ExecutorConfig,
    /// Where functions' object calls go (`None`: no object access).
    objects: Option<Arc<dyn objects::ObjectBackend>>,
    /// Code this node has checked, by digest: deploying the same code again
    /// (another function, a new setting) skips compiling it.
    checked: Mutex<HashMap<String, GuestKind>>,
    /// Checks under way, by digest: deploys of the same code arriving
    /// together take turns, so only the first compiles it.
    checking: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// How many times this node compiled code.
    compiles: std::sync::atomic::AtomicU64,
}

/// A turn at checking one digest; the last turn out forgets its gate.
struct CheckTurn<'a> {
    checking: &'a Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    digest: &'a str,
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for CheckTurn<'_> {
    fn drop(&mut self) {
        let mut checking = self.checking.lock().unwrap_or_else(|p| p.into_inner());
        // Held by the map and this turn only: nobody else waits on it (a
        // new comer clones it under this lock).
        if Arc::strong_count(&self.gate) == 2 {
            checking.remove(self.digest);
        }
    }
}

/// Digests kept in [`Executor::check_code`]'s memory (forgotten all at once
/// past this: it only saves compiling again).
const CHECKED_MAX: usize = 4096;

/// Whether an error says the pooling allocator has no free slot.
pub(crate) fn is_pool_full(e: &wasmtime::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some())
}

/// Why the executor could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("cannot set up wasmtime: {0}")]
    Setup(String),
    #[error("cannot use the code cache: {0}")]
    Cache(#[from] std::io::Error),
}

/// Why a function's code could not be made ready to run on this node (a
/// system error: the code was valid when it was deployed).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Fetch(String),
    #[error("stored code {digest} no longer loads: {error}")]
    Code { digest: String, error: CodeError },
    #[error("stored code {digest} is a {found:?}, not a {kind:?}")]
    WrongKind {
        digest: String,
        found: GuestKind,
        kind: GuestKind,
    },
    #[error("compiling or loading code crashed: {0}")]
    Crashed(String),
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
        objects: Option<Arc<dyn objects::ObjectBackend>>,
    ) -> Result<Executor, ExecutorError> {
        let setup = |e: wasmtime::Error| ExecutorError::Setup(format!("{e:#}"));
        let engine = engine::build(config.pool_instances, config.fuel).map_err(setup)?;
        let cache = Arc::new(CodeCache::new(&config.cache_dir, &engine, config.code_memory_bytes)?);
        let mut component_linker = wasmtime::component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut component_linker).map_err(setup)?;
        bindings::evoke::function::host::add_to_linker::<_, HasSelf<ComponentState>>(&mut component_linker, |s| s)
            .map_err(setup)?;
        bindings::evoke::function::objects::add_to_linker::<_, HasSelf<ComponentState>>(&mut component_linker, |s| s)
            .map_err(setup)?;
        bindings::evoke::function::http::add_to_linker::<_, HasSelf<ComponentState>>(&mut component_linker, |s| s)
            .map_err(setup)?;
        guest::link_v0_1(&mut component_linker).map_err(setup)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut component_linker).map_err(setup)?;
        let mut module_linker = wasmtime::Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut module_linker, |s: &mut ModuleState| &mut s.wasi).map_err(setup)?;
        Ok(Executor {
            engine,
            cache,
            component_linker,
            module_linker,
            code,
            slots: Mutex::new(HashMap::new()),
            config,
            objects,
            checked: Mutex::new(HashMap::new()),
            checking: Mutex::new(HashMap::new()),
            compiles: std::sync::atomic::AtomicU64::new(0),
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

    /// Validates code for a deploy: compiles it (unless this node's code
    /// cache has it compiled already), works out its kind, links it against
    /// what evoke provides, and caches the compiled artifact so the first
    /// invocation does not compile again. Returns the kind and digest.
    pub async fn check_code(&self, code: Bytes) -> Result<(GuestKind, String), CodeError> {
        let digest = digest(&code);
        let checked = || {
            self.checked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&digest)
                .copied()
        };
        if let Some(kind) = checked() {
            return Ok((kind, digest));
        }
        let gate = self
            .checking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(digest.clone())
            .or_default()
            .clone();
        let turn = CheckTurn {
            checking: &self.checking,
            digest: &digest,
            gate,
        };
        let _turn = turn.gate.lock().await;
        // Checked by the deploy this one waited for.
        if let Some(kind) = checked() {
            return Ok((kind, digest.clone()));
        }
        let kind = self.check_new(code, &digest).await?;
        Ok((kind, digest.clone()))
    }

    /// How many times this node compiled code (deploys of code it had
    /// checked, or found compiled in its cache, do not count).
    pub fn compiles(&self) -> u64 {
        self.compiles.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// [`Executor::check_code`] of code not checked yet.
    async fn check_new(&self, code: Bytes, digest: &str) -> Result<GuestKind, CodeError> {
        let engine = self.engine.clone();
        let cache = self.cache.clone();
        let digest_for_cache = digest.to_string();
        // Compiling and writing the cache both block: off the async runtime.
        let (kind, compiled, fresh) = tokio::task::spawn_blocking(move || {
            // Code this node compiled before, as a restarted node finds
            // it in its cache: compiled as good then (the linker check
            // below still runs), so not compiled again.
            if let Some((kind, compiled)) = cache.find(&engine, &digest_for_cache) {
                return Ok((kind, compiled, false));
            }
            let (kind, compiled) = guest::compile(&engine, &code)?;
            if let Ok(bytes) = compiled.serialize() {
                cache.store(&digest_for_cache, kind, &bytes, &compiled);
            }
            Ok::<_, CodeError>((kind, compiled, true))
        })
        .await
        .map_err(|e| CodeError::Invalid(format!("compiler crashed: {e}")))??;
        if fresh {
            self.compiles.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        guest::prepare(kind, compiled, &self.component_linker, &self.module_linker)?;
        let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        if checked.len() >= CHECKED_MAX {
            checked.clear();
        }
        checked.insert(digest.to_string(), kind);
        Ok(kind)
    }

    /// Runs one event as invocation `invocation`. `wait` bounds how long to
    /// wait for a free instance slot when `max_instances` are busy.
    pub async fn invoke(
        &self,
        function: &Arc<DeployedFunction>,
        invocation: &str,
        event: &Event,
        wait: Duration,
    ) -> Run {
        let started = Instant::now();
        let failed = |e: InvokeError| Run {
            result: Err(e),
            logs: vec![],
            cold: None,
            duration: started.elapsed(),
        };
        let (loaded, mut cold) = match self.loaded(function).await {
            Ok(x) => x,
            Err(e) => return failed(InvokeError::System(e.to_string())),
        };
        let permit = match tokio::time::timeout(wait, loaded.permits.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => return failed(InvokeError::Busy(loaded.function.spec.max_instances)),
        };
        // Counted down on drop, so a cancelled call (a sync client that went
        // away) never leaves the count high.
        let _busy = Busy::enter(&loaded.busy);
        let timeout = loaded.function.spec.timeout;
        let deadline = Instant::now() + timeout;
        let run = async {
            match &loaded.prepared {
                Prepared::Component { .. } => self.run_component(&loaded, invocation, event, deadline).await,
                Prepared::Command { .. } | Prepared::Module { .. } => {
                    self.run_command(&loaded, invocation, event, deadline).await
                }
            }
        };
        // The epoch deadline stops guests running wasm code; this outer one
        // stops guests waiting in a host call (a sleep, a blocking read). The
        // instance is dropped with the future, so it is never reused.
        let outer = tokio::time::Instant::from_std(deadline) + 2 * engine::EPOCH_TICK;
        let (result, logs, instance_cold) = match tokio::time::timeout_at(outer, run).await {
            Ok(r) => r,
            Err(_) => (
                Err(timeout_error(timeout)),
                vec![LogLine::new(
                    crate::observe::logs::LogLevel::Warn,
                    "evoke",
                    "the function was stopped at its timeout while waiting in a host call; its logs are lost".into(),
                )],
                None,
            ),
        };
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
    async fn loaded(&self, function: &Arc<DeployedFunction>) -> Result<(Arc<Loaded>, Option<ColdStart>), LoadError> {
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
                Ok::<_, LoadError>(Arc::new(loaded))
            })
            .await?
            .clone();
        Ok((loaded, phases))
    }

    async fn load(&self, function: &Arc<DeployedFunction>) -> Result<(Loaded, ColdStart), LoadError> {
        let mut phases = ColdStart::default();
        let kind = function.kind;
        let digest = function.digest.clone();
        let t = Instant::now();
        let (cache, engine, key) = (self.cache.clone(), self.engine.clone(), digest.clone());
        // Reading and deserializing compiled code blocks, as does building
        // its memory images: off the runtime.
        let cached = tokio::task::spawn_blocking(move || {
            let cached = cache.load(&engine, &key, kind);
            if let Some(c) = &cached {
                c.prepare_memory_images();
            }
            cached
        })
        .await
        .map_err(|e| LoadError::Crashed(e.to_string()))?;
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
                let (engine, cache, key) = (self.engine.clone(), self.cache.clone(), digest.clone());
                let (found, compiled) = tokio::task::spawn_blocking(move || {
                    let (found, compiled) = guest::compile(&engine, &code)?;
                    compiled.prepare_memory_images();
                    if found == kind
                        && let Ok(bytes) = compiled.serialize()
                    {
                        cache.store(&key, kind, &bytes, &compiled);
                    }
                    Ok::<_, CodeError>((found, compiled))
                })
                .await
                .map_err(|e| LoadError::Crashed(e.to_string()))?
                .map_err(|e| LoadError::Code {
                    digest: digest.clone(),
                    error: e,
                })?;
                if found != kind {
                    return Err(LoadError::WrongKind { digest, found, kind });
                }
                phases.compile_or_load_us = t.elapsed().as_micros() as u64;
                compiled
            }
        };
        let prepared =
            guest::prepare(kind, compiled, &self.component_linker, &self.module_linker).map_err(|error| {
                LoadError::Code {
                    digest: function.digest.clone(),
                    error,
                }
            })?;
        let loaded = Loaded {
            function: function.clone(),
            prepared,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(function.spec.max_instances as usize)),
            busy: AtomicU32::new(0),
            prewarming: tokio::sync::Mutex::new(()),
        };
        Ok((loaded, phases))
    }

    async fn fetch(&self, digest: &str) -> Result<Bytes, LoadError> {
        let store = self
            .code
            .as_ref()
            .ok_or_else(|| LoadError::Fetch(format!("code {digest} is not cached and this node has no code store")))?;
        let name =
            cache::digest_hex(digest).ok_or_else(|| LoadError::Fetch(format!("`{digest}` is not a sha256 digest")))?;
        let mut object = store
            .get(name)
            .await
            .map_err(|e| LoadError::Fetch(format!("cannot fetch code {digest} from NATS: {e}")))?;
        let mut buf = Vec::new();
        object
            .read_to_end(&mut buf)
            .await
            .map_err(|e| LoadError::Fetch(format!("cannot read code {digest} from NATS: {e}")))?;
        if self::digest(&buf) != digest {
            return Err(LoadError::Fetch(format!(
                "code fetched for {digest} does not match its digest"
            )));
        }
        Ok(Bytes::from(buf))
    }

    /// Keeps `reserved` instances of a component function warm on this node.
    /// Concurrent calls for one function return at once: one prewarm runs.
    pub async fn prewarm(&self, function: &Arc<DeployedFunction>) -> Result<u32, InvokeError> {
        let want = function.spec.reserved as usize;
        if want == 0 {
            return Ok(0);
        }
        let (loaded, _) = self
            .loaded(function)
            .await
            .map_err(|e| InvokeError::System(e.to_string()))?;
        if !matches!(loaded.prepared, Prepared::Component { .. }) {
            return Ok(0);
        }
        let Ok(_one) = loaded.prewarming.try_lock() else {
            return Ok(0);
        };
        let mut made = 0;
        while loaded.idle().len() + (loaded.busy.load(Ordering::Relaxed) as usize) < want {
            let deadline = Instant::now() + function.spec.timeout;
            let outer = tokio::time::Instant::from_std(deadline) + 2 * engine::EPOCH_TICK;
            let (warm, _, _) = tokio::time::timeout_at(outer, self.new_instance(&loaded, deadline))
                .await
                .map_err(|_| timeout_error(function.spec.timeout))?
                .map_err(|(e, _)| e)?;
            loaded.idle().push(warm);
            made += 1;
        }
        Ok(made)
    }

    fn loaded_functions(&self) -> Vec<Arc<Loaded>> {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter_map(|slot| slot.cell.get().cloned())
            .collect()
    }

    /// Drops idle instances past their function's idle timeout, keeping
    /// `reserved` ones. Returns how many were dropped.
    pub fn reap_idle(&self) -> usize {
        let mut dropped = Vec::new();
        for loaded in self.loaded_functions() {
            let spec = &loaded.function.spec;
            let mut idle = loaded.idle();
            let busy = loaded.busy.load(Ordering::Relaxed) as usize;
            // Oldest first: instances are pushed back at the end when used.
            let mut expired = 0;
            while expired < idle.len()
                && idle[expired].last_used.elapsed() >= spec.idle_timeout
                && idle.len() - expired + busy > spec.reserved as usize
            {
                expired += 1;
            }
            dropped.extend(idle.drain(..expired));
        }
        // Stores are dropped here, outside every lock: freeing an instance
        // returns its memory to the pool, which takes time.
        let n = dropped.len();
        drop(dropped);
        n
    }

    /// Frees pool slots for a function that could not get one: drops the
    /// oldest idle instances of any function, those beyond `reserved` first.
    /// Returns how many were dropped.
    fn reclaim_idle(&self, wanted: usize) -> usize {
        let mut candidates: Vec<(bool, Instant, Arc<Loaded>)> = Vec::new();
        for loaded in self.loaded_functions() {
            let idle = loaded.idle();
            let reserved = loaded.function.spec.reserved as usize;
            for (i, w) in idle.iter().enumerate() {
                // Reserved instances are the newest `reserved` idle ones.
                let is_reserved = idle.len() - i <= reserved;
                candidates.push((is_reserved, w.last_used, loaded.clone()));
            }
        }
        candidates.sort_by_key(|(reserved, used, _)| (*reserved, *used));
        let mut dropped = Vec::new();
        for (_, _, loaded) in candidates.into_iter().take(wanted) {
            let mut idle = loaded.idle();
            if !idle.is_empty() {
                dropped.push(idle.remove(0));
            }
        }
        let n = dropped.len();
        drop(dropped);
        if n > 0 {
            tracing::info!(reclaimed = n, "instance pool full: dropped idle instances to make room");
        }
        n
    }

    /// After a failed instantiation or call: when the pool was full (no
    /// instance slot, memory or stack; the guest never started), reclaims
    /// idle instances of any function and says to try again (a few times at
    /// most). Still failing, the error is classified as a capacity error.
    pub(super) fn room_made<T>(&self, result: &Result<T, wasmtime::Error>, tries: &mut u32) -> bool {
        match result {
            Err(e) if is_pool_full(e) && *tries < 3 => {
                *tries += 1;
                self.reclaim_idle(4) > 0
            }
            _ => false,
        }
    }

    /// Forgets functions that were deleted or replaced by a newer revision.
    pub fn retain(&self, live: &HashMap<String, u64>) {
        let removed: Vec<Arc<Slot>> = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let gone: Vec<String> = slots
                .iter()
                .filter(|(name, slot)| live.get(*name).is_none_or(|rev| *rev != slot.revision))
                .map(|(name, _)| name.clone())
                .collect();
            gone.iter().filter_map(|name| slots.remove(name)).collect()
        };
        // Their instances are freed outside the lock.
        drop(removed);
    }

    /// The size of the instance pool: no function may ask for more
    /// concurrent instances than this.
    pub fn pool_instances(&self) -> u32 {
        self.config.pool_instances
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Deploys of the same new code arriving together compile it once; a
    /// node started again on the same cache finds it compiled.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn code_deployed_at_once_is_compiled_once() {
        let dir = tempfile::TempDir::new().unwrap();
        let code = Bytes::from(wat::parse_str(r#"(module (func (export "_start")))"#).unwrap());
        let exec = Arc::new(Executor::new(ExecutorConfig::new(dir.path().into()), None, None).unwrap());
        let checks: Vec<_> = (0..8)
            .map(|_| {
                let (exec, code) = (exec.clone(), code.clone());
                tokio::spawn(async move { exec.check_code(code).await })
            })
            .collect();
        for check in checks {
            assert_eq!(check.await.unwrap().unwrap().0, GuestKind::WasiModule);
        }
        assert_eq!(exec.compiles(), 1);
        assert!(exec.checking.lock().unwrap().is_empty(), "no gate left behind");
        drop(exec);

        let restarted = Executor::new(ExecutorConfig::new(dir.path().into()), None, None).unwrap();
        assert_eq!(restarted.check_code(code).await.unwrap().0, GuestKind::WasiModule);
        assert_eq!(restarted.compiles(), 0, "found in the code cache");
    }
}
