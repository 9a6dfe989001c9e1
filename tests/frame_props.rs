//! Property tests of the frame codec: every frame round-trips, the encoded length is
//! what the prefix says, and no input bytes make the decoder panic.

use nano_connect::protocol::frame::{
    self, ErrorCode, RequestFrame, ResponseFrame, WireError, LENGTH_PREFIX_LEN, PROTOCOL_VERSION,
};
use proptest::prelude::*;

fn code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::MalformedFrame),
        Just(ErrorCode::FrameTooLarge),
        Just(ErrorCode::UnsupportedVersion),
        Just(ErrorCode::UnknownService),
        Just(ErrorCode::InvalidRequest),
        Just(ErrorCode::ActionNotAllowed),
        Just(ErrorCode::UpstreamUnreachable),
        Just(ErrorCode::UpstreamTimeout),
        Just(ErrorCode::Busy),
        Just(ErrorCode::Internal),
    ]
}

proptest! {
    #[test]
    fn requests_round_trip(id: u64, key in ".{0,40}", body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let request = RequestFrame { v: PROTOCOL_VERSION, id, key, body };
        let bytes = frame::encode(&request, 1 << 20).unwrap();
        let len = u32::from_be_bytes(bytes[..LENGTH_PREFIX_LEN].try_into().unwrap()) as usize;
        prop_assert_eq!(len, bytes.len() - LENGTH_PREFIX_LEN);
        prop_assert_eq!(frame::decode::<RequestFrame>(&bytes, 1 << 20).unwrap(), request);
    }

    #[test]
    fn responses_round_trip(
        id: u64,
        status: u16,
        body in proptest::collection::vec(any::<u8>(), 0..2048),
        error in proptest::option::of((code(), ".{0,80}")),
    ) {
        let response = match error {
            Some((code, message)) => ResponseFrame::failure(id, WireError::new(code, message)),
            None => ResponseFrame::answer(id, status, body),
        };
        let bytes = frame::encode(&response, 1 << 20).unwrap();
        prop_assert_eq!(frame::decode::<ResponseFrame>(&bytes, 1 << 20).unwrap(), response);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = frame::decode::<RequestFrame>(&bytes, 256);
        let _ = frame::decode::<ResponseFrame>(&bytes, 256);
        let _ = frame::decode_body::<RequestFrame>(&bytes);
    }

    #[test]
    fn a_cut_frame_is_an_error_not_a_frame(id: u64, cut in 0usize..60) {
        let request = RequestFrame { v: PROTOCOL_VERSION, id, key: "nano_rpc".into(), body: b"{\"action\":\"version\"}".to_vec() };
        let bytes = frame::encode(&request, 1024).unwrap();
        let cut = cut.min(bytes.len() - 1);
        prop_assert!(frame::decode::<RequestFrame>(&bytes[..cut], 1024).is_err());
    }
}
