//! [`CheckedRequest`]: a request that [`Policy::check`](super::Policy::check) let through,
//! carrying what the later layers need, found in its one parse (pure, no I/O).
//!
//! The worker reads a request's JSON once: the policy parses it, applies its rules and
//! hands on this value. The cache takes its key ([`CheckedRequest::cache_key`]) and the
//! ledger entries it reads or touches ([`CheckedRequest::ledger_keys`],
//! [`CheckedRequest::touched_keys`]), the work router its action, and the relay the bytes
//! to post ([`CheckedRequest::body`]); none of them parses the body again.

use bytes::Bytes;
use serde_json::{Map, Value};

/// A 32-byte ledger key: an account's public key or a block's hash, as the Nano RPC
/// writes them (an account as `nano_...` or `xrb_...`, a key or hash as 64 hex digits).
///
/// The cache uses them to forget what a `process` changed: an account and a hash that
/// are the same 32 bytes are the same key (a state block's `link` is a destination
/// account in a send and a source hash in a receive, and both readings are meant).
pub type LedgerKey = [u8; 32];

/// The request field a caller sets to `"true"` (or `true`) to have the worker ask the
/// node instead of answering from its cache (`docs/protocol.md` §4.2). The policy
/// removes it, so the node never sees it.
pub const UNCACHED_FIELD: &str = "uncached";

/// The fields of a block (in `process`) that name a ledger entry the block changes:
/// its account (balance, frontier, history), `link` (the destination account of a send,
/// the source block of a receive: its receivable entry), `link_as_account` (the same
/// 32 bytes as an account), `previous` (its `successor`), the legacy blocks' `destination`
/// and `source`, and the `representative` (its weight).
const BLOCK_KEY_FIELDS: &[&str] = &[
    "account",
    "link",
    "link_as_account",
    "previous",
    "destination",
    "source",
    "representative",
];

/// A request [`Policy::check`](super::Policy::check) accepted: its action, the bytes to
/// post to the node and the parsed request they encode.
///
/// The bytes are the caller's, unchanged, unless a rule rewrote the request (see the
/// policy's rules); [`CheckedRequest::request`] is always the object those bytes hold.
#[derive(Debug, Clone)]
pub struct CheckedRequest {
    action: String,
    body: Bytes,
    request: Map<String, Value>,
    uncached: bool,
}

impl CheckedRequest {
    /// Made by the policy only: `body` must be the JSON of `request`.
    pub(crate) fn new(
        action: String,
        body: Bytes,
        request: Map<String, Value>,
        uncached: bool,
    ) -> Self {
        Self {
            action,
            body,
            request,
            uncached,
        }
    }

    /// The request's `action`, on the policy's allowlist.
    pub fn action(&self) -> &str {
        &self.action
    }

    /// The bytes to post to the node (a JSON object).
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The request as the node will read it (after the policy's rewrites).
    pub fn request(&self) -> &Map<String, Value> {
        &self.request
    }

    /// Whether the caller asked for an answer from the node, not from a cache
    /// ([`UNCACHED_FIELD`]).
    pub fn uncached(&self) -> bool {
        self.uncached
    }

    /// The request's canonical JSON: object keys sorted, no white space. Two requests
    /// with the same key ask the node the same thing.
    pub fn cache_key(&self) -> String {
        // serde_json's map is ordered by key (no `preserve_order`), so this is canonical;
        // serializing a map of strings and JSON values cannot fail.
        serde_json::to_string(&self.request).unwrap_or_default()
    }

    /// The ledger entries a read names: every account or 32-byte hash among the request's
    /// values, at the top level and one level into its arrays and objects (`account`,
    /// `accounts`, `hash`, `hashes`, `block`, `head`, ...). Sorted, no duplicates.
    pub fn ledger_keys(&self) -> Vec<LedgerKey> {
        let mut keys = Vec::new();
        for (name, value) in &self.request {
            if name == "action" {
                continue;
            }
            match value {
                Value::String(text) => keys.extend(ledger_key(text)),
                Value::Array(items) => keys.extend(items.iter().filter_map(string_key)),
                Value::Object(members) => keys.extend(members.values().filter_map(string_key)),
                _ => {}
            }
        }
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// The ledger entries a `process` changes, read from its `block` (a JSON object, or
    /// a string holding one when `json_block` is false): the block's account, `link`
    /// (destination of a send, source of a receive), `link_as_account`, `previous`, the
    /// legacy `destination` and `source`, and the `representative`. Empty for any other
    /// action, and for a block that is not JSON (the node refuses it). Sorted, no
    /// duplicates.
    pub fn touched_keys(&self) -> Vec<LedgerKey> {
        if self.action != "process" {
            return Vec::new();
        }
        let parsed;
        let block = match self.request.get("block") {
            Some(Value::Object(block)) => block,
            Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(block)) => {
                    parsed = block;
                    &parsed
                }
                _ => return Vec::new(),
            },
            _ => return Vec::new(),
        };
        let mut keys: Vec<LedgerKey> = BLOCK_KEY_FIELDS
            .iter()
            .filter_map(|field| block.get(*field).and_then(string_key))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }
}

fn string_key(value: &Value) -> Option<LedgerKey> {
    value.as_str().and_then(ledger_key)
}

/// Base32 alphabet of Nano account addresses.
const ACCOUNT_ALPHABET: &[u8; 32] = b"13456789abcdefghijkmnopqrstuwxyz";

/// `text` as a ledger key: 64 hex digits (either case), or an account address
/// (`nano_` or `xrb_`, 52 base32 digits of key, 8 of checksum; the checksum is not
/// verified: the node refuses a wrong one, and a key that names nothing costs nothing).
pub fn ledger_key(text: &str) -> Option<LedgerKey> {
    let bytes = text.as_bytes();
    if bytes.len() == 64 && bytes.iter().all(u8::is_ascii_hexdigit) {
        let mut key = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let high = (pair[0] as char).to_digit(16)?;
            let low = (pair[1] as char).to_digit(16)?;
            key[i] = (high * 16 + low) as u8;
        }
        return Some(key);
    }
    let digits = text
        .strip_prefix("nano_")
        .or_else(|| text.strip_prefix("xrb_"))?
        .as_bytes();
    if digits.len() != 60 {
        return None;
    }
    let value = |c: u8| ACCOUNT_ALPHABET.iter().position(|&a| a == c);
    if !digits[52..].iter().all(|&c| value(c).is_some()) {
        return None;
    }
    // 52 digits are 260 bits: 4 zero bits, then the 256-bit key.
    let mut key = [0u8; 32];
    let (mut acc, mut bits, mut at) = (0u32, 0u32, 0usize);
    for (n, &c) in digits[..52].iter().enumerate() {
        let v = value(c)? as u32;
        if n == 0 {
            if v >> 1 != 0 {
                return None;
            }
            acc = v;
            bits = 1;
            continue;
        }
        acc = (acc << 5) | v;
        bits += 5;
        while bits >= 8 {
            bits -= 8;
            key[at] = (acc >> bits) as u8;
            at += 1;
            acc &= (1 << bits) - 1;
        }
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nano::Policy;
    use serde_json::json;

    const ACCOUNT: &str = "nano_3e3j5tkog48pnny9dmfzj1r16pg8t1e76dz5tmac6iq689wyjfpiij4txtdo";
    /// What the node answers to `account_key` for [`ACCOUNT`].
    const ACCOUNT_KEY: &str = "B0311EA55708D6A53C75CDBF88300259C6D018522FE3D4D0A242E431F9E8B6D0";

    fn key(hex: &str) -> LedgerKey {
        ledger_key(hex).expect("64 hex digits")
    }

    #[test]
    fn addresses_and_hex_name_the_same_key() {
        assert_eq!(ledger_key(ACCOUNT), Some(key(ACCOUNT_KEY)));
        let xrb = ACCOUNT.replacen("nano_", "xrb_", 1);
        assert_eq!(ledger_key(&xrb), Some(key(ACCOUNT_KEY)));
        assert_eq!(
            ledger_key(&ACCOUNT_KEY.to_lowercase()),
            Some(key(ACCOUNT_KEY))
        );
        for not_a_key in [
            "",
            "true",
            "nano_",
            &ACCOUNT[..ACCOUNT.len() - 1],
            &ACCOUNT.replacen('3', "2", 1),
            &ACCOUNT_KEY.replacen('B', "G", 1),
            // A first digit over 1 would need a 257th bit.
            &ACCOUNT.replacen("nano_3", "nano_4", 1),
        ] {
            assert_eq!(ledger_key(not_a_key), None, "{not_a_key:?}");
        }
    }

    #[test]
    fn reads_name_the_keys_among_their_values() {
        let policy = Policy::read_only();
        let body = json!({
            "action": "accounts_balances",
            "accounts": [ACCOUNT, "junk"],
            "hash": ACCOUNT_KEY,
            "count": "5",
        });
        let checked = policy.check(body.to_string().as_bytes()).expect("allowed");
        assert_eq!(checked.ledger_keys(), [key(ACCOUNT_KEY)]);
        assert!(checked.touched_keys().is_empty());
        assert_eq!(checked.action(), "accounts_balances");
        assert_eq!(
            checked.cache_key(),
            format!(
                r#"{{"accounts":["{ACCOUNT}","junk"],"action":"accounts_balances","count":"5","hash":"{ACCOUNT_KEY}"}}"#
            )
        );
    }

    #[test]
    fn a_process_touches_what_its_block_names() {
        let mut policy = Policy::read_only();
        policy.allow("process").expect("opt-in");
        let previous = "8D8EDA98311516859B5DCDF05A268CDB2DBDC7D6E703943E1B544B1369FBE081";
        let link = "AA81D441B67A9C754AD8916511A4DCC8411A6CCFA3150E173867D74EF6A3A6C5";
        let block = json!({
            "type": "state",
            "account": ACCOUNT,
            "previous": previous,
            "representative": ACCOUNT,
            "balance": "1",
            "link": link,
            "signature": "00",
        });
        let mut expected = vec![key(ACCOUNT_KEY), key(previous), key(link)];
        expected.sort_unstable();
        for block in [block.clone(), Value::String(block.to_string())] {
            let body = json!({ "action": "process", "block": block }).to_string();
            let checked = policy.check(body.as_bytes()).expect("allowed");
            assert_eq!(checked.touched_keys(), expected);
        }
        let body = json!({ "action": "process", "block": "not json" }).to_string();
        assert!(policy
            .check(body.as_bytes())
            .expect("allowed")
            .touched_keys()
            .is_empty());
    }
}
