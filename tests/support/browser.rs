//! A headless Chromium that a test drives through `tests/web/browser.mjs` (playwright-core
//! with Debian's `/usr/bin/chromium`): one JSON command per line on its stdin, one JSON
//! answer per line on its stdout. The page is the repository's `web/index.html`, served
//! by the script on `http://127.0.0.1`. Chromium is closed when the handle drops.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

/// A running browser driver.
pub struct Browser {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<Value>,
}

impl Browser {
    /// Installs playwright-core (from the lock file) when needed and starts the driver.
    /// Panics, saying what to install, when Chromium or Node.js is missing: a browser
    /// test fails rather than skips.
    pub fn start() -> Browser {
        assert!(
            std::path::Path::new("/usr/bin/chromium").exists(),
            "the browser tests need Debian's Chromium: apt-get install chromium"
        );
        super::npm::ensure_installed("web", "playwright-core");
        let script = super::npm::js_dir("web").join("browser.mjs");
        let mut child = Command::new("node")
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node must be installed to run the browser tests (apt-get install nodejs)");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(value);
                }
            }
        });
        let mut browser = Browser {
            child,
            stdin,
            lines,
        };
        let ready = browser.next(Duration::from_secs(60));
        assert_eq!(ready["event"], "ready", "driver did not start: {ready}");
        browser
    }

    fn next(&mut self, deadline: Duration) -> Value {
        match self.lines.recv_timeout(deadline) {
            Ok(value) => value,
            Err(_) => panic!("the browser driver said nothing within {deadline:?}"),
        }
    }

    fn command(&mut self, command: Value, deadline: Duration) -> Value {
        writeln!(self.stdin, "{command}").expect("write to the driver");
        self.stdin.flush().expect("flush");
        self.next(deadline)
    }

    /// Loads `web/index.html#HASH` and returns `window.nanoConnectResults` once the page
    /// has answered or failed (the driver waits at most 30 s).
    pub fn open(&mut self, hash: &str) -> Value {
        let answer = self.command(
            json!({"cmd": "open", "hash": hash}),
            Duration::from_secs(40),
        );
        assert_eq!(answer["ok"], true, "page did not finish: {answer}");
        answer["results"].clone()
    }

    /// Runs `async () => { SCRIPT }` in the page and returns the driver's answer,
    /// `{"ok": true, "value": ...}` or `{"ok": false, "error": "..."}`.
    pub fn eval(&mut self, script: &str) -> Value {
        self.command(
            json!({"cmd": "eval", "script": script}),
            Duration::from_secs(60),
        )
    }

    /// [`Browser::eval`] that must succeed; its value.
    pub fn value(&mut self, script: &str) -> Value {
        let answer = self.eval(script);
        assert_eq!(answer["ok"], true, "script failed: {answer}\n{script}");
        answer["value"].clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"cmd": "quit"}));
        let _ = self.stdin.flush();
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
