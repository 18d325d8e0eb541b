//! One upstream server and its live state, shared by the proxy, the health checker and the admin API.

use hyper::Uri;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug)]
pub struct Backend {
    /// Position in the configuration; stable for the process lifetime.
    pub index: usize,
    /// `scheme://authority` with an optional path prefix.
    pub url: Uri,
    /// The URL as written for people: no trailing `/`; used in logs, metrics and `/backends`.
    pub name: String,
    /// Relative share of traffic.
    pub weight: u32,
    /// Cleared by a failed connect or failed probes, set again by good probes.
    healthy: AtomicBool,
    /// Requests sent and not yet finished (response body included); drives least_requests.
    in_flight: AtomicU64,
    /// Requests answered by this backend, for `/backends`.
    requests: AtomicU64,
    /// Attempts that failed (connect error, timeout, broken response).
    failures: AtomicU64,
    /// Time spent on finished requests, microseconds (for average latency).
    busy_micros: AtomicU64,
}

impl Backend {
    pub fn new(index: usize, url: Uri, weight: u32) -> Self {
        let name = url.to_string().trim_end_matches('/').to_owned();
        Backend {
            index,
            name,
            url,
            weight,
            healthy: AtomicBool::new(true),
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            busy_micros: AtomicU64::new(0),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Sets health; true when this call changed it (so the caller logs the transition once).
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::AcqRel) != healthy
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds a finished request's duration (for `/backends`' latency).
    pub fn record_duration(&self, elapsed: std::time::Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.busy_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Total time spent on finished requests, microseconds.
    pub fn busy_micros(&self) -> u64 {
        self.busy_micros.load(Ordering::Relaxed)
    }

    /// Counts a request as started; it stays in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight {
            backend: Arc::clone(self),
        }
    }
}

/// Keeps a request counted in [`Backend::in_flight`] until dropped.
#[derive(Debug)]
pub struct InFlight {
    backend: Arc<Backend>,
}

impl InFlight {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_transition_is_reported_once() {
        let b = Backend::new(0, "http://127.0.0.1:1".parse().unwrap(), 1);
        assert!(b.set_healthy(false));
        assert!(!b.set_healthy(false));
        assert!(b.set_healthy(true));
    }

    #[test]
    fn in_flight_follows_guards() {
        let b = Arc::new(Backend::new(0, "http://127.0.0.1:1".parse().unwrap(), 1));
        let g1 = b.start();
        let g2 = b.start();
        assert_eq!(b.in_flight(), 2);
        drop(g1);
        assert_eq!(b.in_flight(), 1);
        drop(g2);
        assert_eq!(b.in_flight(), 0);
        assert_eq!(b.requests(), 2);
    }
}
