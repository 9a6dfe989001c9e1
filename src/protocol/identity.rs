//! Node identity: every worker is named by its Ed25519 public key (RFC 8032), its
//! **node id**, written in z-base-32 as pkarr and iroh write theirs (pure).
//!
//! - [`NodeKey`] is the secret half (a 32-byte seed, RFC 8032 §5.1.5); a worker keeps it
//!   in a key file (`worker::keyfile`) and signs its records and TLS handshakes with it.
//! - [`NodeId`] is the public half: 32 bytes, shown as 52 z-base-32 characters
//!   (`ybndrfg8ejkmcpqxot1uwisza345h769` alphabet, no padding). The same id names the
//!   worker in the `listening` event, logs, `call -v`, the gateway's
//!   `x-nano-connect-worker` header, its BEP 44 record and its QUIC handshake.
//!
//! The QUIC handshake proves the id with TLS 1.3 raw public keys (RFC 7250): the worker
//! presents the DER SubjectPublicKeyInfo of its Ed25519 key (RFC 8410 §4), [`spki`], and
//! signs the handshake with it. [`NodeId::from_spki`] reads the id back.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{SigningKey, VerifyingKey};

/// Bytes of a node id (an Ed25519 public key).
pub const NODE_ID_LEN: usize = 32;

/// Characters of a node id in z-base-32: ⌈256 / 5⌉.
pub const NODE_ID_TEXT_LEN: usize = 52;

/// DER of an Ed25519 SubjectPublicKeyInfo up to the key (RFC 8410 §4):
/// `SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING (0 unused bits) ...`.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// DER of an Ed25519 PKCS#8 v1 private key up to the seed (RFC 8410 §7):
/// `SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING ...`.
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A node's public identity: an Ed25519 public key that is a valid curve point.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId([u8; NODE_ID_LEN]);

/// Why a text or byte string is not a node id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeIdError {
    /// Not 52 characters of the z-base-32 alphabet.
    #[error(
        "{0:?} is not a node id: expected 52 z-base-32 characters \
         (a worker prints its node id in its \"listening\" line)"
    )]
    Text(String),
    /// 32 bytes that are not an Ed25519 point.
    #[error("not an Ed25519 public key")]
    NotAKey,
}

impl NodeId {
    /// The id of a 32-byte public key; errors with [`NodeIdError::NotAKey`] when the
    /// bytes are not a point of the curve.
    pub fn from_bytes(bytes: [u8; NODE_ID_LEN]) -> Result<Self, NodeIdError> {
        VerifyingKey::from_bytes(&bytes).map_err(|_| NodeIdError::NotAKey)?;
        Ok(Self(bytes))
    }

    /// The 32 key bytes.
    pub fn as_bytes(&self) -> &[u8; NODE_ID_LEN] {
        &self.0
    }

    /// The DER SubjectPublicKeyInfo of this key (RFC 8410 §4, 44 bytes): what the worker
    /// presents as its raw public key in TLS (RFC 7250).
    pub fn spki(&self) -> Vec<u8> {
        spki(self.as_bytes())
    }

    /// The node id in a DER SubjectPublicKeyInfo, if it is exactly an Ed25519 one
    /// (44 bytes: the RFC 8410 prefix and the key); `None` for anything else.
    pub fn from_spki(der: &[u8]) -> Option<Self> {
        let key = der.strip_prefix(&SPKI_PREFIX)?;
        let key: [u8; NODE_ID_LEN] = key.try_into().ok()?;
        Self::from_bytes(key).ok()
    }

    /// The first 8 characters, for compact logs (`node=ybndrfg8…`).
    pub fn short(&self) -> String {
        let mut text = self.to_string();
        text.truncate(8);
        text
    }
}

/// The DER SubjectPublicKeyInfo of an Ed25519 public key (RFC 8410 §4).
pub fn spki(key: &[u8; NODE_ID_LEN]) -> Vec<u8> {
    let mut der = Vec::with_capacity(SPKI_PREFIX.len() + NODE_ID_LEN);
    der.extend_from_slice(&SPKI_PREFIX);
    der.extend_from_slice(key);
    der
}

impl fmt::Display for NodeId {
    /// The 52-character z-base-32 form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&z32::encode(&self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = NodeIdError;

    /// Reads the 52-character z-base-32 form (surrounding white space ignored).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let shown = || NodeIdError::Text(trimmed.chars().take(64).collect());
        if trimmed.len() != NODE_ID_TEXT_LEN {
            return Err(shown());
        }
        let bytes = z32::decode(trimmed.as_bytes()).map_err(|_| shown())?;
        let bytes: [u8; NODE_ID_LEN] = bytes.try_into().map_err(|_| shown())?;
        // z-base-32 of 256 bits leaves 4 spare bits in the last character: only the
        // canonical spelling (spare bits zero) is a node id, so that one key has one name.
        if z32::encode(&bytes) != trimmed {
            return Err(shown());
        }
        Self::from_bytes(bytes)
    }
}

impl serde::Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A node's secret key: an Ed25519 signing key made from a 32-byte seed (RFC 8032).
#[derive(Clone)]
pub struct NodeKey(SigningKey);

impl fmt::Debug for NodeKey {
    /// Shows the node id only, never the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({})", self.node_id())
    }
}

impl NodeKey {
    /// A fresh key from the operating system's randomness.
    pub fn generate() -> Self {
        Self::from_seed(rand::random())
    }

    /// The key of a 32-byte seed (RFC 8032 §5.1.5).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    /// The 32-byte seed, for the key file.
    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public half.
    pub fn node_id(&self) -> NodeId {
        NodeId(self.0.verifying_key().to_bytes())
    }

    /// The signing key, for BEP 44 items (mainline signs with ed25519-dalek's type).
    pub fn signing_key(&self) -> &SigningKey {
        &self.0
    }

    /// The key as DER PKCS#8 v1 (RFC 8410 §7, 48 bytes), as TLS libraries load keys.
    pub fn pkcs8_der(&self) -> Vec<u8> {
        let mut der = Vec::with_capacity(PKCS8_PREFIX.len() + 32);
        der.extend_from_slice(&PKCS8_PREFIX);
        der.extend_from_slice(&self.seed());
        der
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_is_52_z_base_32_characters() {
        for seed in [[0u8; 32], [7; 32], [0xff; 32]] {
            let id = NodeKey::from_seed(seed).node_id();
            let text = id.to_string();
            assert_eq!(text.len(), NODE_ID_TEXT_LEN);
            assert!(text
                .chars()
                .all(|c| "ybndrfg8ejkmcpqxot1uwisza345h769".contains(c)));
            assert_eq!(text.parse::<NodeId>().unwrap(), id);
            assert_eq!(format!("  {text}\n").parse::<NodeId>().unwrap(), id);
        }
    }

    #[test]
    fn rfc_8032_test_vector_1_gives_its_public_key() {
        // RFC 8032 §7.1, TEST 1.
        let seed: [u8; 32] =
            hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .unwrap()
                .try_into()
                .unwrap();
        let id = NodeKey::from_seed(seed).node_id();
        assert_eq!(
            hex::encode(id.as_bytes()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
    }

    #[test]
    fn bad_text_is_refused_with_a_message_that_says_what_a_node_id_is() {
        let id = NodeKey::from_seed([3; 32]).node_id().to_string();
        for bad in [
            "",
            "nano",
            &id[..51],
            &format!("{id}y"),
            &id.replace(&id[..1], "0"), // '0' is not in the alphabet
            &id.to_uppercase(),
        ] {
            let e = bad.parse::<NodeId>().unwrap_err();
            assert!(e.to_string().contains("z-base-32"), "{bad:?}: {e}");
        }
        // A non-canonical last character (spare bits set) names no node.
        let mut chars: Vec<char> = id.chars().collect();
        let last = chars[51];
        let alphabet: Vec<char> = "ybndrfg8ejkmcpqxot1uwisza345h769".chars().collect();
        let index = alphabet.iter().position(|c| *c == last).unwrap();
        chars[51] = alphabet[index ^ 1];
        let odd: String = chars.into_iter().collect();
        assert!(odd.parse::<NodeId>().is_err());
    }

    #[test]
    fn spki_is_rfc_8410_and_reads_back() {
        let id = NodeKey::from_seed([9; 32]).node_id();
        let der = id.spki();
        assert_eq!(der.len(), 44);
        assert_eq!(&der[..12], &SPKI_PREFIX);
        assert_eq!(NodeId::from_spki(&der), Some(id));
        assert_eq!(NodeId::from_spki(&der[..43]), None);
        let mut longer = der.clone();
        longer.push(0);
        assert_eq!(NodeId::from_spki(&longer), None);
        let mut other_alg = der;
        other_alg[8] = 0x71; // Ed448's OID ends in 113
        assert_eq!(NodeId::from_spki(&other_alg), None);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = NodeKey::from_seed([0x42; 32]);
        let shown = format!("{key:?}");
        assert!(shown.contains(&key.node_id().to_string()));
        assert!(!shown.contains(&hex::encode(key.seed())));
    }
}
