//! Starting and stopping grapes: bind errors, bootstrap errors, shutdown, defaults.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::time::Duration;

use common::{loopback_config, network, poll_until};
use grape::{Grape, GrapeConfig, GrapeError};

#[test]
fn defaults() {
    let config = GrapeConfig::default();
    assert_eq!(config.bind, Ipv4Addr::UNSPECIFIED);
    assert_eq!(config.dht_port, 20001);
    assert_eq!(config.api_port, 30001);
    assert_eq!(config.api_bind, Ipv4Addr::LOCALHOST);
    assert_eq!(config.bootstrap, None);
    assert_eq!(config.announce_window, Duration::from_secs(256));
    assert_eq!(config.public_ip, None);
    assert_eq!(config.lookup_deadline, Duration::from_secs(2));
    assert_eq!(config.lookup_settle, Duration::from_millis(150));
}

#[tokio::test]
async fn dht_port_in_use() {
    let taken = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let port = taken.local_addr().expect("addr").port();
    let config = GrapeConfig {
        dht_port: port,
        ..loopback_config(vec![])
    };
    let error = Grape::start(config).await.expect_err("port is taken");
    assert!(
        matches!(&error, GrapeError::DhtBind { addr, .. }
            if *addr == SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("--dp"), "{message}");
    assert!(message.contains(&port.to_string()), "{message}");
}

#[tokio::test]
async fn api_port_in_use() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("tcp");
    let port = taken.local_addr().expect("addr").port();
    let config = GrapeConfig {
        api_port: port,
        ..loopback_config(vec![])
    };
    let error = Grape::start(config).await.expect_err("port is taken");
    assert!(
        matches!(&error, GrapeError::ApiBind { addr, .. } if addr.port() == port),
        "{error:?}"
    );
    assert!(error.to_string().contains("--aph"), "{error}");
}

#[tokio::test]
async fn bad_config_is_refused() {
    let config = GrapeConfig {
        announce_window: Duration::from_millis(3),
        ..loopback_config(vec![])
    };
    assert!(matches!(
        Grape::start(config).await,
        Err(GrapeError::WindowTooShort { .. })
    ));
    // No port: refused without any DNS or network traffic.
    let config = loopback_config(vec!["127.0.0.1".to_owned()]);
    let error = Grape::start(config).await.expect_err("no port");
    assert!(matches!(&error, GrapeError::Bootstrap { node, .. } if node == "127.0.0.1"));
    assert!(error.to_string().contains("--bn"), "{error}");
}

/// After shutdown both ports are free again, so a new grape can take them.
#[tokio::test]
async fn shutdown_frees_both_ports() {
    let grapes = network(2, |_| {}).await;
    assert!(grapes[1].bootstrapped().await);
    let dht = grapes[1].dht_addr();
    let api = grapes[1].api_addr();
    let bootstrap = vec![grapes[0].dht_addr().to_string()];
    let mut grapes = grapes;
    let second = grapes.pop().expect("two grapes");
    second.shutdown().await;

    // The API port is closed at once.
    assert!(tokio::net::TcpStream::connect(api).await.is_err());

    // The DHT thread notices within its 50 ms poll; retry briefly.
    let restarted = poll_until("ports free again", Duration::from_secs(5), || {
        let config = GrapeConfig {
            dht_port: dht.port(),
            api_port: api.port(),
            ..loopback_config(bootstrap.clone())
        };
        async move { Grape::start(config).await.ok() }
    })
    .await;
    assert_eq!(restarted.dht_addr(), dht);
    assert_eq!(restarted.api_addr(), api);
    restarted.shutdown().await;
    common::shutdown(grapes).await;
}

/// The first grape of a private network is not bootstrapped until another joins.
#[tokio::test]
async fn first_grape_bootstraps_when_another_joins() {
    let first = Grape::start(loopback_config(vec![])).await.expect("grape");
    assert!(!first.bootstrapped().await);
    let second = Grape::start(loopback_config(vec![first.dht_addr().to_string()]))
        .await
        .expect("grape");
    poll_until("both bootstrapped", Duration::from_secs(10), || async {
        (first.bootstrapped().await && second.bootstrapped().await).then_some(())
    })
    .await;
    second.shutdown().await;
    first.shutdown().await;
}
