//! The one place where failures become HTTP answers: JSON `{"code","message"}`.

use crate::json_error::json_error;
use bytes::Bytes;
#[cfg(test)]
use http::header;
use http::{Response, StatusCode};
use http_body_util::Full;

/// Why the gateway answered a request itself instead of relaying a backend's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("No healthy backend")]
    NoHealthyBackend,
    #[error("Bad gateway: backend failed")]
    BadGateway,
    #[error("Gateway timeout: backend did not answer in time")]
    GatewayTimeout,
    #[error("Request body too large")]
    BodyTooLarge,
    #[error("Malformed request: {0}")]
    BadRequest(&'static str),
    /// The client's body broke its own framing (e.g. a bad chunk-size line).
    #[error("Malformed request body")]
    BadRequestBody,
    /// The client stopped sending its body for `proxy.client_body_timeout`.
    #[error("Client body timeout")]
    ClientBodyTimeout,
    /// The client went away before its answer (nginx's 499); nobody reads this one.
    #[error("Client closed request")]
    ClientClosed,
    /// The gateway itself ran out of something (file descriptors, ports):
    /// this request fails, no backend is blamed.
    #[error("Gateway out of local resources")]
    OutOfResources,
    /// Redis is unreachable and `on_shared_failure: deny`.
    #[error("Rate limiter unavailable")]
    LimiterUnavailable,
    /// A header or plugin key without a per-client row, under `rate_limit.unknown_keys: reject`.
    #[error("Unknown API key")]
    UnknownApiKey,
    /// A plugin failed and `plugins.fail_closed` is set.
    #[error("Plugin failed")]
    PluginFailed,
    /// No route matches the request.
    #[error("No route")]
    NoRoute,
}

/// nginx's status for a client that closed its connection before the answer.
pub fn client_closed() -> StatusCode {
    StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
}

impl ProxyError {
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::NoHealthyBackend => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BadGateway => StatusCode::BAD_GATEWAY,
            ProxyError::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadRequest(_) | ProxyError::BadRequestBody => StatusCode::BAD_REQUEST,
            ProxyError::ClientBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::ClientClosed => client_closed(),
            ProxyError::OutOfResources => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::PluginFailed => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::UnknownApiKey => StatusCode::UNAUTHORIZED,
            ProxyError::LimiterUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
        }
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        json_error(self.status(), &self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn body_is_exact_json() {
        let response = ProxyError::NoHealthyBackend.into_response();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], br#"{"code":503,"message":"No healthy backend"}"#);
        let body = ProxyError::NoRoute.into_response().into_body();
        let body = body.collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], br#"{"code":404,"message":"No route"}"#);
    }
}
