//! BEP 44 items: targets, size limits and signature checks.
//!
//! [BEP 44](https://www.bittorrent.org/beps/bep_0044.html) stores two kinds of items in
//! the DHT:
//!
//! - **immutable**: the target is `SHA-1(bencode(v))`, i.e. the SHA-1 of `"{len}:{v}"`;
//!   anyone can check a value against its target;
//! - **mutable**: the target is `SHA-1(k ‖ salt)` for an ed25519 public key `k` and an
//!   optional salt; the item carries a sequence number `seq` and a signature `sig` over
//!   the bencoded string `"4:salt{len}:{salt}3:seqi{seq}e1:v{len}:{v}"` (the salt part only
//!   when there is a salt).
//!
//! Both limit `v` to 1000 bytes and the salt to 64 bytes. A grape never holds private keys:
//! clients sign, the grape checks the signature ([`verify_mutable`]) before it sends the
//! item out, and the storing nodes check it again.
//!
//! Everything here is pure.

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use mainline::{Id, MutableItem};
use sha1::{Digest, Sha1};

use crate::error::ItemProblem;

/// Largest value, in bytes (BEP 44; mainline refuses more).
pub const MAX_VALUE_LEN: usize = 1000;

/// Largest salt, in bytes (BEP 44).
pub const MAX_SALT_LEN: usize = 64;

/// The target of an immutable item: SHA-1 of the bencoded value, `"{len}:{v}"` (BEP 44).
pub fn immutable_target(v: &[u8]) -> Id {
    let mut hasher = Sha1::new();
    hasher.update(format!("{}:", v.len()).as_bytes());
    hasher.update(v);
    let bytes: [u8; 20] = hasher.finalize().into();
    Id::from(bytes)
}

/// The target of a mutable item: SHA-1 of the public key followed by the salt (BEP 44).
/// An empty salt is the same as no salt.
pub fn mutable_target(k: &[u8; 32], salt: Option<&[u8]>) -> Id {
    MutableItem::target_from_key(k, salt.filter(|s| !s.is_empty()))
}

/// The bytes a mutable item's signature covers (BEP 44):
/// `"4:salt{len}:{salt}3:seqi{seq}e1:v{len}:{v}"`, without the salt part when there is
/// no salt (or an empty one).
pub fn signable(seq: i64, v: &[u8], salt: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() + 48);
    if let Some(salt) = salt.filter(|s| !s.is_empty()) {
        out.extend_from_slice(format!("4:salt{}:", salt.len()).as_bytes());
        out.extend_from_slice(salt);
    }
    out.extend_from_slice(format!("3:seqi{seq}e1:v{}:", v.len()).as_bytes());
    out.extend_from_slice(v);
    out
}

/// Checks the size limits of a value and salt (BEP 44).
pub fn check_sizes(v: &[u8], salt: Option<&[u8]>) -> Result<(), ItemProblem> {
    if v.len() > MAX_VALUE_LEN {
        return Err(ItemProblem::ValueTooBig { len: v.len() });
    }
    match salt {
        Some(salt) if salt.len() > MAX_SALT_LEN => Err(ItemProblem::SaltTooBig { len: salt.len() }),
        _ => Ok(()),
    }
}

/// Checks a client-signed mutable item and builds it for mainline.
///
/// Checks the sizes, that `k` is an ed25519 key and that `sig` verifies over
/// [`signable`]`(seq, v, salt)` (the same non-strict verification the storing mainline
/// nodes apply). An empty salt is treated as no salt.
pub fn verify_mutable(
    k: &[u8; 32],
    sig: &[u8; 64],
    v: &[u8],
    seq: i64,
    salt: Option<&[u8]>,
) -> Result<MutableItem, ItemProblem> {
    let salt = salt.filter(|s| !s.is_empty());
    check_sizes(v, salt)?;
    let key = VerifyingKey::from_bytes(k).map_err(|_| ItemProblem::BadKey)?;
    let signature = Signature::from_bytes(sig);
    key.verify(&signable(seq, v, salt), &signature)
        .map_err(|_| ItemProblem::BadSignature)?;
    Ok(MutableItem::new_signed_unchecked(*k, *sig, v, seq, salt))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mainline::SigningKey;

    fn signer() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    #[test]
    fn immutable_target_matches_bencode_hash() {
        // Vector from mainline's own tests (src/common/immutable.rs).
        let v = b"From the river to the sea, Palestine will be free";
        assert_eq!(
            immutable_target(v).to_string(),
            "4238af8aff56cf6e0007d9d2003bf23d33eea7c3"
        );
        // "Hello World!" from BEP 44's test vectors: SHA-1("12:Hello World!").
        assert_eq!(
            immutable_target(b"Hello World!").to_string(),
            "e5f96f6f38320f0f33959cb4d3d656452117aadb"
        );
    }

    #[test]
    fn signable_layout() {
        assert_eq!(
            signable(4, b"Hello world!", None),
            b"3:seqi4e1:v12:Hello world!"
        );
        assert_eq!(
            signable(4, b"Hello world!", Some(b"foobar")),
            b"4:salt6:foobar3:seqi4e1:v12:Hello world!"
        );
        assert_eq!(signable(-1, b"", Some(b"")), b"3:seqi-1e1:v0:");
    }

    #[test]
    fn verify_accepts_what_mainline_signs() {
        for salt in [None, Some(&b"salt"[..])] {
            let item = MutableItem::new(signer(), b"value", 3, salt);
            let checked =
                verify_mutable(item.key(), item.signature(), b"value", 3, salt).expect("valid");
            assert_eq!(checked, item);
            assert_eq!(*checked.target(), mutable_target(item.key(), salt));
        }
    }

    #[test]
    fn verify_refuses_tampering() {
        let item = MutableItem::new(signer(), b"value", 3, Some(b"s"));
        let (k, sig) = (item.key(), item.signature());
        let refuse = |v: &[u8], seq, salt: Option<&[u8]>| verify_mutable(k, sig, v, seq, salt);
        assert_eq!(
            refuse(b"valuE", 3, Some(b"s")),
            Err(ItemProblem::BadSignature)
        );
        assert_eq!(
            refuse(b"value", 4, Some(b"s")),
            Err(ItemProblem::BadSignature)
        );
        assert_eq!(
            refuse(b"value", 3, Some(b"t")),
            Err(ItemProblem::BadSignature)
        );
        assert_eq!(refuse(b"value", 3, None), Err(ItemProblem::BadSignature));
        let mut other_sig = *sig;
        other_sig[0] ^= 1;
        assert_eq!(
            verify_mutable(k, &other_sig, b"value", 3, Some(b"s")),
            Err(ItemProblem::BadSignature)
        );
    }

    #[test]
    fn verify_refuses_bad_key() {
        // y = 2 has no x on the curve: not a valid compressed point.
        let mut k = [0u8; 32];
        k[0] = 2;
        assert_eq!(
            verify_mutable(&k, &[0; 64], b"v", 1, None),
            Err(ItemProblem::BadKey)
        );
    }

    #[test]
    fn empty_salt_is_no_salt() {
        let item = MutableItem::new(signer(), b"v", 1, None);
        let checked = verify_mutable(item.key(), item.signature(), b"v", 1, Some(b"")).unwrap();
        assert_eq!(checked.salt(), None);
        assert_eq!(mutable_target(item.key(), Some(b"")), *item.target());
    }

    #[test]
    fn size_limits() {
        assert_eq!(check_sizes(&[0; 1000], Some(&[0; 64])), Ok(()));
        assert_eq!(
            check_sizes(&[0; 1001], None),
            Err(ItemProblem::ValueTooBig { len: 1001 })
        );
        assert_eq!(
            check_sizes(b"", Some(&[0; 65])),
            Err(ItemProblem::SaltTooBig { len: 65 })
        );
        let item = MutableItem::new(signer(), &[1; 1001], 1, None);
        assert_eq!(
            verify_mutable(item.key(), item.signature(), &[1; 1001], 1, None),
            Err(ItemProblem::ValueTooBig { len: 1001 })
        );
    }
}
