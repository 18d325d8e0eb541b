//! A loaded plugin: its prepared component, a pool of ready instances, the
//! per-call budget and memory cap, failure isolation and hot reload.
//!
//! Exports are called synchronously, on the request's thread, like a plain
//! function call: no fiber, no executor hop. A plugin answers from what it
//! has; one that would wait for a timer or I/O has failed (see `no_wait`).

use super::capture::Stream;
use super::deadline::CpuDeadline;
use super::declared::BadDeclaration;
use super::runtime::{self, Flavor};
use super::state::{LENT, PluginState, RequestView, Shared};
use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wasmtime::component::{Component, Linker, Resource};
use wasmtime::{Engine, Store, Trap};

/// What a plugin is used for; each role has its own generated bindings.
pub trait Role: Send + Sync + 'static {
    type Pre: Send + Sync + 'static;
    type Bindings: Send + 'static;
    /// What the call takes besides the request.
    type Input<'a>;
    /// What the call answers.
    type Output;
    /// Interface name, for logs and metrics.
    const NAME: &'static str;
    /// `flavor`: how the component exports this role.
    fn prepare(
        linker: &Linker<PluginState>,
        component: &Component,
        flavor: Flavor,
    ) -> wasmtime::Result<Self::Pre>;
    fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<PluginState>,
    ) -> wasmtime::Result<Self::Bindings>;
    fn invoke(
        bindings: &Self::Bindings,
        store: &mut Store<PluginState>,
        request: Resource<RequestView>,
        input: Self::Input<'_>,
    ) -> wasmtime::Result<Self::Output>;
    /// Calls the export once with a synthetic request; says what it answered.
    fn probe(plugin: &Plugin<Self>) -> Result<String, PluginFailure>
    where
        Self: Sized;
}

/// Why a call did not produce an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginFailure {
    #[error("plugin ran out of its time budget")]
    Timeout,
    /// Trapped after printing to stderr: a Rust panic, a Python exception.
    #[error("plugin panicked: {0}")]
    Panic(String),
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
    pub panic: Counter,
    pub trap: Counter,
    pub invalid: Counter,
}

/// Limits applied to every call and instance.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// Wall-clock budget per call, host calls included (`plugins.timeout`).
    pub timeout: Duration,
    /// Wall-clock budget for starting an instance (`plugins.start_timeout`).
    pub start_timeout: Duration,
    /// Linear memory cap per instance, bytes.
    pub memory_limit: usize,
    /// Core instances, tables and memories one component may create.
    pub max_instances: usize,
    pub max_tables: usize,
    pub max_memories: usize,
    /// Where compiled artifacts are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
}

/// Most bytes a plugin may hand the host in one call (a client key, a log
/// message, a header name). Checked before anything is copied.
const MAX_TRANSFER: usize = 64 * 1024;

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
    /// `path` for logs.
    name: String,
    sandbox: Sandbox,
    pub shared: Arc<Shared>,
    loaded: ArcSwap<Loaded<R>>,
    /// What the check call answered when this version was loaded.
    pub probe: String,
    /// The check call is running: it is the first call of a fresh instance,
    /// where a language runtime finishes starting (lazy initialisation,
    /// first touches of a large heap), so it gets the start budget.
    probing: AtomicBool,
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
    let Some(flavor) = wanted else {
        return Err(format!(
            "{} does not export gateway:plugin/{}@0.1.x (it exports: {})",
            path.display(),
            R::NAME,
            describe(exports)
        ));
    };
    let linker =
        runtime::linker(engine, &component).map_err(|e| format!("{}: {e:#}", path.display()))?;
    R::prepare(&linker, &component, flavor)
        .map_err(|e| format!("{} does not fit the interface: {e:#}", path.display()))
}

/// `client-key, backend-select` or `neither plugin interface`.
pub fn describe(exports: runtime::Exports) -> String {
    let mut names = Vec::new();
    match exports.client_key {
        Some(Flavor::Plain) => names.push("client-key"),
        Some(Flavor::WithHeaders) => names.push("client-key-with-headers"),
        None => {}
    }
    match exports.backend_select {
        Some(Flavor::Plain) => names.push("backend-select"),
        Some(Flavor::WithHeaders) => names.push("backend-select-with-headers"),
        None => {}
    }
    if names.is_empty() {
        "neither plugin interface".to_owned()
    } else {
        names.join(", ")
    }
}

impl<R: Role> Plugin<R> {
    /// Loads and checks the component, starts one instance and calls it once
    /// with a synthetic request (see `check`): a component whose calls trap
    /// is refused here, with the cause.
    pub fn load(
        engine: &Engine,
        path: &Path,
        sandbox: Sandbox,
        shared: Arc<Shared>,
        outcomes: Outcomes,
    ) -> Result<Self, String> {
        let stamp = modified(path);
        let pre = prepare::<R>(engine, path, &sandbox)?;
        let mut plugin = Plugin {
            engine: engine.clone(),
            path: path.to_owned(),
            name: path.display().to_string(),
            sandbox,
            shared,
            loaded: ArcSwap::from_pointee(Loaded { pre, generation: 0 }),
            probe: String::new(),
            probing: AtomicBool::new(true),
            seen: Mutex::new(stamp),
            pool: Mutex::new(Vec::new()),
            // The check call is not traffic: it is not counted.
            outcomes: Outcomes::default(),
            last_logged: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        };
        let first = plugin.instantiate(&plugin.loaded.load()).map_err(|e| {
            let printed = e.1;
            format!(
                "{} does not start: {}",
                path.display(),
                classify(e.0, &printed, &plugin.sandbox)
            )
        })?;
        plugin.give_back(first);
        plugin.probe = R::probe(&plugin)
            .map_err(|f| format!("{}: the check call failed: {f}", path.display()))?;
        plugin.probing.store(false, Ordering::Relaxed);
        plugin.outcomes = outcomes;
        Ok(plugin)
    }

    /// Loads the file again if it changed on disk (or `force`). A new
    /// version that does not load, start and pass the check call is refused
    /// and the running one keeps serving.
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
        let candidate = Plugin::<R>::load(
            &self.engine,
            &self.path,
            self.sandbox.clone(),
            Arc::clone(&self.shared),
            Outcomes::default(),
        )?;
        let Ok(Loaded { pre, .. }) = Arc::try_unwrap(candidate.loaded.into_inner()) else {
            return Err("the new version is still in use".to_owned());
        };
        let generation = self.loaded.load().generation + 1;
        self.loaded.store(Arc::new(Loaded { pre, generation }));
        Ok(true)
    }

    /// A new instance, or why it did not start with what it printed meanwhile.
    fn instantiate(&self, loaded: &Loaded<R>) -> Result<Instance<R>, (wasmtime::Error, Printed)> {
        let mut store = Store::new(
            &self.engine,
            PluginState::new(Arc::clone(&self.shared), &self.sandbox),
        );
        store.limiter(|state| &mut state.limits);
        store.set_hostcall_fuel(MAX_TRANSFER);
        store.epoch_deadline_callback(|mut store| Ok(store.data_mut().deadline.tick()));
        arm(&mut store, self.sandbox.start_timeout);
        let started = guarded(|| R::instantiate(&loaded.pre, &mut store));
        let printed = store.data().output.drain();
        self.shared.log_output(&self.name, &printed);
        match started {
            Ok(bindings) => Ok(Instance {
                store,
                bindings,
                generation: loaded.generation,
            }),
            Err(e) => Err((e, printed)),
        }
    }

    fn give_back(&self, instance: Instance<R>) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_MAX {
            pool.push(instance);
        }
    }

    /// Calls the plugin on a pooled instance with a fresh budget, lending it
    /// the request. `view` is handed back in every case. An instance that
    /// failed is dropped (a trapped instance must never be entered again).
    /// Success is not counted here: the role checks the answer first.
    pub fn call(
        &self,
        view: &mut Option<RequestView>,
        input: R::Input<'_>,
    ) -> Result<R::Output, PluginFailure> {
        let loaded = self.loaded.load();
        let pooled = {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            pool.pop()
        };
        let mut instance = match pooled.filter(|i| i.generation == loaded.generation) {
            Some(instance) => instance,
            None => match self.instantiate(&loaded) {
                Ok(instance) => instance,
                Err((e, printed)) => {
                    return Err(self.failed(classify(e, &printed, &self.sandbox)));
                }
            },
        };
        let answer = self.run(&mut instance, view, input);
        let printed = instance.store.data().output.drain();
        self.shared.log_output(&self.name, &printed);
        match answer {
            Ok(value) => {
                if instance.store.data().limits.nearly_full() {
                    tracing::debug!(plugin = %self.name, "plugin instance retired near its memory limit");
                } else {
                    self.give_back(instance);
                }
                Ok(value)
            }
            Err(e) => Err(self.failed(classify(e, &printed, &self.sandbox))),
        }
    }

    fn run(
        &self,
        instance: &mut Instance<R>,
        view: &mut Option<RequestView>,
        input: R::Input<'_>,
    ) -> wasmtime::Result<R::Output> {
        let Instance {
            store, bindings, ..
        } = instance;
        let budget = if self.probing.load(Ordering::Relaxed) {
            self.sandbox.start_timeout
        } else {
            self.sandbox.timeout
        };
        arm(store, budget);
        let Some(lent) = view.take() else {
            return Err(wasmtime::format_err!("request already lent"));
        };
        store.data_mut().request = Some(lent);
        let request = Resource::new_borrow(LENT);
        let answer = guarded(|| R::invoke(bindings, store, request, input));
        *view = store.data_mut().request.take();
        answer
    }

    /// Counts an answer the role accepted.
    pub fn succeeded(&self) {
        self.outcomes.ok.inc();
    }

    /// Counts and (rate-limited) logs a failure.
    pub fn failed(&self, failure: PluginFailure) -> PluginFailure {
        match failure {
            PluginFailure::Timeout => self.outcomes.timeout.inc(),
            PluginFailure::Panic(_) => self.outcomes.panic.inc(),
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

/// Starts a call's CPU-time budget: the epoch callback checks it from the
/// next tick on.
fn arm(store: &mut Store<PluginState>, budget: Duration) {
    store.data_mut().deadline = CpuDeadline::new(budget);
    store.set_epoch_deadline(1);
}

/// What an instance printed during a call, line by line.
type Printed = Vec<(Stream, String)>;

/// Runs a call into a plugin. A panic in a host function is caught here and
/// becomes the call's error.
///
/// WASI's timers need a Tokio context to register with even when nobody
/// waits for them; outside the gateway's runtimes (`plugin check`) a
/// private, never-driven one is entered.
fn guarded<T>(call: impl FnOnce() -> wasmtime::Result<T>) -> wasmtime::Result<T> {
    static FALLBACK: LazyLock<Option<tokio::runtime::Runtime>> = LazyLock::new(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .ok()
    });
    let _context = match tokio::runtime::Handle::try_current() {
        Ok(_) => None,
        Err(_) => FALLBACK.as_ref().map(|rt| rt.enter()),
    };
    std::panic::catch_unwind(AssertUnwindSafe(call)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(wasmtime::format_err!("a host function failed: {what}"))
    })
}

/// Tells a timeout from a panic from any other trap. A trap that follows
/// output on stderr is a panic, named by what the plugin printed.
fn classify(
    error: wasmtime::Error,
    printed: &[(Stream, String)],
    sandbox: &Sandbox,
) -> PluginFailure {
    if matches!(error.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
        return PluginFailure::Timeout;
    }
    if let Some(bad) = error.downcast_ref::<BadDeclaration>() {
        return PluginFailure::Invalid(bad.to_string());
    }
    let chain = format!("{error:#}")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if chain.contains("fuel allocated for hostcalls") {
        return PluginFailure::Invalid(format!(
            "the plugin handed the gateway a value of more than {MAX_TRANSFER} bytes (refused before copying)"
        ));
    }
    let stderr: Vec<&str> = printed
        .iter()
        .filter(|(stream, _)| *stream == Stream::Stderr)
        .map(|(_, line)| line.as_str())
        .collect();
    if !stderr.is_empty() && error.downcast_ref::<Trap>().is_some() {
        let mut message = stderr.join(" / ");
        if message.len() > 512 {
            let mut cut = 512;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        return PluginFailure::Panic(format!("{message} ({chain})"));
    }
    match hint(&chain, sandbox) {
        Some(hint) => PluginFailure::Trap(format!("{chain}; {hint}")),
        None => PluginFailure::Trap(chain),
    }
}

/// The setting to change when a plugin hits one of the sandbox's limits.
fn hint(chain: &str, sandbox: &Sandbox) -> Option<String> {
    let raise = |key: &str, now: String| Some(format!("raise plugins.{key} (now {now})"));
    if chain.contains("instance count too high") {
        raise("max_instances", sandbox.max_instances.to_string())
    } else if chain.contains("table count too high") {
        raise("max_tables", sandbox.max_tables.to_string())
    } else if chain.contains("memory count too high") {
        raise("max_memories", sandbox.max_memories.to_string())
    } else if chain.contains("forcing trap when growing memory") {
        raise("memory_limit", format!("{} bytes", sandbox.memory_limit))
    } else if chain.contains("unknown import") {
        Some("the gateway does not provide this import to plugins (they get WASI 0.2 with clocks, random, stdout and stderr, and no files, network or environment; see the README's Plugins section)".to_owned())
    } else {
        None
    }
}
