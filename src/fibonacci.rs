//! The Grenache tutorial's fibonacci service, for demos, examples and benchmarks.
//!
//! Request body: JSON `{"length": N}` with `0 <= N <= 93`. Answer: a JSON array of the
//! first N Fibonacci numbers starting `[0, 1, 1, 2, ...]` (F(93) is the last that fits
//! a u64). Anything else is refused with `invalid_request`.

use serde::Deserialize;

use crate::protocol::frame::ErrorCode;
use crate::service::{Handler, Reply, Request};

/// The service key the tutorial announces.
pub const FIBONACCI_KEY: &str = "fibonacci_worker";

/// Longest sequence served: F(92) is the largest Fibonacci number below 2^64.
pub const MAX_LENGTH: u32 = 93;

/// The first `length` Fibonacci numbers, or `None` when `length > MAX_LENGTH`.
pub fn fibonacci(length: u32) -> Option<Vec<u64>> {
    if length > MAX_LENGTH {
        return None;
    }
    let mut out = Vec::with_capacity(length as usize);
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..length {
        out.push(a);
        let next = a.checked_add(b);
        a = b;
        b = next.unwrap_or(u64::MAX);
    }
    Some(out)
}

/// A [`Handler`] that answers `{"length": N}` with the first N Fibonacci numbers.
#[derive(Debug, Clone, Copy, Default)]
pub struct FibonacciService;

#[derive(Deserialize)]
struct FibonacciRequest {
    length: u32,
}

impl Handler for FibonacciService {
    async fn handle(&self, request: Request) -> Reply {
        let Ok(FibonacciRequest { length }) = serde_json::from_slice(&request.body) else {
            return Reply::failure(
                ErrorCode::InvalidRequest,
                "expected a JSON object {\"length\": N}",
            );
        };
        match fibonacci(length) {
            Some(numbers) => match serde_json::to_vec(&numbers) {
                Ok(body) => Reply::ok(body),
                Err(e) => Reply::failure(ErrorCode::Internal, e.to_string()),
            },
            None => Reply::failure(
                ErrorCode::InvalidRequest,
                format!("length {length} is over the maximum of {MAX_LENGTH}"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_numbers_and_the_largest() {
        assert_eq!(fibonacci(0), Some(vec![]));
        assert_eq!(fibonacci(7), Some(vec![0, 1, 1, 2, 3, 5, 8]));
        assert_eq!(fibonacci(93).unwrap()[92], 7_540_113_804_746_346_429);
        assert_eq!(fibonacci(94), None);
    }
}
