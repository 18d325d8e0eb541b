//! `/clients` and `/clients/{key}`: per-client limits in the database, applied
//! to this gateway's live buckets at once (other gateways pick them up on
//! their next sync).

use super::json;
use crate::json_error::json_error;
use crate::limiter::{KeySource, Limiter, Limits, canonical_client_id};
use crate::store::{ClientRecord, Store, StoreError};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// Largest admin request body accepted.
const MAX_BODY: usize = 64 * 1024;

pub struct Clients {
    pub store: Arc<Store>,
    /// The running limiter, updated immediately on a change (absent when limiting is off).
    pub limiter: Option<Arc<Limiter>>,
    /// The configured key source, which a client id without a source prefix belongs to.
    pub source: KeySource,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    client_id: String,
    capacity: f64,
    refill_per_second: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    client_id: Option<String>,
    capacity: f64,
    refill_per_second: f64,
}

/// A client as the API shows it: timestamps in RFC 3339.
#[derive(Serialize)]
pub struct ClientView {
    client_id: String,
    capacity: i64,
    refill_per_second: f64,
    created_at: String,
    updated_at: String,
}

impl From<ClientRecord> for ClientView {
    fn from(r: ClientRecord) -> Self {
        let time = |ms: i64| {
            let at = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
            humantime::format_rfc3339_millis(at).to_string()
        };
        ClientView {
            created_at: time(r.created_at),
            updated_at: time(r.updated_at),
            client_id: r.client_id,
            capacity: r.capacity,
            refill_per_second: r.refill_per_second,
        }
    }
}

fn store_error(error: StoreError) -> Response<Full<Bytes>> {
    match error {
        StoreError::Exists(_) => json_error(StatusCode::CONFLICT, &error.to_string()),
        StoreError::NotFound(_) => json_error(StatusCode::NOT_FOUND, &error.to_string()),
        other => {
            tracing::warn!(error = %other, "admin: database operation failed");
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("Database unavailable: {other}"),
            )
        }
    }
}

fn bad_request(reason: impl std::fmt::Display) -> Response<Full<Bytes>> {
    json_error(StatusCode::BAD_REQUEST, &reason.to_string())
}

/// JSON numbers arrive as floats; capacity must be a whole number.
fn limits(capacity: f64, refill_per_second: f64) -> Result<Limits, String> {
    if capacity.fract() != 0.0 || !(1.0..=crate::limiter::MAX_CAPACITY as f64).contains(&capacity) {
        return Err(format!(
            "capacity must be a whole number from 1 to {}, got {capacity}",
            crate::limiter::MAX_CAPACITY
        ));
    }
    Limits::new(capacity as i64, refill_per_second)
}

async fn read_json<T: serde::de::DeserializeOwned>(
    request: Request<Incoming>,
) -> Result<T, Response<Full<Bytes>>> {
    let body = Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| bad_request(format!("Cannot read body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| bad_request(format!("Invalid JSON: {e}")))
}

impl Clients {
    /// Serves `/clients…`; `key` is the decoded path segment after `/clients/`.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        key: Option<String>,
    ) -> Response<Full<Bytes>> {
        match (request.method().clone(), key) {
            (Method::GET, None) => match self.store.list().await {
                Ok(list) => json(
                    StatusCode::OK,
                    &list.into_iter().map(ClientView::from).collect::<Vec<_>>(),
                ),
                Err(e) => store_error(e),
            },
            (Method::POST, None) => {
                let body: CreateBody = match read_json(request).await {
                    Ok(body) => body,
                    Err(response) => return response,
                };
                let id = match self.id(&body.client_id) {
                    Ok(id) => id,
                    Err(reason) => return bad_request(reason),
                };
                let limits = match limits(body.capacity, body.refill_per_second) {
                    Ok(limits) => limits,
                    Err(reason) => return bad_request(reason),
                };
                match self.store.create(&id, &limits).await {
                    Ok(record) => {
                        self.apply(&record.client_id, Some(limits));
                        json(StatusCode::CREATED, &ClientView::from(record))
                    }
                    Err(e) => store_error(e),
                }
            }
            (Method::GET, Some(key)) => {
                let id = match self.id(&key) {
                    Ok(id) => id,
                    Err(reason) => return bad_request(reason),
                };
                match self.store.get(&id).await {
                    Ok(Some(record)) => json(StatusCode::OK, &ClientView::from(record)),
                    Ok(None) => store_error(StoreError::NotFound(id)),
                    Err(e) => store_error(e),
                }
            }
            (Method::PUT, Some(key)) => {
                let body: UpdateBody = match read_json(request).await {
                    Ok(body) => body,
                    Err(response) => return response,
                };
                let id = match self.id(&key) {
                    Ok(id) => id,
                    Err(reason) => return bad_request(reason),
                };
                if body
                    .client_id
                    .as_ref()
                    .is_some_and(|other| self.id(other).ok().as_ref() != Some(&id))
                {
                    return bad_request("client_id in the body does not match the path");
                }
                let limits = match limits(body.capacity, body.refill_per_second) {
                    Ok(limits) => limits,
                    Err(reason) => return bad_request(reason),
                };
                match self.store.update(&id, &limits).await {
                    Ok(record) => {
                        self.apply(&id, Some(limits));
                        json(StatusCode::OK, &ClientView::from(record))
                    }
                    Err(e) => store_error(e),
                }
            }
            (Method::DELETE, Some(key)) => {
                let id = match self.id(&key) {
                    Ok(id) => id,
                    Err(reason) => return bad_request(reason),
                };
                match self.store.delete(&id).await {
                    Ok(()) => {
                        self.apply(&id, None);
                        let mut response = Response::new(Full::new(Bytes::new()));
                        *response.status_mut() = StatusCode::NO_CONTENT;
                        response
                    }
                    Err(e) => store_error(e),
                }
            }
            _ => json_error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed"),
        }
    }

    /// The canonical client id for what the user wrote, or why there is none.
    fn id(&self, written: &str) -> Result<String, String> {
        canonical_client_id(written, &self.source).map_err(|reason| format!("client_id: {reason}"))
    }

    fn apply(&self, id: &str, limits: Option<Limits>) {
        if let Some(limiter) = &self.limiter
            && let Err(reason) = limiter.apply_one(id, limits)
        {
            tracing::warn!(client = %id, %reason, "per-client limit not applied to live buckets");
        }
    }
}
