//! Protocol upgrades (WebSocket and friends): after a 101 the two connections
//! are spliced together byte for byte.

use super::conn::Stream;
use super::pool::Permit;
use crate::balancer::InFlight;
use bytes::BytesMut;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

/// Splices the client, once hyper has switched it over, and the backend
/// connection; `early` is what the backend sent right after its 101. The
/// backend connection keeps its place under the connection cap until closed.
pub fn tunnel(
    client: OnUpgrade,
    (mut backend, early, permit): (Stream, BytesMut, Permit),
    in_flight: InFlight,
) {
    tokio::spawn(async move {
        let client = match client.await {
            Ok(client) => client,
            Err(error) => {
                tracing::debug!(%error, "upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        if !early.is_empty()
            && let Err(error) = client.write_all(&early).await
        {
            tracing::debug!(%error, "upgraded connection failed");
            return;
        }
        match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
            Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
            Err(error) => tracing::debug!(%error, "upgraded connection failed"),
        }
        drop((in_flight, permit));
    });
}
