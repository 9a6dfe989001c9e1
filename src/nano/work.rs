//! `work_generate` to a separate work server.
//!
//! A Nano node computes proof of work slowly on a CPU; operators run a work server
//! (nano-work-server, a GPU peer) that speaks the same RPC dialect for `work_generate`
//! (and `work_validate`, `work_cancel`). [`WorkRouted`] sends `work_generate` to such a
//! server and everything else to the node, each through its own [`NanoRelay`] and so its
//! own policy check, timeout and answer cap.

use super::relay::NanoRelay;
use super::retry::action_of;
use crate::service::{Handler, Reply, Request};

/// The action that goes to the work server.
pub const WORK_ACTION: &str = "work_generate";

/// A [`Handler`] that sends `work_generate` to `work` (when there is one) and every other
/// request to `node`.
///
/// `work`'s policy must allow `work_generate` (a relay built with
/// [`NanoRelay::new`] from a policy with `allow("work_generate")`); requests that reach it
/// are checked against it like any other.
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

impl Handler for WorkRouted {
    async fn handle(&self, request: Request) -> Reply {
        match &self.work {
            Some(work) if action_of(&request.body).as_deref() == Some(WORK_ACTION) => {
                work.handle(request).await
            }
            _ => self.node.handle(request).await,
        }
    }
}
