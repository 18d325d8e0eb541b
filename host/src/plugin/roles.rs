//! The two plugin roles and their calls: computing a client key, choosing a backend.

pub use super::bindings::key::gateway::plugin::types::Backend as BackendState;
use super::bindings::key::{KeyPlugin, KeyPluginPre};
use super::bindings::key_with_headers::{KeyPluginWithHeaders, KeyPluginWithHeadersPre};
use super::bindings::select::{SelectPlugin, SelectPluginPre};
use super::bindings::select_with_headers::{SelectPluginWithHeaders, SelectPluginWithHeadersPre};
use super::declared::Declared;
use super::runner::{Plugin, PluginFailure, Role};
use super::runtime::Flavor;
use super::state::{PluginState, RequestView};
use wasmtime::Store;
use wasmtime::component::{Component, InstancePre, Linker, Resource};

/// A role's prepared component, in the flavor it exports.
pub enum Prepared<Plain, WithHeaders> {
    Plain(Plain),
    WithHeaders(WithHeaders),
}

/// A role's bindings to one instance; with headers, the names the instance
/// declared when it started.
pub enum Bound<Plain, WithHeaders> {
    Plain(Plain),
    WithHeaders(WithHeaders, Declared),
}

/// `component` prepared for the bindings of its `flavor`.
fn prepare<Plain, WithHeaders>(
    linker: &Linker<PluginState>,
    component: &Component,
    flavor: Flavor,
    plain: impl FnOnce(InstancePre<PluginState>) -> wasmtime::Result<Plain>,
    with_headers: impl FnOnce(InstancePre<PluginState>) -> wasmtime::Result<WithHeaders>,
) -> wasmtime::Result<Prepared<Plain, WithHeaders>> {
    let pre = linker.instantiate_pre(component)?;
    Ok(match flavor {
        Flavor::Plain => Prepared::Plain(plain(pre)?),
        Flavor::WithHeaders => Prepared::WithHeaders(with_headers(pre)?),
    })
}

/// The declared headers of a fresh instance, checked.
fn declared(names: wasmtime::Result<Vec<String>>) -> wasmtime::Result<Declared> {
    Ok(Declared::new(names?)?)
}

/// Exports `gateway:plugin/client-key` or `client-key-with-headers`.
pub struct KeyRole;

impl KeyRole {
    pub const NAME_STR: &'static str = <KeyRole as Role>::NAME;
}

impl SelectRole {
    pub const NAME_STR: &'static str = <SelectRole as Role>::NAME;
}

impl Role for KeyRole {
    type Pre = Prepared<KeyPluginPre<PluginState>, KeyPluginWithHeadersPre<PluginState>>;
    type Bindings = Bound<KeyPlugin, KeyPluginWithHeaders>;
    type Input<'a> = ();
    type Output = Option<String>;
    const NAME: &'static str = "client-key";

    fn prepare(
        linker: &Linker<PluginState>,
        component: &Component,
        flavor: Flavor,
    ) -> wasmtime::Result<Self::Pre> {
        prepare(
            linker,
            component,
            flavor,
            KeyPluginPre::new,
            KeyPluginWithHeadersPre::new,
        )
    }

    fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<PluginState>,
    ) -> wasmtime::Result<Self::Bindings> {
        Ok(match pre {
            Prepared::Plain(pre) => Bound::Plain(pre.instantiate(store)?),
            Prepared::WithHeaders(pre) => {
                let bindings = pre.instantiate(&mut *store)?;
                let names = bindings
                    .gateway_plugin_client_key_with_headers()
                    .call_headers(&mut *store);
                Bound::WithHeaders(bindings, declared(names)?)
            }
        })
    }

    fn invoke(
        bindings: &Self::Bindings,
        store: &mut Store<PluginState>,
        request: Resource<RequestView>,
        (): (),
    ) -> wasmtime::Result<Self::Output> {
        match bindings {
            Bound::Plain(b) => b
                .gateway_plugin_client_key()
                .call_client_key(store, request),
            Bound::WithHeaders(b, declared) => declared.with_values(store, |store, values| {
                b.gateway_plugin_client_key_with_headers()
                    .call_client_key(store, request, values)
            }),
        }
    }

    fn probe(plugin: &Plugin<Self>) -> Result<String, PluginFailure> {
        super::check::probe_key(plugin)
    }
}

/// Exports `gateway:plugin/backend-select` or `backend-select-with-headers`.
pub struct SelectRole;

impl Role for SelectRole {
    type Pre = Prepared<SelectPluginPre<PluginState>, SelectPluginWithHeadersPre<PluginState>>;
    type Bindings = Bound<SelectPlugin, SelectPluginWithHeaders>;
    type Input<'a> = &'a [BackendState];
    type Output = Option<u32>;
    const NAME: &'static str = "backend-select";

    fn prepare(
        linker: &Linker<PluginState>,
        component: &Component,
        flavor: Flavor,
    ) -> wasmtime::Result<Self::Pre> {
        prepare(
            linker,
            component,
            flavor,
            SelectPluginPre::new,
            SelectPluginWithHeadersPre::new,
        )
    }

    fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<PluginState>,
    ) -> wasmtime::Result<Self::Bindings> {
        Ok(match pre {
            Prepared::Plain(pre) => Bound::Plain(pre.instantiate(store)?),
            Prepared::WithHeaders(pre) => {
                let bindings = pre.instantiate(&mut *store)?;
                let names = bindings
                    .gateway_plugin_backend_select_with_headers()
                    .call_headers(&mut *store);
                Bound::WithHeaders(bindings, declared(names)?)
            }
        })
    }

    fn invoke(
        bindings: &Self::Bindings,
        store: &mut Store<PluginState>,
        request: Resource<RequestView>,
        backends: &[BackendState],
    ) -> wasmtime::Result<Self::Output> {
        match bindings {
            Bound::Plain(b) => b
                .gateway_plugin_backend_select()
                .call_select_backend(store, request, backends),
            Bound::WithHeaders(b, declared) => declared.with_values(store, |store, values| {
                b.gateway_plugin_backend_select_with_headers()
                    .call_select_backend(store, request, values, backends)
            }),
        }
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
    /// The backend the plugin chooses among `backends` (`None`: use the
    /// built-in balancer). An index out of range or of a backend `backends`
    /// marks unhealthy counts as a failure.
    pub fn select(
        &self,
        view: &mut Option<RequestView>,
        backends: &[BackendState],
    ) -> Result<Option<usize>, PluginFailure> {
        match self.call(view, backends)? {
            None => {
                self.succeeded();
                Ok(None)
            }
            Some(i) => match backends.get(i as usize) {
                Some(backend) if backend.healthy => {
                    self.succeeded();
                    Ok(Some(i as usize))
                }
                Some(_) => Err(self.failed(PluginFailure::Invalid(format!(
                    "backend {i} is not healthy"
                )))),
                None => Err(self.failed(PluginFailure::Invalid(format!(
                    "backend index {i} out of range (0 to {})",
                    backends.len().saturating_sub(1)
                )))),
            },
        }
    }
}
