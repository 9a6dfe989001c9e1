//! Real processes of the mesh for integration tests: grapes and workers are the
//! `nano-connect` binary, started with ports chosen by the OS and read back from the
//! `{"event":"listening",...}` line each prints on stdout. Every process is killed when
//! its handle drops, so a failing test leaves nothing running.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a started process may take to print its `listening` line: about a second on
/// an idle machine, but a loaded 2-core CI machine once took over 20 s for a grape.
const LISTENING_DEADLINE: Duration = Duration::from_secs(60);

/// Path of the binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_nano-connect")
}

/// A running `nano-connect` process, killed on drop.
pub struct Process {
    child: Child,
    /// The `listening` event it printed.
    pub listening: Value,
    /// The JSON event lines it printed after `listening`.
    events: mpsc::Receiver<Value>,
}

impl Process {
    /// Starts `nano-connect ARGS` and waits (at most 20 s) for its `listening` line.
    pub fn start(args: &[&str]) -> Process {
        Self::start_with(binary(), args)
    }

    /// [`Process::start`] of `program ARGS` (a shell that runs `nano-connect` under
    /// limits, say); it must print the `listening` line.
    pub fn start_with(program: &str, args: &[&str]) -> Process {
        let mut child = Command::new(program)
            .envs(super::scratch::env())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nano-connect");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    if value.get("event").is_some() {
                        let _ = tx.send(value);
                    }
                }
            }
        });
        let started = Instant::now();
        let listening = loop {
            let left = LISTENING_DEADLINE.saturating_sub(started.elapsed());
            match rx.recv_timeout(left) {
                Ok(value) if value["event"] == "listening" => break value,
                Ok(_) => continue,
                Err(_) => {
                    let _ = child.kill();
                    panic!("nano-connect {args:?} did not report listening within {LISTENING_DEADLINE:?}");
                }
            }
        };
        Process {
            child,
            listening,
            events: rx,
        }
    }

    /// Waits at most `deadline` for the next event line named `name` (earlier lines of
    /// other names are skipped).
    #[allow(dead_code)]
    pub fn wait_event(&self, name: &str, deadline: Duration) -> Value {
        let started = Instant::now();
        loop {
            let left = deadline.saturating_sub(started.elapsed());
            match self.events.recv_timeout(left) {
                Ok(value) if value["event"] == name => return value,
                Ok(_) => continue,
                Err(_) => panic!("no {name:?} event within {deadline:?}"),
            }
        }
    }

    /// A field of the listening event as a string.
    pub fn field(&self, name: &str) -> String {
        self.listening[name]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| self.listening[name].to_string())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process now (SIGKILL: no goodbye to peers) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the process to stop (SIGTERM) and waits at most `deadline` for its exit
    /// status.
    pub fn terminate(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A grape process on 127.0.0.1 with OS-chosen ports.
pub struct GrapeProcess {
    /// The process.
    pub process: Process,
    /// `127.0.0.1:PORT` of its DHT node.
    pub dht: String,
    /// `http://127.0.0.1:PORT` of its HTTP API.
    pub url: String,
}

/// Starts a grape bootstrapped from `bootstrap` (`None`: first of a private network) with
/// the given announce window in seconds.
pub fn grape(bootstrap: Option<&str>, window_secs: f64) -> GrapeProcess {
    let window = window_secs.to_string();
    let bn = bootstrap.unwrap_or("none");
    let process = Process::start(&[
        "grape",
        "--dp",
        "0",
        "--aph",
        "0",
        "--bind",
        "127.0.0.1",
        "--bn",
        bn,
        "--announce-window",
        &window,
    ]);
    let dht = process.field("dht");
    let url = format!("http://{}", process.field("api"));
    GrapeProcess { process, dht, url }
}

/// Two grapes forming a private network; the second bootstraps from the first.
pub fn two_grapes(window_secs: f64) -> (GrapeProcess, GrapeProcess) {
    let a = grape(None, window_secs);
    let b = grape(Some(&a.dht), window_secs);
    (a, b)
}

/// A worker process; `extra` are more flags. Returns the process and its QUIC port.
pub fn worker(grape_url: &str, key: &str, extra: &[&str]) -> (Process, u16) {
    let mut args = vec![
        "worker",
        "--announce",
        key,
        "--grape",
        grape_url,
        "--bind",
        "127.0.0.1",
    ];
    args.extend_from_slice(extra);
    let process = Process::start(&args);
    let port = process.listening["port"].as_u64().expect("port") as u16;
    (process, port)
}

/// Runs `nano-connect ARGS` to completion with `stdin` and returns its output; it is
/// killed after 30 s.
pub async fn run(args: &[&str], stdin: &str) -> Output {
    run_with_input(args, stdin.as_bytes()).await
}

/// [`run`] with any bytes on stdin (not only UTF-8 text).
pub async fn run_with_input(args: &[&str], stdin: &[u8]) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(binary())
        .args(args)
        .envs(super::scratch::env())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start nano-connect");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin).await;
    }
    tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("nano-connect {args:?} did not exit within 30 s"))
        .expect("wait for nano-connect")
}

/// Polls `f` every 50 ms until it returns `Some`, or panics after `deadline` with `what`.
pub async fn poll<T, F, Fut>(deadline: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = f().await {
            return value;
        }
        assert!(
            started.elapsed() < deadline,
            "{what}: not within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Looks `key` up through the grape at `url` with no cache, as addresses `ip:port`.
pub async fn lookup(url: &str, key: &str) -> Vec<String> {
    nano_connect::discovery::link::Link::with_cache_ttl(url, Duration::ZERO)
        .lookup(key)
        .await
        .map(|found| found.iter().map(ToString::to_string).collect())
        .unwrap_or_default()
}

/// Polls the grape at `url` until `key` resolves to all of `ports` on 127.0.0.1.
pub async fn wait_announced(url: &str, key: &str, ports: &[u16]) {
    let want: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    poll(
        Duration::from_secs(15),
        "workers visible in lookups",
        || async {
            let found = lookup(url, key).await;
            want.iter().all(|w| found.contains(w)).then_some(())
        },
    )
    .await
}
