//! An HTTP/1.1 server with bounds, for every HTTP face of the mesh (the grape's API, the
//! gateway, `/metrics`): connections that idle, trickle their headers or their body, or
//! come in thousands from one address do not pin the process's sockets.
//!
//! `axum::serve` applies no timeout and no connection limit: 500 idle or slowloris
//! connections stayed open for as long as their clients liked, and a grape with 128 file
//! descriptors and 200 idle connections stopped answering lookups. [`serve`] runs hyper's
//! HTTP/1.1 connection with a timer, so that:
//!
//! - a connection that sends no complete request head within
//!   [`HttpLimits::header_timeout`] (idle between keep-alive requests included) is closed;
//! - a request not answered within [`HttpLimits::request_timeout`] (its body read
//!   included) gets HTTP 408 and its connection is closed;
//! - at most [`HttpLimits::max_connections`] connections are open at once, and at most
//!   [`HttpLimits::max_per_ip`] from one IP address; a connection over either is closed at
//!   once (the client sees a reset and may retry), before it costs more than a socket.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Bounds of an HTTP face (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Longest wait for a request's head, idle time before it included. Default 10 s.
    pub header_timeout: Duration,
    /// Longest time from a request's head to the end of its answer. Default 30 s (a
    /// lookup takes at most 2 s, a DHT put 15 s, a request through the mesh 10 s).
    pub request_timeout: Duration,
    /// Connections open at once. Default 1024.
    pub max_connections: usize,
    /// Connections from one IP address at once. Default 128.
    pub max_per_ip: usize,
}

impl HttpLimits {
    /// These limits made to fit a process that may open `files` descriptors: at most
    /// half of them for connections (the rest for the DHT, upstream connections, logs),
    /// and at most a quarter of those from one address, so that one client cannot take
    /// every descriptor. `None` (unknown) changes nothing.
    pub fn within_descriptors(self, files: Option<u64>) -> Self {
        let Some(files) = files else { return self };
        let connections = usize::try_from(files / 2).unwrap_or(usize::MAX).max(4);
        let max_connections = self.max_connections.min(connections);
        Self {
            max_connections,
            max_per_ip: self.max_per_ip.min((max_connections / 4).max(1)),
            ..self
        }
    }
}

/// The soft limit on open files of this process (RLIMIT_NOFILE), where the platform
/// says.
fn open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit(2) writes into the struct it is given and reads nothing else.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        if rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY {
            return Some(limit.rlim_cur);
        }
    }
    None
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_per_ip: 128,
        }
    }
}

/// Open connections, in all and per IP.
#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// Counts one connection while it lives.
struct Slot {
    open: Arc<Mutex<Open>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.by_ip.remove(&self.ip);
            }
        }
    }
}

fn take_slot(open: &Arc<Mutex<Open>>, ip: IpAddr, limits: &HttpLimits) -> Option<Slot> {
    let mut state = open.lock().unwrap_or_else(|p| p.into_inner());
    let from_ip = state.by_ip.get(&ip).copied().unwrap_or(0);
    if state.total >= limits.max_connections || from_ip >= limits.max_per_ip {
        return None;
    }
    state.total += 1;
    *state.by_ip.entry(ip).or_insert(0) += 1;
    Some(Slot {
        open: open.clone(),
        ip,
    })
}

/// Serves `router` on `listener` within `limits` until `shutdown` resolves, then lets
/// requests in flight finish (at most [`HttpLimits::request_timeout`]). Handlers can
/// extract `ConnectInfo<SocketAddr>`.
///
/// Errors: only from accepting on the listener (file descriptors exhausted are waited
/// out, not returned).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = limits.within_descriptors(open_files_limit());
    let router = router.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        axum::http::StatusCode::REQUEST_TIMEOUT,
        limits.request_timeout,
    ));
    let open = Arc::new(Mutex::new(Open::default()));
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors (or another transient error): wait a little
                    // rather than spin, and keep serving the connections already open.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = take_slot(&open, peer.ip(), &limits) else {
            tracing::debug!(%peer, "connection refused: over the connection limits");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service =
            router
                .clone()
                .map_request(move |request: hyper::Request<hyper::body::Incoming>| {
                    let mut request = request.map(axum::body::Body::new);
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request
                });
        let service = TowerToHyperService::new(service);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(true);
        let stop = stop.clone();
        tasks.spawn(async move {
            let _slot = slot;
            // Upgrades stay possible (a websocket face on the same server).
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
        });
    }
    // Requests in flight get their time; idle connections close at once.
    stop.cancel();
    tasks.close();
    let _ = tokio::time::timeout(limits.request_timeout, tasks.wait()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_slots_are_bounded_in_all_and_per_ip() {
        let open = Arc::new(Mutex::new(Open::default()));
        let limits = HttpLimits {
            max_connections: 3,
            max_per_ip: 2,
            ..HttpLimits::default()
        };
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = take_slot(&open, a, &limits).unwrap();
        let _a2 = take_slot(&open, a, &limits).unwrap();
        assert!(take_slot(&open, a, &limits).is_none(), "per IP");
        let _b1 = take_slot(&open, b, &limits).unwrap();
        assert!(take_slot(&open, b, &limits).is_none(), "in all");
        drop(a1);
        assert!(
            take_slot(&open, b, &limits).is_some(),
            "a closed one frees its slot"
        );
    }

    #[test]
    fn limits_fit_the_descriptors_the_process_has() {
        let limits = HttpLimits::default().within_descriptors(Some(128));
        assert_eq!((limits.max_connections, limits.max_per_ip), (64, 16));
        let plenty = HttpLimits::default().within_descriptors(Some(1 << 20));
        assert_eq!(plenty, HttpLimits::default());
        assert_eq!(
            HttpLimits::default().within_descriptors(None),
            HttpLimits::default()
        );
    }
}
