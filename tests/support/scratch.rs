//! Scratch files of one test process: a fresh key file and worker cache for every
//! `nano-connect` process a test starts, so that workers have node keys of their own and
//! calls start with an empty cache unless a test passes `--key` or `--cache`, and every
//! grape keeps its WebTransport certificates in a file of its own.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// A fresh path `$TMPDIR/nano-connect-tests/PID/WHAT-N` (the folder is made).
pub fn path(what: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir()
        .join("nano-connect-tests")
        .join(std::process::id().to_string());
    let _ = std::fs::create_dir_all(&dir);
    dir.join(format!("{what}-{}", NEXT.fetch_add(1, Ordering::Relaxed)))
}

/// The environment that gives a process its own key file and worker cache, and forbids
/// it to join the public DHT (a test must name its grapes or bootstrap nodes).
pub fn env() -> [(&'static str, PathBuf); 4] {
    [
        ("NANO_CONNECT_KEY", path("worker.key")),
        ("NANO_CONNECT_WEB_CERTS", path("web-certs.json")),
        ("NANO_CONNECT_CACHE", path("workers.json")),
        ("NANO_CONNECT_NO_PUBLIC_DHT", PathBuf::from("1")),
    ]
}
