//! On-disk cache of compiled code, keyed by the code's sha256 and by the
//! engine's compatibility hash, so a restarted node loads machine code in
//! microseconds instead of recompiling, and an upgraded wasmtime never loads
//! stale artifacts.
//!
//! Loading compiled code is `unsafe` (it is machine code run as is), so the
//! cache trusts only what this node wrote: every artifact ends with a keyed
//! BLAKE3 tag over its kind, digest and bytes, under a random key kept beside
//! the cache (mode 0600). A file planted or altered by anyone without the key
//! is deleted instead of loaded. Digests are checked to be 64 hex digits
//! before they become part of a path. Everything here blocks: call it from
//! `spawn_blocking`.
//!
//! A verified artifact is mapped, not copied: wasmtime maps the very file
//! that was verified and pages it in as it is used (see `CodeCache::read`).
//!
//! Code this process compiled or loaded lately is also kept in memory (up to
//! a budget of artifact bytes, [`RECENT_BYTES`] by default): a new version of a function with the same
//! code, or another function sharing it, skips reading and verifying the
//! artifact again (~10 ms for the ~37 MB of a Python or JavaScript
//! component, most of it the tag's hash).

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use wasmtime::Engine;
use wasmtime::component::Component;

use super::guest::{Compiled, GuestKind};

const TAG_LEN: usize = 32;

/// How many bytes of artifacts the in-memory part keeps by default, oldest
/// dropped first.
pub const RECENT_BYTES: usize = 256 << 20;

pub struct CodeCache {
    dir: PathBuf,
    key: [u8; 32],
    recent: Mutex<Recent>,
}

/// Recently compiled or loaded code: (digest hex, kind, artifact size, code).
struct Recent {
    entries: VecDeque<(String, GuestKind, usize, Compiled)>,
    bytes: usize,
    budget: usize,
}

impl Recent {
    fn get(&self, hex: &str, kind: GuestKind) -> Option<Compiled> {
        self.entries
            .iter()
            .find(|(h, k, _, _)| h == hex && *k == kind)
            .map(|(_, _, _, c)| c.clone())
    }

    /// The code of `hex` whatever its kind (a digest is compiled as one).
    fn find(&self, hex: &str) -> Option<(GuestKind, Compiled)> {
        self.entries
            .iter()
            .find(|(h, _, _, _)| h == hex)
            .map(|(_, k, _, c)| (*k, c.clone()))
    }

    fn put(&mut self, hex: &str, kind: GuestKind, size: usize, compiled: Compiled) {
        if size > self.budget || self.get(hex, kind).is_some() {
            return;
        }
        while self.bytes + size > self.budget
            && let Some((_, _, dropped, _)) = self.entries.pop_front()
        {
            self.bytes -= dropped;
        }
        self.bytes += size;
        self.entries.push_back((hex.to_string(), kind, size, compiled));
    }
}

/// The hex part of a `sha256:<64 hex digits>` digest, or `None` when the
/// string is anything else (it is never used to build a path then).
pub fn digest_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then_some(hex)
}

impl CodeCache {
    /// A cache under `root` that also keeps up to `recent_bytes` of
    /// artifacts in memory (0: none).
    pub fn new(root: &Path, engine: &Engine, recent_bytes: usize) -> std::io::Result<CodeCache> {
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let dir = root.join(format!("{:016x}", h.finish()));
        std::fs::create_dir_all(&dir)?;
        let key = load_or_create_key(&root.join("cache.key"))?;
        Ok(CodeCache {
            dir,
            key,
            recent: Mutex::new(Recent {
                entries: VecDeque::new(),
                bytes: 0,
                budget: recent_bytes,
            }),
        })
    }

    fn path(&self, hex: &str, kind: GuestKind) -> PathBuf {
        let ext = if kind.is_component() { "component" } else { "module" };
        self.dir.join(format!("{hex}.{ext}.cwasm"))
    }

    fn tag(&self, kind: GuestKind, hex: &str, artifact: &[u8]) -> [u8; TAG_LEN] {
        *self.tagger(kind, hex).update(artifact).finalize().as_bytes()
    }

    /// The keyed hash a tag is made with, fed what precedes the artifact.
    fn tagger(&self, kind: GuestKind, hex: &str) -> blake3::Hasher {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(format!("{kind:?}\0{hex}\0").as_bytes());
        h
    }

    /// Loads cached compiled code of `kind`, if present, written by this
    /// node (its tag verifies) and loadable.
    pub fn load(&self, engine: &Engine, digest: &str, kind: GuestKind) -> Option<Compiled> {
        let hex = digest_hex(digest)?;
        if let Some(c) = self.recent().get(hex, kind) {
            return Some(c);
        }
        self.read(engine, hex, &[kind]).map(|(_, c)| c)
    }

    /// Cached compiled code of `digest` whatever its kind, with the kind
    /// it was compiled as: code this node compiled before (its cache
    /// outlives restarts) need not be compiled again to be checked.
    pub fn find(&self, engine: &Engine, digest: &str) -> Option<(GuestKind, Compiled)> {
        let hex = digest_hex(digest)?;
        if let Some(found) = self.recent().find(hex) {
            return Some(found);
        }
        const COMPONENTS: [GuestKind; 2] = [GuestKind::Component, GuestKind::WasiCommand];
        // Both component kinds share a file; its tag says which it is.
        self.read(engine, hex, &COMPONENTS)
            .or_else(|| self.read(engine, hex, &[GuestKind::WasiModule]))
    }

    /// Verifies and loads the artifact of `hex` stored as one of `kinds`
    /// (all stored at one path), keeping it in memory; an artifact whose
    /// tag verifies as none of them, or that does not load, is deleted.
    ///
    /// The file is read once, in pieces, to check its tag, and then mapped
    /// (wasmtime pages it in as it is used, and builds memory images
    /// straight from it) rather than copied: a Python or JavaScript
    /// component's ~37 MB artifact would otherwise be read into memory
    /// and copied again by wasmtime. The mapping is made from the file
    /// this function opened and verified (`/proc/self/fd`), not from its
    /// path, so a file renamed over it in the meantime is never loaded.
    /// Changing the verified file in place takes its owner, who can read
    /// the key too: the tag never protected against them.
    fn read(&self, engine: &Engine, hex: &str, kinds: &[GuestKind]) -> Option<(GuestKind, Compiled)> {
        let path = self.path(hex, *kinds.first()?);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read cached code");
                return None;
            }
        };
        let drop_file = |why: &str| {
            tracing::warn!(path = %path.display(), "dropping cached code: {why}");
            let _ = std::fs::remove_file(&path);
            None
        };
        let (kind, size) = match self.verify(&file, hex, kinds) {
            Ok(Some(verified)) => verified,
            Ok(None) => return drop_file("its tag does not verify (not written by this node)"),
            Err(e) => return drop_file(&format!("cannot be read: {e}")),
        };
        // SAFETY: the file was written by `store` below, from `serialize` on
        // an engine with the same compatibility hash (the directory name),
        // as the keyed tag just proved; wasmtime checks the header too.
        // Cached files are never changed in place (`store` renames a new
        // file over the old one), so a mapping stays what was verified.
        match unsafe { deserialize_verified(engine, &file, kind) } {
            Ok(c) => {
                self.recent().put(hex, kind, size as usize, c.clone());
                Some((kind, c))
            }
            Err(e) => drop_file(&format!("unloadable: {e:#}")),
        }
    }

    /// Which of `kinds` the tag at the end of `file` verifies as, with the
    /// artifact's size (`None`: none), from one pass over the file.
    fn verify(
        &self,
        file: &std::fs::File,
        hex: &str,
        kinds: &[GuestKind],
    ) -> std::io::Result<Option<(GuestKind, u64)>> {
        use std::io::Read;
        use std::os::unix::fs::FileExt;
        let len = file.metadata()?.len();
        let Some(artifact_len) = len.checked_sub(TAG_LEN as u64) else {
            return Ok(None);
        };
        let mut tag = [0u8; TAG_LEN];
        file.read_exact_at(&mut tag, artifact_len)?;
        let mut hashers: Vec<(GuestKind, blake3::Hasher)> = kinds.iter().map(|&k| (k, self.tagger(k, hex))).collect();
        let mut artifact = std::io::BufReader::with_capacity(1 << 20, file).take(artifact_len);
        loop {
            let piece = std::io::BufRead::fill_buf(&mut artifact)?;
            if piece.is_empty() {
                break;
            }
            for (_, h) in &mut hashers {
                h.update(piece);
            }
            let n = piece.len();
            std::io::BufRead::consume(&mut artifact, n);
        }
        // blake3's Hash compares in constant time.
        let tag = blake3::Hash::from_bytes(tag);
        Ok(hashers
            .into_iter()
            .find(|(_, h)| h.finalize() == tag)
            .map(|(k, _)| (k, artifact_len)))
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores compiled code (`artifact`: `compiled` serialized) with its tag
    /// atomically (write to a temp file, then rename), so a crash never
    /// leaves a torn artifact; keeps `compiled` in memory too.
    pub fn store(&self, digest: &str, kind: GuestKind, artifact: &[u8], compiled: &Compiled) {
        let Some(hex) = digest_hex(digest) else {
            tracing::warn!(digest, "not caching code with a malformed digest");
            return;
        };
        self.recent().put(hex, kind, artifact.len(), compiled.clone());
        let path = self.path(hex, kind);
        let tag = self.tag(kind, hex, artifact);
        let result = tempfile::NamedTempFile::new_in(&self.dir).and_then(|mut f| {
            f.write_all(artifact)?;
            f.write_all(&tag)?;
            f.persist(&path).map_err(|e| e.error)?;
            Ok(())
        });
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "cannot cache compiled code");
        }
    }
}

/// Loads verified compiled code from `file`: mapped where the platform
/// lets wasmtime map the very file that was verified, else read into memory
/// from it.
///
/// # Safety
///
/// `file` holds compiled code this node wrote (its tag verified), which
/// stays as it is while the code is loaded.
unsafe fn deserialize_verified(engine: &Engine, file: &std::fs::File, kind: GuestKind) -> wasmtime::Result<Compiled> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // Opening a process's own descriptor opens the same file again,
        // whatever its path names now.
        let same_file = format!("/proc/self/fd/{}", file.as_raw_fd());
        let mapped = if kind.is_component() {
            unsafe { Component::deserialize_file(engine, &same_file) }.map(Compiled::Component)
        } else {
            unsafe { wasmtime::Module::deserialize_file(engine, &same_file) }.map(Compiled::Module)
        };
        match mapped {
            Ok(c) => return Ok(c),
            Err(e) => tracing::debug!(error = %format!("{e:#}"), "cannot map cached code; reading it instead"),
        }
    }
    // SAFETY: as this function's.
    unsafe { deserialize_read(engine, file, kind) }
}

/// Loads verified compiled code by reading `file` (without its tag) into
/// memory: where it cannot be mapped.
///
/// # Safety
///
/// As [`deserialize_verified`].
unsafe fn deserialize_read(engine: &Engine, file: &std::fs::File, kind: GuestKind) -> wasmtime::Result<Compiled> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len().saturating_sub(TAG_LEN as u64);
    let mut artifact = vec![0u8; len as usize];
    file.read_exact_at(&mut artifact, 0)?;
    if kind.is_component() {
        unsafe { Component::deserialize(engine, &artifact) }.map(Compiled::Component)
    } else {
        unsafe { wasmtime::Module::deserialize(engine, &artifact) }.map(Compiled::Module)
    }
}

/// The node's cache key: 32 random bytes in a file only its owner can read,
/// created on first use.
fn load_or_create_key(path: &Path) -> std::io::Result<[u8; 32]> {
    if let Ok(bytes) = std::fs::read(path)
        && let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice())
    {
        return Ok(key);
    }
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(std::io::Error::other)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut f = tempfile::NamedTempFile::new_in(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.as_file().set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(&key)?;
    f.persist(path).map_err(|e| e.error)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_must_be_sha256_hex() {
        let good = format!("sha256:{}", "a1".repeat(32));
        assert!(digest_hex(&good).is_some());
        for bad in [
            "",
            "sha256:",
            "sha256:../../etc/passwd",
            &format!("sha256:{}", "A1".repeat(32)),
            &format!("sha256:{}/", "a1".repeat(32)),
            &format!("sha256:{}", "a1".repeat(33)),
            &format!("md5:{}", "a1".repeat(32)),
        ] {
            assert!(digest_hex(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn recent_code_is_served_from_memory_within_its_budget() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().unwrap();
        let module = wasmtime::Module::new(&engine, "(module (func (export \"_start\")))").unwrap();
        let artifact = module.serialize().unwrap();
        let compiled = Compiled::Module(module);
        let digest = |i: usize| format!("sha256:{i:064x}");
        // Room for two artifacts.
        let cache = CodeCache::new(dir.path(), &engine, 2 * artifact.len()).unwrap();
        for i in 0..3 {
            cache.store(&digest(i), GuestKind::WasiModule, &artifact, &compiled);
        }
        std::fs::remove_dir_all(&cache.dir).unwrap();
        let cached = |i| cache.load(&engine, &digest(i), GuestKind::WasiModule).is_some();
        assert_eq!(
            (cached(0), cached(1), cached(2)),
            (false, true, true),
            "the oldest went first"
        );
        assert!(
            cache.load(&engine, &digest(1), GuestKind::Component).is_none(),
            "by kind too"
        );
        // A budget of 0 keeps nothing in memory.
        let none = CodeCache::new(dir.path(), &engine, 0).unwrap();
        none.store(&digest(0), GuestKind::WasiModule, &artifact, &compiled);
        std::fs::remove_dir_all(&none.dir).unwrap();
        assert!(none.load(&engine, &digest(0), GuestKind::WasiModule).is_none());
    }

    #[test]
    fn code_is_found_by_digest_whatever_its_kind() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().unwrap();
        let digest = |i: usize| format!("sha256:{i:064x}");
        // Nothing kept in memory: what is found is read from the disk.
        let cache = CodeCache::new(dir.path(), &engine, 0).unwrap();
        let component = Component::new(&engine, "(component)").unwrap();
        let artifact = component.serialize().unwrap();
        cache.store(
            &digest(1),
            GuestKind::WasiCommand,
            &artifact,
            &Compiled::Component(component),
        );
        let module = wasmtime::Module::new(&engine, "(module (func (export \"_start\")))").unwrap();
        let artifact = module.serialize().unwrap();
        cache.store(&digest(2), GuestKind::WasiModule, &artifact, &Compiled::Module(module));

        let restarted = CodeCache::new(dir.path(), &engine, 0).unwrap();
        let kind = |i| restarted.find(&engine, &digest(i)).map(|(k, _)| k);
        assert_eq!(kind(1), Some(GuestKind::WasiCommand));
        assert_eq!(kind(2), Some(GuestKind::WasiModule));
        assert_eq!(kind(3), None, "never stored");
        // Trying the other component kind's tag first did not drop it.
        assert!(restarted.load(&engine, &digest(1), GuestKind::WasiCommand).is_some());
    }

    /// Verified code is loaded by mapping its file, not by copying it into
    /// memory: the file shows among the process's mappings. The fallback,
    /// reading it, loads the same code.
    #[cfg(target_os = "linux")]
    #[test]
    fn cached_code_is_mapped_from_its_file_or_else_read() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().unwrap();
        let digest = format!("sha256:{}", "cd".repeat(32));
        let mapped = |path: &Path| {
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            maps.lines().any(|l| l.ends_with(path.to_str().unwrap()))
        };
        for (kind, code) in [
            (GuestKind::Component, "(component)"),
            (GuestKind::WasiModule, "(module (func (export \"_start\")))"),
        ] {
            let compiled = if kind.is_component() {
                Compiled::Component(Component::new(&engine, code).unwrap())
            } else {
                Compiled::Module(wasmtime::Module::new(&engine, code).unwrap())
            };
            let cache = CodeCache::new(dir.path(), &engine, 0).unwrap();
            cache.store(&digest, kind, &compiled.serialize().unwrap(), &compiled);
            let path = cache.path(digest_hex(&digest).unwrap(), kind);
            assert!(!mapped(&path), "{kind:?}: nothing loaded yet");
            let loaded = cache.load(&engine, &digest, kind).expect("loads");
            assert!(mapped(&path), "{kind:?}: loaded from a mapping of its file");
            drop(loaded);
            assert!(!mapped(&path), "{kind:?}: unmapped with the code");
            // Where it cannot be mapped, the same file is read instead.
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: written by `store` just above, and left as it is.
            let read = unsafe { deserialize_read(&engine, &file, kind) }.expect("reads");
            assert_eq!(read.serialize().unwrap(), compiled.serialize().unwrap(), "{kind:?}");
            assert!(!mapped(&path), "{kind:?}: read, not mapped");
        }
    }

    #[test]
    fn only_artifacts_this_node_wrote_are_loaded() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().unwrap();
        let cache = CodeCache::new(dir.path(), &engine, RECENT_BYTES).unwrap();
        let module = wasmtime::Module::new(&engine, "(module (func (export \"_start\")))").unwrap();
        let digest = format!("sha256:{}", "ab".repeat(32));
        let compiled = Compiled::Module(module.clone());
        cache.store(&digest, GuestKind::WasiModule, &module.serialize().unwrap(), &compiled);
        assert!(cache.load(&engine, &digest, GuestKind::WasiModule).is_some());
        // A component of the same digest was never stored.
        assert!(cache.load(&engine, &digest, GuestKind::Component).is_none());

        // Another node's cache (another key) writing the same path: refused and removed.
        let other_root = tempfile::tempdir().unwrap();
        let other = CodeCache::new(other_root.path(), &engine, RECENT_BYTES).unwrap();
        other.store(&digest, GuestKind::WasiModule, &module.serialize().unwrap(), &compiled);
        let path = cache.path(digest_hex(&digest).unwrap(), GuestKind::WasiModule);
        std::fs::copy(other.path(digest_hex(&digest).unwrap(), GuestKind::WasiModule), &path).unwrap();
        // (A node that starts anew: nothing in memory yet.)
        let cache = CodeCache::new(dir.path(), &engine, RECENT_BYTES).unwrap();
        assert!(cache.load(&engine, &digest, GuestKind::WasiModule).is_none());
        assert!(!path.exists(), "a planted artifact is deleted");

        // A flipped byte in our own artifact: refused.
        cache.store(&digest, GuestKind::WasiModule, &module.serialize().unwrap(), &compiled);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let cache = CodeCache::new(dir.path(), &engine, RECENT_BYTES).unwrap();
        assert!(cache.load(&engine, &digest, GuestKind::WasiModule).is_none());

        // The key survives a restart of the node.
        cache.store(&digest, GuestKind::WasiModule, &module.serialize().unwrap(), &compiled);
        let again = CodeCache::new(dir.path(), &engine, RECENT_BYTES).unwrap();
        assert!(again.load(&engine, &digest, GuestKind::WasiModule).is_some());
    }
}
