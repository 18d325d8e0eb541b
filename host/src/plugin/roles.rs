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
}

/// Exports `gateway:plugin/backend-select`.
pub struct SelectRole;

impl Role for SelectRole {
    type Pre = SelectPluginPre<PluginState>;
    type Bindings = SelectPlugin;
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
}

/// Longest client key a plugin may return.
const MAX_KEY_BYTES: usize = 512;

/// Lends `view` to the guest as a `request` resource for one call, and takes it back.
fn with_request<T>(
    store: &mut Store<PluginState>,
    view: &mut Option<RequestView>,
    call: impl FnOnce(&mut Store<PluginState>, Resource<RequestView>) -> wasmtime::Result<T>,
) -> wasmtime::Result<T> {
    let lent = view
        .take()
        .ok_or_else(|| wasmtime::format_err!("request already lent"))?;
    let own = store.data_mut().table.push(lent)?;
    let borrowed = Resource::new_borrow(own.rep());
    let result = call(store, borrowed);
    *view = Some(store.data_mut().table.delete(own)?);
    result
}

impl Plugin<KeyRole> {
    /// The key the plugin computes for the request (`None`: use the built-in key).
    /// `view` is handed back in every case.
    pub fn client_key(
        &self,
        view: &mut Option<RequestView>,
    ) -> Result<Option<String>, PluginFailure> {
        let key = self.call(|store, bindings| {
            with_request(store, view, |store, req| {
                bindings
                    .gateway_plugin_client_key()
                    .call_client_key(store, req)
            })
        })?;
        match key {
            Some(k) if k.is_empty() || k.len() > MAX_KEY_BYTES => {
                Err(self.failed(PluginFailure::Invalid(format!(
                    "client key of {} bytes (allowed: 1 to {MAX_KEY_BYTES})",
                    k.len()
                ))))
            }
            other => Ok(other),
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
        let chosen = self.call(|store, bindings| {
            with_request(store, view, |store, req| {
                bindings
                    .gateway_plugin_backend_select()
                    .call_select_backend(store, req, &states)
            })
        })?;
        match chosen {
            None => Ok(None),
            Some(i) if (i as usize) < backends.len() && backends[i as usize].is_healthy() => {
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
