//! The simulation's own network: a fresh network namespace with only a loopback
//! interface, and the kernel's counters of what crossed it.
//!
//! Entering a new namespace (`unshare(CLONE_NEWNET)`, needs root) before any thread
//! starts puts every socket of the run on a loopback that nothing else uses, so the
//! kernel's UDP and interface counters count this run's DHT traffic and nothing else. The
//! namespace has no route anywhere: a node that tried the public bootstrap routers could
//! not reach them. It disappears when the process exits.

use std::process::Command;

/// Kernel counters of the namespace: UDP datagrams (`/proc/net/snmp`) and the loopback
/// interface's bytes and packets (`/proc/net/dev`), read together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// UDP datagrams sent (`Udp: OutDatagrams`).
    pub out_datagrams: u64,
    /// UDP datagrams received (`Udp: InDatagrams`).
    pub in_datagrams: u64,
    /// Datagrams dropped because a socket's receive buffer was full (`RcvbufErrors`).
    pub rcvbuf_errors: u64,
    /// Datagrams to a port nobody listens on (`NoPorts`): sends to nodes that left.
    pub no_ports: u64,
    /// Bytes sent on `lo` (IP packets: the loopback device counts no link header).
    pub lo_tx_bytes: u64,
}

impl Counters {
    /// Reads the counters of the calling thread's namespace.
    pub fn read() -> Counters {
        let mut c = Counters::default();
        if let Ok(snmp) = std::fs::read_to_string("/proc/net/snmp") {
            let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
            if let (Some(names), Some(values)) = (lines.next(), lines.next()) {
                for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
                    let v = value.parse().unwrap_or(0);
                    match name {
                        "OutDatagrams" => c.out_datagrams = v,
                        "InDatagrams" => c.in_datagrams = v,
                        "RcvbufErrors" => c.rcvbuf_errors = v,
                        "NoPorts" => c.no_ports = v,
                        _ => {}
                    }
                }
            }
        }
        if let Ok(dev) = std::fs::read_to_string("/proc/net/dev") {
            for line in dev.lines() {
                let Some((name, rest)) = line.split_once(':') else {
                    continue;
                };
                if name.trim() != "lo" {
                    continue;
                }
                // receive: bytes packets errs drop fifo frame compressed multicast,
                // then transmit: bytes packets ...
                let fields: Vec<u64> = rest
                    .split_whitespace()
                    .map(|f| f.parse().unwrap_or(0))
                    .collect();
                if let Some(bytes) = fields.get(8) {
                    c.lo_tx_bytes = *bytes;
                }
            }
        }
        c
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Counters) -> Delta {
        Delta {
            datagrams: self.out_datagrams.saturating_sub(earlier.out_datagrams),
            received: self.in_datagrams.saturating_sub(earlier.in_datagrams),
            ip_bytes: self.lo_tx_bytes.saturating_sub(earlier.lo_tx_bytes),
            rcvbuf_errors: self.rcvbuf_errors.saturating_sub(earlier.rcvbuf_errors),
            no_ports: self.no_ports.saturating_sub(earlier.no_ports),
        }
    }
}

/// Traffic between two readings of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Delta {
    /// UDP datagrams sent (each is one DHT message).
    pub datagrams: u64,
    /// UDP datagrams delivered to a socket.
    pub received: u64,
    /// IP bytes sent (UDP payload + 8 + 20 per datagram): what the messages would cost on
    /// the internet, without link headers.
    pub ip_bytes: u64,
    /// Datagrams lost to full receive buffers.
    pub rcvbuf_errors: u64,
    /// Datagrams sent to closed ports (nodes that had left).
    pub no_ports: u64,
}

impl Delta {
    /// `self - baseline × factor`, floored at zero: traffic less the background that a
    /// quiet period of the same length carried.
    pub fn minus(&self, baseline: &Delta, factor: f64) -> Delta {
        let sub = |a: u64, b: u64| (a as f64 - b as f64 * factor).max(0.0).round() as u64;
        Delta {
            datagrams: sub(self.datagrams, baseline.datagrams),
            received: sub(self.received, baseline.received),
            ip_bytes: sub(self.ip_bytes, baseline.ip_bytes),
            rcvbuf_errors: self.rcvbuf_errors,
            no_ports: self.no_ports,
        }
    }
}

/// First octets of the address ranges the DHT nodes live in: one per 6-bit prefix (the
/// "subnet" mainline counts when it decides how many nodes to store at, BEP 42's /6), from
/// 1.0.0.0/8 to 221.0.0.0/8, avoiding loopback, private, link-local and multicast ranges.
/// Inside the namespace these are local addresses on `lo` and nothing more.
pub fn prefix_octets() -> impl Iterator<Item = u8> {
    (0u8..56).map(|p| 4 * p + 1)
}

/// The address of the `index`th DHT node (`index` < 16,384): its first octet cycles
/// through [`prefix_octets`], so neighbouring nodes sit in different /6 subnets, as random
/// nodes of the public DHT do; the bits that BEP 42 hashes into the node id (mask
/// `03.0f.3f.ff`) carry the index, so that no two nodes share them and the ids are as
/// spread as on the public DHT.
pub fn dht_node_ip(index: u32) -> std::net::Ipv4Addr {
    let first = 4 * (index % 56) as u8 + 1;
    std::net::Ipv4Addr::new(first, 0, ((index >> 8) & 0x3f) as u8, index as u8)
}

/// Makes every address of the [`prefix_octets`] ranges local (`ip route add local
/// X.0.0.0/8 dev lo`), so that nodes can bind them.
pub fn add_node_ranges() -> Result<(), String> {
    for first in prefix_octets() {
        let prefix = format!("{first}.0.0.0/8");
        let status = Command::new("ip")
            .args(["route", "add", "local", &prefix, "dev", "lo"])
            .status()
            .map_err(|e| format!("ip route add local {prefix}: {e}"))?;
        if !status.success() {
            return Err(format!("ip route add local {prefix} dev lo: {status}"));
        }
    }
    Ok(())
}

/// Whether the run is isolated in its own namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// A namespace of its own: the kernel counters are this run's traffic alone.
    Namespace,
    /// The host's loopback (no root, or `--no-netns`): the kernel counters include
    /// whatever else used loopback meanwhile.
    Shared,
}

/// Moves the process into a new network namespace and brings its loopback up. Must be
/// called while the process has one thread (before the tokio runtime starts): a
/// namespace belongs to the thread that entered it and the threads it starts later.
pub fn enter_namespace() -> Result<(), String> {
    // SAFETY: unshare(2) with CLONE_NEWNET only changes the calling thread's network
    // namespace; it takes no pointers.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(format!(
            "unshare(CLONE_NEWNET): {} (needs root)",
            std::io::Error::last_os_error()
        ));
    }
    let status = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .map_err(|e| format!("ip link set lo up: {e} (needs iproute2)"))?;
    if !status.success() {
        return Err(format!("ip link set lo up: {status}"));
    }
    add_node_ranges()
}

/// Datagrams each UDP socket of the namespace dropped (full receive buffer), by local
/// port, from the `drops` column of `/proc/net/udp`.
pub fn socket_drops() -> Vec<(u16, u64)> {
    let Ok(text) = std::fs::read_to_string("/proc/net/udp") else {
        return Vec::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let port = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
            let drops = fields.last()?.parse().ok()?;
            Some((port, drops))
        })
        .collect()
}

/// Sets the receive buffer of every IPv4 UDP socket of this process bound to a port in
/// `ports` to `bytes` (capped by the kernel at `net.core.rmem_max`), and returns how many
/// it set. mainline binds its sockets itself and offers no way to size them; this finds
/// them by their file descriptors.
pub fn raise_rcvbuf(ports: std::ops::Range<u16>, bytes: usize) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let mut set = 0;
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for fd in fds {
        match crate::seed::bound_udp(fd) {
            Some(bound) if ports.contains(&bound.port()) => {}
            _ => continue,
        }
        // SAFETY: setsockopt gets a pointer to a local of the size passed; an fd closed
        // meanwhile makes it fail, nothing more.
        unsafe {
            if libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0
            {
                set += 1;
            }
        }
    }
    set
}
