//! README's main command, `nano-connect demo`, against a Nano node stand-in and against
//! no node at all.

mod support;

use support::mesh;
use support::nano_stub::{Mode, NanoStub};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_relays_to_a_node_hop_by_hop() {
    let stub = NanoStub::start(Mode::RsNano).await;
    let output = mesh::run(&["demo", "--nano-rpc", &stub.url(), "--calls", "5"], "").await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for hop in [
        "[grape A ]",
        "[grape B ]",
        "[node    ]",
        "[worker  ]",
        "[lookup  ]",
        "[timing  ]",
    ] {
        assert!(stdout.contains(hop), "missing {hop}: {stdout}");
    }
    assert!(
        stdout.contains(r#"{"count":"3","unchecked":"0","cemented":"3"}"#),
        "{stdout}"
    );
    assert!(
        stdout.contains("wallet_export (not allowlisted): refused"),
        "{stdout}"
    );
    // The refused action never reached the node; the probe, two calls and five timed
    // block_counts did.
    let actions = stub.actions_received();
    assert!(!actions.iter().any(|a| a == "wallet_export"), "{actions:?}");
    assert_eq!(
        actions.iter().filter(|a| *a == "block_count").count(),
        6,
        "{actions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_without_a_node_says_so_and_runs_fibonacci() {
    let output = mesh::run(
        &["demo", "--nano-rpc", "http://127.0.0.1:9", "--calls", "5"],
        "",
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("no Nano node answers at http://127.0.0.1:9"),
        "{stdout}"
    );
    assert!(stdout.contains("--nano-rpc URL"), "{stdout}");
    assert!(stdout.contains("[0,1,1,2,3,5,8,13,21,34]"), "{stdout}");
}
