//! The plain listener's own answers for HTTPS: `tls.redirect_http` sends
//! every request to the same place over HTTPS with a 308, which keeps the
//! method and body (a 301 turns a POST into a GET in many clients); ACME
//! HTTP-01 challenges are answered before that.

use super::ResponseBody;
use super::exchange::Exchange;
use super::request_id::X_REQUEST_ID;
use crate::json_error::json_error;
use crate::server::ClientBody;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Either;

/// The 308 for `request` to the HTTPS listener on `port`.
pub fn to_https(
    request: &Request<ClientBody>,
    port: u16,
    mut exchange: Exchange,
) -> Response<ResponseBody> {
    let location = location(request, port);
    let mut response = match location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        Some(location) => {
            let mut response = json_error(
                StatusCode::PERMANENT_REDIRECT,
                "Permanent redirect to https",
            );
            response.headers_mut().insert(header::LOCATION, location);
            response
        }
        None => json_error(
            StatusCode::BAD_REQUEST,
            "Malformed request: no host to redirect to",
        ),
    };
    exchange.status = response.status();
    exchange.bytes = http_body::Body::size_hint(response.body())
        .exact()
        .unwrap_or(0);
    drop(exchange);
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response.map(Either::Right)
}

/// The key authorization an ACME CA asked for.
pub fn challenge_answer(answer: String, mut exchange: Exchange) -> Response<ResponseBody> {
    exchange.status = StatusCode::OK;
    exchange.bytes = answer.len() as u64;
    let mut response = Response::new(Either::Right(http_body_util::Full::new(
        bytes::Bytes::from(answer),
    )));
    response
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), exchange.id.clone());
    drop(exchange);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// `https://host[:port]/path?query`; the port is left out when it is 443.
fn location(request: &Request<ClientBody>, port: u16) -> Option<String> {
    let authority = match request.uri().authority() {
        Some(authority) => authority.as_str(),
        None => request.headers().get(header::HOST)?.to_str().ok()?,
    };
    let host = authority_host(authority)?;
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let target = if target.starts_with('/') { target } else { "/" };
    Some(match port {
        443 => format!("https://{host}{target}"),
        port => format!("https://{host}:{port}{target}"),
    })
}

/// The host of `authority` without its port (an IPv6 literal keeps its brackets).
fn authority_host(authority: &str) -> Option<&str> {
    let host = match authority.rfind(']') {
        Some(end) => &authority[..=end],
        None => authority.split(':').next()?,
    };
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b));
    valid.then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, host: Option<&str>) -> Request<ClientBody> {
        let mut builder = Request::builder().uri(uri);
        if let Some(host) = host {
            builder = builder.header(header::HOST, host);
        }
        builder.body(ClientBody::Empty).unwrap()
    }

    #[test]
    fn the_location_keeps_host_path_and_query_on_the_https_port() {
        let r = request("/a/b?x=1", Some("example.com:8080"));
        assert_eq!(
            location(&r, 8443).unwrap(),
            "https://example.com:8443/a/b?x=1"
        );
        assert_eq!(location(&r, 443).unwrap(), "https://example.com/a/b?x=1");
        let r = request("/", Some("[::1]:8080"));
        assert_eq!(location(&r, 443).unwrap(), "https://[::1]/");
        let r = request("http://other.test/p", Some("example.com"));
        assert_eq!(location(&r, 443).unwrap(), "https://other.test/p");
    }

    #[test]
    fn a_host_that_could_inject_is_refused() {
        assert!(location(&request("/", Some("evil.test/@x")), 443).is_none());
        assert!(location(&request("/", None), 443).is_none());
    }
}
