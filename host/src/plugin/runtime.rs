//! The wasmtime engine and component loading, with compiled artifacts cached
//! on disk so a restart does not recompile.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker, LinkerInstance, ResourceType};
use wasmtime::{Config, Engine};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable};

use super::bindings::key::KeyPlugin;
use super::state::PluginState;

/// How often the engine's epoch advances: the granularity of the wall-clock
/// deadline that covers time spent in host calls.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// One engine for every plugin, with one budget per call: an epoch deadline
/// that checks the worker thread's CPU time, time spent in host calls
/// included (see `deadline`). A thread advances the epoch every
/// `EPOCH_TICK` while the engine lives. Fuel metering is off: it counted
/// every basic block of the guest (+25 % on a Python key call, +40–80 % on
/// a JavaScript backend choice) to enforce what the CPU-time deadline
/// already does, at the same check points (function entries, loop heads).
pub fn engine() -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.wasm_component_model(true);
    // Plugins are stripped release builds: a backtrace of `<unknown>` frames
    // helps nobody, and collecting one makes every trap dearer.
    config.wasm_backtrace_max_frames(None);
    let engine = Engine::new(&config)?;
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("plugin-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })?;
    Ok(engine)
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
        .map_err(|e| format!("{} does not compile: {e:#}", path.display()))?;
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

/// A linker with the host interfaces and WASI 0.2, deny by default (see
/// `PluginState`): a filesystem with no directories, sockets that refuse
/// every address, an empty environment. Any other import (`wasi:http`, say)
/// is linked as a trap, so such a component loads and fails only if it
/// really calls it, with the import's name in the error.
///
/// WASI is matched by semver (a guest built against `wasi:cli@0.2.6` links
/// to the host's 0.2.12), so only imports the linker really cannot satisfy
/// are stubbed: `define_unknown_imports_as_traps` would shadow those
/// semver matches with traps.
pub fn linker(engine: &Engine, component: &Component) -> wasmtime::Result<Linker<PluginState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    super::no_wait::add_to_linker(&mut linker)?;
    KeyPlugin::add_to_linker::<PluginState, wasmtime::component::HasSelf<PluginState>>(
        &mut linker,
        |s| s,
    )?;
    let imports: Vec<(String, ComponentItem)> = component
        .component_type()
        .imports(engine)
        .map(|(name, item)| (name.to_owned(), item.ty))
        .collect();
    // Each round finds one unsatisfied import; a component has few imports.
    for _ in 0..=imports.len() {
        let Err(error) = linker.instantiate_pre(component) else {
            return Ok(linker);
        };
        let missing = unsatisfied_import(&error.to_string())
            .and_then(|name| imports.iter().find(|(n, _)| *n == name));
        match missing {
            Some((name, item)) => stub(&mut linker, engine, &imports, name, item)?,
            None => return Err(error),
        }
    }
    Ok(linker)
}

/// The import named in wasmtime's "component imports instance `NAME`, but a
/// matching implementation was not found in the linker".
fn unsatisfied_import(message: &str) -> Option<&str> {
    if !message.contains("matching implementation was not found") {
        return None;
    }
    let (_, rest) = message.split_once('`')?;
    rest.split_once('`').map(|(name, _)| name)
}

/// The host's type for a resource the component also imports from
/// `wasi:io` (an unknown interface such as `wasi:http/types` re-exports
/// `input-stream`, `output-stream`, `error` and `pollable`): the stub must
/// use the very type the real `wasi:io` was linked with.
fn wasi_io_resource(
    engine: &Engine,
    imports: &[(String, ComponentItem)],
    resource: &ResourceType,
) -> Option<ResourceType> {
    for (name, item) in imports {
        let ComponentItem::ComponentInstance(instance) = item else {
            continue;
        };
        let Some(interface) = name.strip_prefix("wasi:io/") else {
            continue;
        };
        let interface = interface.split('@').next().unwrap_or(interface);
        for (export, item) in instance.exports(engine) {
            if !matches!(&item.ty, ComponentItem::Resource(r) if r == resource) {
                continue;
            }
            return match (interface, export) {
                ("poll", "pollable") => Some(ResourceType::host::<DynPollable>()),
                ("streams", "input-stream") => Some(ResourceType::host::<DynInputStream>()),
                ("streams", "output-stream") => Some(ResourceType::host::<DynOutputStream>()),
                ("error", "error") => Some(ResourceType::host::<wasmtime::Error>()),
                _ => None,
            };
        }
    }
    None
}

/// Links `name` as functions that trap with a message naming the import.
fn stub(
    linker: &mut Linker<PluginState>,
    engine: &Engine,
    imports: &[(String, ComponentItem)],
    name: &str,
    item: &ComponentItem,
) -> wasmtime::Result<()> {
    fn trap(
        linker: &mut LinkerInstance<'_, PluginState>,
        func: &str,
        full: String,
    ) -> wasmtime::Result<()> {
        linker.func_new(func, move |_, _, _, _| {
            wasmtime::bail!("unknown import: `{full}` has not been defined")
        })
    }
    match item {
        ComponentItem::ComponentFunc(_) => trap(&mut linker.root(), name, name.to_owned()),
        ComponentItem::ComponentInstance(instance) => {
            let mut stubbed = linker.instance(name)?;
            for (export, item) in instance.exports(engine) {
                match item.ty {
                    ComponentItem::ComponentFunc(_) => {
                        trap(&mut stubbed, export, format!("{name}#{export}"))?
                    }
                    ComponentItem::Resource(resource) => {
                        let ty = wasi_io_resource(engine, imports, &resource)
                            .unwrap_or_else(ResourceType::host::<()>);
                        stubbed.resource(export, ty, |_, _| Ok(()))?
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        _ => wasmtime::bail!("cannot link import `{name}`: the gateway does not provide it"),
    }
}

/// How a component exports one role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `client-key` / `backend-select`: the plugin asks for each header.
    Plain,
    /// `client-key-with-headers` / `backend-select-with-headers` (0.1.2):
    /// the plugin names its headers once and gets their values with each call.
    WithHeaders,
}

/// Which plugin interfaces a component exports. A component that exports
/// both flavors of a role is called through the one with headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Exports {
    pub client_key: Option<Flavor>,
    pub backend_select: Option<Flavor>,
}

impl Exports {
    pub fn any(&self) -> bool {
        self.client_key.is_some() || self.backend_select.is_some()
    }
}

/// The interfaces a plugin may export, in any 0.1.x version of the package
/// (0.1.1 added an import, 0.1.2 the `-with-headers` interfaces; exports
/// built against 0.1.0 are the same).
pub const CLIENT_KEY: &str = "gateway:plugin/client-key";
pub const BACKEND_SELECT: &str = "gateway:plugin/backend-select";
const CLIENT_KEY_WITH_HEADERS: &str = "gateway:plugin/client-key-with-headers";
const BACKEND_SELECT_WITH_HEADERS: &str = "gateway:plugin/backend-select-with-headers";
/// The package versions whose exports the gateway calls.
const COMPATIBLE: &str = "0.1.";

pub fn exports(engine: &Engine, component: &Component) -> Exports {
    let mut found = Exports::default();
    for (name, _) in component.component_type().exports(engine) {
        let interface = match name.split_once('@') {
            Some((interface, version)) if version.starts_with(COMPATIBLE) => interface,
            _ => continue,
        };
        match interface {
            CLIENT_KEY => {
                found.client_key.get_or_insert(Flavor::Plain);
            }
            BACKEND_SELECT => {
                found.backend_select.get_or_insert(Flavor::Plain);
            }
            CLIENT_KEY_WITH_HEADERS => found.client_key = Some(Flavor::WithHeaders),
            BACKEND_SELECT_WITH_HEADERS => found.backend_select = Some(Flavor::WithHeaders),
            _ => {}
        }
    }
    found
}
