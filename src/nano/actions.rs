//! Names of Nano node RPC actions (pure data).
//!
//! Three lists, each with its source:
//!
//! - [`READ_ONLY_ACTIONS`]: what a relay serves by default (`docs/protocol.md`
//!   §4, which also gives the reasons).
//! - [`OPT_IN_ACTIONS`]: what an operator may add, one by one, with
//!   [`Policy::allow`](super::Policy::allow).
//! - [`NANO_NODE_ACTIONS`] and [`RETIRED_NANO_NODE_ACTIONS`]: every action nano-node's RPC
//!   dispatches, read from its `nano/node/json_handler.cpp`. They are not used by the policy
//!   (which only knows what it allows); they exist so that tests can show that everything
//!   else a node would do is refused.
//!
//! The action semantics are documented at <https://docs.nano.org/commands/rpc-protocol/>.

/// The read-only default allowlist of a relay, in the design card's order.
///
/// Source: `docs/protocol.md` §4 (the read-only default). These actions read
/// the ledger, convert units or describe the node; none of them touches a wallet, the
/// node's peers or its configuration, or publishes anything.
pub const READ_ONLY_ACTIONS: &[&str] = &[
    "account_balance",
    "account_block_count",
    "account_get",
    "account_history",
    "account_info",
    "account_key",
    "account_representative",
    "account_weight",
    "accounts_balances",
    "accounts_frontiers",
    "accounts_receivable",
    "accounts_representatives",
    "block_account",
    "block_count",
    "block_hash",
    "block_info",
    "blocks",
    "blocks_info",
    "chain",
    "successors",
    "available_supply",
    "delegators",
    "delegators_count",
    "frontier_count",
    "representatives",
    "representatives_online",
    "confirmation_quorum",
    "active_difficulty",
    "telemetry",
    "receivable",
    "pending",
    "receivable_exists",
    "pending_exists",
    "validate_account_number",
    "version",
    "uptime",
    "work_validate",
    "nano_to_raw",
    "raw_to_nano",
];

/// Actions an operator may add to a relay's allowlist, each on its own.
///
/// Source: `docs/protocol.md` §4 (the opt-ins):
///
/// - `process` publishes a signed block. It is never forwarded with a truthy `force`
///   (which makes the node replace a block it already has in a fork).
/// - `work_generate` spends the node's (or its work peers') proof-of-work capacity; it is
///   meant for relays in front of a separate work server.
/// - `block_confirm` starts an election for a block, which costs the network votes.
pub const OPT_IN_ACTIONS: &[&str] = &["process", "work_generate", "block_confirm"];

/// Every action name that nano-node's RPC dispatches, sorted.
///
/// Source: nano-node, `nano/node/json_handler.cpp` at commit
/// `000960a1c129c0ec8beb7f7fcdc77cdf03625102` (<https://github.com/nanocurrency/nano-node>):
/// the keys of the map built by `create_ipc_json_handler_no_arg_func_map`, plus the names
/// that `json_handler::process_request` tests one by one (`wallet_seed`, `chain`,
/// `successors`, `history`, `nano_to_raw`, `raw_to_nano`, `password_valid`,
/// `wallet_locked`). Any other action gets `{"error": "Unknown command"}` from that node.
pub const NANO_NODE_ACTIONS: &[&str] = &[
    "account_balance",
    "account_block_count",
    "account_count",
    "account_create",
    "account_get",
    "account_history",
    "account_info",
    "account_key",
    "account_list",
    "account_move",
    "account_remove",
    "account_representative",
    "account_representative_set",
    "account_weight",
    "accounts_balances",
    "accounts_create",
    "accounts_frontiers",
    "accounts_pending",
    "accounts_receivable",
    "accounts_representatives",
    "active_difficulty",
    "available_supply",
    "block",
    "block_account",
    "block_confirm",
    "block_count",
    "block_create",
    "block_hash",
    "block_info",
    "blocks",
    "blocks_info",
    "bootstrap",
    "bootstrap_any",
    "bootstrap_lazy",
    "bootstrap_priorities",
    "bootstrap_reset",
    "bootstrap_status",
    "chain",
    "confirmation_active",
    "confirmation_history",
    "confirmation_info",
    "confirmation_quorum",
    "database_txn_tracker",
    "delegators",
    "delegators_count",
    "deterministic_key",
    "election_statistics",
    "epoch_upgrade",
    "frontier_count",
    "frontiers",
    "history",
    "keepalive",
    "key_create",
    "key_expand",
    "ledger",
    "nano_to_raw",
    "node_id",
    "node_id_delete",
    "password_change",
    "password_enter",
    "password_valid",
    "peers",
    "pending",
    "pending_exists",
    "populate_backlog",
    "process",
    "pruned_exists",
    "raw_to_nano",
    "receivable",
    "receivable_exists",
    "receive",
    "receive_minimum",
    "receive_minimum_set",
    "representatives",
    "representatives_online",
    "republish",
    "search_pending",
    "search_pending_all",
    "search_receivable",
    "search_receivable_all",
    "send",
    "sign",
    "stats",
    "stats_clear",
    "stop",
    "successors",
    "telemetry",
    "unchecked",
    "unchecked_clear",
    "unchecked_get",
    "unchecked_keys",
    "unopened",
    "uptime",
    "validate_account_number",
    "version",
    "wallet_add",
    "wallet_add_watch",
    "wallet_balance_total",
    "wallet_balances",
    "wallet_change_seed",
    "wallet_contains",
    "wallet_create",
    "wallet_destroy",
    "wallet_export",
    "wallet_frontiers",
    "wallet_history",
    "wallet_info",
    "wallet_key_valid",
    "wallet_ledger",
    "wallet_lock",
    "wallet_locked",
    "wallet_pending",
    "wallet_receivable",
    "wallet_representative",
    "wallet_representative_set",
    "wallet_republish",
    "wallet_seed",
    "wallet_unlock",
    "wallet_work_get",
    "work_cancel",
    "work_generate",
    "work_get",
    "work_peer_add",
    "work_peers",
    "work_peers_clear",
    "work_set",
    "work_validate",
];

/// Action names that older nano-node releases dispatched and newer ones no longer do,
/// sorted. Nodes of those releases are still deployed, so a relay must refuse these too.
///
/// Source: nano-node, `nano/node/json_handler.cpp` at commit
/// `baabcca4260566d02815106f4d625f4771cca3df`: the unit conversions tested in
/// `json_handler::process_request` (`krai_*`, `mrai_*`, ...) and the map entry
/// `confirmation_height_currently_processing`, all absent from [`NANO_NODE_ACTIONS`]'s
/// commit.
pub const RETIRED_NANO_NODE_ACTIONS: &[&str] = &[
    "confirmation_height_currently_processing",
    "knano_from_raw",
    "knano_to_raw",
    "krai_from_raw",
    "krai_to_raw",
    "mnano_from_raw",
    "mnano_to_raw",
    "mrai_from_raw",
    "mrai_to_raw",
    "rai_from_raw",
    "rai_to_raw",
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn set(list: &[&'static str]) -> BTreeSet<&'static str> {
        list.iter().copied().collect()
    }

    #[test]
    fn lists_have_no_duplicates() {
        for list in [
            READ_ONLY_ACTIONS,
            OPT_IN_ACTIONS,
            NANO_NODE_ACTIONS,
            RETIRED_NANO_NODE_ACTIONS,
        ] {
            assert_eq!(set(list).len(), list.len());
        }
    }

    #[test]
    fn node_lists_are_sorted() {
        for list in [NANO_NODE_ACTIONS, RETIRED_NANO_NODE_ACTIONS] {
            assert!(list.windows(2).all(|w| w[0] < w[1]), "{list:?}");
        }
    }

    #[test]
    fn allowlists_are_actions_of_the_node() {
        let node = set(NANO_NODE_ACTIONS);
        for action in READ_ONLY_ACTIONS.iter().chain(OPT_IN_ACTIONS) {
            assert!(node.contains(action), "{action} is not a nano-node action");
        }
    }

    #[test]
    fn read_only_and_opt_in_are_disjoint() {
        assert!(set(READ_ONLY_ACTIONS).is_disjoint(&set(OPT_IN_ACTIONS)));
    }

    #[test]
    fn retired_actions_are_not_current() {
        assert!(set(RETIRED_NANO_NODE_ACTIONS).is_disjoint(&set(NANO_NODE_ACTIONS)));
    }

    #[test]
    fn dangerous_actions_are_not_read_only() {
        // The design card names these as working with the node's control flag off.
        let read_only = set(READ_ONLY_ACTIONS);
        for action in [
            "wallet_export",
            "sign",
            "key_expand",
            "peers",
            "bootstrap",
            "stats_clear",
            "stop",
            "send",
            "wallet_seed",
        ] {
            assert!(!read_only.contains(action), "{action}");
        }
    }
}
