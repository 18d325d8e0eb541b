//! IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers-10) and the 429 answer.

use super::Decision;
use crate::json_error::json_error;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

/// The policy named in the fields: `client` for a per-client override of
/// the top-level policy, else the policy's own name.
fn policy_name<'a>(decision: &Decision, policy: &'a str) -> &'a str {
    if decision.limits.is_override {
        "client"
    } else {
        policy
    }
}

/// `RateLimit-Policy: "default";q=100;w=10` and `RateLimit: "default";r=41;t=5`.
///
/// `q` is the capacity, `w` the seconds an empty bucket takes to fill; `r`
/// the tokens left; `t` the seconds until the bucket is full again, or, when
/// nothing is left, until the next token (the same as `Retry-After`).
pub fn apply_headers(headers: &mut HeaderMap, decision: &Decision, policy: &str) {
    let name = policy_name(decision, policy);
    let window = decision
        .limits
        .seconds_for(u64::from(decision.limits.capacity) * 1000);
    let policy = format!("\"{name}\";q={};w={window}", decision.limits.capacity);
    let t = if decision.remaining == 0 {
        decision.retry_after
    } else {
        decision.reset
    };
    let state = format!("\"{name}\";r={};t={t}", decision.remaining);
    if let Ok(v) = HeaderValue::from_str(&policy) {
        headers.insert("ratelimit-policy", v);
    }
    if let Ok(v) = HeaderValue::from_str(&state) {
        headers.insert("ratelimit", v);
    }
}

/// The 429 answer: exact JSON body, `Retry-After` and the RateLimit fields.
pub fn rejection(decision: &Decision, policy: &str) -> Response<Full<Bytes>> {
    let mut response = json_error(StatusCode::TOO_MANY_REQUESTS, "Rate limit exceeded");
    apply_headers(response.headers_mut(), decision, policy);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(decision.retry_after));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::Limits;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn rejection_has_exact_body_and_fields() {
        let decision = Decision {
            allowed: false,
            remaining: 0,
            retry_after: 1,
            reset: 10,
            limits: Limits::new(100, 10.0).unwrap(),
            overflow: false,
        };
        let response = rejection(&decision, "default");
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after"], "1");
        assert_eq!(
            response.headers()["ratelimit-policy"],
            "\"default\";q=100;w=10"
        );
        assert_eq!(response.headers()["ratelimit"], "\"default\";r=0;t=1");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &body[..],
            br#"{"code":429,"message":"Rate limit exceeded"}"#
        );
    }
}
