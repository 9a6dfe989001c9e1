//! Which Nano RPC requests a caller may send again to another worker (pure).
//!
//! A request that reached a worker and then failed (the worker died, went silent, or its
//! node did not answer) may or may not have reached the node. Sending it again elsewhere
//! is harmless for a request that only reads: the read-only allowlist
//! ([`READ_ONLY_ACTIONS`]). It is not for the opt-ins: `process` publishes a block (a
//! second publication through another node is at best wasted and, for a wallet that
//! counts on "sent once", misleading), `work_generate` spends a work server's time, and
//! `block_confirm` starts an election. Those go to one worker only, and their failure is
//! reported as it is.

use super::actions::READ_ONLY_ACTIONS;
use crate::route::RequestOptions;

/// The string `action` of a Nano RPC body, if it is a JSON object that has one.
pub fn action_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Action {
        action: String,
    }
    serde_json::from_slice::<Action>(body)
        .ok()
        .map(|a| a.action)
}

/// Whether `body` may be retried on another worker: only when its action is one of the
/// read-only actions ([`READ_ONLY_ACTIONS`]). Anything else, unparsable bodies included
/// (the worker will refuse them anyway), is sent once.
pub fn failover_safe(body: &[u8]) -> bool {
    action_of(body).is_some_and(|a| READ_ONLY_ACTIONS.contains(&a.as_str()))
}

/// The [`RequestOptions`] for `body`: failover on for read-only actions only.
pub fn options_for(body: &[u8]) -> RequestOptions {
    RequestOptions {
        failover: failover_safe(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_read_only_actions_fail_over() {
        assert!(failover_safe(br#"{"action":"block_count"}"#));
        assert!(failover_safe(
            br#"{"action":"account_info","account":"nano_1"}"#
        ));
        for body in [
            &br#"{"action":"process","block":{}}"#[..],
            br#"{"action":"work_generate","hash":"00"}"#,
            br#"{"action":"block_confirm","hash":"00"}"#,
            br#"{"action":"wallet_create"}"#,
            br#"{"action":5}"#,
            br#"not json"#,
            br#"[]"#,
        ] {
            assert!(!failover_safe(body), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn action_is_read_from_objects_only() {
        assert_eq!(
            action_of(br#"{"action":"version"}"#).as_deref(),
            Some("version")
        );
        assert_eq!(action_of(br#"{"count":"1"}"#), None);
        assert_eq!(action_of(b""), None);
    }
}
