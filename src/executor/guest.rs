//! The kinds of code evoke runs, how a deploy tells them apart, and how one
//! instance of each is created and called.
//!
//! - [`GuestKind::Component`]: a component of the `evoke:function` world
//!   (`handle`, optional `init`); instances are kept warm and reused.
//! - [`GuestKind::WasiCommand`]: a WASI preview-2 command component
//!   (`wasi:cli/run`): event JSON on stdin, output on stdout.
//! - [`GuestKind::WasiModule`]: a WASI preview-1 core module with `_start`,
//!   same contract. Commands get a fresh instance per event.

use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};
use wasmtime::Engine;
use wasmtime::component::{Component, ComponentExportIndex, InstancePre};
use wasmtime_wasi::p2::bindings::CommandPre;

use super::sandbox::{ComponentState, ModuleState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestKind {
    Component,
    WasiCommand,
    WasiModule,
}

impl GuestKind {
    pub fn is_component(self) -> bool {
        !matches!(self, GuestKind::WasiModule)
    }

    pub fn describe(self) -> &'static str {
        match self {
            GuestKind::Component => "component (evoke:function world)",
            GuestKind::WasiCommand => "WASI preview-2 command",
            GuestKind::WasiModule => "WASI preview-1 command module",
        }
    }
}

/// Why code cannot be deployed.
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    #[error("the code is not WebAssembly: it must start with the `\\0asm` magic number")]
    NotWasm,
    #[error("the code is not valid WebAssembly: {0}")]
    Invalid(String),
    #[error("the code is not an evoke function: {0}")]
    WrongShape(String),
    #[error("the function needs imports evoke does not provide: {0}")]
    Imports(String),
}

/// Compiled code ready to instantiate.
pub enum Prepared {
    Component {
        pre: InstancePre<ComponentState>,
        handle: ComponentExportIndex,
        init: Option<ComponentExportIndex>,
        /// Set once an instance's `handle` passed wasmtime's type check:
        /// further instances of this code skip it (see `new_instance`).
        handle_checked: AtomicBool,
    },
    Command {
        pre: CommandPre<ComponentState>,
    },
    Module {
        pre: wasmtime::InstancePre<ModuleState>,
    },
}

/// Compiled code before linking, as produced by a deploy or the cache
/// (cloning shares the code).
#[derive(Clone)]
pub enum Compiled {
    Component(Component),
    Module(wasmtime::Module),
}

impl Compiled {
    pub fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        match self {
            Compiled::Component(c) => c.serialize(),
            Compiled::Module(m) => m.serialize(),
        }
    }

    /// Builds the code's initial memory images now (on Linux a memfd each,
    /// written and sealed: system calls), so a blocking loader thread does
    /// it, not the first instantiation on the async runtime. Done once per
    /// compiled code; later calls return at once. A failure is left for
    /// that instantiation to report.
    pub fn prepare_memory_images(&self) {
        let prepared = match self {
            Compiled::Component(c) => c.initialize_copy_on_write_image(),
            Compiled::Module(m) => m.initialize_copy_on_write_image(),
        };
        if let Err(e) = prepared {
            tracing::debug!(error = %format!("{e:#}"), "memory images not built ahead; the first instance builds them");
        }
    }
}

/// Compiles `wasm` and works out which kind of guest it is.
pub fn compile(engine: &Engine, wasm: &[u8]) -> Result<(GuestKind, Compiled), CodeError> {
    use wasmparser::Parser;
    if !wasm.starts_with(b"\0asm") {
        return Err(CodeError::NotWasm);
    }
    let invalid = |e: wasmtime::Error| CodeError::Invalid(format!("{e:#}"));
    if Parser::is_component(wasm) {
        let component = Component::new(engine, wasm).map_err(invalid)?;
        let ty = component.component_type();
        let names: Vec<String> = ty.exports(engine).map(|(name, _)| name.to_string()).collect();
        let kind = if names.iter().any(|n| n == "handle") {
            GuestKind::Component
        } else if names.iter().any(|n| n.starts_with("wasi:cli/run@0.2")) {
            GuestKind::WasiCommand
        } else {
            return Err(CodeError::WrongShape(format!(
                "a component must export `handle` (world evoke:function/function in wit/) or `wasi:cli/run`; this one exports [{}]",
                names.join(", ")
            )));
        };
        Ok((kind, Compiled::Component(component)))
    } else {
        let module = wasmtime::Module::new(engine, wasm).map_err(invalid)?;
        let has_start = module
            .exports()
            .any(|e| e.name() == "_start" && e.ty().func().is_some());
        if !has_start {
            return Err(CodeError::WrongShape(
                "a core module must be a WASI command exporting `_start` (build a binary, not a library, for wasm32-wasip1)"
                    .into(),
            ));
        }
        Ok((GuestKind::WasiModule, Compiled::Module(module)))
    }
}

/// Links compiled code against what evoke provides. Fails with
/// [`CodeError::Imports`] when the guest wants something evoke does not give.
pub fn prepare(
    kind: GuestKind,
    compiled: Compiled,
    component_linker: &wasmtime::component::Linker<ComponentState>,
    module_linker: &wasmtime::Linker<ModuleState>,
) -> Result<Prepared, CodeError> {
    let imports = |e: wasmtime::Error| CodeError::Imports(format!("{e:#}"));
    match (kind, compiled) {
        (GuestKind::Component, Compiled::Component(c)) => {
            let handle = c
                .get_export_index(None, "handle")
                .ok_or_else(|| CodeError::WrongShape("no `handle` export".into()))?;
            let init = c.get_export_index(None, "init");
            let pre = component_linker.instantiate_pre(&c).map_err(imports)?;
            Ok(Prepared::Component {
                pre,
                handle,
                init,
                handle_checked: AtomicBool::new(false),
            })
        }
        (GuestKind::WasiCommand, Compiled::Component(c)) => {
            let pre = component_linker.instantiate_pre(&c).map_err(imports)?;
            let pre = CommandPre::new(pre).map_err(|e| CodeError::WrongShape(format!("{e:#}")))?;
            Ok(Prepared::Command { pre })
        }
        (GuestKind::WasiModule, Compiled::Module(m)) => {
            let pre = module_linker.instantiate_pre(&m).map_err(imports)?;
            Ok(Prepared::Module { pre })
        }
        _ => Err(CodeError::WrongShape(
            "the code does not match its recorded kind".into(),
        )),
    }
}

/// Links what functions built against `evoke:function@0.1.0` import (the
/// `host` interface: `log`), so they keep running unchanged after the world
/// moved on to 0.2.0 (which added `objects`).
pub fn link_v0_1(linker: &mut wasmtime::component::Linker<ComponentState>) -> wasmtime::Result<()> {
    use super::bindings::evoke::function::host::{Host, Level};
    let mut host = linker.instance("evoke:function/host@0.1.0")?;
    host.func_wrap(
        "log",
        |mut store: wasmtime::StoreContextMut<'_, ComponentState>, (level, message): (Level, String)| {
            store.data_mut().log(level, message);
            Ok(())
        },
    )?;
    Ok(())
}
