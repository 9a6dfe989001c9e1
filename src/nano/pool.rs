//! Kept-alive HTTP/1.1 connections from a [`NanoRelay`](super::NanoRelay) to its node.
//!
//! The relay talks to one node only, so it needs no general HTTP client: no per-request
//! pool key, no URL or origin-form work, no redirects. [`NodeConnections`] keeps idle
//! connections (hyper's low-level `http1` client, one spawned task per connection) in a
//! stack, hands out the one used last (its buffers and the node's thread are warm), and
//! opens a new one when none is idle. A connection goes back only after its answer was
//! read to the end; one that broke, or whose answer was cut off, is dropped, which closes
//! it.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Most idle connections kept: beyond that, a connection that was opened for a burst is
/// closed after its request. The worker allows 100 requests in flight per QUIC
/// connection by default; a few such callers at once fit.
const MAX_IDLE_CONNECTIONS: usize = 256;

/// An idle connection older than this is closed rather than used (hyper-util's and
/// reqwest's pool default): a node or a middlebox may have dropped it silently.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A sender of requests on one connection to the node.
pub(crate) type Connection = SendRequest<Full<Bytes>>;

/// The idle connections to one node, and how to open another.
#[derive(Debug)]
pub(crate) struct NodeConnections {
    host: String,
    port: u16,
    idle: Mutex<Vec<(Connection, Instant)>>,
}

impl NodeConnections {
    /// Connections to `host` (a name or an IP address, IPv6 without brackets) at `port`.
    pub(crate) fn new(host: String, port: u16) -> Self {
        Self {
            host,
            port,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn idle(&self) -> MutexGuard<'_, Vec<(Connection, Instant)>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The most recently used idle connection that is still open and ready, if any.
    pub(crate) async fn reuse(&self) -> Option<Connection> {
        loop {
            let (mut connection, since) = self.idle().pop()?;
            if since.elapsed() > IDLE_TIMEOUT || connection.is_closed() {
                continue;
            }
            // Ready at once when idle; an error when the node closed it meanwhile.
            if connection.ready().await.is_ok() {
                return Some(connection);
            }
        }
    }

    /// Opens a new connection; errors with the reason when none can be made (the
    /// caller's deadline bounds the wait).
    pub(crate) async fn open(&self) -> Result<Connection, String> {
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("tcp connect error: {e}"))?;
        // Requests are one small write each: do not wait for more to fill a segment.
        let _ = stream.set_nodelay(true);
        let (connection, driver) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake failed: {e}"))?;
        tokio::spawn(async move {
            if let Err(error) = driver.await {
                tracing::debug!(%error, "connection to the Nano node ended");
            }
        });
        Ok(connection)
    }

    /// Puts back a connection whose last answer was read to the end.
    pub(crate) fn put_back(&self, connection: Connection) {
        if connection.is_closed() {
            return;
        }
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE_CONNECTIONS {
            idle.push((connection, Instant::now()));
        }
    }
}
