//! Subscription frames: a long-lived session on one bidirectional QUIC stream, for the
//! Nano node's confirmations (docs/protocol.md §8), sans-IO.
//!
//! Every stream starts with one frame (the same `u32` big-endian length and MessagePack
//! map as an RPC frame, [`super::frame`]). A first frame whose map has a `kind` key opens
//! a session of that kind; one without is an RPC request (§3.1). A subscription session
//! runs
//!
//! ```text
//!   caller                                   worker
//!     │ subscribe {id, key, topic, accounts, ..} │
//!     │ ────────────────────────────────────────▶│
//!     │◀──────────────── ack {id, accounts} ─────│   or refused {id, code} + FIN
//!     │◀──────────── confirmation {hash, message}│   the node's JSON, filtered
//!     │ update {id, accounts_add, accounts_del}  │
//!     │ ────────────────────────────────────────▶│
//!     │◀──────────────── ack {id, accounts} ─────│   or refused {id, code}: unchanged
//!     │◀──────────── notice {lost, reason} ──────│   messages it dropped for this caller
//!     │◀──────────── heartbeat ──────────────────│   every heartbeat_ms when idle
//!     │ FIN (unsubscribe)                        │
//!     │◀──────────── closing {code} + FIN ───────│   or the worker ends the session
//! ```
//!
//! Frames are MessagePack maps with string keys, tagged by `kind` (serde's internally
//! tagged enums), each carrying the protocol version `v`. Decoders ignore keys they do not
//! know, and a caller ignores worker frames of a `kind` it does not know
//! ([`WorkerFrame::Unknown`]), so that later versions can add both.

use serde::{Deserialize, Serialize};

use super::frame::{self, FrameError, PROTOCOL_VERSION};

/// The only topic carried: the node's `confirmation` topic.
pub const TOPIC_CONFIRMATION: &str = "confirmation";

/// Largest frame a caller may send, bytes (prefix not counted): a `subscribe` with the
/// default 1000 accounts of 65 characters is about 70 KB.
pub const MAX_CLIENT_FRAME_BYTES: usize = 256 * 1024;

/// Largest frame a worker sends, bytes: a confirmation with its block and election
/// information is 1–2 KB; votes are not carried.
pub const MAX_WORKER_FRAME_BYTES: usize = 64 * 1024;

/// What the caller's frame asks, written by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Opens the session (the first frame), or replaces its options later.
    Subscribe(Subscribe),
    /// Adds and removes accounts.
    Update(Update),
}

/// `subscribe`: the accounts to follow and what to include, as in the node's own
/// websocket `subscribe` (its `options`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    pub v: u8,
    /// Caller-chosen id, echoed in the `ack` or `refused`.
    pub id: u64,
    /// The service key looked up (for example `nano_rpc`).
    pub key: String,
    /// The topic; only [`TOPIC_CONFIRMATION`].
    pub topic: String,
    /// Accounts (`nano_...` or `xrb_...`) whose confirmations to send: a block counts for
    /// an account when it is the block's `account` or its destination (`link_as_account`
    /// of a send), as the node filters. `None` asks for every account, which workers
    /// refuse unless their operator allows it; `Some([])` follows none until an update.
    pub accounts: Option<Vec<String>>,
    /// Keep the `block` object in messages (the node's default: true).
    #[serde(default = "yes")]
    pub include_block: bool,
    /// Keep the `election_info` object (the node's default: false).
    #[serde(default)]
    pub include_election_info: bool,
    /// The node's `confirmation_type` option: `all` (default), `active` (both `active_*`),
    /// `active_quorum`, `active_confirmation_height` or `inactive`.
    #[serde(default = "all")]
    pub confirmation_type: String,
    /// Longest silence the worker leaves on the stream, milliseconds: it sends a
    /// heartbeat when it has sent nothing for this long. Workers clamp it to
    /// [`MIN_HEARTBEAT_MS`]..=[`MAX_HEARTBEAT_MS`]; 0 asks for the worker's default.
    #[serde(default)]
    pub heartbeat_ms: u32,
}

fn yes() -> bool {
    true
}

fn all() -> String {
    "all".to_string()
}

/// Shortest heartbeat interval a worker grants, ms.
pub const MIN_HEARTBEAT_MS: u32 = 500;
/// Longest heartbeat interval a worker grants, ms.
pub const MAX_HEARTBEAT_MS: u32 = 60_000;

/// `update`: accounts to add and to remove, as the node's websocket `update` options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// Protocol version.
    pub v: u8,
    /// Caller-chosen id, echoed in the `ack` or `refused`.
    pub id: u64,
    /// Accounts to follow from now on.
    #[serde(default)]
    pub accounts_add: Vec<String>,
    /// Accounts to stop following (applied after `accounts_add`).
    #[serde(default)]
    pub accounts_del: Vec<String>,
}

/// What the worker sends, written by the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkerFrame {
    /// A `subscribe` or `update` was applied.
    Ack(Ack),
    /// A `subscribe` or `update` was refused; after a refused first `subscribe` the
    /// worker finishes the stream.
    Refused(Refused),
    /// One confirmation for the caller's accounts.
    Confirmation(Confirmation),
    /// The worker dropped messages meant for this caller.
    Notice(Notice),
    /// Nothing else was sent for `heartbeat_ms`.
    Heartbeat(Heartbeat),
    /// The worker ends the session; it finishes the stream next.
    Closing(Closing),
    /// A kind this build does not know (sent by a newer worker): ignored.
    #[serde(other)]
    Unknown,
}

/// `ack`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Protocol version.
    pub v: u8,
    /// The id of the `subscribe` or `update`.
    pub id: u64,
    /// Accounts followed now (0 for an all-accounts subscription).
    pub accounts: u32,
    /// The worker's limit on accounts per session.
    pub max_accounts: u32,
    /// The worker's limit on messages per second to this session (0: none).
    pub max_rate: u32,
    /// The heartbeat interval the worker granted, ms.
    pub heartbeat_ms: u32,
}

/// `refused`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// Protocol version.
    pub v: u8,
    /// The id of the refused `subscribe` or `update` (0 when it could not be read).
    pub id: u64,
    /// Machine-readable reason, one of [`RefusalCode`]'s names.
    pub code: RefusalCode,
    /// One line for people.
    pub message: String,
}

/// Why a worker refused a `subscribe` or `update`, or closed a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RefusalCode {
    /// The frame could not be decoded, or is not the one expected here.
    MalformedFrame,
    /// Its `v` is not one the worker speaks.
    UnsupportedVersion,
    /// The worker does not serve `key`, or has no subscriptions (no `--nano-ws`).
    UnknownService,
    /// A topic other than `confirmation`, or a `confirmation_type` the node has not.
    UnknownTopic,
    /// An entry of `accounts` is not a Nano account address.
    InvalidAccount,
    /// No `accounts`: every account's confirmations; the operator has not allowed it.
    AllAccountsRefused,
    /// More accounts than the worker's limit per session.
    TooManyAccounts,
    /// The worker serves as many sessions as its limit.
    TooManySubscribers,
    /// Updates faster than the worker takes them.
    RateLimited,
    /// The worker's node websocket is down.
    UpstreamUnreachable,
    /// The worker is shutting down.
    ShuttingDown,
    /// A code this build does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl RefusalCode {
    /// The wire name, as in docs/protocol.md §8.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MalformedFrame => "malformed_frame",
            Self::UnsupportedVersion => "unsupported_version",
            Self::UnknownService => "unknown_service",
            Self::UnknownTopic => "unknown_topic",
            Self::InvalidAccount => "invalid_account",
            Self::AllAccountsRefused => "all_accounts_refused",
            Self::TooManyAccounts => "too_many_accounts",
            Self::TooManySubscribers => "too_many_subscribers",
            Self::RateLimited => "rate_limited",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::ShuttingDown => "shutting_down",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `confirmation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// Protocol version.
    pub v: u8,
    /// The confirmed block's hash (64 hex digits, as the node writes it).
    pub hash: String,
    /// The node's whole websocket message, UTF-8 JSON
    /// (`{"topic":"confirmation","time":"...","message":{...}}`), with `block` and
    /// `election_info` kept or removed as the session asked.
    #[serde(with = "serde_bytes")]
    pub message: Vec<u8>,
}

/// `notice`: messages dropped for this session since the previous notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// Protocol version.
    pub v: u8,
    /// Confirmations dropped since the last notice.
    pub lost: u64,
    /// Confirmations dropped in the whole session.
    pub total_lost: u64,
    /// `slow_reader` (the session's queue was full) or `rate_limit` (over `max_rate`).
    pub reason: String,
    /// One line for people.
    pub message: String,
}

/// `heartbeat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Protocol version.
    pub v: u8,
}

/// `closing`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closing {
    /// Protocol version.
    pub v: u8,
    /// Why.
    pub code: RefusalCode,
    /// One line for people.
    pub message: String,
}

impl ClientFrame {
    /// The frame's `v`.
    pub fn version(&self) -> u8 {
        match self {
            Self::Subscribe(s) => s.v,
            Self::Update(u) => u.v,
        }
    }

    /// The frame's `id`.
    pub fn id(&self) -> u64 {
        match self {
            Self::Subscribe(s) => s.id,
            Self::Update(u) => u.id,
        }
    }
}

impl WorkerFrame {
    /// A `refused` frame.
    pub fn refused(id: u64, code: RefusalCode, message: impl Into<String>) -> Self {
        Self::Refused(Refused {
            v: PROTOCOL_VERSION,
            id,
            code,
            message: message.into(),
        })
    }

    /// A `closing` frame.
    pub fn closing(code: RefusalCode, message: impl Into<String>) -> Self {
        Self::Closing(Closing {
            v: PROTOCOL_VERSION,
            code,
            message: message.into(),
        })
    }

    /// A `heartbeat` frame.
    pub fn heartbeat() -> Self {
        Self::Heartbeat(Heartbeat {
            v: PROTOCOL_VERSION,
        })
    }

    fn version(&self) -> u8 {
        match self {
            Self::Ack(f) => f.v,
            Self::Refused(f) => f.v,
            Self::Confirmation(f) => f.v,
            Self::Notice(f) => f.v,
            Self::Heartbeat(f) => f.v,
            Self::Closing(f) => f.v,
            Self::Unknown => PROTOCOL_VERSION,
        }
    }
}

impl frame::Frame for ClientFrame {
    fn version(&self) -> u8 {
        ClientFrame::version(self)
    }
}

impl frame::Frame for WorkerFrame {
    fn version(&self) -> u8 {
        WorkerFrame::version(self)
    }

    fn encoded_len_hint(&self) -> usize {
        match self {
            Self::Confirmation(c) => frame::LENGTH_PREFIX_LEN + 96 + c.message.len(),
            _ => frame::LENGTH_PREFIX_LEN + 96,
        }
    }
}

/// Whether the first frame's body opens a session rather than carrying an RPC request:
/// its map has a `kind` key (docs/protocol.md §8.1). Bytes that are no map say no (the
/// RPC path then reports them).
pub fn opens_session(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Kinded<'a> {
        #[serde(borrow, default)]
        kind: Option<&'a str>,
    }
    matches!(
        rmp_serde::from_slice::<Kinded<'_>>(body),
        Ok(Kinded { kind: Some(_) })
    )
}

/// Decodes one frame body (after its prefix) of either direction, checking `v`.
///
/// Errors: [`FrameError::Malformed`] (not such a frame, or an unknown caller `kind`),
/// [`FrameError::UnsupportedVersion`].
pub fn decode<F: frame::Frame>(body: &[u8]) -> Result<F, FrameError> {
    frame::decode_body(body)
}

/// Encodes `frame` with its length prefix.
///
/// Errors: [`FrameError::TooLarge`] over `limit` bytes.
pub fn encode<F: frame::Frame>(frame: &F, limit: usize) -> Result<Vec<u8>, FrameError> {
    frame::encode(frame, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscribe() -> Subscribe {
        Subscribe {
            v: PROTOCOL_VERSION,
            id: 1,
            key: "nano_rpc".into(),
            topic: TOPIC_CONFIRMATION.into(),
            accounts: Some(vec![
                "nano_3e3j5tkog48pnny9dmfzj1r16pg8t1e76dz5tmac6iq689wyjfpiij4txtdo".into(),
            ]),
            include_block: true,
            include_election_info: false,
            confirmation_type: "all".into(),
            heartbeat_ms: 2000,
        }
    }

    fn body(bytes: &[u8]) -> &[u8] {
        &bytes[frame::LENGTH_PREFIX_LEN..]
    }

    #[test]
    fn client_frames_round_trip_and_open_a_session() {
        for f in [
            ClientFrame::Subscribe(subscribe()),
            ClientFrame::Update(Update {
                v: 1,
                id: 2,
                accounts_add: vec!["nano_1".into()],
                accounts_del: vec![],
            }),
        ] {
            let bytes = encode(&f, MAX_CLIENT_FRAME_BYTES).unwrap();
            assert!(opens_session(body(&bytes)));
            assert_eq!(decode::<ClientFrame>(body(&bytes)).unwrap(), f);
        }
    }

    /// The worked example of docs/protocol.md §8.6, byte for byte.
    #[test]
    fn encoding_matches_the_protocol_doc_example() {
        let frame = ClientFrame::Subscribe(Subscribe {
            accounts: Some(vec![]),
            ..subscribe()
        });
        let bytes = encode(&frame, MAX_CLIENT_FRAME_BYTES).unwrap();
        // A fixstr is 0xa0 | length, then the bytes.
        fn fixstr(out: &mut Vec<u8>, text: &str) {
            out.push(0xa0 | text.len() as u8);
            out.extend_from_slice(text.as_bytes());
        }
        let mut expected = vec![0x00, 0x00, 0x00, 0x8d, 0x8a];
        let fields: [(&str, &[u8]); 10] = [
            ("kind", b"\xa9subscribe"),
            ("v", &[0x01]),
            ("id", &[0x01]),
            ("key", b"\xa8nano_rpc"),
            ("topic", b"\xacconfirmation"),
            ("accounts", &[0x90]),
            ("include_block", &[0xc3]),
            ("include_election_info", &[0xc2]),
            ("confirmation_type", b"\xa3all"),
            ("heartbeat_ms", &[0xcd, 0x07, 0xd0]),
        ];
        for (name, value) in fields {
            fixstr(&mut expected, name);
            expected.extend_from_slice(value);
        }
        assert_eq!(bytes, expected);
    }

    #[test]
    fn an_rpc_request_does_not_open_a_session() {
        let request = frame::RequestFrame {
            v: 1,
            id: 7,
            key: "nano_rpc".into(),
            body: br#"{"action":"block_count"}"#.to_vec(),
        };
        let bytes = frame::encode(&request, 1024).unwrap();
        assert!(!opens_session(body(&bytes)));
        assert!(!opens_session(&[0xc1, 0x00]));
        assert!(!opens_session(&[]));
    }

    #[test]
    fn worker_frames_round_trip() {
        for f in [
            WorkerFrame::Ack(Ack {
                v: 1,
                id: 1,
                accounts: 1,
                max_accounts: 1000,
                max_rate: 50,
                heartbeat_ms: 2000,
            }),
            WorkerFrame::refused(3, RefusalCode::TooManyAccounts, "no"),
            WorkerFrame::Confirmation(Confirmation {
                v: 1,
                hash: "AB".into(),
                message: br#"{"topic":"confirmation"}"#.to_vec(),
            }),
            WorkerFrame::Notice(Notice {
                v: 1,
                lost: 3,
                total_lost: 5,
                reason: "slow_reader".into(),
                message: "x".into(),
            }),
            WorkerFrame::heartbeat(),
            WorkerFrame::closing(RefusalCode::ShuttingDown, "bye"),
        ] {
            let bytes = encode(&f, MAX_WORKER_FRAME_BYTES).unwrap();
            assert_eq!(decode::<WorkerFrame>(body(&bytes)).unwrap(), f);
        }
    }

    #[test]
    fn options_default_as_the_node_does() {
        #[derive(Serialize)]
        struct Bare<'a> {
            kind: &'a str,
            v: u8,
            id: u64,
            key: &'a str,
            topic: &'a str,
            accounts: Option<Vec<String>>,
        }
        let bytes = rmp_serde::to_vec_named(&Bare {
            kind: "subscribe",
            v: 1,
            id: 9,
            key: "nano_rpc",
            topic: "confirmation",
            accounts: None,
        })
        .unwrap();
        let ClientFrame::Subscribe(s) = decode::<ClientFrame>(&bytes).unwrap() else {
            panic!("not a subscribe")
        };
        assert!(s.include_block);
        assert!(!s.include_election_info);
        assert_eq!(s.confirmation_type, "all");
        assert_eq!(s.accounts, None);
        assert_eq!(s.heartbeat_ms, 0);
    }

    #[test]
    fn unknown_worker_kinds_and_codes_are_tolerated() {
        #[derive(Serialize)]
        struct Future<'a> {
            kind: &'a str,
            v: u8,
        }
        let bytes = rmp_serde::to_vec_named(&Future {
            kind: "replay",
            v: 1,
        })
        .unwrap();
        assert_eq!(decode::<WorkerFrame>(&bytes).unwrap(), WorkerFrame::Unknown);
        #[derive(Serialize)]
        struct FutureRefusal<'a> {
            kind: &'a str,
            v: u8,
            id: u64,
            code: &'a str,
            message: &'a str,
        }
        let bytes = rmp_serde::to_vec_named(&FutureRefusal {
            kind: "refused",
            v: 1,
            id: 4,
            code: "some_new_reason",
            message: "m",
        })
        .unwrap();
        let WorkerFrame::Refused(r) = decode::<WorkerFrame>(&bytes).unwrap() else {
            panic!("not refused")
        };
        assert_eq!(r.code, RefusalCode::Unknown);
    }

    #[test]
    fn other_versions_and_garbage_are_errors_not_panics() {
        let mut s = subscribe();
        s.v = 9;
        let bytes = encode(&ClientFrame::Subscribe(s), MAX_CLIENT_FRAME_BYTES).unwrap();
        assert_eq!(
            decode::<ClientFrame>(body(&bytes)).unwrap_err(),
            FrameError::UnsupportedVersion(9)
        );
        assert!(decode::<ClientFrame>(&[0x93, 0x01, 0x02]).is_err());
        assert!(decode::<WorkerFrame>(&[0xff]).is_err());
    }
}
