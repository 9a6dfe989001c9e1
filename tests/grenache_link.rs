//! Grenache's own client library (npm `grenache-nodejs-link`), unchanged, announces,
//! looks up, puts and gets through nano-connect grapes. Needs Node.js and npm (CI
//! installs them); the npm packages are installed into `tests/js/node_modules` on first
//! run from the committed lock file.

mod support;

use serde_json::Value;
use support::mesh::{self, two_grapes};
use support::npm;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grenache_nodejs_link_works_unchanged() {
    tokio::task::block_in_place(|| npm::ensure_installed("js", "grenache-nodejs-link"));
    let (a, b) = tokio::task::block_in_place(|| two_grapes(256.0));
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tokio::process::Command::new("node")
            .arg(npm::js_dir("js").join("link.js"))
            .args([&a.url, &b.url, "41234"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("link.js finishes within 30 s")
    .expect("node must be installed to run this test (apt-get install nodejs)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "link.js failed: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert!(result["announce"].is_number(), "{result}");
    assert!(
        result["lookup"]
            .as_array()
            .unwrap()
            .contains(&Value::from("127.0.0.1:41234")),
        "{result}"
    );
    assert_eq!(result["emptyLookup"], "ERR_GRAPE_LOOKUP_EMPTY", "{result}");
    let hash = result["put"].as_str().expect("put answers the target");
    assert_eq!(hash.len(), 40);
    assert_eq!(result["get"]["v"], "hello grenache", "{result}");
    // The same lookup through our own link agrees.
    assert!(mesh::lookup(&b.url, "grenache_interop")
        .await
        .contains(&"127.0.0.1:41234".to_string()));
}
