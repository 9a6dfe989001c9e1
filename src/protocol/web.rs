//! What a web page carries to reach the mesh: WebTransport endpoints with their
//! certificate hashes, and the bootstrap string that lists grapes (pure;
//! docs/protocol.md §9).
//!
//! An endpoint is written as the WebTransport URL of its session (W3C WebTransport over
//! HTTP/3, RFC 9220 extended CONNECT) with the SHA-256 of the certificates a page may
//! accept there (`serverCertificateHashes`) in the fragment:
//!
//! ```text
//! https://203.0.113.7:40001/nano-connect#sha256=9f86d0…0f00a08,60303ae…6f6b3a1
//! ```
//!
//! A **bootstrap string** is one or more such endpoints of grapes, separated by
//! whitespace. The fragment never reaches the server (a browser does not send it), so the
//! string is also the URL a page opens, hashes and all.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// The path of every WebTransport session: workers and grapes serve it alone.
pub const WEB_PATH: &str = "/nano-connect";

/// The service key of a grape's lookup over WebTransport: the request body is a service
/// key, the answer [`LookupAnswer`] as JSON.
pub const LOOKUP_SERVICE: &str = "nano-connect/lookup";

/// The service key of a grape's relay for pages (docs/protocol.md §9.5): the request
/// body is a [`RelayRequest`], the answer the worker's own response (status and body),
/// or its refusal.
pub const RELAY_SERVICE: &str = "nano-connect/relay";

/// What a page asks a grape to carry to a worker it cannot dial (one behind a NAT), as a
/// MessagePack map with named fields.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RelayRequest {
    /// The worker's node id (z-base-32), as its record names it.
    pub node: String,
    /// The service key, e.g. `nano_rpc`.
    pub key: String,
    /// The request body for the worker (a Nano RPC JSON body for `nano_rpc`).
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// Most certificate hashes an endpoint may list (current and next, with room to spare).
pub const MAX_HASHES: usize = 4;

/// A WebTransport endpoint and the certificates a page may accept there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebEndpoint {
    /// The UDP address of the HTTP/3 endpoint.
    pub addr: SocketAddr,
    /// SHA-256 of each acceptable certificate (1 to [`MAX_HASHES`]).
    pub sha256: Vec<[u8; 32]>,
}

/// Why a bootstrap string or endpoint did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    /// Not `https://HOST:PORT/nano-connect#sha256=HEX[,HEX...]`.
    #[error("{0:?} is not https://IP:PORT/nano-connect#sha256=HEX[,HEX]")]
    Shape(String),
    /// A hash is not 64 hex digits, or there are none or too many.
    #[error("bad certificate hashes in {0:?}: give 1 to 4 SHA-256 hashes of 64 hex digits")]
    Hashes(String),
    /// The string lists no endpoint.
    #[error("the bootstrap string lists no grape")]
    Empty,
}

impl WebEndpoint {
    /// The URL a page opens: `https://ADDR/nano-connect`.
    pub fn url(&self) -> String {
        format!("https://{}{WEB_PATH}", self.addr)
    }

    /// The hashes as lowercase hex.
    pub fn sha256_hex(&self) -> Vec<String> {
        self.sha256.iter().map(hex::encode).collect()
    }
}

impl fmt::Display for WebEndpoint {
    /// `https://ADDR/nano-connect#sha256=HEX,HEX`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#sha256={}", self.url(), self.sha256_hex().join(","))
    }
}

impl FromStr for WebEndpoint {
    type Err = BootstrapError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let shape = || BootstrapError::Shape(text.chars().take(200).collect());
        let rest = text.strip_prefix("https://").ok_or_else(shape)?;
        let (url, fragment) = rest.split_once('#').ok_or_else(shape)?;
        let authority = url
            .strip_suffix(WEB_PATH)
            .or_else(|| url.strip_suffix(&format!("{WEB_PATH}/")))
            .ok_or_else(shape)?;
        let addr: SocketAddr = authority.parse().map_err(|_| shape())?;
        let hashes = fragment.strip_prefix("sha256=").ok_or_else(shape)?;
        let bad = || BootstrapError::Hashes(text.chars().take(200).collect());
        let sha256 = hashes
            .split(',')
            .map(|h| {
                let bytes = hex::decode(h).map_err(|_| bad())?;
                <[u8; 32]>::try_from(bytes).map_err(|_| bad())
            })
            .collect::<Result<Vec<_>, _>>()?;
        if sha256.is_empty() || sha256.len() > MAX_HASHES {
            return Err(bad());
        }
        Ok(Self { addr, sha256 })
    }
}

/// Reads a bootstrap string: endpoints separated by whitespace.
///
/// Errors: the first endpoint that does not parse, or [`BootstrapError::Empty`].
pub fn parse_bootstrap(text: &str) -> Result<Vec<WebEndpoint>, BootstrapError> {
    let endpoints = text
        .split_whitespace()
        .map(WebEndpoint::from_str)
        .collect::<Result<Vec<_>, _>>()?;
    if endpoints.is_empty() {
        return Err(BootstrapError::Empty);
    }
    Ok(endpoints)
}

/// Writes a bootstrap string (endpoints separated by one space).
pub fn format_bootstrap(endpoints: &[WebEndpoint]) -> String {
    endpoints
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A grape's answer to a [`LOOKUP_SERVICE`] request, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LookupAnswer {
    /// Answer format version, 1.
    pub v: u8,
    /// The service key looked up.
    pub key: String,
    /// Every record found whose signature verified and that lists a web face or whose
    /// worker is behind a NAT (reached through the grape, docs/protocol.md §9.5), in the
    /// shape of [`crate::protocol::record::WireRecord::to_json`]; the page checks each
    /// again (a grape is not trusted).
    pub records: Vec<serde_json::Value>,
    /// This grape's own endpoint with the hashes it serves now and next: how a page
    /// that stays open learns of a rotation.
    pub grape: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_reads_back() {
        let e = WebEndpoint {
            addr: "127.0.0.1:40001".parse().unwrap(),
            sha256: vec![[0xab; 32], [0x01; 32]],
        };
        let text = e.to_string();
        assert_eq!(
            text,
            format!(
                "https://127.0.0.1:40001/nano-connect#sha256={},{}",
                "ab".repeat(32),
                "01".repeat(32)
            )
        );
        assert_eq!(text.parse::<WebEndpoint>(), Ok(e.clone()));
        let v6 = WebEndpoint {
            addr: "[::1]:4433".parse().unwrap(),
            sha256: vec![[7; 32]],
        };
        assert_eq!(v6.to_string().parse::<WebEndpoint>(), Ok(v6.clone()));
        let both = format_bootstrap(&[e.clone(), v6.clone()]);
        assert_eq!(parse_bootstrap(&format!("  {both}\n")), Ok(vec![e, v6]));
    }

    #[test]
    fn bad_strings_say_what_is_wrong() {
        let h = "ab".repeat(32);
        for (text, hashes) in [
            (format!("http://127.0.0.1:1/nano-connect#sha256={h}"), false),
            (format!("https://127.0.0.1:1/other#sha256={h}"), false),
            ("https://127.0.0.1:1/nano-connect".to_string(), false),
            (
                format!("https://host.example:1/nano-connect#sha256={h}"),
                false,
            ),
            (
                "https://127.0.0.1:1/nano-connect#sha256=abc".to_string(),
                true,
            ),
            ("https://127.0.0.1:1/nano-connect#sha256=".to_string(), true),
            (
                format!("https://127.0.0.1:1/nano-connect#sha256={h},{h},{h},{h},{h}"),
                true,
            ),
        ] {
            let got = text.parse::<WebEndpoint>();
            assert!(
                matches!(
                    (&got, hashes),
                    (Err(BootstrapError::Shape(_)), false) | (Err(BootstrapError::Hashes(_)), true)
                ),
                "{text}: {got:?}"
            );
        }
        assert_eq!(parse_bootstrap(" \n"), Err(BootstrapError::Empty));
    }
}
