//! The UDP socket a role's QUIC endpoint runs on.

use std::net::{SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

use crate::defaults::DEFAULT_UDP_BUFFER_BYTES;

/// Binds a non-blocking UDP socket on `addr` with send and receive buffers of
/// [`DEFAULT_UDP_BUFFER_BYTES`] (4 MiB) asked of the kernel.
///
/// The kernel may grant less (`net.core.rmem_max`); that is logged, not an error.
/// Errors: the bind itself (address in use, not permitted).
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Accept IPv4-mapped peers too where the platform allows it.
        let _ = socket.set_only_v6(false);
    }
    for (what, set, get) in [
        (
            "receive",
            Socket::set_recv_buffer_size as fn(&Socket, usize) -> std::io::Result<()>,
            Socket::recv_buffer_size as fn(&Socket) -> std::io::Result<usize>,
        ),
        (
            "send",
            Socket::set_send_buffer_size,
            Socket::send_buffer_size,
        ),
    ] {
        if let Err(e) = set(&socket, DEFAULT_UDP_BUFFER_BYTES) {
            tracing::debug!(%e, "could not set the UDP {what} buffer");
        }
        if let Ok(granted) = get(&socket) {
            if granted < DEFAULT_UDP_BUFFER_BYTES {
                tracing::debug!(
                    granted,
                    wanted = DEFAULT_UDP_BUFFER_BYTES,
                    "kernel granted a smaller UDP {what} buffer"
                );
            }
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}
