//! Listening sockets with a deep accept queue.
//!
//! `TcpListener::bind` asks the kernel for an accept queue of 128
//! connections. A burst of new clients larger than that overflows it, and
//! every client past the 128th waits a full SYN retransmission (a second or
//! more) before it is even accepted. The gateway asks for [`BACKLOG`], as
//! HAProxy and Envoy do; the kernel caps it at `net.core.somaxconn`.

use std::io;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpSocket};

/// Connections the kernel may hold for `accept`.
pub const BACKLOG: u32 = 4096;

/// Binds `addr` (with `SO_REUSEADDR`, like `TcpListener::bind`) and listens
/// with a [`BACKLOG`]-deep accept queue.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_beyond_128_waits_in_the_queue() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        // Nobody accepts yet: every connect must still complete at once,
        // which it cannot once a 128-deep queue is full.
        let mut streams = Vec::new();
        for _ in 0..300 {
            let connect = tokio::net::TcpStream::connect(addr);
            let stream = tokio::time::timeout(std::time::Duration::from_millis(500), connect)
                .await
                .expect("connect waited: the accept queue is full")
                .unwrap();
            streams.push(stream);
        }
        for _ in 0..300 {
            listener.accept().await.unwrap();
        }
    }
}
