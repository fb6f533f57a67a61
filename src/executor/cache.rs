//! On-disk cache of compiled code, keyed by the code's sha256 and by the
//! engine's compatibility hash, so a restarted node loads machine code in
//! microseconds instead of recompiling, and an upgraded wasmtime never loads
//! stale artifacts.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

use super::guest::GuestKind;

pub struct CodeCache {
    dir: PathBuf,
}

impl CodeCache {
    pub fn new(root: &Path, engine: &Engine) -> std::io::Result<CodeCache> {
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let dir = root.join(format!("{:016x}", h.finish()));
        std::fs::create_dir_all(&dir)?;
        Ok(CodeCache { dir })
    }

    fn path(&self, digest: &str, kind: GuestKind) -> PathBuf {
        let ext = if kind.is_component() { "component" } else { "module" };
        self.dir
            .join(format!("{}.{ext}.cwasm", digest.trim_start_matches("sha256:")))
    }

    /// Loads a cached component, if present and loadable.
    pub fn load_component(&self, engine: &Engine, digest: &str, kind: GuestKind) -> Option<Component> {
        let path = self.path(digest, kind);
        if !path.exists() {
            return None;
        }
        // SAFETY: the file was written by `store` below from
        // `Component::serialize` on an engine with the same compatibility
        // hash (the directory name), and the cache directory belongs to this
        // node. wasmtime also checks the header before loading.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "dropping unloadable cached code");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Loads a cached core module.
    pub fn load_module(&self, engine: &Engine, digest: &str) -> Option<wasmtime::Module> {
        let path = self.path(digest, GuestKind::WasiModule);
        if !path.exists() {
            return None;
        }
        // SAFETY: as for components above.
        match unsafe { wasmtime::Module::deserialize_file(engine, &path) } {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "dropping unloadable cached code");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores compiled code atomically (write to a temp file, then rename),
    /// so a crash never leaves a torn artifact.
    pub fn store(&self, digest: &str, kind: GuestKind, bytes: &[u8]) {
        let path = self.path(digest, kind);
        let result = tempfile::NamedTempFile::new_in(&self.dir).and_then(|mut f| {
            f.write_all(bytes)?;
            f.persist(&path).map_err(|e| e.error)?;
            Ok(())
        });
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "cannot cache compiled code");
        }
    }
}
