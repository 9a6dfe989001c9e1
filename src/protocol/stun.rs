//! Reflexive address discovery with STUN Binding (RFC 8489 §3, §14.2), on bytes only.
//!
//! A Binding request is a 20-byte header with a random 96-bit transaction id; the server
//! answers a success response carrying XOR-MAPPED-ADDRESS, the source address it saw
//! (the *server-reflexive* address). Built and parsed with stun-rs; everything here is
//! synchronous because stun-rs's HMAC key type is not `Send` (never hold one across an
//! `.await`). A STUN message starts with two zero bits (RFC 8489 §5), so its first byte
//! is below 0x40 and never looks like QUIC.

use std::net::SocketAddr;

use stun_rs::attributes::stun::{Software, XorMappedAddress};
use stun_rs::methods::BINDING;
use stun_rs::{
    MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunMessageBuilder, TransactionId,
};

/// Bytes of a STUN transaction id (RFC 8489 §5: 96 bits).
pub const TRANSACTION_ID_LEN: usize = 12;

/// The fixed magic cookie in bytes 4..8 of every RFC 5389/8489 message.
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

/// Why STUN bytes could not be built or read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum StunError {
    /// The bytes are not a STUN message (RFC 8489 §5 header rules).
    #[error("not a STUN message: {0}")]
    Malformed(String),
    /// A STUN message, but not a Binding success response to our transaction.
    #[error("unexpected STUN message: {0}")]
    Unexpected(String),
    /// A Binding success response without XOR-MAPPED-ADDRESS.
    #[error("the STUN response carries no XOR-MAPPED-ADDRESS")]
    NoAddress,
}

/// Whether `bytes` look like a STUN message: first two bits zero and the magic cookie
/// at bytes 4..8 (RFC 8489 §5), at least the 20-byte header long.
pub fn is_stun(bytes: &[u8]) -> bool {
    bytes.len() >= 20 && bytes[0] < 0x40 && bytes[4..8] == MAGIC_COOKIE
}

/// The transaction id of a STUN message (RFC 8489 §5: bytes 8 to 20 of the header), if
/// `bytes` is one.
pub fn transaction_id(bytes: &[u8]) -> Option<[u8; TRANSACTION_ID_LEN]> {
    if !is_stun(bytes) {
        return None;
    }
    bytes.get(8..20)?.try_into().ok()
}

/// A Binding request with a fresh random transaction id: returns the id and the bytes
/// to send (20 bytes, no attributes).
pub fn binding_request() -> Result<([u8; TRANSACTION_ID_LEN], Vec<u8>), StunError> {
    let id = TransactionId::default();
    let tx = *id.as_bytes();
    let msg = StunMessageBuilder::new(BINDING, MessageClass::Request)
        .with_transaction_id(id)
        .build();
    Ok((tx, encode(&msg)?))
}

fn encode(msg: &stun_rs::StunMessage) -> Result<Vec<u8>, StunError> {
    let encoder = MessageEncoderBuilder::default().build();
    let mut buffer = [0u8; 256];
    let size = encoder
        .encode(&mut buffer, msg)
        .map_err(|e| StunError::Malformed(format!("{e:?}")))?;
    Ok(buffer[..size].to_vec())
}

/// Reads the reflexive address from a Binding success response to transaction `tx`.
///
/// Errors: [`StunError::Malformed`] for bytes that do not decode,
/// [`StunError::Unexpected`] for another method, class or transaction,
/// [`StunError::NoAddress`] without XOR-MAPPED-ADDRESS.
pub fn parse_binding_response(
    bytes: &[u8],
    tx: &[u8; TRANSACTION_ID_LEN],
) -> Result<SocketAddr, StunError> {
    let decoder = MessageDecoderBuilder::default().build();
    let (msg, _) = decoder
        .decode(bytes)
        .map_err(|e| StunError::Malformed(format!("{e:?}")))?;
    if msg.method() != BINDING || msg.class() != MessageClass::SuccessResponse {
        return Err(StunError::Unexpected(format!(
            "{:?} {:?}",
            msg.method(),
            msg.class()
        )));
    }
    if msg.transaction_id().as_bytes() != tx {
        return Err(StunError::Unexpected("another transaction id".into()));
    }
    let attr = msg.get::<XorMappedAddress>().ok_or(StunError::NoAddress)?;
    let addr = attr
        .as_xor_mapped_address()
        .map_err(|e| StunError::Malformed(format!("{e:?}")))?;
    Ok(*addr.socket_address())
}

/// The STUN responder a broker port runs: for a Binding request in `request` from
/// `source`, the success response bytes carrying XOR-MAPPED-ADDRESS = `source` and
/// SOFTWARE "nano-connect" (RFC 8489 §14.2, §14.14). `None` for anything else
/// (requests of other methods, indications, responses, garbage): a server answers
/// nothing it does not understand.
pub fn respond(request: &[u8], source: SocketAddr) -> Option<Vec<u8>> {
    if !is_stun(request) {
        return None;
    }
    let decoder = MessageDecoderBuilder::default().build();
    let (msg, _) = decoder.decode(request).ok()?;
    if msg.method() != BINDING || msg.class() != MessageClass::Request {
        return None;
    }
    let software = Software::new("nano-connect").ok()?;
    let response = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
        .with_transaction_id(*msg.transaction_id())
        .with_attribute(XorMappedAddress::from(source))
        .with_attribute(software)
        .build();
    encode(&response).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_through_the_responder() {
        let (tx, request) = binding_request().unwrap();
        assert_eq!(request.len(), 20);
        assert!(is_stun(&request));
        assert!(request[0] < 0x40);
        let source: SocketAddr = "203.0.113.7:40123".parse().unwrap();
        let response = respond(&request, source).unwrap();
        assert_eq!(parse_binding_response(&response, &tx), Ok(source));
        let other = [0u8; TRANSACTION_ID_LEN];
        assert!(matches!(
            parse_binding_response(&response, &other),
            Err(StunError::Unexpected(_))
        ));
    }

    #[test]
    fn responder_ignores_what_is_not_a_binding_request() {
        let source: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(respond(b"", source), None);
        assert_eq!(respond(&[0u8; 20], source), None);
        let (_, request) = binding_request().unwrap();
        let response = respond(&request, source).unwrap();
        // A response is not answered.
        assert_eq!(respond(&response, source), None);
        let mut truncated = request.clone();
        truncated[3] = 40; // claims attributes that are not there
        assert_eq!(respond(&truncated, source), None);
    }
}
