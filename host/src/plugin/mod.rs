//! WebAssembly plugins: components that compute client keys and choose backends.
//!
//! Components are compiled once (and cached on disk), instantiated through
//! a pre-linked `InstancePre`, and reused from a small pool. Each call gets
//! a fuel budget (work, so a busy machine never cuts a normal plugin short)
//! and a wall-clock deadline (so host calls count too); each instance a
//! memory cap. Plugins see WASI 0.2 deny-by-default: clocks, random, and
//! stdout/stderr captured into the log. A failed instance is dropped; the
//! request falls back to the built-in behaviour.

pub mod bindings;
mod capture;
mod check;
mod deadline;
mod roles;
mod runner;
mod runtime;
pub mod state;

pub use roles::{KeyRole, SelectRole};
pub use runner::{Outcomes, Plugin, PluginFailure, Role, Sandbox, describe};
pub use runtime::{Exports, default_cache_dir, engine, exports, load};
pub use state::{RequestView, Shared};

use crate::config::{Config, PluginsConfig};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The plugins a configuration asks for, loaded and ready.
#[derive(Default, Clone)]
pub struct Plugins {
    pub key: Option<Arc<Plugin<KeyRole>>>,
    pub select: Option<Arc<Plugin<SelectRole>>>,
    /// Answer 500 instead of falling back when a plugin fails.
    pub fail_closed: bool,
}

/// Counters for one plugin role, registered in the metrics.
pub type OutcomeFor<'a> = dyn Fn(&'static str) -> Outcomes + 'a;

impl Plugins {
    /// Loads every plugin the configuration names; the error says which and why.
    pub fn load(config: &Config, outcomes: &OutcomeFor<'_>) -> Result<Plugins, String> {
        let wants_key = config.rate_limit.enabled && config.rate_limit.key_plugin.is_some();
        if !wants_key && config.balancer_plugin.is_none() {
            return Ok(Plugins::default());
        }
        let engine = engine().map_err(|e| format!("cannot start the WebAssembly engine: {e:#}"))?;
        let sandbox = Sandbox::from_config(&config.plugins);
        let shared = Arc::new(Shared::new(
            config.plugins.config.clone(),
            config
                .backends
                .iter()
                .map(|b| b.url.to_string().trim_end_matches('/').to_owned())
                .collect(),
        ));
        let key = match (&config.rate_limit.key_plugin, wants_key) {
            (Some(path), true) => Some(Arc::new(Plugin::<KeyRole>::load(
                &engine,
                path,
                sandbox.clone(),
                Arc::clone(&shared),
                outcomes(KeyRole::NAME_STR),
            )?)),
            _ => None,
        };
        let select = match &config.balancer_plugin {
            Some(path) => Some(Arc::new(Plugin::<SelectRole>::load(
                &engine,
                path,
                sandbox,
                shared,
                outcomes(SelectRole::NAME_STR),
            )?)),
            None => None,
        };
        Ok(Plugins {
            key,
            select,
            fail_closed: config.plugins.fail_closed,
        })
    }

    /// Polls the plugin files every second (and reloads at once on SIGHUP).
    pub fn spawn_reloader(&self) {
        if self.key.is_none() && self.select.is_none() {
            return;
        }
        let plugins = self.clone();
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            loop {
                #[cfg(unix)]
                let forced = match hangup.as_mut() {
                    Some(signal) => tokio::select! {
                        _ = ticker.tick() => false,
                        _ = signal.recv() => true,
                    },
                    None => {
                        ticker.tick().await;
                        false
                    }
                };
                #[cfg(not(unix))]
                let forced = {
                    ticker.tick().await;
                    false
                };
                let plugins = plugins.clone();
                // Compiling a component is CPU work: keep it off the request threads.
                let _ = tokio::task::spawn_blocking(move || {
                    if let Some(p) = &plugins.key {
                        report(&p.path, p.reload_if_changed(forced));
                    }
                    if let Some(p) = &plugins.select {
                        report(&p.path, p.reload_if_changed(forced));
                    }
                })
                .await;
            }
        });
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
        let mut lines = Vec::new();
        if let Some(p) = &self.key {
            lines.push(format!("key plugin {} ({})", p.path.display(), p.probe));
        }
        if let Some(p) = &self.select {
            lines.push(format!("select plugin {} ({})", p.path.display(), p.probe));
        }
        lines
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
    if !found.client_key && !found.backend_select {
        return Err(format!(
            "{} implements neither plugin interface (exports gateway:plugin/client-key@0.1.0 or gateway:plugin/backend-select@0.1.0 expected)",
            path.display()
        ));
    }
    let urls =
        backend_urls.unwrap_or_else(|| CHECK_BACKENDS.iter().map(|u| (*u).to_owned()).collect());
    let shared = Arc::new(Shared::new(plugins.config.clone(), urls));
    let mut answers = Vec::new();
    if found.client_key {
        let plugin = Plugin::<KeyRole>::load(
            &engine,
            path,
            sandbox.clone(),
            Arc::clone(&shared),
            Outcomes::default(),
        )?;
        answers.push(plugin.probe.clone());
    }
    if found.backend_select {
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
