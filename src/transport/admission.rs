//! Connection admission: how many connections a server holds at once, in all and per
//! client IP address (pure; the native QUIC face and the WebTransport face both use it).
//!
//! A connection is counted from the moment its first datagram is taken (before the
//! handshake, so that a flood of handshakes is capped too) until its task ends. A refusal
//! costs the server one datagram (quinn's `Incoming::refuse`, a CONNECTION_CLOSE).

use std::collections::HashMap;
use std::net::IpAddr;

/// The counts and their caps.
#[derive(Debug, Clone)]
pub struct Admission {
    max_total: usize,
    max_per_ip: usize,
    open: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl Admission {
    /// At most `max_total` connections at once, `max_per_ip` of them from one IP.
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            max_total,
            max_per_ip,
            open: 0,
            per_ip: HashMap::new(),
        }
    }

    /// Counts a new connection from `ip` when both caps allow it; `false` means refuse it.
    pub fn admit(&mut self, ip: IpAddr) -> bool {
        let from_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
        if self.open >= self.max_total || from_ip >= self.max_per_ip {
            return false;
        }
        self.open += 1;
        *self.per_ip.entry(ip).or_insert(0) += 1;
        true
    }

    /// A connection from `ip` that [`Admission::admit`] counted has ended.
    pub fn release(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            self.open = self.open.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    /// Connections counted now.
    pub fn open(&self) -> usize {
        self.open
    }

    /// Connections counted now from `ip`.
    pub fn from_ip(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_caps_hold_and_release_frees_a_place() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let mut admission = Admission::new(3, 2);
        assert!(admission.admit(a));
        assert!(admission.admit(a));
        assert!(!admission.admit(a), "per-IP cap");
        assert!(admission.admit(b));
        assert!(!admission.admit(b), "total cap");
        admission.release(a);
        assert_eq!(admission.from_ip(a), 1);
        assert!(admission.admit(b));
        assert_eq!(admission.open(), 3);
        // Releasing what was never admitted changes nothing.
        admission.release("192.0.2.9".parse().unwrap());
        assert_eq!(admission.open(), 3);
    }
}
