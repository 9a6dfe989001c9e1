//! The mapping check (RFC 4787 §4.1): what a NAT in front of a socket does to its
//! traffic, found by asking one broker at two ports. Behind `nano-connect netcheck`, and
//! behind a worker's choice between announcing itself and registering with brokers.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::{local_addrs, reader, BrokerError, Mux};
use crate::protocol::broker::BrokerMessage;
use crate::transport::nat_socket::NatSocket;

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

/// What one mapping check against a broker found.
#[derive(Debug, Clone)]
pub struct MappingCheck {
    /// Round trip of the `Ping` that got the answer.
    pub rtt: Duration,
    /// The reflexive address the broker port saw (RFC 8489).
    pub reflexive: SocketAddr,
    /// The reflexive address the broker's alternate port saw, if it answered.
    pub reflexive_alt: Option<SocketAddr>,
}

impl MappingCheck {
    /// The mapping behaviour the two reflexive addresses show.
    pub fn mapping(&self) -> Mapping {
        match self.reflexive_alt {
            Some(a) if a == self.reflexive => Mapping::EndpointIndependent,
            Some(_) => Mapping::EndpointDependent,
            None => Mapping::Unknown,
        }
    }

    /// Whether the NAT maps endpoint-dependently ("symmetric").
    pub fn symmetric(&self) -> bool {
        self.mapping() == Mapping::EndpointDependent
    }

    /// Whether no NAT stands between `local` (the socket's bound address) and the
    /// broker: the broker saw one of the host's own addresses and the socket's port.
    pub fn public(&self, local: SocketAddr, broker: SocketAddr) -> bool {
        let own: Vec<IpAddr> = local_addrs(local, broker)
            .iter()
            .map(SocketAddr::ip)
            .collect();
        own.contains(&self.reflexive.ip()) && self.reflexive.port() == local.port()
    }
}

/// Pings `broker`, then sends a STUN Binding to the alternate port its `Pong` names (at
/// the broker's IP), from `mux`'s socket, and returns both reflexive addresses.
///
/// Errors: [`BrokerError::Silent`] when the broker does not answer the ping within
/// `timeout`; a silent alternate port is not an error (the mapping is then unknown).
pub async fn mapping_check(
    mux: &Mux,
    broker: SocketAddr,
    timeout: Duration,
) -> Result<MappingCheck, BrokerError> {
    let tx: u64 = rand::random();
    let (pong, rtt) = mux
        .ask(broker, &BrokerMessage::Ping { tx }, tx, timeout)
        .await?;
    let BrokerMessage::Pong { reflexive, alt, .. } = pong else {
        return Err(BrokerError::NoPath(
            "the broker did not answer the ping".into(),
        ));
    };
    let reflexive_alt = match alt {
        Some(alt) => mux
            .stun(SocketAddr::new(broker.ip(), alt.port()), timeout)
            .await
            .ok(),
        None => None,
    };
    Ok(MappingCheck {
        rtt,
        reflexive,
        reflexive_alt,
    })
}

/// What `netcheck` found.
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

/// Checks the mapping of a fresh socket on `bind` toward the broker's two ports.
pub async fn netcheck(
    bind: SocketAddr,
    broker: SocketAddr,
    timeout: Duration,
) -> Result<NetReport, BrokerError> {
    let (socket, rx) = NatSocket::bind(bind)?;
    // quinn's endpoint is what reads the socket; it feeds the diverted channel.
    let _endpoint = reader(&socket)?;
    let (mux, _unsolicited) = Mux::start(socket.clone(), rx);
    let check = mapping_check(&mux, broker, timeout).await?;
    let local = socket.local()?;
    Ok(NetReport {
        local,
        reflexive: check.reflexive,
        reflexive_alt: check.reflexive_alt,
        mapping: check.mapping(),
        public: check.public(local, broker),
        rtt: check.rtt,
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
    let (mux, _unsolicited) = Mux::start(socket, rx);
    mux.stun(server, timeout).await
}
