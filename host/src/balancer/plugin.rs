//! A plugin chooses the backend; the built-in algorithm covers for it when
//! it declines, fails, or names a backend already tried.

use super::{Backend, BackendSelection, Ctx, Tried};
use crate::plugin::{BackendState, Plugin, RequestView, SelectRole};
use std::sync::Arc;

pub struct PluginSelection {
    pub plugin: Arc<Plugin<SelectRole>>,
    /// `balancer.fallback`.
    pub fallback: Arc<dyn BackendSelection>,
}

impl BackendSelection for PluginSelection {
    fn pick(&self, backends: &[Arc<Backend>], tried: &Tried, ctx: &mut Ctx<'_>) -> Option<usize> {
        let mut view = Some(RequestView {
            method: ctx.head.method.clone(),
            uri: ctx.head.uri.clone(),
            headers: std::mem::take(&mut ctx.head.headers),
            client: ctx.client,
            tls: ctx.tls.cloned(),
        });
        let chosen = self.plugin.select(&mut view, &backend_states(backends));
        if let Some(view) = view {
            ctx.head.headers = view.headers;
        }
        match chosen {
            Ok(Some(index)) if !tried.contains(index) => return Some(index),
            Ok(_) => {}
            Err(_) => ctx.plugin_failed = true,
        }
        self.fallback.pick(backends, tried, ctx)
    }
}

/// What a plugin is told about `backends`, in their order: health, requests
/// in flight, weight.
pub fn backend_states(backends: &[Arc<Backend>]) -> Vec<BackendState> {
    backends
        .iter()
        .map(|b| BackendState {
            healthy: b.is_healthy(),
            in_flight: u32::try_from(b.in_flight()).unwrap_or(u32::MAX),
            weight: b.weight,
        })
        .collect()
}
