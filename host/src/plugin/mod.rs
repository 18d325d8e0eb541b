//! WebAssembly plugins: components that compute client keys and choose backends.
//!
//! Components are compiled once (and cached on disk), instantiated through
//! a pre-linked `InstancePre`, and reused from a small pool. Each call gets
//! a budget of the worker thread's CPU time (host calls included, and a
//! busy machine never cuts a normal plugin short); each instance a memory
//! cap. Plugins see WASI 0.2 deny-by-default: clocks, random, and
//! stdout/stderr captured into the log. A failed instance is dropped; the
//! request falls back to the built-in behaviour.

pub mod bindings;
mod capture;
mod check;
mod deadline;
mod declared;
mod no_wait;
mod roles;
mod runner;
mod runtime;
pub mod state;

pub use roles::{BackendState, KeyRole, SelectRole};
pub use runner::{Outcomes, Plugin, PluginFailure, Role, Sandbox, describe};
pub use runtime::{Exports, engine, exports, load};
pub use state::{RequestView, Shared};

use crate::config::PluginsConfig;
use std::path::Path;
use std::sync::Arc;

/// The plugins a configuration uses, loaded and ready.
#[derive(Default, Clone)]
pub struct Plugins {
    pub key: Vec<Arc<Plugin<KeyRole>>>,
    pub select: Vec<Arc<Plugin<SelectRole>>>,
}

/// Counters for one plugin role, registered in the metrics.
pub type OutcomeFor<'a> = dyn Fn(&'static str) -> Outcomes + 'a;

/// Loads the plugins a configuration names, each file once per role (and a
/// selection plugin once per pool: it sees that pool's backends).
pub struct Loader<'a> {
    settings: &'a PluginsConfig,
    outcomes: &'a OutcomeFor<'a>,
    engine: Option<wasmtime::Engine>,
    keys: Vec<Arc<Plugin<KeyRole>>>,
    selects: Vec<(String, Arc<Plugin<SelectRole>>)>,
}

impl<'a> Loader<'a> {
    pub fn new(settings: &'a PluginsConfig, outcomes: &'a OutcomeFor<'a>) -> Self {
        Loader {
            settings,
            outcomes,
            engine: None,
            keys: Vec::new(),
            selects: Vec::new(),
        }
    }

    fn engine(&mut self) -> Result<wasmtime::Engine, String> {
        if let Some(engine) = &self.engine {
            return Ok(engine.clone());
        }
        let engine = engine().map_err(|e| format!("cannot start the WebAssembly engine: {e:#}"))?;
        self.engine = Some(engine.clone());
        Ok(engine)
    }

    fn shared(&self, backend_urls: Vec<String>) -> Arc<Shared> {
        Arc::new(Shared::new(self.settings.config.clone(), backend_urls))
    }

    /// The client-key plugin at `path`.
    pub fn key(&mut self, path: &Path) -> Result<Arc<Plugin<KeyRole>>, String> {
        if let Some(found) = self.keys.iter().find(|p| p.path == path) {
            return Ok(Arc::clone(found));
        }
        let engine = self.engine()?;
        let plugin = Arc::new(Plugin::<KeyRole>::load(
            &engine,
            path,
            Sandbox::from_config(self.settings),
            self.shared(Vec::new()),
            (self.outcomes)(KeyRole::NAME_STR),
        )?);
        self.keys.push(Arc::clone(&plugin));
        Ok(plugin)
    }

    /// The backend-selection plugin at `path` for the pool `pool`, whose
    /// backends are `backend_urls`.
    pub fn select(
        &mut self,
        path: &Path,
        pool: &str,
        backend_urls: Vec<String>,
    ) -> Result<Arc<Plugin<SelectRole>>, String> {
        if let Some((_, found)) = self
            .selects
            .iter()
            .find(|(p, plugin)| p == pool && plugin.path == path)
        {
            return Ok(Arc::clone(found));
        }
        let engine = self.engine()?;
        let plugin = Arc::new(Plugin::<SelectRole>::load(
            &engine,
            path,
            Sandbox::from_config(self.settings),
            self.shared(backend_urls),
            (self.outcomes)(SelectRole::NAME_STR),
        )?);
        self.selects.push((pool.to_owned(), Arc::clone(&plugin)));
        Ok(plugin)
    }

    pub fn finish(self) -> Plugins {
        Plugins {
            key: self.keys,
            select: self.selects.into_iter().map(|(_, p)| p).collect(),
        }
    }
}

impl Plugins {
    pub fn is_empty(&self) -> bool {
        self.key.is_empty() && self.select.is_empty()
    }

    /// Loads the files that changed on disk (all of them when `force`).
    /// Compiling is CPU work: call this off the request threads.
    pub fn reload_changed(&self, force: bool) {
        for p in &self.key {
            report(&p.path, p.reload_if_changed(force));
        }
        for p in &self.select {
            report(&p.path, p.reload_if_changed(force));
        }
    }
}

fn report(path: &Path, outcome: Result<bool, String>) {
    match outcome {
        Ok(true) => {
            tracing::info!(event = "plugin_reloaded", plugin = %path.display(), "plugin reloaded")
        }
        Ok(false) => {}
        Err(error) => {
            tracing::error!(event = "plugin_reload_failed", plugin = %path.display(), %error, "new plugin version rejected; the previous one keeps serving")
        }
    }
}

impl Sandbox {
    /// The limits `plugins.*` asks for.
    pub fn from_config(plugins: &PluginsConfig) -> Sandbox {
        Sandbox {
            timeout: plugins.timeout,
            start_timeout: plugins.start_timeout,
            memory_limit: plugins.memory_limit,
            max_instances: plugins.max_instances,
            max_tables: plugins.max_tables,
            max_memories: plugins.max_memories,
            cache_dir: Some(plugins.cache_dir.clone()),
        }
    }
}

impl Plugins {
    /// One line per loaded plugin: its role, file and check answer.
    pub fn describe(&self) -> Vec<String> {
        let keys = self
            .key
            .iter()
            .map(|p| format!("key plugin {} ({})", p.path.display(), p.probe));
        let selects = self
            .select
            .iter()
            .map(|p| format!("select plugin {} ({})", p.path.display(), p.probe));
        keys.chain(selects).collect()
    }
}

/// Stand-in backends for `plugin check` when there is no configuration.
const CHECK_BACKENDS: [&str; 3] = [
    "http://127.0.0.1:9001",
    "http://127.0.0.1:9002",
    "http://127.0.0.1:9003",
];

/// `gateway plugin check`: which interfaces a component implements and what
/// each answered to a synthetic request under the runtime's limits (those
/// of `plugins` and the backends `backend_urls`), or why it is rejected.
pub fn check(
    path: &Path,
    plugins: &PluginsConfig,
    backend_urls: Option<Vec<String>>,
) -> Result<String, String> {
    let engine = engine().map_err(|e| format!("cannot start the WebAssembly engine: {e:#}"))?;
    let sandbox = Sandbox::from_config(plugins);
    let component = load(&engine, path, sandbox.cache_dir.as_deref())?;
    let found = exports(&engine, &component);
    if !found.any() {
        return Err(format!(
            "{} implements neither plugin interface (exports gateway:plugin/client-key@0.1.x or gateway:plugin/backend-select@0.1.x, or their -with-headers forms, expected)",
            path.display()
        ));
    }
    let urls =
        backend_urls.unwrap_or_else(|| CHECK_BACKENDS.iter().map(|u| (*u).to_owned()).collect());
    let shared = Arc::new(Shared::new(plugins.config.clone(), urls));
    let mut answers = Vec::new();
    if found.client_key.is_some() {
        let plugin = Plugin::<KeyRole>::load(
            &engine,
            path,
            sandbox.clone(),
            Arc::clone(&shared),
            Outcomes::default(),
        )?;
        answers.push(plugin.probe.clone());
    }
    if found.backend_select.is_some() {
        let plugin =
            Plugin::<SelectRole>::load(&engine, path, sandbox, shared, Outcomes::default())?;
        answers.push(plugin.probe.clone());
    }
    Ok(format!(
        "{}: ok — implements {}; {}",
        path.display(),
        describe(found),
        answers.join("; ")
    ))
}
