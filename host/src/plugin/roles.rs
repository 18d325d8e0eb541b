//! The two plugin roles and their calls: computing a client key, choosing a backend.

use super::bindings::key::gateway::plugin::types::Backend as BackendState;
use super::bindings::key::{KeyPlugin, KeyPluginPre};
use super::bindings::select::{SelectPlugin, SelectPluginPre};
use super::runner::{Plugin, PluginFailure, Role};
use super::state::{PluginState, RequestView};
use crate::balancer::Backend;
use std::sync::Arc;
use wasmtime::Store;
use wasmtime::component::{Component, Linker, Resource};

/// Exports `gateway:plugin/client-key`.
pub struct KeyRole;

impl KeyRole {
    pub const NAME_STR: &'static str = <KeyRole as Role>::NAME;
}

impl SelectRole {
    pub const NAME_STR: &'static str = <SelectRole as Role>::NAME;
}

impl Role for KeyRole {
    type Pre = KeyPluginPre<PluginState>;
    type Bindings = KeyPlugin;
    type Input<'a> = ();
    type Output = Option<String>;
    const NAME: &'static str = "client-key";

    fn prepare(linker: &Linker<PluginState>, component: &Component) -> wasmtime::Result<Self::Pre> {
        KeyPluginPre::new(linker.instantiate_pre(component)?)
    }

    fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<PluginState>,
    ) -> wasmtime::Result<Self::Bindings> {
        pre.instantiate(store)
    }

    fn invoke(
        bindings: &Self::Bindings,
        store: &mut Store<PluginState>,
        request: Resource<RequestView>,
        (): (),
    ) -> wasmtime::Result<Self::Output> {
        bindings
            .gateway_plugin_client_key()
            .call_client_key(store, request)
    }

    fn probe(plugin: &Plugin<Self>) -> Result<String, PluginFailure> {
        super::check::probe_key(plugin)
    }
}

/// Exports `gateway:plugin/backend-select`.
pub struct SelectRole;

impl Role for SelectRole {
    type Pre = SelectPluginPre<PluginState>;
    type Bindings = SelectPlugin;
    type Input<'a> = &'a [BackendState];
    type Output = Option<u32>;
    const NAME: &'static str = "backend-select";

    fn prepare(linker: &Linker<PluginState>, component: &Component) -> wasmtime::Result<Self::Pre> {
        SelectPluginPre::new(linker.instantiate_pre(component)?)
    }

    fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<PluginState>,
    ) -> wasmtime::Result<Self::Bindings> {
        pre.instantiate(store)
    }

    fn invoke(
        bindings: &Self::Bindings,
        store: &mut Store<PluginState>,
        request: Resource<RequestView>,
        backends: &[BackendState],
    ) -> wasmtime::Result<Self::Output> {
        bindings
            .gateway_plugin_backend_select()
            .call_select_backend(store, request, backends)
    }

    fn probe(plugin: &Plugin<Self>) -> Result<String, PluginFailure> {
        super::check::probe_select(plugin, &plugin.shared.backend_urls)
    }
}

/// Longest client key a plugin may return.
const MAX_KEY_BYTES: usize = 512;

impl Plugin<KeyRole> {
    /// The key the plugin computes for the request (`None`: use the built-in key).
    /// `view` is handed back in every case.
    pub fn client_key(
        &self,
        view: &mut Option<RequestView>,
    ) -> Result<Option<String>, PluginFailure> {
        match self.call(view, ())? {
            Some(k) if k.is_empty() || k.len() > MAX_KEY_BYTES => {
                Err(self.failed(PluginFailure::Invalid(format!(
                    "client key of {} bytes (allowed: 1 to {MAX_KEY_BYTES})",
                    k.len()
                ))))
            }
            other => {
                self.succeeded();
                Ok(other)
            }
        }
    }
}

impl Plugin<SelectRole> {
    /// The backend the plugin chooses (`None`: use the built-in balancer). An
    /// index out of range or of an unhealthy backend counts as a failure.
    pub fn select(
        &self,
        view: &mut Option<RequestView>,
        backends: &[Arc<Backend>],
    ) -> Result<Option<usize>, PluginFailure> {
        let states: Vec<BackendState> = backends
            .iter()
            .map(|b| BackendState {
                healthy: b.is_healthy(),
                in_flight: u32::try_from(b.in_flight()).unwrap_or(u32::MAX),
                weight: b.weight,
            })
            .collect();
        let chosen = self.call(view, &states)?;
        match chosen {
            None => {
                self.succeeded();
                Ok(None)
            }
            Some(i) if (i as usize) < backends.len() && backends[i as usize].is_healthy() => {
                self.succeeded();
                Ok(Some(i as usize))
            }
            Some(i) if (i as usize) < backends.len() => Err(self.failed(PluginFailure::Invalid(
                format!("backend {i} is not healthy"),
            ))),
            Some(i) => Err(self.failed(PluginFailure::Invalid(format!(
                "backend index {i} out of range (0 to {})",
                backends.len().saturating_sub(1)
            )))),
        }
    }
}
