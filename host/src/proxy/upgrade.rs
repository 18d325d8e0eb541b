//! Protocol upgrades (WebSocket and friends): after a 101 the two connections
//! are spliced together byte for byte.

use crate::balancer::InFlight;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Splices client and backend once both sides have switched protocols.
pub fn tunnel(client: OnUpgrade, backend: OnUpgrade, in_flight: InFlight) {
    tokio::spawn(async move {
        let (client, backend) = match tokio::try_join!(client, backend) {
            Ok(pair) => pair,
            Err(error) => {
                tracing::debug!(%error, "upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut backend = TokioIo::new(backend);
        match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
            Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
            Err(error) => tracing::debug!(%error, "upgraded connection failed"),
        }
        drop(in_flight);
    });
}
