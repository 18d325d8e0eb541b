//! One request/response pair from the gateway's point of view: counted in
//! metrics and written to the access log when it is over.

use super::body::Finish;
use crate::balancer::InFlight;
use crate::limiter::RateLimitFields;
use crate::metrics::RouteMetrics;
use http::{HeaderValue, Method, StatusCode, Uri};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

pub struct Exchange {
    pub start: Instant,
    /// Method and target for the access log; `None` when access logging is off,
    /// so requests do not pay for copies nobody reads.
    pub logged: Option<(Method, Uri)>,
    pub client: IpAddr,
    pub status: StatusCode,
    /// Keeps the backend's in-flight count up until the response body is done.
    pub backend: Option<InFlight>,
    pub bytes: u64,
    /// The route's counters (or those for requests no route took).
    pub metrics: Arc<RouteMetrics>,
    /// The client speaks gRPC: the gateway's own answers are gRPC statuses.
    pub grpc: bool,
    /// `X-Request-Id`, logged and returned to the client.
    pub id: HeaderValue,
    /// The limiter's fields for the answer, once a request was let through.
    pub rate_limit: Option<RateLimitFields>,
}

impl Finish for Exchange {
    fn add_bytes(&mut self, n: usize) {
        self.bytes += n as u64;
    }

    /// A backend whose body broke failed this exchange: counted against it,
    /// and logged as 502 when the client got none of the body (the codec
    /// then answers 502 itself).
    fn failed(&mut self) {
        if let Some(in_flight) = &self.backend {
            let backend = in_flight.backend();
            backend.record_failure();
            self.metrics.record_failure(backend.index);
        }
        if self.bytes == 0 {
            self.status = StatusCode::BAD_GATEWAY;
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        let backend = self.backend.as_ref().map(|g| g.backend());
        if let Some(backend) = backend {
            backend.record_duration(elapsed);
        }
        self.metrics
            .record(backend.map(|b| b.index), self.status, elapsed, self.bytes);
        if let Some((method, uri)) = &self.logged {
            tracing::info!(
                target: "access",
                request_id = %String::from_utf8_lossy(self.id.as_bytes()),
                client = %self.client,
                method = %method,
                path = %uri.path_and_query().map_or("/", |p| p.as_str()),
                status = self.status.as_u16(),
                backend = backend.map_or("-", |b| b.name.as_str()),
                duration_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3,
                bytes = self.bytes,
                "request"
            );
        }
    }
}
