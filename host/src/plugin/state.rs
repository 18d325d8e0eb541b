//! What a plugin instance's store holds, and the host functions it may call.

use super::bindings::key::gateway::plugin::{host, types};
use http::{HeaderMap, Method, Uri};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{StoreLimits, StoreLimitsBuilder};

/// The request as a plugin sees it. The headers are moved in for the call
/// and moved back afterwards, so nothing is copied unless the guest asks.
pub struct RequestView {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub client: IpAddr,
}

/// Read-only facts shared by every instance of every plugin.
pub struct Shared {
    /// `plugins.config` from the configuration file.
    pub config: HashMap<String, String>,
    /// Backend URLs by index.
    pub backend_urls: Vec<String>,
    /// Unix second of the last plugin log line let through, for rate limiting.
    log_second: AtomicU64,
    /// Plugin log lines let through during `log_second`.
    log_count: AtomicU64,
}

/// Plugin log lines allowed per second (all plugins together).
const LOG_LINES_PER_SECOND: u64 = 20;

impl Shared {
    pub fn new(config: HashMap<String, String>, backend_urls: Vec<String>) -> Self {
        Shared {
            config,
            backend_urls,
            log_second: AtomicU64::new(0),
            log_count: AtomicU64::new(0),
        }
    }

    fn log(&self, message: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.log_second.swap(now, Ordering::Relaxed) != now {
            self.log_count.store(0, Ordering::Relaxed);
        }
        if self.log_count.fetch_add(1, Ordering::Relaxed) < LOG_LINES_PER_SECOND {
            let message: String = message.chars().take(1024).collect();
            tracing::info!(target: "plugin", "{message}");
        }
    }
}

/// Store data of one plugin instance.
pub struct PluginState {
    /// Holds the request resource during a call.
    pub table: ResourceTable,
    /// Memory cap for the instance.
    pub limits: StoreLimits,
    pub shared: Arc<Shared>,
}

impl PluginState {
    pub fn new(shared: Arc<Shared>, memory_limit: usize) -> Self {
        PluginState {
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(memory_limit)
                .instances(16)
                .tables(16)
                .memories(4)
                .trap_on_grow_failure(true)
                .build(),
            shared,
        }
    }
}

impl types::Host for PluginState {}

impl types::HostRequest for PluginState {
    fn method(&mut self, req: Resource<RequestView>) -> wasmtime::Result<String> {
        Ok(self.table.get(&req)?.method.as_str().to_owned())
    }

    fn path(&mut self, req: Resource<RequestView>) -> wasmtime::Result<String> {
        Ok(self.table.get(&req)?.uri.path().to_owned())
    }

    fn query(&mut self, req: Resource<RequestView>) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&req)?.uri.query().map(str::to_owned))
    }

    fn header(
        &mut self,
        req: Resource<RequestView>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        let view = self.table.get(&req)?;
        Ok(view
            .headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned))
    }

    fn client_addr(&mut self, req: Resource<RequestView>) -> wasmtime::Result<String> {
        Ok(self.table.get(&req)?.client.to_string())
    }

    fn drop(&mut self, req: Resource<RequestView>) -> wasmtime::Result<()> {
        self.table.delete(req)?;
        Ok(())
    }
}

impl host::Host for PluginState {
    fn config(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.shared.config.get(&key).cloned())
    }

    fn backend_url(&mut self, index: u32) -> wasmtime::Result<Option<String>> {
        Ok(self.shared.backend_urls.get(index as usize).cloned())
    }

    fn backend_count(&mut self) -> wasmtime::Result<u32> {
        Ok(self.shared.backend_urls.len() as u32)
    }

    fn log(&mut self, message: String) -> wasmtime::Result<()> {
        self.shared.log(&message);
        Ok(())
    }
}
