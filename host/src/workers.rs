//! Proxy worker threads, one per core, each with its own single-threaded
//! tokio runtime (the shape of nginx's and Envoy's workers).
//!
//! Every worker accepts from its own copy of the listening socket and serves
//! a connection from start to finish, with its own [`Proxy`] and so its own
//! backend connections: a request never changes threads, and the request
//! path takes no cross-thread wake-up, queue or pool lock. The kernel wakes
//! whichever idle worker is waiting in `accept`, which spreads connections
//! over the workers. The control plane (admin API, health checks, limiter
//! ticker and sync, plugin reloads, signals) stays on the main runtime.

use crate::config::IoMode;
use crate::proxy::Proxy;
use crate::server::{self, ConnLimits, Rebind, Shutdown};
use crate::tls::TlsServer;
use crate::uring;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::mpsc;

/// How many workers `configured` (0: one per CPU this process may run on) means.
pub fn count(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The HTTPS listener and what its handshakes are served with.
#[derive(Clone)]
pub struct Https {
    pub listener: Arc<TcpListener>,
    pub tls: Arc<TlsServer>,
}

/// How many workers, doing their I/O how.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub count: usize,
    pub io: IoMode,
}

/// Starts `plan.count` workers serving `listener` (and `https`); each builds
/// its proxy with `make_proxy`. Returns the proxies (a reload installs new
/// routing in each) once every worker is accepting, or the first worker's
/// startup error.
pub fn spawn(
    plan: Plan,
    listener: TcpListener,
    https: Option<&Https>,
    rebind: &Rebind,
    make_proxy: impl Fn() -> Proxy,
    limits: ConnLimits,
    shutdown: &Shutdown,
) -> std::io::Result<Vec<Arc<Proxy>>> {
    let (started, outcomes) = mpsc::channel::<std::io::Result<()>>();
    let mut proxies = Vec::with_capacity(plan.count);
    for id in 0..plan.count {
        let listener = listener.try_clone()?;
        let https = match https {
            Some(https) => Some((https.listener.try_clone()?, Arc::clone(&https.tls))),
            None => None,
        };
        let proxy = Arc::new(make_proxy());
        proxies.push(Arc::clone(&proxy));
        let shutdown = shutdown.clone();
        let started = started.clone();
        let rebind = rebind.clone();
        std::thread::Builder::new()
            .name(format!("gateway-worker-{id}"))
            .spawn(move || {
                let serve = Serve {
                    listener,
                    https,
                    rebind,
                    proxy,
                    limits,
                    io: plan.io,
                };
                run(serve, shutdown, started);
            })?;
    }
    drop(started);
    for outcome in outcomes {
        outcome?;
    }
    Ok(proxies)
}

/// What a worker serves, and how.
struct Serve {
    listener: TcpListener,
    https: Option<(TcpListener, Arc<TlsServer>)>,
    rebind: Rebind,
    proxy: Arc<Proxy>,
    limits: ConnLimits,
    io: IoMode,
}

/// A worker's thread: serve until shutdown, then keep driving the runtime so
/// the connections it owns can drain; the process exits around it.
fn run(serve: Serve, shutdown: Shutdown, started: mpsc::Sender<std::io::Result<()>>) {
    let Serve {
        listener,
        https,
        rebind,
        proxy,
        limits,
        io,
    } = serve;
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    if io == IoMode::IoUring {
        // The ring's queued operations go to the kernel, in one system
        // call, whenever the worker has run everything it can.
        builder.on_thread_park(uring::before_park);
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = started.send(Err(error));
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => {
                let _ = started.send(Err(error));
                return;
            }
        };
        let https = match https
            .map(|(listener, tls)| tokio::net::TcpListener::from_std(listener).map(|l| (l, tls)))
            .transpose()
        {
            Ok(https) => https,
            Err(error) => {
                let _ = started.send(Err(error));
                return;
            }
        };
        if io == IoMode::IoUring
            && let Err(error) = uring::start()
        {
            let _ = started.send(Err(std::io::Error::new(
                error.kind(),
                format!("proxy.io is io_uring, but no io_uring ring could be set up: {error}"),
            )));
            return;
        }
        let _ = started.send(Ok(()));
        drop(started);
        if let Some((listener, tls)) = https {
            let proxy = Arc::clone(&proxy);
            tokio::spawn(server::serve_tls(
                listener,
                tls,
                move |request, peer| Arc::clone(&proxy).handle(request, peer),
                limits,
                shutdown.clone(),
            ));
        }
        server::serve_proxy(
            listener,
            rebind,
            move |request, peer| Arc::clone(&proxy).handle(request, peer),
            limits,
            io,
            shutdown,
        )
        .await;
        std::future::pending::<()>().await;
    });
}
