//! The wasmtime engine and component loading, with compiled artifacts cached
//! on disk so a restart does not recompile.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

use super::bindings::key::KeyPlugin;
use super::state::PluginState;

/// One engine for every plugin: fuel metering on (a deadline that counts
/// work, not wall-clock time), no WASI.
pub fn engine() -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config.consume_fuel(true);
    config.wasm_component_model(true);
    Engine::new(&config)
}

/// Reads, compiles (or loads from the cache) and checks a component file.
pub fn load(engine: &Engine, path: &Path, cache_dir: Option<&Path>) -> Result<Component, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !bytes.starts_with(b"\0asm") {
        return Err(format!("{} is not a WebAssembly file", path.display()));
    }
    if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
        return Err(format!(
            "{} is a core WebAssembly module, not a component (build with --target wasm32-wasip2, or wrap it with `wasm-tools component new`)",
            path.display()
        ));
    }
    let cached = cache_dir.map(|dir| dir.join(format!("{}.cwasm", artifact_name(engine, &bytes))));
    if let Some(file) = cached.as_ref().filter(|f| f.exists()) {
        // SAFETY: the file was written by `Component::serialize` of this
        // engine configuration (its name hashes the source and the engine's
        // compatibility hash) into a directory only the gateway writes.
        if let Ok(component) = unsafe { Component::deserialize_file(engine, file) } {
            return Ok(component);
        }
    }
    let component = Component::new(engine, &bytes)
        .map_err(|e| format!("{} does not compile: {e}", path.display()))?;
    if let Some(file) = cached {
        store_artifact(&component, &file);
    }
    Ok(component)
}

fn artifact_name(engine: &Engine, bytes: &[u8]) -> String {
    let mut a = DefaultHasher::new();
    let mut b = DefaultHasher::new();
    0u8.hash(&mut a);
    1u8.hash(&mut b);
    for h in [&mut a, &mut b] {
        engine.precompile_compatibility_hash().hash(h);
        bytes.hash(h);
    }
    format!("{:016x}{:016x}", a.finish(), b.finish())
}

fn store_artifact(component: &Component, file: &PathBuf) {
    let Ok(bytes) = component.serialize() else {
        return;
    };
    let Some(dir) = file.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, file).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// A linker with the host interfaces; WASI imports a Rust guest drags in
/// (for its panic path) become traps, so the guest gets no filesystem,
/// network, clock or environment.
pub fn linker(engine: &Engine, component: &Component) -> wasmtime::Result<Linker<PluginState>> {
    let mut linker = Linker::new(engine);
    KeyPlugin::add_to_linker::<PluginState, wasmtime::component::HasSelf<PluginState>>(
        &mut linker,
        |s| s,
    )?;
    linker.define_unknown_imports_as_traps(component)?;
    Ok(linker)
}

/// Which plugin interfaces a component exports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Exports {
    pub client_key: bool,
    pub backend_select: bool,
}

pub const CLIENT_KEY: &str = "gateway:plugin/client-key@0.1.0";
pub const BACKEND_SELECT: &str = "gateway:plugin/backend-select@0.1.0";

pub fn exports(engine: &Engine, component: &Component) -> Exports {
    let mut found = Exports::default();
    for (name, _) in component.component_type().exports(engine) {
        match name {
            CLIENT_KEY => found.client_key = true,
            BACKEND_SELECT => found.backend_select = true,
            _ => {}
        }
    }
    found
}

/// Default place for compiled artifacts.
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("gateway")
        .join("plugins")
}
