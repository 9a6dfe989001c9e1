//! npm packages the interop tests drive, installed on first use from a committed lock file.

use std::path::PathBuf;
use std::process::Command;

/// `tests/NAME` under the crate, a folder with a `package.json` and lock file.
pub fn js_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(name)
}

/// Runs `npm ci` in `tests/DIR` unless `node_modules/PACKAGE` is already there.
///
/// Panics with what to install when npm is missing, and when `npm ci` fails: a test
/// that needs the package fails rather than skips.
pub fn ensure_installed(dir: &str, package: &str) {
    let dir = js_dir(dir);
    if dir.join("node_modules").join(package).exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--prefix"])
        .arg(&dir)
        .status()
        .expect("npm must be installed to run this test (apt-get install nodejs npm)");
    assert!(status.success(), "npm ci in {} failed", dir.display());
}
