//! The mapping check (RFC 4787 §4.1) behind `nano-connect netcheck`, and a plain STUN
//! query.

use super::*;

/// The NAT mapping behaviour toward two destinations (RFC 4787 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// The same public address toward every destination: punching works.
    EndpointIndependent,
    /// A new public address per destination (a "symmetric" NAT).
    EndpointDependent,
    /// Could not be told (the second address did not answer).
    Unknown,
}

impl Mapping {
    /// `endpoint-independent`, `endpoint-dependent` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EndpointIndependent => "endpoint-independent",
            Self::EndpointDependent => "endpoint-dependent",
            Self::Unknown => "unknown",
        }
    }
}

/// What a mapping check found.
#[derive(Debug, Clone)]
pub struct NetReport {
    /// The local address of the socket used.
    pub local: SocketAddr,
    /// The reflexive address the broker port saw.
    pub reflexive: SocketAddr,
    /// The reflexive address the broker's alternate port saw, if it answered.
    pub reflexive_alt: Option<SocketAddr>,
    /// The mapping behaviour.
    pub mapping: Mapping,
    /// Whether the reflexive address is this host's own (no NAT on the path).
    pub public: bool,
    /// Round-trip time to the broker.
    pub rtt: Duration,
}

/// Checks the mapping of a fresh socket on `bind` toward the broker's two ports: a
/// `Ping` to the broker port, then a STUN Binding to its alternate port (told in the
/// `Pong`, at the broker's IP), and compares the two reflexive addresses.
pub async fn netcheck(
    bind: SocketAddr,
    broker: SocketAddr,
    timeout: Duration,
) -> Result<NetReport, BrokerError> {
    let (socket, rx) = NatSocket::bind(bind)?;
    // quinn's endpoint is what reads the socket; it feeds the diverted channel.
    let _endpoint = reader(&socket)?;
    let mut inbox = Inbox {
        socket: socket.clone(),
        rx,
        stash: VecDeque::new(),
    };
    let (rtt, reflexive, reflexive_alt) = inbox.mapping_check(broker, timeout).await?;
    let mapping = match reflexive_alt {
        Some(a) if a == reflexive => Mapping::EndpointIndependent,
        Some(_) => Mapping::EndpointDependent,
        None => Mapping::Unknown,
    };
    let local = socket.local()?;
    let own: Vec<IpAddr> = local_addrs(local, broker)
        .iter()
        .map(SocketAddr::ip)
        .collect();
    Ok(NetReport {
        local,
        reflexive,
        reflexive_alt,
        mapping,
        public: own.contains(&reflexive.ip()) && reflexive.port() == local.port(),
        rtt,
    })
}

/// Queries a standard STUN server (RFC 8489 Binding) from a fresh socket on `bind`.
pub async fn stun_query(
    bind: SocketAddr,
    server: SocketAddr,
    timeout: Duration,
) -> Result<SocketAddr, BrokerError> {
    let (socket, rx) = NatSocket::bind(bind)?;
    let _endpoint = reader(&socket)?;
    let mut inbox = Inbox {
        socket,
        rx,
        stash: VecDeque::new(),
    };
    inbox.stun(server, timeout).await
}
