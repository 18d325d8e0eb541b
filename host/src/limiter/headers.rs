//! IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers-10) and the 429 answer.

use super::{Decision, Limits};
use crate::json_error::json_error;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use std::cell::RefCell;
use std::sync::Arc;

/// The policy named in the fields: `client` for a per-client override of
/// the top-level policy, else the policy's own name.
fn policy_name<'a>(decision: &Decision, policy: &'a str) -> &'a str {
    if decision.limits.is_override {
        "client"
    } else {
        policy
    }
}

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// `RateLimit-Policy: "default";q=100;w=10` and `RateLimit: "default";r=41;t=5`.
///
/// `q` is the capacity, `w` the seconds an empty bucket takes to fill; `r`
/// the tokens left; `t` the seconds until the bucket is full again, or, when
/// nothing is left, until the next token (the same as `Retry-After`).
///
/// On every allowed response, so built without `format!` or allocation:
/// the policy field and the quoted name, the same for every client on the
/// default limits, come from a one-entry cache per thread; the state is two
/// numbers written when the head is.
#[derive(Debug, Clone)]
pub struct RateLimitFields {
    policy: Arc<Policy>,
    remaining: u64,
    t: u64,
}

/// What a policy's fields share for one set of limits.
#[derive(Debug)]
struct Policy {
    /// The `RateLimit-Policy` value.
    value: HeaderValue,
    /// `"name"`, as the `RateLimit` value begins.
    quoted_name: Bytes,
}

impl RateLimitFields {
    pub fn new(decision: &Decision, policy: &str) -> Option<RateLimitFields> {
        let policy = policy_field(policy_name(decision, policy), decision.limits)?;
        let t = if decision.remaining == 0 {
            decision.retry_after
        } else {
            decision.reset
        };
        Some(RateLimitFields {
            policy,
            remaining: decision.remaining,
            t,
        })
    }

    /// Both fields as head lines (`name: value\r\n`).
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"ratelimit-policy: ");
        out.extend_from_slice(self.policy.value.as_bytes());
        out.extend_from_slice(b"\r\nratelimit: ");
        self.write_state(out);
        out.extend_from_slice(b"\r\n");
    }

    /// Both fields into `headers`, replacing any of the same names.
    pub fn insert(&self, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_POLICY.clone(), self.policy.value.clone());
        let mut state = Vec::with_capacity(self.policy.quoted_name.len() + 3 + 20 + 3 + 20);
        self.write_state(&mut state);
        if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(state)) {
            headers.insert(RATELIMIT.clone(), value);
        }
    }

    /// Takes out fields of these names `headers` already has (a backend's
    /// own), so that the ones written with the head are the only ones.
    pub fn clear(headers: &mut HeaderMap) {
        // A walk over a response's few names costs less than two lookups.
        if headers
            .keys()
            .any(|name| name == RATELIMIT || name == RATELIMIT_POLICY)
        {
            headers.remove(&RATELIMIT_POLICY);
            headers.remove(&RATELIMIT);
        }
    }

    fn write_state(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.policy.quoted_name);
        number(out, b";r=", self.remaining);
        number(out, b";t=", self.t);
    }
}

/// Sets the RateLimit fields of `decision` in `headers`.
pub fn apply_headers(headers: &mut HeaderMap, decision: &Decision, policy: &str) {
    if let Some(fields) = RateLimitFields::new(decision, policy) {
        fields.insert(headers);
    }
}

/// The shared part of the fields for `name` under `limits`.
fn policy_field(name: &str, limits: Limits) -> Option<Arc<Policy>> {
    /// The last name and limits asked for, with their fields.
    type Cached = Option<(Box<str>, Limits, Arc<Policy>)>;
    thread_local! {
        static LAST: RefCell<Cached> = const { RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| {
        if let Some((n, l, policy)) = last
            && *l == limits
            && **n == *name
        {
            return Some(Arc::clone(policy));
        }
        let window = limits.seconds_for(u64::from(limits.capacity) * 1000);
        let mut field = Vec::with_capacity(name.len() + 2 + 3 + 10 + 3 + 20);
        quoted(&mut field, name);
        let quoted_name = Bytes::copy_from_slice(&field);
        number(&mut field, b";q=", u64::from(limits.capacity));
        number(&mut field, b";w=", window);
        let value = HeaderValue::from_maybe_shared(Bytes::from(field)).ok()?;
        let policy = Arc::new(Policy { value, quoted_name });
        *last = Some((name.into(), limits, Arc::clone(&policy)));
        Some(policy)
    })
}

fn quoted(out: &mut Vec<u8>, name: &str) {
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.push(b'"');
}

fn number(out: &mut Vec<u8>, label: &[u8], n: u64) {
    out.extend_from_slice(label);
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
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

    #[test]
    fn the_cached_policy_field_follows_the_name_and_the_limits() {
        let decision = |capacity, refill, is_override, remaining| Decision {
            allowed: true,
            remaining,
            retry_after: 1,
            reset: 3,
            limits: Limits {
                is_override,
                ..Limits::new(capacity, refill).unwrap()
            },
            overflow: false,
        };
        let fields = |d: &Decision, policy: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("ratelimit", HeaderValue::from_static("from a backend"));
            apply_headers(&mut headers, d, policy);
            let (p, state) = (
                headers["ratelimit-policy"].to_str().unwrap().to_owned(),
                headers["ratelimit"].to_str().unwrap().to_owned(),
            );
            assert_eq!(headers.len(), 2);
            // Written with the head, the same fields.
            let mut lines = Vec::new();
            RateLimitFields::new(d, policy).unwrap().write(&mut lines);
            assert_eq!(
                String::from_utf8(lines).unwrap(),
                format!("ratelimit-policy: {p}\r\nratelimit: {state}\r\n")
            );
            let mut cleared = headers.clone();
            RateLimitFields::clear(&mut cleared);
            assert!(cleared.is_empty());
            (p, state)
        };
        let cases = [
            (
                decision(100, 10.0, false, 41),
                "default",
                "\"default\";q=100;w=10",
                "\"default\";r=41;t=3",
            ),
            (
                decision(100, 10.0, false, 40),
                "default",
                "\"default\";q=100;w=10",
                "\"default\";r=40;t=3",
            ),
            (
                decision(100, 10.0, false, 0),
                "api",
                "\"api\";q=100;w=10",
                "\"api\";r=0;t=1",
            ),
            (
                decision(50, 10.0, false, 7),
                "api",
                "\"api\";q=50;w=5",
                "\"api\";r=7;t=3",
            ),
            (
                decision(50, 10.0, true, 7),
                "api",
                "\"client\";q=50;w=5",
                "\"client\";r=7;t=3",
            ),
            (
                decision(100, 10.0, false, 41),
                "default",
                "\"default\";q=100;w=10",
                "\"default\";r=41;t=3",
            ),
        ];
        for (d, policy, expected_policy, expected_state) in cases {
            assert_eq!(
                fields(&d, policy),
                (expected_policy.to_owned(), expected_state.to_owned()),
                "{d:?} {policy}"
            );
        }
    }
}
