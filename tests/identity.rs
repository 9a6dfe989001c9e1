//! A worker's node key is proven in the QUIC handshake (TLS 1.3 raw public keys,
//! RFC 7250): a caller that dials a node id gets that node or a clear refusal, and a
//! caller that dials an address learns the id.

use std::net::SocketAddr;

use nano_connect::protocol::identity::NodeKey;
use nano_connect::service::{Handler, Reply, Request};
use nano_connect::transport::tls::{peer_node_id, server_name};
use nano_connect::transport::{bind_udp, client_endpoint, QuicConfig};
use nano_connect::worker::{RpcServer, RpcServerConfig};

struct Ok200;

impl Handler for Ok200 {
    async fn handle(&self, _request: Request) -> Reply {
        Reply::ok(b"yes".to_vec())
    }
}

async fn worker(key: NodeKey) -> RpcServer {
    RpcServer::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        RpcServerConfig {
            identity: key,
            ..RpcServerConfig::default()
        },
        Ok200,
    )
    .await
    .expect("worker binds")
}

fn caller() -> quinn::Endpoint {
    let socket = bind_udp(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    client_endpoint(socket, &QuicConfig::default()).expect("client endpoint")
}

#[tokio::test]
async fn the_handshake_proves_the_node_id_and_a_caller_learns_it() {
    let key = NodeKey::from_seed([1; 32]);
    let id = key.node_id();
    let server = worker(key).await;
    let endpoint = caller();
    // Dialing the node id it has: accepted, and the id is readable afterwards.
    let named = endpoint
        .connect(server.local_addr(), &server_name(Some(&id)))
        .expect("connect")
        .await
        .expect("the worker proves the id it was dialed with");
    assert_eq!(peer_node_id(&named), Some(id));
    // Dialing an address alone: any node key is taken, and the caller learns which.
    let anonymous = endpoint
        .connect(server.local_addr(), &server_name(None))
        .expect("connect")
        .await
        .expect("handshake");
    assert_eq!(peer_node_id(&anonymous), Some(id));
}

#[tokio::test]
async fn a_worker_with_another_key_is_refused_naming_both_ids() {
    let server = worker(NodeKey::from_seed([2; 32])).await;
    let presented = NodeKey::from_seed([2; 32]).node_id();
    let expected = NodeKey::from_seed([3; 32]).node_id();
    let e = caller()
        .connect(server.local_addr(), &server_name(Some(&expected)))
        .expect("connect")
        .await
        .expect_err("another node's key must not pass for the expected one");
    let text = e.to_string();
    assert!(
        text.contains(&presented.to_string()) && text.contains(&expected.to_string()),
        "the error names both ids: {text}"
    );
}
