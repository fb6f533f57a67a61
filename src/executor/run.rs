//! Running one event in one instance: component functions on warm
//! instances, WASI commands on a fresh instance each, and the mapping of
//! traps, exits and limits to precise errors.

use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use evoke_connectors::Event;
use wasmtime::Store;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

use super::guest::Prepared;
use super::http::HttpAccess;
use super::objects::ObjectAccess;
use super::pipes::CappedPipe;
use super::sandbox::{ComponentState, HasSandbox, ModuleState, Sandbox, arm, start_clock};
use super::{Executor, FunctionErrorKind, HandleFn, InvokeError, Loaded, Output, Warm, bindings};
use crate::observe::logs::{LogLevel, LogLine};
use crate::registry::DeployedFunction;

/// Evaluates an instantiation or call, and again while it failed for want
/// of a pool slot that reclaiming idle instances freed (see
/// [`Executor::room_made`]); a guest that never got a slot never started,
/// so trying again is safe.
macro_rules! with_room {
    ($executor:expr, $attempt:expr) => {{
        let mut result = $attempt;
        let mut tries = 0;
        while $executor.room_made(&result, &mut tries) {
            result = $attempt;
        }
        result
    }};
}

impl Executor {
    /// A store with the sandbox armed and the clock started.
    fn new_store<T: HasSandbox>(&self, data: T, deadline: Instant) -> Store<T> {
        let mut store = Store::new(&self.engine, data);
        arm(&mut store);
        start_clock(&mut store, deadline);
        store
    }

    fn wasi_builder(function: &DeployedFunction) -> WasiCtxBuilder {
        let mut b = WasiCtxBuilder::new();
        let env: Vec<(&str, &str)> = function
            .spec
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        b.envs(&env).args(&[function.name.as_str()]);
        b
    }

    /// A new instance's object access: the node's backend, the function's
    /// grants.
    fn object_access(&self, f: &DeployedFunction) -> ObjectAccess {
        ObjectAccess {
            backend: self.objects.clone(),
            grants: f.spec.grants.buckets.clone(),
            function: f.name.to_string(),
            invocation: String::new(),
            chain: 0,
        }
    }

    /// A new instance's outbound HTTP: the function's grants.
    fn http_access(&self, f: &DeployedFunction) -> HttpAccess {
        HttpAccess::new(&f.spec.grants.http, self.config.allow_link_local_http)
    }

    pub(super) async fn new_instance(
        &self,
        loaded: &Loaded,
        deadline: Instant,
    ) -> Result<(Warm, u64, u64), (InvokeError, Vec<LogLine>)> {
        let Prepared::Component {
            pre,
            handle,
            init,
            handle_checked,
        } = &loaded.prepared
        else {
            return Err((InvokeError::System("not a component".into()), vec![]));
        };
        let f = &loaded.function;
        let stdout = CappedPipe::new(self.config.log_cap);
        let stderr = CappedPipe::new(self.config.log_cap);
        let wasi = Self::wasi_builder(f)
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        let sandbox = Sandbox::new(f.spec.memory.0, self.config.log_cap, self.fuel_budget(f));
        let mut store = self.new_store(
            ComponentState::new(wasi, sandbox, self.object_access(f), self.http_access(f)),
            deadline,
        );
        let t = Instant::now();
        let instance = with_room!(self, pre.instantiate_async(&mut store).await);
        let instance = match instance {
            Ok(i) => i,
            Err(e) => {
                return Err((
                    classify(&mut store, e, f),
                    drain(&mut store, &[("stdout", &stdout), ("stderr", &stderr)]),
                ));
            }
        };
        let wrong = |e: String| {
            Err((
                InvokeError::System(format!("`handle` has the wrong signature: {e}")),
                vec![],
            ))
        };
        let Some(func) = instance.get_func(&mut store, handle) else {
            return wrong("it is not a function".into());
        };
        // Checking the type walks the whole `event` and `output` types, a
        // few microseconds of each new instance; every instance of one
        // `InstancePre` has the same types, so the first check holds for all.
        let handle_fn = if handle_checked.load(Ordering::Acquire) {
            // SAFETY: an earlier instance of this same component (the same
            // `pre`) passed `typed` for exactly this signature.
            unsafe { HandleFn::new_unchecked(func) }
        } else {
            match func.typed(&store) {
                Ok(h) => {
                    handle_checked.store(true, Ordering::Release);
                    h
                }
                Err(e) => return wrong(format!("{e:#}")),
            }
        };
        let instantiate_us = t.elapsed().as_micros() as u64;
        let t = Instant::now();
        if let Some(init) = init
            && let Err(e) = self.init(&mut store, &instance, *init, f).await
        {
            return Err((e, drain(&mut store, &[("stdout", &stdout), ("stderr", &stderr)])));
        }
        let init_us = t.elapsed().as_micros() as u64;
        Ok((
            Warm {
                store,
                handle: handle_fn,
                stdout,
                stderr,
                last_used: Instant::now(),
            },
            instantiate_us,
            init_us,
        ))
    }

    /// Runs a new instance's `init` export (the initializer).
    async fn init(
        &self,
        store: &mut Store<ComponentState>,
        instance: &wasmtime::component::Instance,
        init: wasmtime::component::ComponentExportIndex,
        f: &DeployedFunction,
    ) -> Result<(), InvokeError> {
        let init_fn = instance
            .get_typed_func::<(), (Result<(), String>,)>(&mut *store, init)
            .map_err(|e| InvokeError::System(format!("`init` has the wrong signature: {e:#}")))?;
        match with_room!(self, init_fn.call_async(&mut *store, ()).await) {
            Ok((Ok(()),)) => Ok(()),
            Ok((Err(message),)) => Err(InvokeError::function(
                FunctionErrorKind::Error,
                format!("init failed: {message}"),
            )),
            Err(e) => Err(classify(store, e, f)),
        }
    }

    pub(super) async fn run_component(
        &self,
        loaded: &Loaded,
        invocation: &str,
        event: &Event,
        deadline: Instant,
    ) -> (Result<Output, InvokeError>, Vec<LogLine>, Option<(u64, u64)>) {
        let reused = loaded.idle().pop();
        let (mut warm, cold) = match reused {
            Some(w) => (w, None),
            None => match self.new_instance(loaded, deadline).await {
                Ok((w, i, n)) => (w, Some((i, n))),
                Err((e, logs)) => return (Err(e), logs, Some((0, 0))),
            },
        };
        let f = &loaded.function;
        start_clock(&mut warm.store, deadline);
        warm.store.data_mut().objects.begin(invocation, event);
        let result = with_room!(self, warm.handle.call_async(&mut warm.store, (to_guest(event),)).await);
        let logs = drain(&mut warm.store, &[("stdout", &warm.stdout), ("stderr", &warm.stderr)]);
        let result = match result {
            Ok((Ok(out),)) => {
                if out.body.len() > self.config.max_output {
                    Err(InvokeError::Function {
                        kind: FunctionErrorKind::OutputTooLarge,
                        message: format!(
                            "the function returned {} bytes; the limit is {} bytes",
                            out.body.len(),
                            self.config.max_output
                        ),
                    })
                } else if let Some(status) = out.status.filter(|s| !(200..=599).contains(s)) {
                    Err(InvokeError::Function {
                        kind: FunctionErrorKind::InvalidOutput,
                        message: format!("the function returned HTTP status {status}; a status must be 200-599"),
                    })
                } else {
                    Ok(Output {
                        body: Bytes::from(out.body),
                        content_type: out.content_type,
                        status: out.status,
                        headers: out.headers,
                    })
                }
            }
            Ok((Err(message),)) => Err(InvokeError::function(FunctionErrorKind::Error, message)),
            Err(e) => {
                // A trapped instance is never reused: its memory may be
                // half-updated.
                return (Err(classify(&mut warm.store, e, f)), logs, cold);
            }
        };
        warm.last_used = Instant::now();
        loaded.idle().push(warm);
        (result, logs, cold)
    }

    pub(super) async fn run_command(
        &self,
        loaded: &Loaded,
        invocation: &str,
        event: &Event,
        deadline: Instant,
    ) -> (Result<Output, InvokeError>, Vec<LogLine>, Option<(u64, u64)>) {
        let f = &loaded.function;
        let stdout = CappedPipe::new(self.config.max_output + 1);
        let stderr = CappedPipe::new(self.config.log_cap);
        let mut builder = Self::wasi_builder(f);
        builder
            .stdin(MemoryInputPipe::new(Bytes::from(event.to_json())))
            .stdout(stdout.clone())
            .stderr(stderr.clone());
        let sandbox = Sandbox::new(f.spec.memory.0, self.config.log_cap, self.fuel_budget(f));
        let (exit, logs, instantiate_us) = match &loaded.prepared {
            Prepared::Command { pre } => {
                let mut objects = self.object_access(f);
                objects.begin(invocation, event);
                let state = ComponentState::new(builder.build(), sandbox, objects, self.http_access(f));
                let mut store = self.new_store(state, deadline);
                let t = Instant::now();
                let instance = with_room!(self, pre.instantiate_async(&mut store).await);
                let instantiate_us = t.elapsed().as_micros() as u64;
                let exit = match instance {
                    Ok(cmd) => match with_room!(self, cmd.wasi_cli_run().call_run(&mut store).await) {
                        Ok(Ok(())) => Ok(0),
                        Ok(Err(())) => Ok(1),
                        Err(e) => exit_code(&mut store, e, f),
                    },
                    Err(e) => Err(classify(&mut store, e, f)),
                };
                (exit, drain(&mut store, &[("stderr", &stderr)]), instantiate_us)
            }
            Prepared::Module { pre } => {
                let state = ModuleState {
                    wasi: builder.build_p1(),
                    sandbox,
                };
                let mut store = self.new_store(state, deadline);
                let t = Instant::now();
                let instance = with_room!(self, pre.instantiate_async(&mut store).await);
                let instantiate_us = t.elapsed().as_micros() as u64;
                let exit = match instance.map(|i| i.get_typed_func::<(), ()>(&mut store, "_start")) {
                    Ok(Ok(start)) => match with_room!(self, start.call_async(&mut store, ()).await) {
                        Ok(()) => Ok(0),
                        Err(e) => exit_code(&mut store, e, f),
                    },
                    Ok(Err(e)) => Err(InvokeError::System(format!("`_start` has the wrong signature: {e:#}"))),
                    Err(e) => Err(classify(&mut store, e, f)),
                };
                (exit, drain(&mut store, &[("stderr", &stderr)]), instantiate_us)
            }
            Prepared::Component { .. } => (Err(InvokeError::System("not a command".into())), vec![], 0),
        };
        let result = exit.and_then(|code| self.command_result(code, &stdout, &logs));
        (result, logs, Some((instantiate_us, 0)))
    }

    /// What a command's exit code and stdout make: its output (within the
    /// output limit) on 0, else an exit-code error quoting its last stderr
    /// line.
    fn command_result(&self, code: i32, stdout: &CappedPipe, logs: &[LogLine]) -> Result<Output, InvokeError> {
        let (out, dropped) = stdout.take();
        if code != 0 {
            let last = logs
                .iter()
                .rev()
                .find(|l| l.stream == "stderr")
                .map(|l| l.message.clone());
            return Err(InvokeError::function(
                FunctionErrorKind::ExitCode,
                match last {
                    Some(line) => format!("the command exited with code {code}: {line}"),
                    None => format!("the command exited with code {code}"),
                },
            ));
        }
        if dropped > 0 || out.len() > self.config.max_output {
            return Err(InvokeError::Function {
                kind: FunctionErrorKind::OutputTooLarge,
                message: format!(
                    "the function wrote {} bytes to stdout; the limit is {} bytes",
                    out.len() as u64 + dropped,
                    self.config.max_output
                ),
            });
        }
        Ok(command_output(out))
    }
}

/// Takes an invocation's logs: host `log` lines plus captured stdio.
fn drain<T: HasSandbox>(store: &mut Store<T>, pipes: &[(&str, &CappedPipe)]) -> Vec<LogLine> {
    let notes = store.data_mut().take_notes();
    let logs = &mut store.data_mut().sandbox().logs;
    for (level, message) in notes {
        logs.push(level, "evoke", message);
    }
    for (stream, pipe) in pipes {
        let (bytes, dropped) = pipe.take();
        logs.push_text(LogLevel::Info, stream, &bytes, dropped);
    }
    logs.take()
}

/// Classifies a failed call from the store's sandbox flags and the trap.
fn classify<T: HasSandbox>(store: &mut Store<T>, e: wasmtime::Error, f: &DeployedFunction) -> InvokeError {
    if super::is_pool_full(&e) {
        return InvokeError::Capacity(format!(
            "this node's instance pool is full ({e}); the invocation is retried later (start nodes with a larger --pool-instances, or lower max_instances)"
        ));
    }
    if let Some(wasmtime::Trap::OutOfFuel) = e.downcast_ref::<wasmtime::Trap>() {
        return InvokeError::Function {
            kind: FunctionErrorKind::FuelExhausted,
            message: format!(
                "the function used up its fuel budget of {}",
                f.spec.fuel.unwrap_or(u64::MAX)
            ),
        };
    }
    let sandbox = store.data_mut().sandbox();
    if sandbox.timed_out {
        return InvokeError::Function {
            kind: FunctionErrorKind::Timeout,
            message: format!(
                "the function ran past its timeout of {}",
                crate::units::format_duration(f.spec.timeout)
            ),
        };
    }
    if sandbox.limiter.hit {
        return InvokeError::Function {
            kind: FunctionErrorKind::MemoryLimit,
            message: format!("the function exceeded its memory limit of {}", f.spec.memory),
        };
    }
    let message = match e.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => format!("the function trapped: {trap}"),
        None => format!("the function trapped: {}", e.root_cause()),
    };
    InvokeError::function(FunctionErrorKind::Trap, message)
}

/// Reads a WASI exit code out of a command's error, or classifies the trap.
fn exit_code<T: HasSandbox>(
    store: &mut Store<T>,
    e: wasmtime::Error,
    f: &DeployedFunction,
) -> Result<i32, InvokeError> {
    match e.downcast_ref::<I32Exit>() {
        Some(exit) => Ok(exit.0),
        None => Err(classify(store, e, f)),
    }
}

/// Output of a WASI command: JSON when stdout parses as JSON, text when it
/// is UTF-8, bytes otherwise.
fn command_output(body: Bytes) -> Output {
    let content_type = if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok() {
        "application/json"
    } else if std::str::from_utf8(&body).is_ok() {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    };
    Output {
        body,
        content_type: Some(content_type.into()),
        status: None,
        headers: vec![],
    }
}

fn to_guest(e: &Event) -> bindings::Event {
    bindings::Event {
        id: e.id.clone(),
        source: e.source.clone(),
        type_: e.ty.clone(),
        specversion: e.specversion.clone(),
        subject: e.subject.clone(),
        time: e.time.map(|t| t.to_rfc3339()),
        datacontenttype: e.datacontenttype.clone(),
        data: e.data.to_vec(),
        extensions: e.extensions.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}
