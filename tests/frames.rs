//! Bad input on the wire: malformed, truncated, oversized and wrong-version frames get an
//! error frame or a closed stream, and the worker keeps serving everyone else.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use nano_connect::fibonacci::{FibonacciService, FIBONACCI_KEY};
use nano_connect::protocol::frame::{
    self, ErrorCode, RequestFrame, ResponseFrame, LENGTH_PREFIX_LEN, PROTOCOL_VERSION,
};
use nano_connect::route::{CallError, Discovery, RpcClient, RpcClientConfig};
use nano_connect::transport::{bind_udp, client_endpoint, QuicConfig};
use nano_connect::worker::{RpcServer, RpcServerConfig};

const LIMIT: usize = 4096;

async fn worker() -> RpcServer {
    RpcServer::bind(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        RpcServerConfig {
            keys: vec![FIBONACCI_KEY.into()],
            max_request_bytes: LIMIT,
            read_timeout: Duration::from_millis(500),
            ..RpcServerConfig::default()
        },
        FibonacciService,
    )
    .await
    .expect("worker binds")
}

/// Opens a raw QUIC connection to `addr` for hand-made stream contents.
async fn raw_connection(addr: SocketAddr) -> quinn::Connection {
    let socket = bind_udp(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let endpoint = client_endpoint(socket, &QuicConfig::default()).unwrap();
    endpoint
        .connect(addr, "nano-connect")
        .unwrap()
        .await
        .expect("handshake")
}

/// Writes `bytes` on a new stream, finishes it, and reads the answer (bounded in time).
async fn exchange_raw(connection: &quinn::Connection, bytes: &[u8], finish: bool) -> Vec<u8> {
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    // The worker may stop reading an oversized frame early; a failed write is fine then.
    let _ = send.write_all(bytes).await;
    if finish {
        let _ = send.finish();
    }
    tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 20))
        .await
        .expect("worker answers within 5 s")
        .unwrap_or_default()
}

fn decode_response(bytes: &[u8]) -> ResponseFrame {
    frame::decode(bytes, 1 << 20).expect("a well-formed response frame")
}

fn good_request(id: u64) -> Vec<u8> {
    frame::encode(
        &RequestFrame {
            v: PROTOCOL_VERSION,
            id,
            key: FIBONACCI_KEY.into(),
            body: br#"{"length":5}"#.to_vec(),
        },
        LIMIT,
    )
    .unwrap()
}

async fn assert_still_serves(connection: &quinn::Connection) {
    let answer = decode_response(&exchange_raw(connection, &good_request(99), true).await);
    assert_eq!(answer.id, 99);
    assert_eq!(answer.error, None);
    assert_eq!(answer.body, b"[0,1,1,2,3]");
}

#[tokio::test]
async fn a_good_request_is_answered() {
    let worker = worker().await;
    let connection = raw_connection(worker.local_addr()).await;
    let answer = decode_response(&exchange_raw(&connection, &good_request(1), true).await);
    assert_eq!(answer.id, 1);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, b"[0,1,1,2,3]");
}

#[tokio::test]
async fn garbage_gets_malformed_frame_and_the_connection_lives_on() {
    let worker = worker().await;
    let connection = raw_connection(worker.local_addr()).await;
    let mut garbage = 6u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xc1, 0xc1, 0xff, 0x00, 0x01, 0x02]);
    let answer = decode_response(&exchange_raw(&connection, &garbage, true).await);
    assert_eq!(answer.error.unwrap().code, ErrorCode::MalformedFrame);
    assert_still_serves(&connection).await;
}

#[tokio::test]
async fn truncated_frames_get_malformed_frame() {
    let worker = worker().await;
    let connection = raw_connection(worker.local_addr()).await;
    let request = good_request(2);
    for cut in [1, LENGTH_PREFIX_LEN, request.len() - 1] {
        let answer = decode_response(&exchange_raw(&connection, &request[..cut], true).await);
        let error = answer.error.expect("an error frame");
        assert_eq!(
            error.code,
            ErrorCode::MalformedFrame,
            "cut at {cut}: {error:?}"
        );
    }
    assert_still_serves(&connection).await;
}

#[tokio::test]
async fn a_stream_left_open_times_out_with_an_error_frame() {
    let worker = worker().await;
    let connection = raw_connection(worker.local_addr()).await;
    let request = good_request(3);
    let answer = decode_response(&exchange_raw(&connection, &request[..3], false).await);
    assert_eq!(answer.error.unwrap().code, ErrorCode::MalformedFrame);
    assert_still_serves(&connection).await;
}

#[tokio::test]
async fn an_oversized_frame_is_refused_before_it_is_read() {
    let worker = worker().await;
    let connection = raw_connection(worker.local_addr()).await;
    let mut big = ((LIMIT + 1) as u32).to_be_bytes().to_vec();
    big.extend(std::iter::repeat_n(0x90u8, LIMIT + 1));
    let answer = decode_response(&exchange_raw(&connection, &big, true).await);
    let error = answer.error.expect("an error frame");
    assert_eq!(error.code, ErrorCode::FrameTooLarge);
    assert!(
        error.message.contains(&LIMIT.to_string()),
        "{}",
        error.message
    );
    // A prefix that claims 4 GiB costs the worker nothing either.
    let answer = decode_response(&exchange_raw(&connection, &u32::MAX.to_be_bytes(), true).await);
    assert_eq!(answer.error.unwrap().code, ErrorCode::FrameTooLarge);
    assert_still_serves(&connection).await;
}

#[tokio::test]
async fn trailing_bytes_after_the_frame_are_malformed() {
    let worker = worker().await;
    let connection = raw_connection(worker.local_addr()).await;
    let mut request = good_request(4);
    request.extend_from_slice(b"extra");
    let answer = decode_response(&exchange_raw(&connection, &request, true).await);
    assert_eq!(answer.error.unwrap().code, ErrorCode::MalformedFrame);
    assert_still_serves(&connection).await;
}

#[tokio::test]
async fn another_version_and_another_key_are_refused_by_name() {
    let worker = worker().await;
    let connection = raw_connection(worker.local_addr()).await;
    let future = frame::encode(
        &RequestFrame {
            v: 2,
            id: 5,
            key: FIBONACCI_KEY.into(),
            body: vec![],
        },
        LIMIT,
    )
    .unwrap();
    let answer = decode_response(&exchange_raw(&connection, &future, true).await);
    assert_eq!(answer.error.unwrap().code, ErrorCode::UnsupportedVersion);

    let other_key = frame::encode(
        &RequestFrame {
            v: PROTOCOL_VERSION,
            id: 6,
            key: "nano_rpc".into(),
            body: vec![],
        },
        LIMIT,
    )
    .unwrap();
    let answer = decode_response(&exchange_raw(&connection, &other_key, true).await);
    assert_eq!(answer.id, 6);
    assert_eq!(answer.error.unwrap().code, ErrorCode::UnknownService);
    assert_still_serves(&connection).await;
}

#[tokio::test]
async fn a_bad_stream_does_not_disturb_concurrent_good_ones() {
    let worker = worker().await;
    let connection = raw_connection(worker.local_addr()).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..32u64 {
        let connection = connection.clone();
        tasks.spawn(async move {
            if i % 4 == 0 {
                let _ = exchange_raw(&connection, &[0xff; 3], true).await;
                None
            } else {
                let answer =
                    decode_response(&exchange_raw(&connection, &good_request(i), true).await);
                Some((i, answer))
            }
        });
    }
    let mut good = 0;
    while let Some(done) = tasks.join_next().await {
        if let Some((i, answer)) = done.unwrap() {
            assert_eq!(answer.id, i);
            assert_eq!(answer.body, b"[0,1,1,2,3]");
            good += 1;
        }
    }
    assert_eq!(good, 24);
}

#[tokio::test]
async fn the_client_refuses_to_send_an_oversized_request() {
    let worker = worker().await;
    let client = RpcClient::new(
        Discovery::None,
        RpcClientConfig {
            max_request_bytes: 64,
            ..RpcClientConfig::default()
        },
    )
    .unwrap();
    let err = client
        .request_addr(worker.local_addr(), FIBONACCI_KEY, &[b' '; 200])
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::Frame(_)), "{err}");
}

#[tokio::test]
async fn the_client_reports_a_service_refusal_with_its_code() {
    let worker = worker().await;
    let client = RpcClient::new(Discovery::None, RpcClientConfig::default()).unwrap();
    let err = client
        .request_addr(worker.local_addr(), FIBONACCI_KEY, br#"{"length":1000}"#)
        .await
        .unwrap_err();
    match err {
        CallError::Refused { error, .. } => assert_eq!(error.code, ErrorCode::InvalidRequest),
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test]
async fn a_dead_address_fails_within_the_connect_timeout() {
    // Bind and drop a socket to get a port nobody listens on.
    let dead = bind_udp(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .unwrap()
        .local_addr()
        .unwrap();
    let client = RpcClient::new(
        Discovery::None,
        RpcClientConfig {
            connect_timeout: Duration::from_millis(300),
            ..RpcClientConfig::default()
        },
    )
    .unwrap();
    let started = std::time::Instant::now();
    let err = client
        .request_addr(dead, FIBONACCI_KEY, br#"{"length":1}"#)
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::Unreachable { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
}
