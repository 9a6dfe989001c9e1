//! Certificates a browser accepts by hash, and their rotation.
//!
//! A page may open a WebTransport session to a host without a CA-signed certificate when
//! it gives the SHA-256 of the host's certificate (W3C WebTransport,
//! `serverCertificateHashes`). The browser then takes only an X.509 certificate with an
//! ECDSA P-256 key whose validity period is at most 14 days and covers now; names are not
//! checked. So a host here holds a [`CertRing`]:
//!
//! ```text
//!  time ─────────────────────────────────────────────────────────────────────────►
//!  cert k     [─1 h┊ served for ROTATE (5 d) ┊ still valid, published as previous ]
//!  cert k+1              [─1 h┊ published as next ┊ served for ROTATE ┊ ...
//!                              ▲ generated when cert k starts being served
//! ```
//!
//! - every certificate is valid for [`CertPolicy::lifetime`] (10 days), from one hour
//!   before it is first served (clocks disagree);
//! - it is served for [`CertPolicy::rotate_every`] (5 days), then the next one takes over;
//! - the next one exists from the moment the current one is served, and both hashes are
//!   published ([`CertRing::hashes`]): a page that learnt them up to 5 days before a
//!   rotation still connects after it.
//!
//! The ring itself is pure: it is given the time and returns what to serve.

use std::time::Duration;

use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use serde::{Deserialize, Serialize};

/// How long certificates live and when they are replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertPolicy {
    /// Validity period of each certificate (`notAfter − notBefore`). Browsers refuse more
    /// than 14 days. Default 10 days.
    pub lifetime: Duration,
    /// How long a certificate is served before the next one takes over. Must be at most
    /// `lifetime − backdate`. Default 5 days.
    pub rotate_every: Duration,
    /// How far `notBefore` lies before the certificate is first served, for callers whose
    /// clocks run behind. Default 1 hour.
    pub backdate: Duration,
}

/// Longest validity a browser accepts for a certificate given by hash (W3C WebTransport).
pub const MAX_BROWSER_LIFETIME: Duration = Duration::from_secs(14 * 24 * 3600);

impl Default for CertPolicy {
    fn default() -> Self {
        Self {
            lifetime: Duration::from_secs(10 * 24 * 3600),
            rotate_every: Duration::from_secs(5 * 24 * 3600),
            backdate: Duration::from_secs(3600),
        }
    }
}

/// Why a certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// rcgen failed to make the key or the certificate.
    #[error("cannot make a browser certificate: {0}")]
    Generate(String),
    /// The policy breaks the browser's rules or contradicts itself.
    #[error("bad certificate policy: {0}")]
    Policy(String),
    /// A stored ring could not be read.
    #[error("stored certificates are unreadable: {0}")]
    Stored(String),
}

/// One certificate with its key, as DER, and when it is valid.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrowserCert {
    /// The X.509 certificate, DER.
    #[serde(with = "hex_bytes")]
    pub cert_der: Vec<u8>,
    /// Its ECDSA P-256 private key, PKCS #8 DER.
    #[serde(with = "hex_bytes")]
    pub key_der: Vec<u8>,
    /// `notBefore`, ms since the Unix epoch.
    pub not_before_ms: u64,
    /// `notAfter`, ms since the Unix epoch.
    pub not_after_ms: u64,
}

impl std::fmt::Debug for BrowserCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserCert")
            .field("sha256", &self.sha256_hex())
            .field("not_before_ms", &self.not_before_ms)
            .field("not_after_ms", &self.not_after_ms)
            .finish_non_exhaustive()
    }
}

fn offset_time(ms: u64) -> Result<time::OffsetDateTime, CertError> {
    let secs = i64::try_from(ms / 1000).map_err(|e| CertError::Generate(e.to_string()))?;
    time::OffsetDateTime::from_unix_timestamp(secs).map_err(|e| CertError::Generate(e.to_string()))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl BrowserCert {
    /// A fresh ECDSA P-256 key and a self-signed certificate valid from `not_before_ms` to
    /// `not_after_ms` (ms since the Unix epoch, rounded down to seconds). The subject
    /// names `nano-connect` only: browsers do not check names for hashed certificates.
    ///
    /// Errors: [`CertError::Generate`].
    pub fn generate(not_before_ms: u64, not_after_ms: u64) -> Result<Self, CertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CertError::Generate(e.to_string()))?;
        let mut params = CertificateParams::new(vec!["nano-connect".to_string()])
            .map_err(|e| CertError::Generate(e.to_string()))?;
        params.not_before = offset_time(not_before_ms)?;
        params.not_after = offset_time(not_after_ms)?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| CertError::Generate(e.to_string()))?;
        Ok(Self {
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
            not_before_ms: not_before_ms / 1000 * 1000,
            not_after_ms: not_after_ms / 1000 * 1000,
        })
    }

    /// SHA-256 of the DER certificate: what a page passes in `serverCertificateHashes`.
    pub fn sha256(&self) -> [u8; 32] {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.cert_der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        out
    }

    /// [`BrowserCert::sha256`] as 64 lowercase hex digits.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256())
    }

    /// Whether `now_ms` lies inside the validity period.
    pub fn valid_at(&self, now_ms: u64) -> bool {
        (self.not_before_ms..=self.not_after_ms).contains(&now_ms)
    }
}

/// The certificate served now and the one that follows it (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRing {
    /// Served now.
    pub current: BrowserCert,
    /// When `current` started being served, ms since the Unix epoch.
    pub served_since_ms: u64,
    /// Served from `served_since_ms + rotate_every` on; published already.
    pub next: BrowserCert,
}

impl CertRing {
    /// A ring whose current certificate starts being served at `now_ms`.
    ///
    /// Errors: [`CertError::Policy`] when `policy` breaks the browser's rules (lifetime
    /// over 14 days, rotation after the certificate ends), [`CertError::Generate`].
    pub fn new(policy: &CertPolicy, now_ms: u64) -> Result<Self, CertError> {
        check(policy)?;
        Ok(Self {
            current: cert_from(policy, now_ms)?,
            served_since_ms: now_ms,
            next: cert_from(policy, now_ms + ms(policy.rotate_every))?,
        })
    }

    /// When the next certificate takes over, ms since the Unix epoch.
    pub fn rotation_due_ms(&self, policy: &CertPolicy) -> u64 {
        self.served_since_ms + ms(policy.rotate_every)
    }

    /// Brings the ring up to `now_ms`: the next certificate takes over when its turn has
    /// come (and a new next one is made); a ring whose certificates have both ended (a
    /// host that was off for long) starts again. Returns whether what is served changed.
    ///
    /// Errors: [`CertError::Generate`].
    pub fn advance(&mut self, policy: &CertPolicy, now_ms: u64) -> Result<bool, CertError> {
        let mut changed = false;
        // Bounded: one step per rotation period missed, at most two before a restart.
        for _ in 0..2 {
            if now_ms < self.rotation_due_ms(policy) {
                return Ok(changed);
            }
            let since = self.rotation_due_ms(policy);
            let following = cert_from(policy, since + ms(policy.rotate_every))?;
            self.current = std::mem::replace(&mut self.next, following);
            self.served_since_ms = since;
            changed = true;
        }
        if now_ms >= self.rotation_due_ms(policy) {
            *self = Self::new(policy, now_ms)?;
        }
        Ok(true)
    }

    /// The hashes to publish: the current certificate's, then the next one's.
    pub fn hashes(&self) -> [[u8; 32]; 2] {
        [self.current.sha256(), self.next.sha256()]
    }

    /// [`CertRing::hashes`] as hex.
    pub fn hashes_hex(&self) -> Vec<String> {
        vec![self.current.sha256_hex(), self.next.sha256_hex()]
    }

    /// Reads a ring stored with [`CertRing::to_json`].
    ///
    /// Errors: [`CertError::Stored`].
    pub fn from_json(text: &str) -> Result<Self, CertError> {
        serde_json::from_str(text).map_err(|e| CertError::Stored(e.to_string()))
    }

    /// The ring as JSON (private keys included: store it like a key file).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

fn check(policy: &CertPolicy) -> Result<(), CertError> {
    if policy.lifetime > MAX_BROWSER_LIFETIME {
        return Err(CertError::Policy(format!(
            "a lifetime of {} s is over the 14 days browsers accept",
            policy.lifetime.as_secs()
        )));
    }
    if policy.rotate_every.is_zero() || policy.rotate_every + policy.backdate > policy.lifetime {
        return Err(CertError::Policy(
            "the rotation period must be positive and end before the certificate does".into(),
        ));
    }
    Ok(())
}

/// The certificate first served at `start_ms`.
fn cert_from(policy: &CertPolicy, start_ms: u64) -> Result<BrowserCert, CertError> {
    let not_before = start_ms.saturating_sub(ms(policy.backdate));
    BrowserCert::generate(not_before, not_before + ms(policy.lifetime))
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 24 * 3600 * 1000;
    const T0: u64 = 1_790_000_000_000;

    #[test]
    fn certificates_meet_the_browser_rules() {
        let policy = CertPolicy::default();
        let ring = CertRing::new(&policy, T0).expect("ring");
        for cert in [&ring.current, &ring.next] {
            assert!(cert.not_after_ms - cert.not_before_ms <= ms(MAX_BROWSER_LIFETIME));
            // rustls takes it as an end-entity certificate with its key.
            let key =
                rustls::pki_types::PrivateKeyDer::try_from(cert.key_der.clone()).expect("pkcs8");
            rustls::crypto::ring::sign::any_ecdsa_type(&key).expect("an ECDSA P-256 key");
        }
        assert!(ring.current.valid_at(T0));
        assert!(
            ring.current.valid_at(T0 - 3_000_000),
            "backdated by an hour"
        );
        assert!(!ring.next.valid_at(T0), "the next one is not valid yet");
        assert_ne!(ring.hashes()[0], ring.hashes()[1]);
    }

    #[test]
    fn rotation_publishes_the_next_hash_before_it_is_served() {
        let policy = CertPolicy::default();
        let mut ring = CertRing::new(&policy, T0).expect("ring");
        let before = ring.hashes();
        assert!(!ring.advance(&policy, T0 + 5 * DAY - 1).expect("advance"));
        assert_eq!(ring.hashes(), before);
        assert!(ring.advance(&policy, T0 + 5 * DAY).expect("advance"));
        let after = ring.hashes();
        assert_eq!(after[0], before[1], "the published next one is served now");
        assert!(ring.current.valid_at(T0 + 5 * DAY));
        assert!(ring.current.valid_at(T0 + 10 * DAY - 3_600_001));
        assert_eq!(ring.served_since_ms, T0 + 5 * DAY);
    }

    #[test]
    fn a_ring_left_off_for_weeks_starts_again() {
        let policy = CertPolicy::default();
        let mut ring = CertRing::new(&policy, T0).expect("ring");
        let now = T0 + 40 * DAY;
        assert!(ring.advance(&policy, now).expect("advance"));
        assert!(ring.current.valid_at(now));
        assert_eq!(ring.served_since_ms, now);
    }

    #[test]
    fn policies_over_fourteen_days_are_refused() {
        let policy = CertPolicy {
            lifetime: Duration::from_secs(15 * 24 * 3600),
            ..CertPolicy::default()
        };
        assert!(matches!(
            CertRing::new(&policy, T0),
            Err(CertError::Policy(_))
        ));
        let policy = CertPolicy {
            rotate_every: Duration::from_secs(10 * 24 * 3600),
            ..CertPolicy::default()
        };
        assert!(matches!(
            CertRing::new(&policy, T0),
            Err(CertError::Policy(_))
        ));
    }

    #[test]
    fn a_stored_ring_reads_back() {
        let ring = CertRing::new(&CertPolicy::default(), T0).expect("ring");
        assert_eq!(CertRing::from_json(&ring.to_json()).expect("read"), ring);
        assert!(matches!(
            CertRing::from_json("{"),
            Err(CertError::Stored(_))
        ));
    }
}
