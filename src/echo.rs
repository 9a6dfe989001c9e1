//! An echo service for measuring the mesh without a Nano node (`nano-connect worker
//! --service echo`, `nano-connect bench`).
//!
//! Request body: either any bytes, answered with the same bytes (plain echo), or a
//! *sized* request that asks for an answer of a given length:
//!
//! ```text
//! +-------------------+------------------------+------------------------------+
//! | magic "NCE1" (4)  | answer length: u32 BE  | padding (any bytes, ignored) |
//! +-------------------+------------------------+------------------------------+
//! ```
//!
//! A sized request is answered with `answer length` bytes (0x61, `a`), at most
//! [`MAX_ANSWER_BYTES`]; a larger length is refused with `invalid_request`. The padding lets
//! a benchmark send requests of one size and get answers of another (for example 100 B
//! requests with 200 B or 64 KiB answers).

use crate::protocol::frame::ErrorCode;
use crate::service::{Handler, Reply, Request};

/// The service key an echo worker announces by default.
pub const ECHO_KEY: &str = "echo";

/// First bytes of a sized request.
pub const SIZED_MAGIC: &[u8; 4] = b"NCE1";

/// Bytes of a sized request's header: the magic and the answer length.
pub const SIZED_HEADER_LEN: usize = 8;

/// Largest answer a sized request may ask for, bytes: 4 MiB, half the default response
/// frame limit, so that the answer always fits a frame.
pub const MAX_ANSWER_BYTES: u32 = 4 * 1024 * 1024;

/// The byte a sized answer is made of.
const FILL: u8 = b'a';

/// A request body of `request_bytes` bytes (at least [`SIZED_HEADER_LEN`]) that asks for an
/// answer of `answer_bytes` bytes.
pub fn sized_request(request_bytes: usize, answer_bytes: u32) -> Vec<u8> {
    let mut body = Vec::with_capacity(request_bytes.max(SIZED_HEADER_LEN));
    body.extend_from_slice(SIZED_MAGIC);
    body.extend_from_slice(&answer_bytes.to_be_bytes());
    body.resize(request_bytes.max(SIZED_HEADER_LEN), b'.');
    body
}

/// What a request body asks for: `Some(n)` for a sized request of `n` answer bytes,
/// `None` for a plain echo.
pub fn requested_answer_len(body: &[u8]) -> Option<u32> {
    let header = body.get(..SIZED_HEADER_LEN)?;
    if &header[..4] != SIZED_MAGIC {
        return None;
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&header[4..]);
    Some(u32::from_be_bytes(len))
}

/// A [`Handler`] that echoes the body, or answers a sized request with that many bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct EchoService;

impl Handler for EchoService {
    async fn handle(&self, request: Request) -> Reply {
        match requested_answer_len(&request.body) {
            None => Reply::ok(request.body),
            Some(len) if len <= MAX_ANSWER_BYTES => Reply::ok(vec![FILL; len as usize]),
            Some(len) => Reply::failure(
                ErrorCode::InvalidRequest,
                format!("answer of {len} bytes asked, at most {MAX_ANSWER_BYTES} served"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Vec<u8>) -> Request {
        Request {
            key: ECHO_KEY.into(),
            body,
            peer: "127.0.0.1:1".parse().unwrap(),
        }
    }

    #[tokio::test]
    async fn plain_bodies_come_back_unchanged() {
        for body in [vec![], b"hi".to_vec(), b"NCE".to_vec(), vec![7; 1000]] {
            assert_eq!(
                EchoService.handle(request(body.clone())).await,
                Reply::ok(body)
            );
        }
    }

    #[tokio::test]
    async fn sized_requests_get_answers_of_that_size() {
        let body = sized_request(100, 200);
        assert_eq!(body.len(), 100);
        assert_eq!(requested_answer_len(&body), Some(200));
        match EchoService.handle(request(body)).await {
            Reply::Answer { status, body } => {
                assert_eq!(status, 200);
                assert_eq!(body.len(), 200);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(sized_request(0, 5).len(), SIZED_HEADER_LEN);
    }

    #[tokio::test]
    async fn too_large_answers_are_refused() {
        let reply = EchoService
            .handle(request(sized_request(8, MAX_ANSWER_BYTES + 1)))
            .await;
        assert!(
            matches!(reply, Reply::Failure(ref e) if e.code == ErrorCode::InvalidRequest),
            "{reply:?}"
        );
    }
}
