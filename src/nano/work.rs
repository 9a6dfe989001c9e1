//! `work_generate` to a separate work server.
//!
//! A Nano node computes proof of work slowly on a CPU; operators run a work server
//! (nano-work-server, a GPU peer) that speaks the same RPC dialect for `work_generate`
//! (and `work_validate`, `work_cancel`). [`WorkRouted`] sends `work_generate` to such a
//! server and everything else to the node, each through its own [`NanoRelay`] and so its
//! own timeout and answer cap. It routes on the action of a [`CheckedRequest`]: the
//! stack's policy (which allows `work_generate` when there is a work server) checked it
//! once, before.

use std::future::Future;
use std::net::SocketAddr;

use super::checked::CheckedRequest;
use super::relay::{Forward, NanoRelay};
use crate::service::Reply;

/// The action that goes to the work server.
pub const WORK_ACTION: &str = "work_generate";

/// A [`Forward`] that sends `work_generate` to `work` (when there is one) and every other
/// checked request to `node`.
#[derive(Debug, Clone)]
pub struct WorkRouted {
    node: NanoRelay,
    work: Option<NanoRelay>,
}

impl WorkRouted {
    /// Routes `work_generate` to `work` (`None`: to the node too), the rest to `node`.
    pub fn new(node: NanoRelay, work: Option<NanoRelay>) -> Self {
        Self { node, work }
    }

    /// The node's relay.
    pub fn node(&self) -> &NanoRelay {
        &self.node
    }
}

impl Forward for WorkRouted {
    fn forward(
        &self,
        request: CheckedRequest,
        peer: SocketAddr,
    ) -> impl Future<Output = Reply> + Send {
        let relay = match &self.work {
            Some(work) if request.action() == WORK_ACTION => work,
            _ => &self.node,
        };
        relay.forward(request, peer)
    }
}
