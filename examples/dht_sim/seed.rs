//! Filling the simulated nodes' routing tables as a DHT that has run for hours has them.
//!
//! A mainline 8.0.1 node adds to its routing table only nodes that answered its own
//! queries, with one exception: a node started without bootstrap nodes also adds every
//! node that sends it a `find_node`, taking the `find_node` target as the sender's id (a
//! bootstrap's `find_node` asks for the sender's own id). Most nodes of the public DHT
//! (libtorrent and its kin) add the nodes they hear from; a network made only of mainline
//! nodes that bootstrap normally never learns of nodes that joined after it (tried: a
//! `find_node` then found 0–10 % of the true 20 closest nodes of 1,000).
//!
//! So every simulated node starts without bootstrap nodes, and this module introduces
//! nodes to each other: it sends, from node A's own UDP socket, a BEP 5 `find_node` whose
//! target is A's id to node B, and B records A. The answer goes to A's socket, where
//! mainline drops it as unexpected. Worker and client nodes are introduced to DHT nodes
//! the same way, and never send a `find_node` of their own, so no DHT node records them
//! (a read-only node in a routing table only costs others timeouts).
//!
//! The sockets belong to this process (mainline binds them on its threads), so they are
//! found by their file descriptors and used with `sendto(2)`; the descriptor's bound
//! address is checked just before each send.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;

use mainline::Id;

/// The UDP sockets of this process by bound address.
pub fn udp_sockets() -> HashMap<SocketAddrV4, RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return HashMap::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
        .filter_map(|fd| Some((bound_udp(fd)?, fd)))
        .collect()
}

/// The IPv4 address a UDP socket descriptor is bound to, `None` for anything else.
pub(crate) fn bound_udp(fd: RawFd) -> Option<SocketAddrV4> {
    // SAFETY: getsockname and getsockopt write into locals of the sizes passed; on a
    // descriptor that is not a socket they fail and write nothing.
    unsafe {
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::getsockname(fd, (&mut addr as *mut libc::sockaddr_in).cast(), &mut len) != 0
            || i32::from(addr.sin_family) != libc::AF_INET
        {
            return None;
        }
        let mut kind: libc::c_int = 0;
        let mut klen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        if libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut libc::c_int).cast(),
            &mut klen,
        ) != 0
            || kind != libc::SOCK_DGRAM
        {
            return None;
        }
        Some(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
            u16::from_be(addr.sin_port),
        ))
    }
}

/// A BEP 5 `find_node` query for `target` from `id`, bencoded (keys in sorted order, a
/// 4-byte transaction id as mainline requires).
pub fn find_node_query(id: &Id, target: &Id, tid: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(96);
    m.extend_from_slice(b"d1:ad2:id20:");
    m.extend_from_slice(id.as_bytes());
    m.extend_from_slice(b"6:target20:");
    m.extend_from_slice(target.as_bytes());
    m.extend_from_slice(b"e1:q9:find_node1:t4:");
    m.extend_from_slice(&tid.to_be_bytes());
    m.extend_from_slice(b"1:y1:qe");
    m
}

/// Introduces the node `(id, addr)` to the node at `to`: sends `to`, from the socket
/// bound to `addr` (its descriptor in `sockets`), a `find_node` for `id`. Returns whether
/// it was sent.
pub fn introduce(
    sockets: &HashMap<SocketAddrV4, RawFd>,
    id: &Id,
    addr: SocketAddrV4,
    to: SocketAddrV4,
) -> bool {
    let Some(&fd) = sockets.get(&addr) else {
        return false;
    };
    // The descriptor may have been closed and reused since the scan.
    if bound_udp(fd) != Some(addr) {
        return false;
    }
    let message = find_node_query(id, id, rand::random());
    let dest = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `message` and `dest` outlive the call and their lengths are passed.
    let sent = unsafe {
        libc::sendto(
            fd,
            message.as_ptr().cast(),
            message.len(),
            libc::MSG_DONTWAIT,
            (&dest as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    sent == message.len() as isize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_bencoded_find_node() {
        let id = Id::from_bytes([7u8; 20]).expect("20 bytes");
        let m = find_node_query(&id, &id, 0x0102_0304);
        assert!(m.starts_with(b"d1:ad2:id20:"));
        assert!(m.ends_with(b"e1:q9:find_node1:t4:\x01\x02\x03\x041:y1:qe"));
        assert_eq!(m.len(), 12 + 20 + 11 + 20 + 20 + 4 + 7);
    }
}
