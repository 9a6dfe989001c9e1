//! A grape of the nano-connect mesh: a BitTorrent mainline DHT node with Grenache's HTTP
//! API next to it.
//!
//! Services announce a key (for example `nano_rpc`) with the port they listen on, and
//! clients look the key up to find `ip:port` pairs, as in
//! [Grenache](https://github.com/bitfinexcom/grenache). The DHT is
//! [mainline](https://docs.rs/mainline) in server mode: BEP 5 `announce_peer` /
//! `get_peers` for announces and lookups, BEP 44 `put` / `get` for small items. The HTTP
//! API is grenache-grape's (`/announce`, `/lookup`, `/put`, `/get`), so
//! grenache-nodejs-link works against a grape unchanged.
//!
//! Two things differ from a textbook DHT announce, both because mainline keeps announces
//! with no expiry: a key's announces go to a new infohash every quarter window, and a
//! lookup asks for the last four ([`mod@infohash`] explains the rule). An announce is visible
//! for 3/4 to 4/4 of the window (default 256 s); renew it more often than every 3/4.
//!
//! ```no_run
//! # async fn demo() -> Result<(), grape::GrapeError> {
//! use grape::{Grape, GrapeConfig};
//!
//! // First grape of a private network, then one that bootstraps from it.
//! let first = Grape::start(GrapeConfig {
//!     bootstrap: Some(vec![]),
//!     ..GrapeConfig::default()
//! })
//! .await?;
//! let second = Grape::start(GrapeConfig {
//!     dht_port: 20002,
//!     api_port: 30002,
//!     bootstrap: Some(vec!["127.0.0.1:20001".into()]),
//!     ..GrapeConfig::default()
//! })
//! .await?;
//! second.dht().announce("nano_rpc", 7000).await?;
//! let peers = first.dht().lookup("nano_rpc", std::time::Duration::from_secs(2)).await?;
//! # let _ = peers;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - [`mod@infohash`]: service key → infohash, and the time slots that expire announces (pure).
//! - [`bep44`]: BEP 44 targets, limits and signature checks (pure).
//! - [`store`]: what was announced and put through this grape itself (pure).
//! - [`quota`]: what one source may make a grape store per window (pure); [`filter`]
//!   applies it on the DHT port.
//! - [`dht`]: [`GrapeDht`], the mainline node: slotted announce and lookup, put and get.
//! - [`http`]: the Grenache HTTP API on axum and its error strings; `http/wire.rs` parses
//!   request data and shapes answers (pure).
//! - [`defaults`]: the `DEFAULT_*` values and why.
//! - `error`: [`GrapeError`].
//! - this file: [`GrapeConfig`] and [`Grape`], which runs a [`GrapeDht`] and the API
//!   together.

#![deny(missing_docs)]
#![warn(unreachable_pub)]

pub mod bep44;
pub mod defaults;
pub mod dht;
mod error;
pub mod filter;
pub mod http;
pub mod infohash;
pub mod quota;
pub mod store;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use dht::{DhtObserver, GrapeDht};
pub use error::{GrapeError, ItemProblem};
pub use infohash::{infohash, Infohash, SlotSchedule, SLOTS_PER_WINDOW};

use defaults::*;

/// How to run a grape. [`Default`] gives the values in [`defaults`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrapeConfig {
    /// IPv4 address the DHT's UDP socket binds. Default `0.0.0.0` (all interfaces):
    /// other grapes must reach it.
    pub bind: Ipv4Addr,
    /// DHT UDP port (`--dp`); 0 picks a free one. Default 20001.
    pub dht_port: u16,
    /// HTTP API TCP port (`--aph`); 0 picks a free one. Default 30001.
    pub api_port: u16,
    /// Address the HTTP API binds. Default `127.0.0.1`: the API lets anyone who reaches it
    /// announce and put through this grape, so exposing it (grenache-grape binds all
    /// interfaces) is a deliberate choice.
    pub api_bind: IpAddr,
    /// Bootstrap nodes as `IP:PORT` or `HOST:PORT` (`--bn`). `None`: the public mainline
    /// network's routers. `Some(vec![])`: none, this is the first node of a private
    /// network. Default `None`.
    pub bootstrap: Option<Vec<String>>,
    /// Announce window: announces are visible for 3/4 to 4/4 of it, so announcers must
    /// renew within 3/4 (see [`SlotSchedule`]). All grapes of a network must agree on it.
    /// At least 4 ms. Default 256 s.
    pub announce_window: Duration,
    /// This grape's public IPv4 address, if known. On a public host set it: mainline
    /// derives a BEP 42 node id from it, and otherwise resets its routing table once it
    /// learns its address. Default `None`.
    pub public_ip: Option<Ipv4Addr>,
    /// Longest a lookup or get may take (HTTP `/lookup`, `/get`). Default 2 s.
    pub lookup_deadline: Duration,
    /// How long a lookup keeps collecting after the first non-empty batch. Default 150 ms.
    pub lookup_settle: Duration,
    /// Bounds of the HTTP API (timeouts, connections in all and per IP). Default
    /// [`http::serve::HttpLimits::default`].
    pub http_limits: http::serve::HttpLimits,
    /// Run the DHT node in client mode: it asks other nodes but answers none and stores
    /// nothing for them (BEP 43 read-only). For a user's embedded node behind a NAT,
    /// never for a grape others bootstrap from. Default false (server mode).
    pub client_mode: bool,
}

impl Default for GrapeConfig {
    fn default() -> Self {
        Self {
            bind: DEFAULT_DHT_BIND,
            dht_port: DEFAULT_DHT_PORT,
            api_port: DEFAULT_API_PORT,
            api_bind: DEFAULT_API_BIND,
            bootstrap: None,
            announce_window: DEFAULT_ANNOUNCE_WINDOW,
            public_ip: None,
            lookup_deadline: DEFAULT_LOOKUP_DEADLINE,
            lookup_settle: DEFAULT_LOOKUP_SETTLE,
            client_mode: false,
            http_limits: http::serve::HttpLimits::default(),
        }
    }
}

/// A running grape: a [`GrapeDht`] node and the Grenache HTTP API ([`http`]) in front of
/// it.
///
/// Stop it with [`Grape::shutdown`]. Dropping it also stops the HTTP server (without
/// waiting) and, once in-flight requests are done, the DHT node.
#[derive(Debug)]
pub struct Grape {
    dht: Arc<GrapeDht>,
    api_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl Grape {
    /// Starts the DHT node and the HTTP API, and returns once both are bound. DHT
    /// bootstrapping goes on in the background: see [`Grape::bootstrapped`].
    ///
    /// Must be called within a tokio runtime (the HTTP server is spawned on it).
    ///
    /// # Errors
    ///
    /// [`GrapeError::DhtBind`] / [`GrapeError::ApiBind`] when a port cannot be bound,
    /// [`GrapeError::Bootstrap`] for a bootstrap node that does not resolve,
    /// [`GrapeError::WindowTooShort`].
    pub async fn start(config: GrapeConfig) -> Result<Grape, GrapeError> {
        let dht = Arc::new(GrapeDht::start(&config).await?);
        let addr = SocketAddr::new(config.api_bind, config.api_port);
        let api_bind_error = |source| GrapeError::ApiBind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(api_bind_error)?;
        let api_addr = listener.local_addr().map_err(api_bind_error)?;
        let app = http::router(Arc::clone(&dht), config.lookup_deadline);
        let (stop, stopped) = oneshot::channel::<()>();
        let limits = config.http_limits;
        let server = tokio::spawn(async move {
            http::serve::serve(listener, app, limits, async {
                // Either a shutdown or a dropped Grape.
                let _ = stopped.await;
            })
            .await
        });
        tracing::info!(dht = %dht.local_addr(), api = %api_addr, "grape started");
        Ok(Grape {
            dht,
            api_addr,
            stop: Some(stop),
            server: Some(server),
        })
    }

    /// The DHT's UDP address (as bound: `0.0.0.0:PORT` when bound to all interfaces).
    /// Other grapes bootstrap from it.
    pub fn dht_addr(&self) -> SocketAddrV4 {
        self.dht.local_addr()
    }

    /// The HTTP API's address (as bound), e.g. `127.0.0.1:30001`; grenache-nodejs-link's
    /// `grape` option is `http://` followed by it.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The DHT node, for announces, lookups, puts and gets without HTTP.
    pub fn dht(&self) -> &GrapeDht {
        &self.dht
    }

    /// The DHT node, shared (for a broker that announces itself through it).
    pub fn dht_shared(&self) -> Arc<GrapeDht> {
        Arc::clone(&self.dht)
    }

    /// Whether the DHT node has found other nodes (see [`GrapeDht::bootstrapped`]).
    pub async fn bootstrapped(&self) -> bool {
        self.dht.bootstrapped().await
    }

    /// Stops the grape: the HTTP server stops accepting, finishes the requests in flight
    /// (a lookup takes at most its deadline), and closes; then the DHT node is dropped,
    /// which stops its thread and frees its UDP port within mainline's 50 ms poll.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "grape HTTP server ended with an error"),
                Err(e) => tracing::warn!(error = %e, "grape HTTP server task failed"),
            }
        }
        tracing::info!(api = %self.api_addr, "grape stopped");
    }
}

impl Drop for Grape {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
