//! TLS 1.3 under QUIC (RFC 9001) with the worker's node key as a raw public key
//! (RFC 7250), so that the handshake itself proves which node answers.
//!
//! - A worker presents the DER SubjectPublicKeyInfo of its Ed25519 node key instead of
//!   a certificate (`server_certificate_type = RawPublicKey`) and signs the handshake
//!   with that key ([`server_config`]).
//! - A caller accepts only an Ed25519 raw public key, checks the handshake signature
//!   against it ([`NodeKeyVerifier`]), and, when it dials a named node, that the key is
//!   the node id it expected. The name travels as the TLS server name: the node id's 52
//!   z-base-32 characters are one valid DNS label ([`server_name`]); a caller that knows
//!   only an address dials [`ANY_NODE`] and learns the id from the handshake
//!   ([`peer_node_id`]).
//!
//! Clients are not authenticated (they are anonymous users); workers are, by key, so a
//! broker that relays a connection cannot terminate it and answer in the worker's place.

use std::sync::Arc;

use quinn::Connection;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
    UnixTime,
};
use rustls::server::AlwaysResolvesServerRawPublicKeys;
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::protocol::identity::{NodeId, NodeKey};

/// The TLS server name a caller sends when it does not know which node it dials (an
/// address from a lookup, a relay circuit to any worker): any valid node key is taken.
pub const ANY_NODE: &str = "nano-connect";

/// The TLS server name to dial `node` with: its node id, or [`ANY_NODE`].
pub fn server_name(node: Option<&NodeId>) -> String {
    node.map_or_else(|| ANY_NODE.to_string(), ToString::to_string)
}

/// The node id the peer of `connection` proved in its handshake, if it presented an
/// Ed25519 raw public key (always so for a connection made with [`client_config`]).
pub fn peer_node_id(connection: &Connection) -> Option<NodeId> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    NodeId::from_spki(chain.first()?.as_ref())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why TLS could not be set up (a bug or a broken key, not a user error).
#[derive(Debug, thiserror::Error)]
#[error("TLS set-up failed: {0}")]
pub struct TlsError(String);

/// A worker's TLS 1.3 config: the node key as a raw public key (RFC 7250), ALPN `alpn`,
/// no client authentication.
///
/// Errors: [`TlsError`] if rustls refuses the key (it never does for an Ed25519 seed).
pub fn server_config(key: &NodeKey, alpn: &[u8]) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der()));
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| TlsError(format!("node key: {e}")))?;
    let spki = CertificateDer::from(key.node_id().spki());
    let certified = Arc::new(CertifiedKey::new(vec![spki], signing));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(AlwaysResolvesServerRawPublicKeys::new(certified)));
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}

/// A caller's TLS 1.3 config: takes a worker's Ed25519 raw public key, checked by
/// [`NodeKeyVerifier`] against the node id in the server name; ALPN `alpn`.
///
/// Errors: [`TlsError`] (never, with the built-in provider).
pub fn client_config(alpn: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NodeKeyVerifier(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}

/// Verifies a worker's raw public key (RFC 7250): it must be an Ed25519
/// SubjectPublicKeyInfo (RFC 8410), equal to the node id in the server name unless the
/// name is [`ANY_NODE`], and the TLS 1.3 handshake signature must verify with it.
#[derive(Debug)]
pub struct NodeKeyVerifier(Arc<CryptoProvider>);

impl ServerCertVerifier for NodeKeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = NodeId::from_spki(end_entity.as_ref()).ok_or_else(|| {
            rustls::Error::General("the peer's key is not an Ed25519 node key".into())
        })?;
        let wanted = match server_name {
            ServerName::DnsName(name) if name.as_ref() != ANY_NODE => {
                Some(name.as_ref().parse::<NodeId>().map_err(|e| {
                    rustls::Error::General(format!("bad server name for a node: {e}"))
                })?)
            }
            _ => None,
        };
        match wanted {
            Some(wanted) if wanted != presented => Err(rustls::Error::General(format!(
                "the peer proved node id {presented}, not the expected {wanted}"
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // TLS 1.2 is never negotiated (the configs allow TLS 1.3 only, as QUIC requires).
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(cert.as_ref()),
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}
