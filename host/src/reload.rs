//! Live reload: SIGHUP, `POST /reload` and (with `reload.watch`) a change
//! of the file read the configuration again and, when it is valid, serve new
//! requests with it at once.
//!
//! One reload runs at a time. The file is validated and the new routing
//! built (plugins loaded, unchanged pools and policies carried over) before
//! anything changes; any problem leaves the running configuration in place
//! and is logged (and answered to `POST /reload`). Once built, the routing
//! is installed in every worker; requests in flight finish on the routing
//! they started with; a changed `listen` is bound first and the workers
//! move to it. Settings that belong to the process rather than to
//! routing (workers, admin, logging, the top-level limiter's store and
//! sizes) take effect at the next start; a reload that changes one says so.
//! The top-level default limits apply at once, to live buckets too.

use crate::config::{self, Config, LoadError, Overrides, Problem};
use crate::proxy::Proxy;
use crate::routing::{Env, Routing};
use crate::server::Rebind;
use crate::tls::{ClientAuth, TlsServer, certs::Pair};
use arc_swap::ArcSwap;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

/// Where the configuration comes from: the file (and whether it was named
/// on the command line) and the flags and variables that override it.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub explicit: bool,
    pub overrides: Overrides,
}

pub struct Reloader {
    source: Source,
    env: Env,
    current: ArcSwap<Routing>,
    /// The workers' proxies, known once they are started.
    proxies: OnceLock<Vec<Arc<Proxy>>>,
    /// Hands the workers a new listening socket when `listen` changes.
    rebind: watch::Sender<Option<Arc<std::net::TcpListener>>>,
    /// One reload at a time.
    busy: tokio::sync::Mutex<()>,
    /// The HTTPS listener's certificates, when it runs.
    tls: OnceLock<Arc<TlsServer>>,
}

/// What a successful reload did.
#[derive(Debug, Serialize)]
pub struct Reloaded {
    pub routes: usize,
    pub pools: usize,
    /// Pools carried over with their connections and health state.
    pub pools_kept: usize,
    /// The new proxy address, when `listen` changed.
    pub listen: Option<String>,
    /// Settings that changed but apply only after a restart.
    pub restart_needed: Vec<&'static str>,
}

impl Reloader {
    pub fn new(source: Source, env: Env, routing: Arc<Routing>) -> Self {
        Reloader {
            source,
            env,
            current: ArcSwap::new(routing),
            proxies: OnceLock::new(),
            rebind: watch::Sender::new(None),
            busy: tokio::sync::Mutex::new(()),
            tls: OnceLock::new(),
        }
    }

    /// Hands over the HTTPS listener's TLS side, which reloads update.
    pub fn serve_tls(&self, tls: Arc<TlsServer>) {
        let _ = self.tls.set(tls);
    }

    /// What the workers watch for a new listening socket.
    pub fn rebind(&self) -> Rebind {
        self.rebind.subscribe()
    }

    /// Hands over the started workers' proxies.
    pub fn serve(&self, proxies: Vec<Arc<Proxy>>) {
        let _ = self.proxies.set(proxies);
    }

    /// The routing new requests are served with.
    pub fn current(&self) -> Arc<Routing> {
        self.current.load_full()
    }

    /// Reads, checks and applies the file; `trigger` names what asked (for the log).
    pub async fn reload(self: &Arc<Self>, trigger: &'static str) -> Result<Reloaded, Vec<Problem>> {
        let _one_at_a_time = self.busy.lock().await;
        let this = Arc::clone(self);
        // Reading, validating and loading plugins is blocking work.
        let built = tokio::task::spawn_blocking(move || this.build())
            .await
            .unwrap_or_else(|e| Err(vec![Problem::new("reload", e.to_string())]));
        let (routing, listener, restart_needed, certificates) = match built {
            Ok(built) => built,
            Err(problems) => {
                for problem in &problems {
                    tracing::error!(event = "reload_failed", trigger, problem = %problem, "configuration not reloaded; the running one stays");
                }
                return Err(problems);
            }
        };
        let previous = self.current.load_full();
        let pools_kept = routing
            .pools
            .iter()
            .filter(|p| {
                previous
                    .pools
                    .iter()
                    .any(|old| Arc::ptr_eq(&old.core, &p.core))
            })
            .count();
        if let (Some(top), true) = (&self.env.top_level, routing.config.rate_limit.enabled) {
            top.budget
                .local()
                .set_default(routing.config.rate_limit.default);
        }
        if let (Some(tls), Some((pairs, client_auth))) = (self.tls.get(), certificates) {
            let count = pairs.len();
            match tls.update(pairs, client_auth.as_ref()) {
                Ok(()) => tracing::info!(
                    event = "certificates_loaded",
                    certificates = count,
                    "TLS certificates reloaded"
                ),
                Err(error) => {
                    tracing::error!(event = "certificates_failed", %error, "TLS settings not reloaded; the running ones stay")
                }
            }
        }
        let routing = Arc::new(routing);
        let listen = listener.as_ref().and_then(|l| l.local_addr().ok());
        if let Some(listener) = listener {
            self.rebind.send_replace(Some(Arc::new(listener)));
        }
        self.current.store(Arc::clone(&routing));
        for proxy in self.proxies.get().into_iter().flatten() {
            proxy.install(Arc::clone(&routing));
        }
        self.env.metrics.retain(&routing.label_sets());
        for line in routing.plugins.describe() {
            tracing::info!(event = "plugin_loaded", "{line}");
        }
        if let Some(addr) = listen {
            tracing::info!(event = "listening", proxy = %addr, "proxy listener moved; connections on the old address finish there");
        }
        let reloaded = Reloaded {
            listen: listen.map(|a| a.to_string()),
            routes: routing.routes.len(),
            pools: routing.pools.len(),
            pools_kept,
            restart_needed,
        };
        tracing::info!(
            event = "reloaded",
            trigger,
            routes = reloaded.routes,
            pools = reloaded.pools,
            pools_kept,
            "configuration reloaded"
        );
        if !reloaded.restart_needed.is_empty() {
            tracing::warn!(event = "restart_needed", settings = ?reloaded.restart_needed, "these changed settings apply only after a restart");
        }
        Ok(reloaded)
    }

    fn build(&self) -> Result<Built, Vec<Problem>> {
        let source = &self.source;
        let config = match config::load(&source.path, source.explicit, &source.overrides) {
            Ok(config) => config,
            Err(LoadError::Invalid(problems)) => return Err(problems),
            Err(error) => {
                return Err(vec![Problem::new(
                    source.path.display().to_string(),
                    error.to_string(),
                )]);
            }
        };
        let previous = self.current.load_full();
        let restart_needed = needs_restart(&previous.config, &config);
        let listener = if config.listen == previous.config.listen {
            None
        } else {
            let bound = crate::listen::bind(config.listen)
                .and_then(|l| l.into_std())
                .map_err(|e| {
                    vec![Problem::new(
                        "listen",
                        format!("cannot listen on {}: {e}", config.listen),
                    )]
                })?;
            Some(bound)
        };
        let certificates = match &config.tls {
            Some(tls) => Some(tls.load()?),
            None => None,
        };
        let routing = Routing::build(&config, Some(&previous), &self.env)
            .map_err(|reason| vec![Problem::new("pools", reason)])?;
        Ok((routing, listener, restart_needed, certificates))
    }

    /// Reads the certificate files again (they changed on disk); a pair
    /// that does not load leaves the served ones in place.
    fn reload_certificates(&self) {
        let Some(tls) = self.tls.get() else { return };
        let routing = self.current();
        let Some(config) = &routing.config.tls else {
            return;
        };
        match config.load() {
            Ok((pairs, client_auth)) => {
                let count = pairs.len();
                match tls.update(pairs, client_auth.as_ref()) {
                    Ok(()) => tracing::info!(
                        event = "certificates_loaded",
                        certificates = count,
                        "certificate files changed: new handshakes get the new certificates"
                    ),
                    Err(error) => {
                        tracing::error!(event = "certificates_failed", %error, "certificate files changed but do not load; the served ones stay")
                    }
                }
            }
            Err(problems) => {
                for problem in problems {
                    tracing::error!(event = "certificates_failed", problem = %problem, "certificate files changed but do not load; the served ones stay");
                }
            }
        }
    }

    /// Reloads the certificates whenever one of their files changes,
    /// checking every `every`.
    pub fn spawn_certificate_watch(self: &Arc<Self>, every: Duration) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let files = |this: &Reloader| {
                this.current()
                    .config
                    .tls
                    .as_ref()
                    .map(|t| t.watched_files())
                    .unwrap_or_default()
            };
            let fingerprints =
                |files: &[PathBuf]| files.iter().map(|f| fingerprint(f)).collect::<Vec<_>>();
            let mut watched = files(&this);
            let mut seen = fingerprints(&watched);
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let now_watched = files(&this);
                let now = fingerprints(&now_watched);
                if now_watched != watched {
                    // A reload named other files and has loaded them already.
                    (watched, seen) = (now_watched, now);
                    continue;
                }
                if now != seen {
                    seen = now;
                    let this = Arc::clone(&this);
                    let _ = tokio::task::spawn_blocking(move || this.reload_certificates()).await;
                }
            }
        });
    }

    /// Reloads whenever the file's contents change, checking every `every`.
    pub fn spawn_watch(self: &Arc<Self>, every: Duration) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let path = &this.source.path;
            let mut seen = fingerprint(path);
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let now = fingerprint(path);
                if now != seen {
                    seen = now;
                    let _ = this.reload("watch").await;
                }
            }
        });
    }

    /// Polls the current routing's plugin files every second and loads
    /// changed ones (`plugins.reload`).
    pub fn spawn_plugin_watch(self: &Arc<Self>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            loop {
                ticker.tick().await;
                let routing = this.current();
                if routing.plugins.is_empty() || !routing.config.plugins.reload {
                    continue;
                }
                // Compiling a component is CPU work: keep it off the request threads.
                let _ = tokio::task::spawn_blocking(move || routing.plugins.reload_changed(false))
                    .await;
            }
        });
    }
}

/// What a reload built before anything changed: the routing, a new proxy
/// listener when `listen` changed, the settings that wait for a restart,
/// and the HTTPS certificates read again.
type Built = (
    Routing,
    Option<std::net::TcpListener>,
    Vec<&'static str>,
    Option<(Vec<Pair>, Option<ClientAuth>)>,
);

/// The file's contents (hashed), so touching it without a change does
/// nothing; `None` while unreadable.
fn fingerprint(path: &std::path::Path) -> Option<u64> {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let text = std::fs::read(path).ok()?;
    Some(BuildHasherDefault::<DefaultHasher>::default().hash_one(&text))
}

/// The process-wide settings that differ between `running` and `next`.
fn needs_restart(running: &Config, next: &Config) -> Vec<&'static str> {
    let rl = (&running.rate_limit, &next.rate_limit);
    let tls = (&running.tls, &next.tls);
    let checks: [(&'static str, bool); 10] = [
        (
            "tls (listener added, removed or moved)",
            tls.0.as_ref().map(|t| t.listen) != tls.1.as_ref().map(|t| t.listen),
        ),
        (
            "tls.acme",
            tls.0.as_ref().and_then(|t| t.acme.as_ref())
                != tls.1.as_ref().and_then(|t| t.acme.as_ref()),
        ),
        (
            "admin",
            running.admin.listen != next.admin.listen || running.admin.token != next.admin.token,
        ),
        ("proxy.workers", running.proxy.workers != next.proxy.workers),
        ("proxy.io", running.proxy.io != next.proxy.io),
        (
            "proxy.max_header_bytes",
            running.proxy.max_header_bytes != next.proxy.max_header_bytes,
        ),
        (
            "proxy.header_read_timeout",
            running.proxy.header_read_timeout != next.proxy.header_read_timeout,
        ),
        (
            "log",
            running.log.level != next.log.level || running.log.format != next.log.format,
        ),
        ("rate_limit.enabled", rl.0.enabled != rl.1.enabled),
        (
            "rate_limit (store and sizes)",
            rl.0.database != rl.1.database
                || rl.0.refill_interval != rl.1.refill_interval
                || rl.0.max_clients != rl.1.max_clients
                || rl.0.shared.as_ref().map(|s| &s.url) != rl.1.shared.as_ref().map(|s| &s.url),
        ),
    ];
    checks
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(name, _)| name)
        .collect()
}
