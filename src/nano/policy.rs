//! The relay policy: which Nano RPC requests a relay forwards, and in what form (sans-IO).
//!
//! [`Policy::check`] takes the request body a caller sent and either refuses it with a
//! [`Refusal`] or returns a [`CheckedRequest`]: the action, the bytes to post to the node
//! and the request they encode, read once for every later layer. It owns no socket and reads no
//! clock. The rules, in the order they are applied:
//!
//! 1. The body is one JSON object (RFC 8259) in which no object repeats a key. nano-node
//!    reads the body with boost's property tree, whose `get` returns the *first* of two
//!    equal keys, while serde (and so this check) keeps the *last*: with a repeated
//!    `action` the node could run an action this check never saw.
//! 2. `action` is a string on the allowlist: [`READ_ONLY_ACTIONS`] plus the
//!    [`OPT_IN_ACTIONS`] the operator added with [`Policy::allow`]. Anything else, unknown
//!    names included, is refused (`docs/protocol.md` §4: the node's own control
//!    flag is no safe boundary).
//! 3. `process` is refused when `force` is anything but false (`false`, `"false"`, `0`,
//!    `"0"`): a forced `process` makes the node replace a block it already has
//!    (<https://docs.nano.org/commands/rpc-protocol/#process>).
//! 4. No array anywhere in the body holds more than [`Policy::max_array_len`] entries
//!    (`accounts`, `hashes`, ...): the node's work grows with them. Under the keys that
//!    nano-node iterates with boost's `get_child` ([`ITERATED_KEYS`]: `accounts` in
//!    `accounts_balances`, `accounts_frontiers`, `accounts_receivable`,
//!    `accounts_representatives` and `representatives_online`, `hashes` in `blocks` and
//!    `blocks_info`), an *object* is capped the same way: `get_child` walks an object's
//!    members exactly as it walks an array's entries, so `{"accounts": {"a": "nano_..",
//!    "b": ...}}` costs the node as much as the array would.
//! 5. A top-level `account_filter` is removed: it makes `receivable` and
//!    `accounts_receivable` scan for the listed senders, work a relay does not offer.
//! 6. `count` is capped at [`Policy::max_count`]. The Nano RPC sends numbers as strings
//!    (`"count": "10"`), and nano-node reads them with C++ `std::stoull`, which skips
//!    leading white space, takes a sign and wraps negatives (`"-1"` is 2^64 − 1, "all").
//!    Any count the node would read as more than the cap, or would read differently from
//!    plain digits, is rewritten to plain digits no larger than the cap.
//! 7. A *missing* `count` is added as the cap (as a string) where the node would read its
//!    absence as "all" ([`UNBOUNDED_WITHOUT_COUNT`]): nano-node's `receivable` (and its
//!    alias `pending`), `accounts_receivable` and `representatives` read `count` with
//!    `count_optional_impl ()`, whose default is `std::numeric_limits<uint64_t>::max ()`
//!    (`nano/node/json_handler.hpp`). The other allowlisted actions that read a count
//!    need no addition: `account_history`, `chain` and `successors` read it with
//!    `count_impl ()`, which refuses a request without one, and `delegators` with
//!    `count_optional_impl (1024)`, a bound of its own. (RsNano's `rust/rpc_messages`
//!    has the same defaults, except that it requires a count in `receivable` and
//!    `accounts_receivable`: there the added cap turns its refusal into an answer of at
//!    most the cap.)
//! 8. `accounts_receivable` reads `count` *per account* (its loop over `accounts` starts
//!    a fresh `peers_l.size () < count` for each), so its cap is shared out: at most
//!    `max(1, max_count / accounts)` each, and the answer holds at most about
//!    [`Policy::max_count`] entries in all, as any other capped answer does.
//! 9. `offset` is at most [`Policy::max_offset`] in the actions that read it
//!    ([`OFFSET_ACTIONS`]: `account_history`, `chain`, `successors`, `receivable`,
//!    `pending`), read as rule 6 reads `count`; a larger one (`"-1"` and
//!    `"18446744073709551615"` included) is refused with `invalid_request`. nano-node
//!    skips offset entries one ledger read at a time (`offset_optional_impl`, then
//!    `--offset` in the loop), so the offset is work as much as the count is; it is
//!    refused rather than lowered because a lower offset would answer with other
//!    entries than the ones asked for.
//! 10. A top-level `uncached` (`"true"`, `true`, `"false"` or `false`; anything else is
//!     `invalid_request`) is removed and noted in the [`CheckedRequest`]: it asks the
//!     worker for an answer from the node rather than from its cache
//!     (`docs/protocol.md` §4.2), and means nothing to the node, which must not see it.
//!
//! Limits no rule here can set, because the node's work does not follow from the request:
//! `delegators` walks the ledger's accounts until it has found `count` delegators of the
//! representative (a representative with few delegators costs a walk of every account);
//! `receivable` with `sorting` and a `threshold`, `source` or `min_version` collects every
//! receivable entry of the account before applying `count`; and a `threshold` skips
//! entries below it without counting them.
//!
//! When rules 5 to 8 and 10 change nothing, the caller's bytes are forwarded unchanged, byte for
//! byte. Otherwise the body is serialized anew (keys may come out in another order).
//!
//! [`READ_ONLY_ACTIONS`]: super::actions::READ_ONLY_ACTIONS
//! [`OPT_IN_ACTIONS`]: super::actions::OPT_IN_ACTIONS

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::actions::{OPT_IN_ACTIONS, READ_ONLY_ACTIONS};
use super::checked::{CheckedRequest, UNCACHED_FIELD};
use crate::protocol::frame::{ErrorCode, WireError};

/// Default cap on a request's `count`, in items.
///
/// Nano wallets page `account_history` and `receivable` in pages of tens to hundreds; a
/// thousand items keeps an answer well below a megabyte.
pub const DEFAULT_MAX_COUNT: u64 = 1000;

/// Default cap on the entries of any array in a request.
///
/// 500 account addresses (65 bytes each with quotes and comma) take about 33 KB, half of
/// the 64 KiB request frame a worker reads by default (`DEFAULT_MAX_REQUEST_BYTES`), so the
/// cap is reached before the frame limit by a request that means it.
pub const DEFAULT_MAX_ARRAY_LEN: usize = 500;

/// Default cap on a request's `offset`, in entries skipped.
///
/// The node reads one ledger entry per entry it skips, as it does per entry it returns:
/// ten pages of [`DEFAULT_MAX_COUNT`] entries. A wallet that pages further can page from
/// where its last page ended (`head` in `account_history`, `block` in `chain`).
pub const DEFAULT_MAX_OFFSET: u64 = 10 * DEFAULT_MAX_COUNT;

/// The keys whose value nano-node iterates with boost's `get_child` (`accounts`: in
/// `accounts_balances`, `accounts_frontiers`, `accounts_receivable`,
/// `accounts_representatives`, `representatives_online`; `hashes`: in `blocks`,
/// `blocks_info`), where an object's members count as entries (rule 4).
pub const ITERATED_KEYS: &[&str] = &["accounts", "hashes"];

/// Allowlisted actions whose `count` nano-node reads with `count_optional_impl ()`,
/// defaulting to `u64::MAX` ("all"): a request without a count gets the cap (rule 7).
pub const UNBOUNDED_WITHOUT_COUNT: &[&str] = &[
    "accounts_receivable",
    "pending",
    "receivable",
    "representatives",
];

/// Allowlisted actions that read `offset` (nano-node's `offset_optional_impl`), which
/// is capped at [`Policy::max_offset`] (rule 9).
pub const OFFSET_ACTIONS: &[&str] = &[
    "account_history",
    "chain",
    "pending",
    "receivable",
    "successors",
];

/// Longest part of a caller's text (an action name, a key) quoted back in a refusal.
const MAX_QUOTED_CHARS: usize = 64;

/// Which requests a relay forwards: an allowlist of actions and caps on their arguments.
///
/// Start from [`Policy::read_only`] (also the [`Default`]) and add opt-ins with
/// [`Policy::allow`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    allowed: BTreeSet<String>,
    max_count: u64,
    max_array_len: usize,
    max_offset: u64,
}

/// Why [`Policy::check`] refused a request: the code and message a worker answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    /// [`ErrorCode::InvalidRequest`] for a body that is not a request the relay can
    /// read or accept, [`ErrorCode::ActionNotAllowed`] for an action (or `process` with
    /// `force`) outside the allowlist.
    pub code: ErrorCode,
    /// One human-readable line; any text of the caller's in it is quoted and shortened.
    pub message: String,
}

/// Why [`Policy::allow`] did not add an action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "action {action:?} cannot be allowed: only process, work_generate and block_confirm \
     can be added to the read-only allowlist"
)]
#[non_exhaustive]
pub struct AllowError {
    /// The action that was asked for.
    pub action: String,
}

impl Refusal {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::InvalidRequest,
            message: message.into(),
        }
    }

    fn not_allowed(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::ActionNotAllowed,
            message: message.into(),
        }
    }
}

impl From<Refusal> for WireError {
    fn from(refusal: Refusal) -> Self {
        WireError::new(refusal.code, refusal.message)
    }
}

impl Default for Policy {
    /// The same as [`Policy::read_only`].
    fn default() -> Self {
        Self::read_only()
    }
}

impl Policy {
    /// The default policy: [`READ_ONLY_ACTIONS`], `count` capped at
    /// [`DEFAULT_MAX_COUNT`], arrays at [`DEFAULT_MAX_ARRAY_LEN`], `offset` at
    /// [`DEFAULT_MAX_OFFSET`].
    pub fn read_only() -> Self {
        Self {
            allowed: READ_ONLY_ACTIONS.iter().map(|a| a.to_string()).collect(),
            max_count: DEFAULT_MAX_COUNT,
            max_array_len: DEFAULT_MAX_ARRAY_LEN,
            max_offset: DEFAULT_MAX_OFFSET,
        }
    }

    /// Adds an opt-in action (`process`, `work_generate` or `block_confirm`, see
    /// [`OPT_IN_ACTIONS`]) to the allowlist.
    ///
    /// Allowing an action that is already allowed does nothing. Errors with
    /// [`AllowError`] for any other action: everything outside the two lists stays
    /// refused.
    pub fn allow(&mut self, action: &str) -> Result<&mut Self, AllowError> {
        if READ_ONLY_ACTIONS.contains(&action) || OPT_IN_ACTIONS.contains(&action) {
            self.allowed.insert(action.to_string());
            Ok(self)
        } else {
            Err(AllowError {
                action: action.to_string(),
            })
        }
    }

    /// Whether requests with this `action` are forwarded (subject to the other rules).
    pub fn is_allowed(&self, action: &str) -> bool {
        self.allowed.contains(action)
    }

    /// The allowed actions, sorted.
    pub fn allowed(&self) -> impl Iterator<Item = &str> + '_ {
        self.allowed.iter().map(String::as_str)
    }

    /// The cap on a request's `count`, in items.
    pub fn max_count(&self) -> u64 {
        self.max_count
    }

    /// Sets the cap on a request's `count`, in items; at least 1 (0 is taken as 1).
    pub fn set_max_count(&mut self, count: u64) -> &mut Self {
        self.max_count = count.max(1);
        self
    }

    /// The cap on the entries of any one array in a request.
    pub fn max_array_len(&self) -> usize {
        self.max_array_len
    }

    /// Sets the cap on the entries of any one array in a request.
    pub fn set_max_array_len(&mut self, len: usize) -> &mut Self {
        self.max_array_len = len;
        self
    }

    /// The cap on a request's `offset`, in entries skipped.
    pub fn max_offset(&self) -> u64 {
        self.max_offset
    }

    /// Sets the cap on a request's `offset`, in entries skipped (0: no offset but 0).
    pub fn set_max_offset(&mut self, offset: u64) -> &mut Self {
        self.max_offset = offset;
        self
    }

    /// The cap on `count` for a request of `action`: [`Policy::max_count`], shared out
    /// over the accounts of an `accounts_receivable` (rule 8).
    fn count_cap(&self, action: &str, request: &Map<String, Value>) -> u64 {
        if action != "accounts_receivable" {
            return self.max_count;
        }
        let accounts = match request.get("accounts") {
            Some(Value::Array(items)) => items.len(),
            Some(Value::Object(members)) => members.len(),
            _ => 1,
        };
        let accounts = u64::try_from(accounts).unwrap_or(u64::MAX).max(1);
        (self.max_count / accounts).max(1)
    }

    /// Checks one request body and returns it as a [`CheckedRequest`]: its action, the
    /// bytes to post to the node and the request they encode, so that no later layer
    /// parses the body again.
    ///
    /// The rules are listed in the [module documentation](self). The bytes to post are
    /// `body` itself, unchanged, unless `account_filter` or `uncached` was removed or
    /// `count` capped or added.
    ///
    /// Errors with a [`Refusal`]: [`ErrorCode::InvalidRequest`] when the body is not a
    /// JSON object, repeats a key, lacks a string `action`, has an array (or an
    /// iterated object) over the cap, a `count` or `offset` that is not an integer, an
    /// `offset` over the cap, or would need a rewrite that could alter one of its
    /// numbers; [`ErrorCode::ActionNotAllowed`] when the action is not on the
    /// allowlist or is `process` with `force`; [`ErrorCode::InvalidRequest`] also for
    /// an `uncached` that is neither true nor false.
    pub fn check(&self, body: &[u8]) -> Result<CheckedRequest, Refusal> {
        let Parsed {
            mut request,
            inexact_number,
        } = parse_object(body)?;

        let action = match request.get("action") {
            None => return Err(Refusal::invalid("missing \"action\"")),
            Some(Value::String(action)) => action.clone(),
            Some(_) => return Err(Refusal::invalid("\"action\" must be a string")),
        };
        if !self.allowed.contains(&action) {
            return Err(Refusal::not_allowed(format!(
                "action {} is not allowed by this relay ({})",
                quoted(&action),
                self.describe_allowlist()
            )));
        }
        if action == "process" && request.get("force").is_some_and(|force| !is_false(force)) {
            return Err(Refusal::not_allowed(
                "action \"process\" with \"force\" is not allowed by this relay",
            ));
        }
        for (key, value) in &request {
            let objects = ITERATED_KEYS.contains(&key.as_str());
            if let Some((len, kind)) =
                longest_container(value, objects).filter(|&(len, _)| len > self.max_array_len)
            {
                return Err(Refusal::invalid(format!(
                    "{} holds {kind} of {len} entries; this relay accepts at most {}",
                    quoted(key),
                    self.max_array_len
                )));
            }
        }
        if OFFSET_ACTIONS.contains(&action.as_str()) {
            if let Some(offset) = request.get("offset") {
                check_offset(offset, self.max_offset)?;
            }
        }

        let mut changed = request.remove("account_filter").is_some();
        let count_cap = self.count_cap(&action, &request);
        match request.get_mut("count") {
            Some(count) => changed |= cap_count(count, count_cap)?,
            None if UNBOUNDED_WITHOUT_COUNT.contains(&action.as_str()) => {
                request.insert("count".to_string(), Value::String(count_cap.to_string()));
                changed = true;
            }
            None => {}
        }
        let uncached = match request.remove(UNCACHED_FIELD) {
            None => false,
            Some(flag) => {
                changed = true;
                read_uncached(&flag)?
            }
        };
        if !changed {
            let body = Bytes::copy_from_slice(body);
            return Ok(CheckedRequest::new(action, body, request, uncached));
        }
        if inexact_number {
            return Err(Refusal::invalid(
                "request body holds a JSON number that is not an exact integer and could \
                 change when the relay rewrites the body (count cap, account_filter, \
                 uncached); send numbers as strings, as the Nano RPC does",
            ));
        }
        let request = Value::Object(request);
        let body = serde_json::to_vec(&request).map_err(|e| Refusal {
            code: ErrorCode::Internal,
            message: format!("could not serialize the rewritten request: {e}"),
        })?;
        let Value::Object(request) = request else {
            unreachable!("made as an object above")
        };
        Ok(CheckedRequest::new(action, body.into(), request, uncached))
    }

    /// "read-only allowlist", plus the opted-in actions if any.
    fn describe_allowlist(&self) -> String {
        let opted: Vec<&str> = OPT_IN_ACTIONS
            .iter()
            .copied()
            .filter(|a| self.allowed.contains(*a))
            .collect();
        if opted.is_empty() {
            "read-only allowlist".to_string()
        } else {
            format!("read-only allowlist plus {}", opted.join(", "))
        }
    }
}

/// `text` in double quotes with escapes, shortened to [`MAX_QUOTED_CHARS`] characters.
fn quoted(text: &str) -> String {
    if text.chars().count() <= MAX_QUOTED_CHARS {
        format!("{text:?}")
    } else {
        let short: String = text.chars().take(MAX_QUOTED_CHARS).collect();
        format!("{short:?}...")
    }
}

/// Whether boost's `get<bool>` (and serde) would read `value` as false.
fn is_false(value: &Value) -> bool {
    match value {
        Value::Bool(b) => !b,
        Value::String(s) => s == "false" || s == "0",
        Value::Number(n) => n.as_u64() == Some(0),
        _ => false,
    }
}

/// The longest container in `value`, at any depth, and its kind ("an array" or "an
/// object"): arrays always, objects only when `objects` (rule 4).
fn longest_container(value: &Value, objects: bool) -> Option<(usize, &'static str)> {
    let (own, inner) = match value {
        Value::Array(items) => (
            Some((items.len(), "an array")),
            items
                .iter()
                .filter_map(|v| longest_container(v, objects))
                .max(),
        ),
        Value::Object(map) => (
            objects.then_some((map.len(), "an object")),
            map.values()
                .filter_map(|v| longest_container(v, objects))
                .max(),
        ),
        _ => return None,
    };
    own.max(inner)
}

/// Reads the `uncached` flag (rule 10): `true`, `"true"`, `false` or `"false"`.
fn read_uncached(flag: &Value) -> Result<bool, Refusal> {
    match flag {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s == "true" => Ok(true),
        Value::String(s) if s == "false" => Ok(false),
        _ => Err(Refusal::invalid(format!(
            "{UNCACHED_FIELD:?} must be \"true\" or \"false\""
        ))),
    }
}

/// Refuses an `offset` that the node would read as more than `max` (rule 9), read as
/// [`read_count_text`] reads a count.
fn check_offset(offset: &Value, max: u64) -> Result<(), Refusal> {
    let not_integer = || Refusal::invalid("\"offset\" must be a decimal integer, as a string");
    let value = match offset {
        Value::String(text) => read_count_text(text).ok_or_else(not_integer)?.value,
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(value), _) => value,
            // Negative, which the node wraps to a huge number.
            (None, Some(_)) => u64::MAX,
            (None, None) => return Err(not_integer()),
        },
        _ => return Err(not_integer()),
    };
    if value > max {
        return Err(Refusal::invalid(format!(
            "\"offset\" {} is over this relay's limit of {max} entries skipped; page on \
             from where the last page ended instead (\"head\" in account_history, \
             \"block\" in chain)",
            quoted(&offset.to_string())
        )));
    }
    Ok(())
}

/// Caps `count` at `max` in place; returns whether it changed.
fn cap_count(count: &mut Value, max: u64) -> Result<bool, Refusal> {
    match count {
        Value::String(text) => {
            let Some(read) = read_count_text(text) else {
                return Err(Refusal::invalid(
                    "\"count\" must be a decimal integer, as a string",
                ));
            };
            if read.plain && read.value <= max {
                return Ok(false);
            }
            *text = read.value.min(max).to_string();
            Ok(true)
        }
        Value::Number(n) => {
            let over = match (n.as_u64(), n.as_i64()) {
                (Some(value), _) => value > max,
                // Negative, which the node wraps to a huge number.
                (None, Some(_)) => true,
                (None, None) => return Err(Refusal::invalid("\"count\" must be an integer")),
            };
            if over {
                *count = Value::Number(Number::from(max));
            }
            Ok(over)
        }
        _ => Err(Refusal::invalid(
            "\"count\" must be a decimal integer, as a string",
        )),
    }
}

/// How nano-node reads a `count` text.
struct CountText {
    /// The value the node would use, saturated at `u64::MAX`.
    value: u64,
    /// Whether the text is plain ASCII digits, which every reader reads alike.
    plain: bool,
}

/// Reads `text` as C++ `std::stoull` does, with nano-node's demand that nothing follows
/// the digits: leading C white space, an optional sign, digits. A negative number wraps
/// (as `strtoull` does), so it counts as `u64::MAX`; so does an overflow, which the node
/// would refuse but other nodes may read otherwise. `None` when the node would refuse it
/// for other reasons.
fn read_count_text(text: &str) -> Option<CountText> {
    let trimmed = text.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (negative, digits) = match trimmed.as_bytes().first() {
        Some(b'-') => (true, &trimmed[1..]),
        Some(b'+') => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let magnitude = digits.parse::<u64>().unwrap_or(u64::MAX);
    let value = if negative && magnitude != 0 {
        u64::MAX
    } else {
        magnitude
    };
    Some(CountText {
        value,
        plain: digits.len() == text.len(),
    })
}

/// A request body read by [`parse_object`].
struct Parsed {
    request: Map<String, Value>,
    /// Whether some number was read as a float (a fraction, an exponent, or an integer
    /// beyond 64 bits), which serializing anew might not reproduce.
    inexact_number: bool,
}

/// Reads `body` as one JSON object whose objects repeat no key.
fn parse_object(body: &[u8]) -> Result<Parsed, Refusal> {
    let state = ParseState::default();
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = StrictValue { state: &state }
        .deserialize(&mut de)
        .and_then(|value| de.end().map(|()| value));
    match value {
        Ok(Value::Object(request)) => Ok(Parsed {
            request,
            inexact_number: state.inexact_number.get(),
        }),
        Ok(_) => Err(Refusal::invalid("request body is not a JSON object")),
        Err(e) => match state.duplicate.take() {
            Some(key) => Err(Refusal::invalid(format!(
                "request body repeats the key {}",
                quoted(&key)
            ))),
            None => Err(Refusal::invalid(format!(
                "request body is not a JSON object: {e}"
            ))),
        },
    }
}

/// What [`StrictValue`] learns while it reads.
#[derive(Default)]
struct ParseState {
    inexact_number: Cell<bool>,
    duplicate: RefCell<Option<String>>,
}

/// Reads any JSON value like `serde_json::Value` does, but fails on a repeated key and
/// notes inexact numbers. Depth is bounded by serde_json's recursion limit (128).
#[derive(Clone, Copy)]
struct StrictValue<'s> {
    state: &'s ParseState,
}

impl<'de> DeserializeSeed<'de> for StrictValue<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.state.inexact_number.set(true);
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                let message = format!("duplicate key {}", quoted(&key));
                *self.state.duplicate.borrow_mut() = Some(key);
                return Err(de::Error::custom(message));
            }
            let value = map.next_value_seed(self)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nano::actions::NANO_NODE_ACTIONS;
    use serde_json::json;

    const ACCOUNT: &str = "nano_3e3j5tkog48pnny9dmfzj1r16pg8t1e76dz5tmac6iq689wyjfpiij4txtdo";

    fn check(policy: &Policy, body: &str) -> Result<Value, Refusal> {
        policy.check(body.as_bytes()).map(|out| {
            let posted: Value = serde_json::from_slice(out.body()).expect("forwarded body is JSON");
            assert_eq!(posted, Value::Object(out.request().clone()), "{body}");
            posted
        })
    }

    /// The bytes `policy` would post for `body`.
    fn posted(policy: &Policy, body: &[u8]) -> Result<Vec<u8>, Refusal> {
        policy.check(body).map(|out| out.body().to_vec())
    }

    fn refusal(policy: &Policy, body: &str) -> Refusal {
        policy.check(body.as_bytes()).expect_err(body)
    }

    #[test]
    fn unchanged_request_is_forwarded_byte_for_byte() {
        let policy = Policy::read_only();
        for body in [
            r#"{"action":"block_count"}"#,
            "{ \"action\" : \"account_history\",\n \"account\": \"x\", \"count\": \"10\" }",
            r#"{"count":"1000","action":"chain","block":"AB"}"#,
            r#"{"action":"version","x":1.5e300}"#,
        ] {
            assert_eq!(posted(&policy, body.as_bytes()).unwrap(), body.as_bytes());
        }
    }

    #[test]
    fn not_json_or_not_an_object_is_invalid() {
        let policy = Policy::read_only();
        for body in [
            "",
            "action=version",
            "{\"action\":\"version\"",
            "{\"action\":\"version\"} trailing",
            "[{\"action\":\"version\"}]",
            "\"version\"",
            "null",
        ] {
            let r = refusal(&policy, body);
            assert_eq!(r.code, ErrorCode::InvalidRequest, "{body}");
            assert!(
                r.message.starts_with("request body is not a JSON object"),
                "{body}: {}",
                r.message
            );
        }
        // Invalid UTF-8 inside a string.
        let r = posted(&policy, b"{\"action\":\"ver\xffsion\"}").unwrap_err();
        assert_eq!(r.code, ErrorCode::InvalidRequest);
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let body = format!(
            "{{\"action\":\"version\",\"x\":{}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let r = refusal(&Policy::read_only(), &body);
        assert_eq!(r.code, ErrorCode::InvalidRequest);
    }

    #[test]
    fn missing_or_non_string_action_is_invalid() {
        let policy = Policy::read_only();
        let r = refusal(&policy, &format!(r#"{{"account":"{ACCOUNT}"}}"#));
        assert_eq!(r, Refusal::invalid("missing \"action\""));
        for body in [
            r#"{"action":7}"#,
            r#"{"action":["version"]}"#,
            r#"{"action":null}"#,
        ] {
            assert_eq!(
                refusal(&policy, body).code,
                ErrorCode::InvalidRequest,
                "{body}"
            );
        }
    }

    #[test]
    fn repeated_keys_are_refused_at_any_depth() {
        let policy = Policy::read_only();
        for body in [
            // boost's ptree would run the first action; serde keeps the last.
            r#"{"action":"wallet_export","action":"version"}"#,
            r#"{"action":"version","action":"version"}"#,
            r#"{"action":"account_history","count":"1","count":"99999"}"#,
            r#"{"action":"block_hash","block":{"type":"state","type":"send"}}"#,
        ] {
            let r = refusal(&policy, body);
            assert_eq!(r.code, ErrorCode::InvalidRequest, "{body}");
            assert!(r.message.contains("repeats the key"), "{}", r.message);
        }
    }

    #[test]
    fn actions_off_the_allowlist_are_refused() {
        let policy = Policy::read_only();
        let r = refusal(&policy, r#"{"action":"wallet_export","wallet":"00"}"#);
        assert_eq!(
            r,
            Refusal::not_allowed(
                "action \"wallet_export\" is not allowed by this relay (read-only allowlist)"
            )
        );
        for action in ["unknown_action_xyz", "Version", "version ", "", "process"] {
            let r = refusal(&policy, &json!({ "action": action }).to_string());
            assert_eq!(r.code, ErrorCode::ActionNotAllowed, "{action:?}");
        }
    }

    #[test]
    fn every_node_action_outside_the_lists_is_refused() {
        let policy = Policy::read_only();
        for action in NANO_NODE_ACTIONS {
            let body = json!({ "action": action }).to_string();
            let outcome = policy.check(body.as_bytes());
            if READ_ONLY_ACTIONS.contains(action) {
                assert!(outcome.is_ok(), "{action}");
            } else {
                assert_eq!(
                    outcome.unwrap_err().code,
                    ErrorCode::ActionNotAllowed,
                    "{action}"
                );
            }
        }
    }

    #[test]
    fn long_action_names_are_shortened_in_the_message() {
        let action = "x".repeat(10_000);
        let r = refusal(
            &Policy::read_only(),
            &json!({ "action": action }).to_string(),
        );
        assert!(r.message.len() < 200, "{}", r.message);
        assert!(!r.message.contains('\n'));
    }

    #[test]
    fn opt_ins_are_allowed_one_by_one_and_nothing_else() {
        let mut policy = Policy::read_only();
        policy.allow("process").unwrap();
        assert!(policy.is_allowed("process"));
        assert!(!policy.is_allowed("work_generate"));
        assert!(check(
            &policy,
            r#"{"action":"process","json_block":"true","block":{}}"#
        )
        .is_ok());
        let r = refusal(&policy, r#"{"action":"send"}"#);
        assert_eq!(
            r.message,
            "action \"send\" is not allowed by this relay (read-only allowlist plus process)"
        );
        assert_eq!(
            policy.allow("wallet_export").unwrap_err().action,
            "wallet_export"
        );
        assert!(policy.allow("version").is_ok());
        assert!(!policy.is_allowed("wallet_export"));
    }

    #[test]
    fn process_with_force_is_refused_even_when_opted_in() {
        let mut policy = Policy::read_only();
        policy.allow("process").unwrap();
        for force in [
            json!(true),
            json!("true"),
            json!("1"),
            json!(1),
            json!("yes"),
            json!(null),
        ] {
            let body = json!({ "action": "process", "force": force, "block": "{}" }).to_string();
            let r = refusal(&policy, &body);
            assert_eq!(r.code, ErrorCode::ActionNotAllowed, "{force}");
            assert!(r.message.contains("force"), "{}", r.message);
        }
        for force in [json!(false), json!("false"), json!("0"), json!(0)] {
            let body = json!({ "action": "process", "force": force, "block": "{}" }).to_string();
            assert_eq!(
                posted(&policy, body.as_bytes()).unwrap(),
                body.as_bytes(),
                "{force}"
            );
        }
    }

    #[test]
    fn arrays_over_the_cap_are_refused() {
        let mut policy = Policy::read_only();
        policy.set_max_array_len(3);
        let ok = json!({ "action": "accounts_balances", "accounts": ["a", "b", "c"] }).to_string();
        assert_eq!(posted(&policy, ok.as_bytes()).unwrap(), ok.as_bytes());
        for (body, key) in [
            (
                json!({ "action": "accounts_balances", "accounts": ["a", "b", "c", "d"] }),
                "accounts",
            ),
            (
                json!({ "action": "blocks_info", "hashes": ["1", "2", "3", "4", "5"] }),
                "hashes",
            ),
            (
                json!({ "action": "version", "anything": [1, 2, 3, 4] }),
                "anything",
            ),
            (
                json!({ "action": "version", "nested": { "deep": [[1, 2, 3, 4]] } }),
                "nested",
            ),
        ] {
            let r = refusal(&policy, &body.to_string());
            assert_eq!(r.code, ErrorCode::InvalidRequest);
            assert!(
                r.message
                    .starts_with(&format!("\"{key}\" holds an array of")),
                "{}",
                r.message
            );
            assert!(r.message.contains("at most 3"), "{}", r.message);
        }
    }

    #[test]
    fn account_filter_is_stripped() {
        let policy = Policy::read_only();
        let out = check(
            &policy,
            &json!({
                "action": "receivable",
                "account": ACCOUNT,
                "count": "5",
                "account_filter": [ACCOUNT],
            })
            .to_string(),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({ "action": "receivable", "account": ACCOUNT, "count": "5" })
        );
    }

    #[test]
    fn count_over_the_cap_is_rewritten_keeping_its_type() {
        let mut policy = Policy::read_only();
        policy.set_max_count(100);
        let cases = [
            (json!("101"), json!("100")),
            (json!("99999999999999999999999999"), json!("100")),
            (json!(5000), json!(100)),
            (json!(u64::MAX), json!(100)),
        ];
        for (count, capped) in cases {
            let body = json!({ "action": "account_history", "count": count }).to_string();
            let out = check(&policy, &body).unwrap();
            assert_eq!(out["count"], capped, "{count}");
        }
    }

    #[test]
    fn count_the_node_would_read_as_huge_or_oddly_is_rewritten() {
        let mut policy = Policy::read_only();
        policy.set_max_count(100);
        let cases = [
            // std::stoull wraps negatives: "-1" is 2^64 - 1 to nano-node.
            ("-1", "100"),
            ("-0", "0"),
            ("+5", "5"),
            (" 5", "5"),
            ("\t\n500", "100"),
        ];
        for (count, capped) in cases {
            let body = json!({ "action": "chain", "count": count }).to_string();
            assert_eq!(check(&policy, &body).unwrap()["count"], capped, "{count:?}");
        }
        let body = json!({ "action": "chain", "count": -1 }).to_string();
        assert_eq!(check(&policy, &body).unwrap()["count"], json!(100));
    }

    #[test]
    fn count_within_the_cap_is_left_alone() {
        let policy = Policy::read_only();
        for body in [
            r#"{"action":"chain","count":"1000"}"#,
            r#"{"action":"chain","count":"0010"}"#,
            r#"{"action":"chain","count":"0"}"#,
            r#"{"action":"chain","count":7}"#,
        ] {
            assert_eq!(posted(&policy, body.as_bytes()).unwrap(), body.as_bytes());
        }
    }

    #[test]
    fn count_that_is_not_an_integer_is_invalid() {
        let policy = Policy::read_only();
        for count in [
            json!("ten"),
            json!(""),
            json!("5 "),
            json!("0x10"),
            json!("1.5"),
            json!(1.5),
            json!(true),
            json!(null),
            json!(["5"]),
        ] {
            let body = json!({ "action": "chain", "count": count }).to_string();
            assert_eq!(
                refusal(&policy, &body).code,
                ErrorCode::InvalidRequest,
                "{count}"
            );
        }
    }

    #[test]
    fn a_rewrite_that_could_alter_a_number_is_refused() {
        let policy = Policy::read_only();
        let body = r#"{"action":"chain","count":"5000","threshold":340282366920938463463374607431768211455}"#;
        let r = refusal(&policy, body);
        assert_eq!(r.code, ErrorCode::InvalidRequest);
        assert!(r.message.contains("as strings"), "{}", r.message);
        // Integers within 64 bits survive a rewrite exactly (the offset of an action
        // that reads one is capped by rule 9, hence another key here).
        let body = r#"{"action":"chain","count":"5000","y":18446744073709551615,"x":-9}"#;
        let out = check(&policy, body).unwrap();
        assert_eq!(out["y"], json!(u64::MAX));
        assert_eq!(out["x"], json!(-9));
    }

    #[test]
    fn a_missing_count_is_added_where_the_node_reads_it_as_all() {
        let mut policy = Policy::read_only();
        policy.set_max_count(100);
        for action in [
            "receivable",
            "pending",
            "representatives",
            "accounts_receivable",
        ] {
            let body = json!({ "action": action, "account": ACCOUNT }).to_string();
            assert_eq!(check(&policy, &body).unwrap()["count"], "100", "{action}");
        }
        // count_impl () refuses a missing count; delegators defaults to 1024 itself.
        for body in [
            r#"{"action":"account_history","account":"x"}"#,
            r#"{"action":"chain","block":"AB"}"#,
            r#"{"action":"successors","block":"AB"}"#,
            r#"{"action":"delegators","account":"x"}"#,
            r#"{"action":"block_count"}"#,
        ] {
            assert_eq!(posted(&policy, body.as_bytes()).unwrap(), body.as_bytes());
        }
    }

    #[test]
    fn accounts_receivable_shares_its_count_over_the_accounts() {
        let policy = Policy::read_only();
        let accounts = |n: usize| vec![ACCOUNT; n];
        let count_of = |body: Value| check(&policy, &body.to_string()).unwrap()["count"].clone();
        let cases = [
            (
                json!({ "action": "accounts_receivable", "accounts": accounts(500) }),
                "2",
            ),
            (
                json!({ "action": "accounts_receivable", "accounts": accounts(3), "count": "400" }),
                "333",
            ),
            (
                json!({ "action": "accounts_receivable", "accounts": accounts(2), "count": "-1" }),
                "500",
            ),
            (
                json!({ "action": "accounts_receivable", "accounts": accounts(1) }),
                "1000",
            ),
            // More accounts than the cap: one each.
            (
                json!({ "action": "accounts_receivable", "accounts": accounts(500), "count": "1" }),
                "1",
            ),
        ];
        for (body, count) in cases {
            assert_eq!(count_of(body.clone()), count, "{body}");
        }
        let mut small = Policy::read_only();
        small.set_max_count(10);
        let body = json!({ "action": "accounts_receivable", "accounts": accounts(40) }).to_string();
        assert_eq!(check(&small, &body).unwrap()["count"], "1");
        let body =
            json!({ "action": "accounts_receivable", "accounts": {"a": ACCOUNT, "b": ACCOUNT} });
        assert_eq!(check(&small, &body.to_string()).unwrap()["count"], "5");
        // Within the share: byte for byte.
        let body =
            json!({ "action": "accounts_receivable", "accounts": accounts(2), "count": "5" })
                .to_string();
        assert_eq!(posted(&policy, body.as_bytes()).unwrap(), body.as_bytes());
    }

    #[test]
    fn offset_over_the_cap_is_refused_in_the_actions_that_read_it() {
        let mut policy = Policy::read_only();
        policy.set_max_offset(50);
        for offset in [
            json!("51"),
            json!("-1"),
            json!("18446744073709551615"),
            json!("99999999999999999999999"),
            json!(51),
            json!(-1),
            json!(u64::MAX),
        ] {
            for action in OFFSET_ACTIONS {
                let body = json!({ "action": action, "count": "1", "offset": offset }).to_string();
                let r = refusal(&policy, &body);
                assert_eq!(r.code, ErrorCode::InvalidRequest, "{body}");
                assert!(r.message.contains("limit of 50"), "{}", r.message);
            }
        }
        for offset in [
            json!("ten"),
            json!("1.5"),
            json!(1.5),
            json!(null),
            json!([1]),
        ] {
            let body = json!({ "action": "chain", "count": "1", "offset": offset }).to_string();
            let r = refusal(&policy, &body);
            assert!(r.message.starts_with("\"offset\" must be"), "{}", r.message);
        }
        for body in [
            r#"{"action":"chain","count":"1","offset":"50"}"#,
            r#"{"action":"chain","count":"1","offset":" 7"}"#,
            r#"{"action":"account_history","count":"1","offset":0}"#,
            // Actions that do not read an offset do not care.
            r#"{"action":"version","offset":"-1"}"#,
        ] {
            assert_eq!(posted(&policy, body.as_bytes()).unwrap(), body.as_bytes());
        }
    }

    #[test]
    fn iterated_objects_are_capped_like_arrays() {
        let mut policy = Policy::read_only();
        policy.set_max_array_len(3);
        let four = json!({"a": "1", "b": "2", "c": "3", "d": "4"});
        for (body, key) in [
            (
                json!({ "action": "accounts_balances", "accounts": four }),
                "accounts",
            ),
            (json!({ "action": "blocks_info", "hashes": four }), "hashes"),
            (
                json!({ "action": "accounts_frontiers", "accounts": {"x": four} }),
                "accounts",
            ),
        ] {
            let r = refusal(&policy, &body.to_string());
            assert_eq!(r.code, ErrorCode::InvalidRequest);
            assert!(
                r.message
                    .starts_with(&format!("\"{key}\" holds an object of 4 entries")),
                "{}",
                r.message
            );
        }
        // Objects the node reads by name (a block's fields) are not entries.
        let mut process = Policy::read_only();
        process.allow("process").unwrap().set_max_array_len(3);
        let body = json!({ "action": "process", "json_block": "true", "block": four }).to_string();
        assert_eq!(posted(&process, body.as_bytes()).unwrap(), body.as_bytes());
        let three =
            json!({ "action": "accounts_balances", "accounts": {"a": "1", "b": "2", "c": "3"} })
                .to_string();
        assert_eq!(posted(&policy, three.as_bytes()).unwrap(), three.as_bytes());
    }

    #[test]
    fn uncached_is_noted_and_never_posted() {
        let policy = Policy::read_only();
        for (flag, uncached) in [
            (json!("true"), true),
            (json!(true), true),
            (json!("false"), false),
            (json!(false), false),
        ] {
            let body = json!({ "action": "account_info", "account": ACCOUNT, "uncached": flag });
            let checked = policy.check(body.to_string().as_bytes()).unwrap();
            assert_eq!(checked.uncached(), uncached, "{flag}");
            let sent: Value = serde_json::from_slice(checked.body()).unwrap();
            assert_eq!(
                sent,
                json!({ "action": "account_info", "account": ACCOUNT })
            );
        }
        let plain = policy.check(br#"{"action":"block_count"}"#).unwrap();
        assert!(!plain.uncached());
        for flag in [json!("yes"), json!(1), json!(null)] {
            let body = json!({ "action": "block_count", "uncached": flag }).to_string();
            let r = refusal(&policy, &body);
            assert_eq!(r.code, ErrorCode::InvalidRequest, "{flag}");
            assert!(r.message.contains("uncached"), "{}", r.message);
        }
    }

    #[test]
    fn setters_clamp_and_report() {
        let mut policy = Policy::default();
        assert_eq!(policy, Policy::read_only());
        assert_eq!(policy.max_count(), DEFAULT_MAX_COUNT);
        assert_eq!(policy.max_array_len(), DEFAULT_MAX_ARRAY_LEN);
        assert_eq!(policy.max_offset(), DEFAULT_MAX_OFFSET);
        policy
            .set_max_count(0)
            .set_max_array_len(7)
            .set_max_offset(3);
        assert_eq!(policy.max_offset(), 3);
        assert_eq!(policy.max_count(), 1);
        assert_eq!(policy.max_array_len(), 7);
        assert_eq!(policy.allowed().count(), READ_ONLY_ACTIONS.len());
    }

    #[test]
    fn refusal_converts_to_a_wire_error() {
        let wire: WireError = Refusal::not_allowed("no").into();
        assert_eq!(wire, WireError::new(ErrorCode::ActionNotAllowed, "no"));
    }
}
