//! What a plugin instance's store holds, and the host functions it may call.

use super::bindings::key::gateway::plugin::{host, types};
use super::capture::{Capture, Stream};
use super::deadline::CpuDeadline;
use super::runner::Sandbox;
use crate::tls::Session;
use http::{HeaderMap, Method, Uri};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// The request as a plugin sees it. The headers are moved in for the call
/// and moved back afterwards, so nothing is copied unless the guest asks.
pub struct RequestView {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub client: IpAddr,
    /// The TLS session the request came on (HTTPS listener).
    pub tls: Option<Arc<Session>>,
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

    /// Whether one more plugin log line fits in this second's allowance.
    fn may_log(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.log_second.swap(now, Ordering::Relaxed) != now {
            self.log_count.store(0, Ordering::Relaxed);
        }
        self.log_count.fetch_add(1, Ordering::Relaxed) < LOG_LINES_PER_SECOND
    }

    fn log(&self, message: &str) {
        if self.may_log() {
            let message: String = message.chars().take(super::capture::MAX_LINE).collect();
            tracing::info!(target: "plugin", "{message}");
        }
    }

    /// Logs what a plugin printed, under the same allowance as `host.log`.
    pub fn log_output(&self, plugin: &str, lines: &[(Stream, String)]) {
        for (stream, line) in lines {
            if !self.may_log() {
                return;
            }
            match stream {
                Stream::Stdout => {
                    tracing::info!(target: "plugin", plugin, stream = stream.name(), "{line}")
                }
                Stream::Stderr => {
                    tracing::warn!(target: "plugin", plugin, stream = stream.name(), "{line}")
                }
            }
        }
    }
}

/// Store data of one plugin instance.
pub struct PluginState {
    /// The WASI resources.
    pub table: ResourceTable,
    /// The request lent to the running call (see [`LENT`]).
    pub request: Option<RequestView>,
    /// Where the values of the headers a plugin declared are copied for a
    /// call (see `declared`), kept to be reused.
    pub values: Vec<Option<String>>,
    /// Memory, table and instance caps for the instance.
    pub limits: Limits,
    pub shared: Arc<Shared>,
    /// WASI deny-by-default: clocks and random; stdout and stderr captured;
    /// no environment, arguments, stdin, directories or network.
    wasi: WasiCtx,
    /// What the instance printed and nobody has logged yet.
    pub output: Capture,
    /// The running call's budget in CPU time (see `deadline`).
    pub deadline: CpuDeadline,
}

impl PluginState {
    pub fn new(shared: Arc<Shared>, sandbox: &Sandbox) -> Self {
        let output = Capture::default();
        let wasi = WasiCtxBuilder::new()
            .stdout(output.writer(Stream::Stdout))
            .stderr(output.writer(Stream::Stderr))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        PluginState {
            table: ResourceTable::new(),
            request: None,
            values: Vec::new(),
            limits: Limits {
                caps: StoreLimitsBuilder::new()
                    .memory_size(sandbox.memory_limit)
                    .instances(sandbox.max_instances)
                    .tables(sandbox.max_tables)
                    .memories(sandbox.max_memories)
                    .trap_on_grow_failure(true)
                    .build(),
                cap: sandbox.memory_limit,
                largest: 0,
            },
            shared,
            wasi,
            output,
            deadline: CpuDeadline::default(),
        }
    }
}

/// The instance's caps, and how large its largest memory has grown.
pub struct Limits {
    caps: StoreLimits,
    cap: usize,
    largest: usize,
}

impl Limits {
    /// True when a memory has grown past three quarters of the cap. Garbage
    /// collected runtimes (JavaScript, Python) grow their heap over many
    /// calls; such an instance is retired after a successful call rather
    /// than left to fail a later one at the cap.
    pub fn nearly_full(&self) -> bool {
        self.largest > self.cap / 4 * 3
    }
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.caps.memory_growing(current, desired, maximum)?;
        if allowed {
            self.largest = self.largest.max(desired);
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.caps.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.caps.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.caps.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.caps.instances()
    }

    fn tables(&self) -> usize {
        self.caps.tables()
    }

    fn memories(&self) -> usize {
        self.caps.memories()
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The handle the running call's request is lent under. A call sees one
/// request, as a borrow that ends with the call, so the store keeps it in a
/// field of its own rather than in the resource table: no allocation to put
/// it there and take it back on every call.
pub const LENT: u32 = 0;

impl PluginState {
    /// The request behind `req`: the lent one; any other handle is an error
    /// (a guest cannot make one up, wasmtime checks borrows).
    fn lent(&self, req: &Resource<RequestView>) -> wasmtime::Result<&RequestView> {
        match &self.request {
            Some(view) if req.rep() == LENT => Ok(view),
            _ => Err(wasmtime::format_err!(
                "no request is lent under this handle"
            )),
        }
    }
}

/// The first value of header `name` (any case), if it is valid UTF-8.
///
/// A scan, not `HeaderMap::get`: a request has a few dozen headers at most,
/// and comparing lengths first is cheaper than parsing and hashing the name
/// `get` takes (a third of a `header` call's host time). A name's values are
/// kept in the order they arrived: this is the first.
fn first_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.as_str().len() == name.len() && k.as_str().eq_ignore_ascii_case(name))
        .and_then(|(_, v)| std::str::from_utf8(v.as_bytes()).ok())
}

impl types::Host for PluginState {}

impl types::HostRequest for PluginState {
    fn method(&mut self, req: Resource<RequestView>) -> wasmtime::Result<String> {
        Ok(self.lent(&req)?.method.as_str().to_owned())
    }

    fn path(&mut self, req: Resource<RequestView>) -> wasmtime::Result<String> {
        Ok(self.lent(&req)?.uri.path().to_owned())
    }

    fn query(&mut self, req: Resource<RequestView>) -> wasmtime::Result<Option<String>> {
        Ok(self.lent(&req)?.uri.query().map(str::to_owned))
    }

    fn header(
        &mut self,
        req: Resource<RequestView>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        Ok(first_value(&self.lent(&req)?.headers, &name).map(str::to_owned))
    }

    fn client_addr(&mut self, req: Resource<RequestView>) -> wasmtime::Result<String> {
        Ok(self.lent(&req)?.client.to_string())
    }

    fn tls_subject(&mut self, req: Resource<RequestView>) -> wasmtime::Result<Option<String>> {
        let view = self.lent(&req)?;
        Ok(view.tls.as_ref().and_then(|t| t.subject.clone()))
    }

    /// Only borrows are ever handed out; there is nothing of the guest's to drop.
    fn drop(&mut self, _req: Resource<RequestView>) -> wasmtime::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PluginsConfig;
    use types::HostRequest;

    #[test]
    fn header_is_the_first_value_of_the_name_in_any_case() {
        let shared = Arc::new(Shared::new(HashMap::new(), Vec::new()));
        let mut state = PluginState::new(shared, &Sandbox::from_config(&PluginsConfig::default()));
        let mut headers = HeaderMap::new();
        headers.append("x-user", "alice".parse().expect("value"));
        headers.append("x-user", "bob".parse().expect("value"));
        headers.append("accept", "*/*".parse().expect("value"));
        headers.append(
            "x-binary",
            http::HeaderValue::from_bytes(b"\xff").expect("value"),
        );
        let view = RequestView {
            method: Method::GET,
            uri: Uri::from_static("/"),
            headers,
            client: IpAddr::from([127, 0, 0, 1]),
            tls: None,
        };
        state.request = Some(view);
        let mut header = |name: &str| {
            state
                .header(Resource::new_borrow(LENT), name.to_owned())
                .expect("header")
        };
        assert_eq!(header("X-User").as_deref(), Some("alice"));
        assert_eq!(header("x-user").as_deref(), Some("alice"));
        assert_eq!(header("ACCEPT").as_deref(), Some("*/*"));
        assert_eq!(header("x-binary"), None, "not UTF-8");
        assert_eq!(header("x-use"), None);
        assert_eq!(header("x-users"), None);
        assert_eq!(header("bad name"), None);
        assert_eq!(header(""), None);
        assert!(
            state
                .header(Resource::new_borrow(LENT + 1), "accept".to_owned())
                .is_err(),
            "only the lent handle reaches the request"
        );
        state.request = None;
        assert!(
            state
                .header(Resource::new_borrow(LENT), "accept".to_owned())
                .is_err(),
            "nothing is lent between calls"
        );
    }
}
