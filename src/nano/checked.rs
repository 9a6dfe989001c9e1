//! [`CheckedRequest`]: a request that [`Policy::check`](super::Policy::check) let through,
//! carrying what the later layers need, found in its one parse (pure, no I/O).
//!
//! The worker reads a request's JSON once: the policy parses it, applies its rules and
//! hands on this value. The cache takes its key ([`CheckedRequest::cache_key`]), the work
//! router its action, and the relay the bytes to post ([`CheckedRequest::body`]); none of
//! them parses the body again.

use bytes::Bytes;
use serde_json::{Map, Value};

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
}

impl CheckedRequest {
    /// Made by the policy only: `body` must be the JSON of `request`.
    pub(crate) fn new(action: String, body: Bytes, request: Map<String, Value>) -> Self {
        Self {
            action,
            body,
            request,
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

    /// The request's canonical JSON: object keys sorted, no white space. Two requests
    /// with the same key ask the node the same thing.
    pub fn cache_key(&self) -> String {
        // serde_json's map is ordered by key (no `preserve_order`), so this is canonical.
        Value::Object(self.request.clone()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nano::Policy;

    #[test]
    fn the_cache_key_is_the_canonical_json_of_what_is_posted() {
        let policy = Policy::read_only();
        let body = br#"{ "count": "5000", "action": "account_history", "account": "A" }"#;
        let checked = policy.check(body).expect("allowed");
        assert_eq!(checked.action(), "account_history");
        assert_eq!(
            checked.cache_key(),
            r#"{"account":"A","action":"account_history","count":"1000"}"#
        );
        let posted: Value = serde_json::from_slice(checked.body()).expect("JSON");
        assert_eq!(posted, Value::Object(checked.request().clone()));
        let plain = br#"{"action":"block_count"}"#;
        assert_eq!(&policy.check(plain).expect("allowed").body()[..], plain);
    }
}
