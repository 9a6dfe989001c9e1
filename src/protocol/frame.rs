//! The wire frames of the nano-connect RPC protocol (sans-IO).
//!
//! Every RPC travels on its own bidirectional QUIC stream (RFC 9000 §2): the caller
//! writes exactly one [`RequestFrame`] and finishes its send side; the worker answers
//! with exactly one [`ResponseFrame`] and finishes its side. A frame on the stream is
//!
//! ```text
//! +----------------------+---------------------------------------+
//! | length: u32, big end | MessagePack map, `length` bytes       |
//! +----------------------+---------------------------------------+
//! ```
//!
//! The map is encoded with named fields (`rmp_serde::to_vec_named`) so that any
//! MessagePack library can read it; `docs/protocol.md` gives the field tables.
//! This module only turns values into bytes and bytes into values: it owns no socket
//! and reads no clock, so it is tested and fuzzed on its own.

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks, carried in every frame's `v` field.
pub const PROTOCOL_VERSION: u8 = 1;

/// Bytes of the length prefix in front of every frame.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// A request: one per stream, written by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFrame {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    pub v: u8,
    /// Caller-chosen id, echoed in the response; unique per connection is enough.
    pub id: u64,
    /// The service key the caller looked up (for example `nano_rpc`).
    pub key: String,
    /// The service payload. For `nano_rpc` it is the Nano RPC JSON body
    /// (`{"action": ...}`) as UTF-8 bytes.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// A response: one per stream, written by the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseFrame {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    pub v: u8,
    /// The `id` of the request this answers (0 when the request could not be read).
    pub id: u64,
    /// The service's own status. For `nano_rpc` it is the node's HTTP status (200, or
    /// 422 for RsNano's plain-text refusals); 0 when `error` is set.
    pub status: u16,
    /// The service's answer, passed through unchanged (empty when `error` is set).
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// Set when the worker itself refused or failed the request; the service never saw it
    /// or its answer could not be had.
    pub error: Option<WireError>,
}

/// Why a worker did not deliver a service answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// One human-readable line.
    pub message: String,
}

/// Machine-readable reasons in a [`WireError`], encoded as snake_case strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request frame could not be decoded (bad length, bad MessagePack, missing field).
    MalformedFrame,
    /// The request frame is larger than the worker accepts.
    FrameTooLarge,
    /// The frame's `v` is not one the worker speaks.
    UnsupportedVersion,
    /// This worker does not serve the frame's `key`.
    UnknownService,
    /// The payload is not a valid request for the service (for example not a JSON object
    /// with a string `action`).
    InvalidRequest,
    /// The relay policy refuses this action (not on the allowlist).
    ActionNotAllowed,
    /// The service behind the worker (the Nano node) could not be reached.
    UpstreamUnreachable,
    /// The service behind the worker did not answer within the worker's timeout.
    UpstreamTimeout,
    /// The worker is shedding load; retry later.
    Busy,
    /// Anything else; the message says what.
    Internal,
    /// A code this build does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The wire name of the code, as in `docs/protocol.md`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MalformedFrame => "malformed_frame",
            Self::FrameTooLarge => "frame_too_large",
            Self::UnsupportedVersion => "unsupported_version",
            Self::UnknownService => "unknown_service",
            Self::InvalidRequest => "invalid_request",
            Self::ActionNotAllowed => "action_not_allowed",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::Busy => "busy",
            Self::Internal => "internal",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl WireError {
    /// A wire error with `code` and a one-line `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl ResponseFrame {
    /// A service answer with its `status` and `body`.
    pub fn answer(id: u64, status: u16, body: Vec<u8>) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            id,
            status,
            body,
            error: None,
        }
    }

    /// A refusal or failure of the worker itself.
    pub fn failure(id: u64, error: WireError) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            id,
            status: 0,
            body: Vec::new(),
            error: Some(error),
        }
    }
}

/// Why bytes did not make a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix announces more bytes than the receiver accepts.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Length announced by the prefix, bytes.
        len: usize,
        /// The receiver's limit, bytes.
        limit: usize,
    },
    /// The stream ended before the prefix or the announced length was complete.
    #[error("frame truncated: expected {expected} bytes, got {got}")]
    Truncated {
        /// Bytes the prefix (or the prefix itself) required.
        expected: usize,
        /// Bytes that were there.
        got: usize,
    },
    /// The bytes are not the MessagePack map this frame needs.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A frame whose `v` this build does not speak.
    #[error("unsupported protocol version {0} (this build speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u8),
    /// Bytes follow the frame on a stream that carries exactly one.
    #[error("{0} unexpected bytes after the frame")]
    TrailingBytes(usize),
}

impl FrameError {
    /// The wire code a worker answers this decode failure with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooLarge { .. } => ErrorCode::FrameTooLarge,
            Self::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            Self::Truncated { .. } | Self::Malformed(_) | Self::TrailingBytes(_) => {
                ErrorCode::MalformedFrame
            }
        }
    }
}

/// A frame type this codec knows (the version lives in its `v` field).
pub trait Frame: Serialize + for<'de> Deserialize<'de> {
    /// The frame's `v` field.
    fn version(&self) -> u8;

    /// Bytes the encoding will need at least, prefix included: lets [`encode`] allocate
    /// once instead of growing its buffer while it writes (a profile showed the growth
    /// as a third of a response's encoding cost).
    fn encoded_len_hint(&self) -> usize {
        LENGTH_PREFIX_LEN
    }
}

/// Room for a frame's field names, small fields and MessagePack markers, bytes.
const FRAME_OVERHEAD_HINT: usize = 64;

impl Frame for RequestFrame {
    fn version(&self) -> u8 {
        self.v
    }

    fn encoded_len_hint(&self) -> usize {
        LENGTH_PREFIX_LEN + FRAME_OVERHEAD_HINT + self.key.len() + self.body.len()
    }
}

impl Frame for ResponseFrame {
    fn version(&self) -> u8 {
        self.v
    }

    fn encoded_len_hint(&self) -> usize {
        let error = self.error.as_ref().map_or(0, |e| e.message.len() + 32);
        LENGTH_PREFIX_LEN + FRAME_OVERHEAD_HINT + self.body.len() + error
    }
}

/// Encodes `frame` with its 4-byte big-endian length prefix.
///
/// Errors with [`FrameError::TooLarge`] when the encoding exceeds `limit` bytes (the
/// prefix not counted), so a sender learns before the peer refuses it.
pub fn encode<F: Frame>(frame: &F, limit: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(frame.encoded_len_hint());
    out.extend_from_slice(&[0u8; LENGTH_PREFIX_LEN]);
    rmp_serde::encode::write_named(&mut out, frame)
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = out.len() - LENGTH_PREFIX_LEN;
    if len > limit || len > u32::MAX as usize {
        return Err(FrameError::TooLarge { len, limit });
    }
    out[..LENGTH_PREFIX_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Reads the length prefix at the start of `prefix` and checks it against `limit`.
///
/// Returns the body length in bytes. Call it before allocating for the body: a peer's
/// prefix is never trusted beyond `limit`.
pub fn body_len(prefix: [u8; LENGTH_PREFIX_LEN], limit: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    Ok(len)
}

/// Decodes one MessagePack frame body (the bytes after the prefix) and checks its version.
pub fn decode_body<F: Frame>(body: &[u8]) -> Result<F, FrameError> {
    let frame: F = match rmp_serde::from_slice(body) {
        Ok(frame) => frame,
        // Only when the frame does not decode is its version read on its own, so that a
        // newer peer's frame with other fields gets a version error, not a confusing
        // "missing field" (reading it first on every frame cost a second parse).
        Err(e) => {
            return Err(match peek_version(body) {
                Some(v) if v != PROTOCOL_VERSION => FrameError::UnsupportedVersion(v),
                _ => FrameError::Malformed(e.to_string()),
            })
        }
    };
    if frame.version() != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion(frame.version()));
    }
    Ok(frame)
}

/// Decodes a whole stream's bytes: exactly one prefixed frame, nothing after it.
pub fn decode<F: Frame>(bytes: &[u8], limit: usize) -> Result<F, FrameError> {
    let Some(prefix) = bytes.get(..LENGTH_PREFIX_LEN) else {
        return Err(FrameError::Truncated {
            expected: LENGTH_PREFIX_LEN,
            got: bytes.len(),
        });
    };
    let mut p = [0u8; LENGTH_PREFIX_LEN];
    p.copy_from_slice(prefix);
    let len = body_len(p, limit)?;
    let rest = &bytes[LENGTH_PREFIX_LEN..];
    if rest.len() < len {
        return Err(FrameError::Truncated {
            expected: len,
            got: rest.len(),
        });
    }
    if rest.len() > len {
        return Err(FrameError::TrailingBytes(rest.len() - len));
    }
    decode_body(rest)
}

/// Finds the `v` entry of a MessagePack map without decoding the rest.
fn peek_version(body: &[u8]) -> Option<u8> {
    #[derive(Deserialize)]
    struct Versioned {
        v: u8,
    }
    rmp_serde::from_slice::<Versioned>(body).ok().map(|x| x.v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> RequestFrame {
        RequestFrame {
            v: PROTOCOL_VERSION,
            id: 7,
            key: "nano_rpc".into(),
            body: br#"{"action":"block_count"}"#.to_vec(),
        }
    }

    #[test]
    fn request_round_trips() {
        let bytes = encode(&request(), 1024).unwrap();
        assert_eq!(
            u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize,
            bytes.len() - 4
        );
        assert_eq!(decode::<RequestFrame>(&bytes, 1024).unwrap(), request());
    }

    /// The worked example of docs/protocol.md §3.5, byte for byte.
    #[test]
    fn encoding_matches_the_protocol_doc_example() {
        let bytes = encode(&request(), 1024).unwrap();
        let mut expected = vec![
            0x00, 0x00, 0x00, 0x34, 0x84, 0xa1, b'v', 0x01, 0xa2, b'i', b'd', 0x07,
        ];
        expected.extend_from_slice(&[0xa3, b'k', b'e', b'y', 0xa8]);
        expected.extend_from_slice(b"nano_rpc");
        expected.extend_from_slice(&[0xa4, b'b', b'o', b'd', b'y', 0xc4, 0x18]);
        expected.extend_from_slice(br#"{"action":"block_count"}"#);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn response_round_trips_with_and_without_error() {
        for frame in [
            ResponseFrame::answer(3, 422, b"Unable to parse JSON".to_vec()),
            ResponseFrame::failure(
                4,
                WireError::new(ErrorCode::ActionNotAllowed, "wallet_export is not allowed"),
            ),
        ] {
            let bytes = encode(&frame, 1024).unwrap();
            assert_eq!(decode::<ResponseFrame>(&bytes, 1024).unwrap(), frame);
        }
    }

    #[test]
    fn encode_refuses_over_limit() {
        let err = encode(&request(), 10).unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { limit: 10, .. }),
            "{err}"
        );
    }

    #[test]
    fn decode_refuses_prefix_over_limit_before_reading_body() {
        let mut bytes = (1_000_000u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0; 8]);
        assert_eq!(
            decode::<RequestFrame>(&bytes, 1024).unwrap_err(),
            FrameError::TooLarge {
                len: 1_000_000,
                limit: 1024
            }
        );
    }

    #[test]
    fn truncated_and_trailing_bytes_are_errors() {
        let bytes = encode(&request(), 1024).unwrap();
        assert!(matches!(
            decode::<RequestFrame>(&bytes[..2], 1024),
            Err(FrameError::Truncated { .. })
        ));
        assert!(matches!(
            decode::<RequestFrame>(&bytes[..bytes.len() - 1], 1024),
            Err(FrameError::Truncated { .. })
        ));
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            decode::<RequestFrame>(&long, 1024).unwrap_err(),
            FrameError::TrailingBytes(1)
        );
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let mut bytes = 5u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0xc1, 0xff, 0x00, 0x93, 0x01]);
        assert_eq!(
            decode::<RequestFrame>(&bytes, 1024).unwrap_err().code(),
            ErrorCode::MalformedFrame
        );
    }

    #[test]
    fn other_version_is_reported_as_such() {
        let mut frame = request();
        frame.v = 9;
        let bytes = encode(&frame, 1024).unwrap();
        assert_eq!(
            decode::<RequestFrame>(&bytes, 1024).unwrap_err(),
            FrameError::UnsupportedVersion(9)
        );
    }

    #[test]
    fn unknown_error_code_decodes_as_unknown() {
        #[derive(Serialize)]
        struct Future<'a> {
            code: &'a str,
            message: &'a str,
        }
        let bytes = rmp_serde::to_vec_named(&Future {
            code: "some_new_reason",
            message: "x",
        })
        .unwrap();
        let e: WireError = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(e.code, ErrorCode::Unknown);
    }
}
