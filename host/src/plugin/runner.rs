//! A loaded plugin: its prepared component, a pool of ready instances, the
//! per-call deadline and memory cap, failure isolation and hot reload.

use super::runtime;
use super::state::{PluginState, Shared};
use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store, Trap};

/// What a plugin is used for; each role has its own generated bindings.
pub trait Role: Send + Sync + 'static {
    type Pre: Send + Sync + 'static;
    type Bindings: Send + 'static;
    /// Interface name, for logs and metrics.
    const NAME: &'static str;
    fn prepare(linker: &Linker<PluginState>, component: &Component) -> wasmtime::Result<Self::Pre>;
    fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<PluginState>,
    ) -> wasmtime::Result<Self::Bindings>;
}

/// Why a call did not produce an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginFailure {
    #[error("plugin ran out of its time budget")]
    Timeout,
    #[error("plugin trapped: {0}")]
    Trap(String),
    #[error("plugin answer rejected: {0}")]
    Invalid(String),
}

/// Outcome counters, created once per plugin by the metrics registry.
#[derive(Clone, Default)]
pub struct Outcomes {
    pub ok: Counter,
    pub timeout: Counter,
    pub trap: Counter,
    pub invalid: Counter,
}

/// Limits applied to every call and instance.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// Fuel per call (roughly one unit per WebAssembly instruction).
    pub fuel: u64,
    /// Linear memory cap per instance, bytes.
    pub memory_limit: usize,
    /// Where compiled artifacts are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
}

struct Loaded<R: Role> {
    pre: R::Pre,
    /// Bumped by every reload; instances of older generations are dropped.
    generation: u64,
}

struct Instance<R: Role> {
    store: Store<PluginState>,
    bindings: R::Bindings,
    generation: u64,
}

/// Most idle instances kept per plugin.
const POOL_MAX: usize = 64;

pub struct Plugin<R: Role> {
    engine: Engine,
    /// The component file; watched for replacement.
    pub path: PathBuf,
    sandbox: Sandbox,
    shared: Arc<Shared>,
    loaded: ArcSwap<Loaded<R>>,
    /// Modification time of the file last looked at, to notice replacements.
    seen: Mutex<Option<SystemTime>>,
    /// Ready instances; a call pops one and pushes it back unless it failed.
    pool: Mutex<Vec<Instance<R>>>,
    outcomes: Outcomes,
    /// Unix second of the last failure logged, so failures do not flood the log.
    last_logged: AtomicU64,
    /// Failures not logged since then.
    suppressed: AtomicU64,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn prepare<R: Role>(engine: &Engine, path: &Path, sandbox: &Sandbox) -> Result<R::Pre, String> {
    let component = runtime::load(engine, path, sandbox.cache_dir.as_deref())?;
    let exports = runtime::exports(engine, &component);
    let wanted = match R::NAME {
        "client-key" => exports.client_key,
        _ => exports.backend_select,
    };
    if !wanted {
        return Err(format!(
            "{} does not export gateway:plugin/{}@0.1.0 (it exports: {})",
            path.display(),
            R::NAME,
            describe(exports)
        ));
    }
    let linker =
        runtime::linker(engine, &component).map_err(|e| format!("{}: {e}", path.display()))?;
    R::prepare(&linker, &component)
        .map_err(|e| format!("{} does not fit the interface: {e}", path.display()))
}

/// `client-key, backend-select` or `neither plugin interface`.
pub fn describe(exports: runtime::Exports) -> String {
    let mut names = Vec::new();
    if exports.client_key {
        names.push("client-key");
    }
    if exports.backend_select {
        names.push("backend-select");
    }
    if names.is_empty() {
        "neither plugin interface".to_owned()
    } else {
        names.join(", ")
    }
}

impl<R: Role> Plugin<R> {
    /// Loads and checks the component, and instantiates one instance to prove it starts.
    pub fn load(
        engine: &Engine,
        path: &Path,
        sandbox: Sandbox,
        shared: Arc<Shared>,
        outcomes: Outcomes,
    ) -> Result<Self, String> {
        let stamp = modified(path);
        let pre = prepare::<R>(engine, path, &sandbox)?;
        let plugin = Plugin {
            engine: engine.clone(),
            path: path.to_owned(),
            sandbox,
            shared,
            loaded: ArcSwap::from_pointee(Loaded { pre, generation: 0 }),
            seen: Mutex::new(stamp),
            pool: Mutex::new(Vec::new()),
            outcomes,
            last_logged: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        };
        let first = plugin
            .instantiate(&plugin.loaded.load())
            .map_err(|e| format!("{} does not start: {e}", path.display()))?;
        plugin.give_back(first);
        Ok(plugin)
    }

    /// Loads the file again if it changed on disk (or `force`). A broken new
    /// version is refused and the running one keeps serving.
    pub fn reload_if_changed(&self, force: bool) -> Result<bool, String> {
        let stamp = modified(&self.path);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if !force && *seen == stamp {
                return Ok(false);
            }
            // Remembered even if the new file is broken, so it is reported once.
            *seen = stamp;
        }
        let pre = prepare::<R>(&self.engine, &self.path, &self.sandbox)?;
        let generation = self.loaded.load().generation + 1;
        self.loaded.store(Arc::new(Loaded { pre, generation }));
        Ok(true)
    }

    fn instantiate(&self, loaded: &Loaded<R>) -> wasmtime::Result<Instance<R>> {
        let mut store = Store::new(
            &self.engine,
            PluginState::new(Arc::clone(&self.shared), self.sandbox.memory_limit),
        );
        store.limiter(|state| &mut state.limits);
        store.set_fuel(self.sandbox.fuel)?;
        let bindings = R::instantiate(&loaded.pre, &mut store)?;
        Ok(Instance {
            store,
            bindings,
            generation: loaded.generation,
        })
    }

    fn give_back(&self, instance: Instance<R>) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_MAX {
            pool.push(instance);
        }
    }

    /// Runs `f` on a pooled instance with a fresh fuel budget. An instance
    /// that failed is dropped (a trapped instance must never be entered again).
    pub fn call<T>(
        &self,
        f: impl FnOnce(&mut Store<PluginState>, &R::Bindings) -> wasmtime::Result<T>,
    ) -> Result<T, PluginFailure> {
        let loaded = self.loaded.load();
        let pooled = {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            pool.pop()
        };
        let mut instance = match pooled.filter(|i| i.generation == loaded.generation) {
            Some(instance) => instance,
            None => match self.instantiate(&loaded) {
                Ok(instance) => instance,
                Err(e) => return Err(self.failed(classify(e))),
            },
        };
        if let Err(e) = instance.store.set_fuel(self.sandbox.fuel) {
            return Err(self.failed(classify(e)));
        }
        match f(&mut instance.store, &instance.bindings) {
            Ok(value) => {
                self.outcomes.ok.inc();
                self.give_back(instance);
                Ok(value)
            }
            Err(e) => Err(self.failed(classify(e))),
        }
    }

    /// Counts and (rate-limited) logs a failure.
    pub fn failed(&self, failure: PluginFailure) -> PluginFailure {
        match failure {
            PluginFailure::Timeout => self.outcomes.timeout.inc(),
            PluginFailure::Trap(_) => self.outcomes.trap.inc(),
            PluginFailure::Invalid(_) => self.outcomes.invalid.inc(),
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.last_logged.swap(now, Ordering::Relaxed) == now {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        } else {
            let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
            tracing::warn!(
                event = "plugin_failure",
                plugin = %self.path.display(),
                interface = R::NAME,
                error = %failure,
                suppressed,
                "plugin failed; request served by the built-in behaviour"
            );
        }
        failure
    }
}

fn classify(error: wasmtime::Error) -> PluginFailure {
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => PluginFailure::Timeout,
        _ => PluginFailure::Trap(format!("{error:#}")),
    }
}
