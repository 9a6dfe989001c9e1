//! A NAT lab on one Linux machine: network namespaces joined by veth pairs, a bridge
//! for the "public internet" (203.0.113.0/24, RFC 5737 documentation range) and one
//! nftables router namespace per NAT. Needs root, `ip` (iproute2) and `nft` (nftables);
//! without them building a lab panics with what to install, so a test FAILS, never skips.
//!
//! ```text
//!                  switch namespace: bridge br0 (203.0.113.0/24, no address)
//!      +---------------+-----------------+------------------+-----------------+
//!   public host     public host      router A (wan        host B directly
//!   203.0.113.11    203.0.113.12     203.0.113.101)       public 203.0.113.102
//!   (grape 1)       (grape 2)            | lan 10.0.1.1    (NatKind::None)
//!                                        |
//!                                   host A 10.0.1.2, default via 10.0.1.1
//! ```
//!
//! - [`Lab::new`] sweeps namespaces of dead earlier runs, then makes the switch.
//! - [`Lab::public_host`] adds a namespace on the bridge with the next 203.0.113.1x address.
//! - [`Lab::side`] adds a host either directly public ([`NatKind::None`]) or behind a router
//!   with the chosen [`NatKind`] and [`RouterKind`]; see [`Side`].
//! - [`Host`] runs programs in its namespace ([`Host::command`]) and `nano-connect`
//!   ([`Host::spawn`], [`Host::run`]), makes sockets there ([`Host::udp_socket`]) and runs
//!   code there ([`Host::enter`], [`Host::background`]): a socket stays in the namespace
//!   it was created in, so it can be used from any thread afterwards.
//!
//! Names: every namespace is `ncl<pid>-<lab>-<role>`, so labs of parallel tests and of
//! parallel test binaries never collide; interface names only need to be unique inside
//! their namespace (veths are created directly in their namespaces), so they are short
//! fixed names (`eth0`, `wan`, `lan`, `pN`). Dropping the [`Lab`] kills every process left
//! in its namespaces and deletes them, also when the test panicked.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, UdpSocket};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Prefix of every namespace a lab makes; the sweep removes only names with it.
pub const PREFIX: &str = "ncl";

/// Labs made by this process so far (for unique names).
static LABS: AtomicU32 = AtomicU32::new(0);

/// Serializes the matrix cells of one test binary, so that their timings do not compete
/// for the CPU and their processes do not crowd each other. Poisoning is ignored (a failed
/// cell must not fail the next one for the wrong reason).
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How a side reaches the public network, in RFC 4787 terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatKind {
    /// No NAT: the host sits on the public bridge with a public address.
    None,
    /// Endpoint-independent mapping (RFC 4787 §4.1) with address-and-port-dependent
    /// filtering (§5): `oifname "wan" masquerade`, and only `ct state established,related`
    /// gets in from the WAN. The common home router.
    EimApdf,
    /// Endpoint-dependent mapping ("symmetric"): `masquerade random`, a new public port
    /// for every destination; filtering as [`NatKind::EimApdf`].
    Symmetric,
}

impl NatKind {
    /// All three kinds, in matrix order.
    pub const ALL: [NatKind; 3] = [NatKind::None, NatKind::EimApdf, NatKind::Symmetric];

    /// Short label for tables: `none`, `eim-apdf`, `symmetric`.
    pub fn label(self) -> &'static str {
        match self {
            NatKind::None => "none",
            NatKind::EimApdf => "eim-apdf",
            NatKind::Symmetric => "symmetric",
        }
    }
}

/// What the router does with unsolicited traffic addressed to itself on the WAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouterKind {
    /// Drops it in an input filter, as home routers do: an early punch leaves no
    /// conntrack entry behind.
    Home,
    /// Accepts it (a bare Linux box: no input filter, only a counter): an early punch is
    /// recorded by conntrack as a flow to the router itself, and a later outgoing flow
    /// to the same peer is masqueraded to a different port ("conntrack poisoning").
    Bare,
}

impl RouterKind {
    /// Short label for tables: `home`, `bare`.
    pub fn label(self) -> &'static str {
        match self {
            RouterKind::Home => "home",
            RouterKind::Bare => "bare",
        }
    }
}

/// Path of the `nano-connect` binary: cargo's for integration tests; for examples
/// (which cargo gives no such variable) `$NANO_CONNECT_BIN`, else `nano-connect` in the
/// profile directory above `target/<profile>/examples/`. Panics when it is not built.
pub fn binary() -> String {
    if let Some(path) = option_env!("CARGO_BIN_EXE_nano-connect") {
        return path.to_string();
    }
    if let Ok(path) = std::env::var("NANO_CONNECT_BIN") {
        return path;
    }
    let exe = std::env::current_exe().expect("path of this program");
    let path = exe
        .parent()
        .and_then(|examples| examples.parent())
        .map(|profile| profile.join("nano-connect"))
        .filter(|path| path.exists())
        .unwrap_or_else(|| {
            panic!(
                "no nano-connect binary next to {}: build it first (cargo build, with the \
                 same --release as this program) or set NANO_CONNECT_BIN",
                exe.display()
            )
        });
    path.to_string_lossy().into_owned()
}

/// Runs `ip ARGS` and panics with its stderr when it fails.
fn ip(args: &[&str]) {
    run_tool("ip", args, None);
}

/// Runs `program ARGS` (with `stdin` if given) and panics with a hint when it is missing
/// or fails.
fn run_tool(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {program} ({e}): the NAT lab needs root and the packages \
                 iproute2 and nftables (apt-get install iproute2 nftables)"
            )
        });
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input
            .write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("write to {program}: {e}"));
    }
    let output = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait for {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}): {} (the NAT lab needs root)",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Names of all network namespaces on the machine (`ip netns list`).
pub fn list_namespaces() -> Vec<String> {
    run_tool("ip", &["netns", "list"], None)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Kills every process in namespace `ns` (never this test process) and deletes it.
fn remove_namespace(ns: &str) {
    if let Ok(output) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                if pid as u32 != std::process::id() {
                    // SAFETY: kill(2) with a pid read from the namespace and a valid signal.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "delete", ns])
        .stderr(Stdio::null())
        .status();
}

/// Deletes namespaces `ncl<pid>-...` left by lab processes that no longer run (a test
/// binary killed before its labs dropped).
pub fn sweep_stale() {
    for ns in list_namespaces() {
        let Some(rest) = ns.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            remove_namespace(&ns);
        }
    }
}

/// Makes the calling thread join network namespace `ns` (setns(2) on
/// `/run/netns/NS`). Sockets it creates afterwards live in `ns`.
pub fn enter_namespace(ns: &str) {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    use std::os::fd::AsRawFd;
    // SAFETY: setns(2) on a namespace file descriptor we hold open for the call.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "setns into {ns}: {}",
        std::io::Error::last_os_error()
    );
}

/// A network namespace with one address, in which processes and sockets can be made.
#[derive(Debug, Clone)]
pub struct Host {
    /// Namespace name (`/run/netns/NAME`).
    pub ns: String,
    /// Its address: public (203.0.113.x) or private behind a router (10.0.N.2).
    pub ip: Ipv4Addr,
}

impl Host {
    /// `PROGRAM` as a command to add arguments to, which joins this namespace between
    /// fork and exec (setns(2) in `pre_exec`: what `ip netns exec` does, without its
    /// extra process start-up of about 4 ms in the timings).
    pub fn command(&self, program: &str) -> Command {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let path = format!("/run/netns/{}", self.ns);
        let namespace = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        let mut command = Command::new(program);
        // SAFETY: the hook only calls setns(2), which is async-signal-safe, on a file
        // descriptor the closure owns, and allocates nothing.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        command
    }

    /// Runs `f` on a new thread inside this namespace.
    pub fn enter<R, F>(&self, f: F) -> JoinHandle<R>
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let ns = self.ns.clone();
        std::thread::spawn(move || {
            enter_namespace(&ns);
            f()
        })
    }

    /// A blocking UDP socket bound in this namespace to `0.0.0.0:port` (0: any port),
    /// with a 2 s read timeout.
    pub fn udp_socket(&self, port: u16) -> UdpSocket {
        let socket = self
            .enter(move || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)))
            .join()
            .expect("thread in namespace")
            .expect("bind a UDP socket in the namespace");
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("read timeout");
        socket
    }

    /// Runs a future on a thread inside this namespace with its own current-thread tokio
    /// runtime. `start` gets a stop signal and a sender for one value (say, a URL), which
    /// this call waits for (at most 20 s). The task is stopped and joined when the
    /// returned [`Background`] drops.
    pub fn background<T, F, Fut>(&self, start: F) -> (T, Background)
    where
        T: Send + 'static,
        F: FnOnce(tokio::sync::oneshot::Receiver<()>, mpsc::Sender<T>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let (ready, value) = mpsc::channel();
        let thread = self.enter(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime in namespace");
            runtime.block_on(start(stopped, ready));
        });
        let value = value
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("background task in {} did not start", self.ns));
        (
            value,
            Background {
                stop: Some(stop),
                thread: Some(thread),
            },
        )
    }

    /// Starts `nano-connect ARGS` in this namespace and waits (at most 20 s) for its
    /// `listening` event.
    pub fn spawn(&self, args: &[&str]) -> NsProcess {
        NsProcess::start(self, args)
    }

    /// Runs `nano-connect ARGS` in this namespace to completion (killed after
    /// `deadline`) and times it from spawning to exit.
    pub fn run(&self, args: &[&str], deadline: Duration) -> Timed {
        let mut command = self.command(&binary());
        command
            .args(args)
            .envs(super::scratch::env())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let child = command.spawn().expect("start nano-connect in namespace");
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let output = child.wait_with_output();
            let _ = tx.send((output, started.elapsed()));
        });
        match rx.recv_timeout(deadline) {
            Ok((output, elapsed)) => {
                let output = output.expect("wait for nano-connect");
                Timed {
                    status: output.status,
                    stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
                    elapsed,
                }
            }
            Err(_) => {
                // SAFETY: kill(2) on the pid of the child we spawned and have not reaped.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
                panic!(
                    "nano-connect {args:?} in {} did not exit within {deadline:?}",
                    self.ns
                );
            }
        }
    }
}

/// A task running in a namespace ([`Host::background`]); stopped and joined on drop.
pub struct Background {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a finished `nano-connect` run gave.
#[derive(Debug)]
pub struct Timed {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
    /// From spawning the process to its exit (process start-up included).
    pub elapsed: Duration,
}

impl Timed {
    /// The value of `key=` in the `nano-connect: path=...` line `call -v` prints on
    /// stderr, for keys `path`, `worker` and `elapsed_ms`.
    pub fn report(&self, key: &str) -> Option<String> {
        let line = self
            .stderr
            .lines()
            .rev()
            .find(|line| line.contains("path="))?;
        let prefix = format!("{key}=");
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(&prefix))
            .map(str::to_string)
    }
}

/// A `nano-connect` process in a namespace, killed on drop. Every JSON line it prints on
/// stdout is kept as an event.
pub struct NsProcess {
    child: Child,
    events: mpsc::Receiver<Value>,
    seen: Vec<Value>,
    /// The `listening` event it printed.
    pub listening: Value,
}

impl NsProcess {
    fn start(host: &Host, args: &[&str]) -> NsProcess {
        let mut child = host
            .command(&binary())
            .args(args)
            .envs(super::scratch::env())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nano-connect in namespace");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    if tx.send(value).is_err() {
                        break;
                    }
                }
            }
        });
        let mut process = NsProcess {
            child,
            events,
            seen: Vec::new(),
            listening: Value::Null,
        };
        process.listening = process.wait_event("listening", Duration::from_secs(20));
        process
    }

    /// Waits at most `deadline` for an event `{"event": name, ...}` (also one already
    /// seen) and returns it; panics naming the process's arguments otherwise.
    pub fn wait_event(&mut self, name: &str, deadline: Duration) -> Value {
        if let Some(found) = self.seen.iter().find(|e| e["event"] == name) {
            return found.clone();
        }
        let until = Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => {
                    self.seen.push(event.clone());
                    if event["event"] == name {
                        return event;
                    }
                }
                Err(error) => {
                    let status = self.child.try_wait().ok().flatten();
                    self.kill();
                    let why = match error {
                        mpsc::RecvTimeoutError::Timeout => format!("not within {deadline:?}"),
                        mpsc::RecvTimeoutError::Disconnected => "stdout closed first".into(),
                    };
                    panic!(
                        "no {name:?} event: {why} (exit status {status:?}); events so far: {:?}",
                        self.seen
                    );
                }
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

    /// Kills the process now (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The router of a NATed side.
#[derive(Debug, Clone)]
pub struct Router {
    /// Namespace name.
    pub ns: String,
    /// Its public address on the bridge (interface `wan`).
    pub wan_ip: Ipv4Addr,
    /// Its address on the side's LAN (interface `lan`), the host's default gateway.
    pub lan_ip: Ipv4Addr,
}

/// One side of a connection: a host, and its router unless the host is public.
#[derive(Debug, Clone)]
pub struct Side {
    /// Where the side's programs run.
    pub host: Host,
    /// The NAT router, `None` for [`NatKind::None`].
    pub router: Option<Router>,
    /// A carrier-grade NAT in front of the router (RFC 6598), if any.
    pub outer: Option<Router>,
    /// The NAT behaviour.
    pub nat: NatKind,
    /// The router's treatment of WAN input (meaningless for [`NatKind::None`]).
    pub router_kind: RouterKind,
    /// The LAN number N (10.0.N.0/24) behind the router; 0 for a public host.
    lan: u8,
}

/// A carrier-grade NAT (RFC 6598): a router with a public WAN address and a shared
/// address space LAN (100.64.N.0/24) on which home routers sit ([`Lab::side_behind_cgn`]).
#[derive(Debug, Clone)]
pub struct Cgn {
    /// Its router.
    pub router: Router,
    /// N of its LAN 100.64.N.0/24.
    n: u8,
}

impl Side {
    /// The address the public network sees this side's traffic from.
    pub fn public_ip(&self) -> Ipv4Addr {
        match (&self.outer, &self.router) {
            (Some(outer), _) => outer.wan_ip,
            (None, Some(r)) => r.wan_ip,
            (None, None) => self.host.ip,
        }
    }

    /// Packets the router's filters counted as coming in from the WAN unsolicited
    /// (dropped on a home router; accepted into input on a bare one), 0 without a router.
    pub fn unsolicited_packets(&self) -> u64 {
        let Some(router) = &self.router else { return 0 };
        let ruleset = run_tool(
            "ip",
            &[
                "netns", "exec", &router.ns, "nft", "list", "table", "ip", "lab",
            ],
            None,
        );
        ruleset
            .lines()
            .filter(|line| line.contains("comment \"unsolicited\""))
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                words.find(|w| *w == "packets")?;
                words.next()?.parse::<u64>().ok()
            })
            .sum()
    }

    /// The router's conntrack table (`/proc/net/nf_conntrack` read in its namespace),
    /// for the message of a failed test; empty without a router.
    pub fn conntrack(&self) -> String {
        let Some(router) = &self.router else {
            return String::new();
        };
        Command::new("ip")
            .args(["netns", "exec", &router.ns, "cat", "/proc/net/nf_conntrack"])
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

/// The nftables ruleset of a router: table `ip lab` with a masquerading `postrouting`
/// chain and filters for what comes in on `wan` (see [`NatKind`], [`RouterKind`] and
/// docs/nat-lab.md).
pub fn router_ruleset(nat: NatKind, kind: RouterKind) -> String {
    let masquerade = match nat {
        NatKind::Symmetric => "masquerade random",
        _ => "masquerade",
    };
    let input = match kind {
        RouterKind::Home => {
            "iifname \"wan\" ct state established,related accept\n\
             iifname \"wan\" counter drop comment \"unsolicited\""
        }
        RouterKind::Bare => {
            "iifname \"wan\" ct state established,related accept\n\
             iifname \"wan\" counter accept comment \"unsolicited\""
        }
    };
    format!(
        "table ip lab {{\n\
         chain postrouting {{\n\
         type nat hook postrouting priority srcnat; policy accept;\n\
         oifname \"wan\" {masquerade}\n\
         }}\n\
         chain forward {{\n\
         type filter hook forward priority filter; policy accept;\n\
         iifname \"wan\" ct state established,related accept\n\
         iifname \"wan\" drop\n\
         }}\n\
         chain input {{\n\
         type filter hook input priority filter; policy accept;\n\
         {input}\n\
         }}\n\
         }}\n"
    )
}

/// A lab: a switch namespace with the public bridge, and the namespaces added to it.
/// Dropping it removes them all (and kills what runs in them).
pub struct Lab {
    id: String,
    state: Mutex<LabState>,
}

struct LabState {
    namespaces: Vec<String>,
    bridge_ports: u32,
    public_hosts: u8,
    sides: u8,
    /// Hosts added to each side's LAN so far, by LAN number (the first is .2).
    lan_hosts: std::collections::HashMap<u16, u8>,
    /// Ports made on each router's LAN bridge, by router namespace.
    lan_ports: std::collections::HashMap<String, u32>,
}

impl Lab {
    /// Sweeps stale namespaces of dead processes, then makes the switch namespace with
    /// bridge `br0`. Panics (the test fails) without root, `ip` or `nft`.
    pub fn new() -> Lab {
        sweep_stale();
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let lab = Lab {
            id: format!("{PREFIX}{}-{n}", std::process::id()),
            state: Mutex::new(LabState {
                namespaces: Vec::new(),
                bridge_ports: 0,
                public_hosts: 0,
                sides: 0,
                lan_hosts: std::collections::HashMap::new(),
                lan_ports: std::collections::HashMap::new(),
            }),
        };
        let switch = lab.namespace("sw");
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        lab
    }

    fn state(&self) -> MutexGuard<'_, LabState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The names of the namespaces this lab made, in creation order.
    pub fn namespaces(&self) -> Vec<String> {
        self.state().namespaces.clone()
    }

    fn switch(&self) -> String {
        format!("{}-sw", self.id)
    }

    /// Makes namespace `<id>-<role>` with loopback up and records it for removal.
    fn namespace(&self, role: &str) -> String {
        let ns = format!("{}-{role}", self.id);
        self.state().namespaces.push(ns.clone());
        ip(&["netns", "add", &ns]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// Connects namespace `ns` to the bridge through a veth whose inner end is named
    /// `ifname`, brought up with `ip/24`.
    fn attach(&self, ns: &str, ifname: &str, ip_addr: Ipv4Addr) {
        let switch = self.switch();
        let port = {
            let mut state = self.state();
            state.bridge_ports += 1;
            format!("p{}", state.bridge_ports)
        };
        ip(&[
            "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", ifname, "netns",
            ns,
        ]);
        ip(&["-n", &switch, "link", "set", &port, "master", "br0", "up"]);
        let cidr = format!("{ip_addr}/24");
        ip(&["-n", ns, "addr", "add", &cidr, "dev", ifname]);
        ip(&["-n", ns, "link", "set", ifname, "up"]);
    }

    /// A namespace on the public bridge at the next address 203.0.113.11, .12, ...
    /// (`role` names it: at most 8 characters of [a-z0-9]).
    pub fn public_host(&self, role: &str) -> Host {
        let ip_addr = {
            let mut state = self.state();
            state.public_hosts += 1;
            assert!(state.public_hosts < 80, "too many public hosts in one lab");
            Ipv4Addr::new(203, 0, 113, 10 + state.public_hosts)
        };
        let ns = self.namespace(role);
        self.attach(&ns, "eth0", ip_addr);
        ip(&["-n", &ns, "route", "add", "default", "dev", "eth0"]);
        Host { ns, ip: ip_addr }
    }

    /// A side: for [`NatKind::None`] a public host at 203.0.113.(100+N); otherwise a
    /// router `<role>r` with WAN 203.0.113.(100+N) and a LAN bridge 10.0.N.1/24, and a
    /// host `<role>` at 10.0.N.2 behind it, where N counts the sides of this lab from 1.
    /// More hosts join the same LAN with [`Lab::host_behind`].
    pub fn side(&self, role: &str, nat: NatKind, router_kind: RouterKind) -> Side {
        let n = self.next_side();
        let public_ip = Ipv4Addr::new(203, 0, 113, 100 + n);
        if nat == NatKind::None {
            let ns = self.namespace(role);
            self.attach(&ns, "eth0", public_ip);
            ip(&["-n", &ns, "route", "add", "default", "dev", "eth0"]);
            return Side {
                host: Host { ns, ip: public_ip },
                router: None,
                outer: None,
                nat,
                router_kind,
                lan: 0,
            };
        }
        let router_ns = self.namespace(&format!("{role}r"));
        self.attach(&router_ns, "wan", public_ip);
        ip(&["-n", &router_ns, "route", "add", "default", "dev", "wan"]);
        self.nat_router(role, router_ns, public_ip, n, nat, router_kind, None)
    }

    fn next_side(&self) -> u8 {
        let mut state = self.state();
        state.sides += 1;
        assert!(state.sides < 100, "too many sides in one lab");
        state.sides
    }

    /// Makes the LAN bridge 10.0.N.1/24 on `router_ns` (whose WAN is up), the nftables
    /// NAT, and the first host behind it.
    #[allow(clippy::too_many_arguments)]
    fn nat_router(
        &self,
        role: &str,
        router_ns: String,
        wan_ip: Ipv4Addr,
        n: u8,
        nat: NatKind,
        router_kind: RouterKind,
        outer: Option<Router>,
    ) -> Side {
        let lan_ip = Ipv4Addr::new(10, 0, n, 1);
        ip(&["-n", &router_ns, "link", "add", "lan", "type", "bridge"]);
        ip(&[
            "-n",
            &router_ns,
            "addr",
            "add",
            &format!("{lan_ip}/24"),
            "dev",
            "lan",
        ]);
        ip(&["-n", &router_ns, "link", "set", "lan", "up"]);
        enable_forwarding(&router_ns);
        run_tool(
            "ip",
            &["netns", "exec", &router_ns, "nft", "-f", "-"],
            Some(&router_ruleset(nat, router_kind)),
        );
        let router = Router {
            ns: router_ns,
            wan_ip,
            lan_ip,
        };
        let mut side = Side {
            host: Host {
                ns: String::new(),
                ip: lan_ip,
            },
            router: Some(router),
            outer,
            nat,
            router_kind,
            lan: n,
        };
        side.host = self.host_behind(&side, role);
        side
    }

    /// Another host on `side`'s LAN (10.0.N.3, .4, ...), behind the same router: a
    /// client and a worker in one home. Panics for a public side.
    pub fn host_behind(&self, side: &Side, role: &str) -> Host {
        let router = side.router.as_ref().expect("a side behind a router");
        let (host_ip, port) = {
            let mut guard = self.state();
            let state = &mut *guard;
            let count = state.lan_hosts.entry(u16::from(side.lan)).or_insert(0);
            *count += 1;
            let host_ip = Ipv4Addr::new(10, 0, side.lan, 1 + *count);
            let ports = state.lan_ports.entry(router.ns.clone()).or_insert(0);
            *ports += 1;
            (host_ip, format!("h{ports}"))
        };
        let host_ns = self.namespace(role);
        ip(&[
            "-n", &router.ns, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
            "netns", &host_ns,
        ]);
        ip(&[
            "-n", &router.ns, "link", "set", &port, "master", "lan", "up",
        ]);
        ip(&[
            "-n",
            &host_ns,
            "addr",
            "add",
            &format!("{host_ip}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &host_ns, "link", "set", "eth0", "up"]);
        ip(&[
            "-n",
            &host_ns,
            "route",
            "add",
            "default",
            "via",
            &router.lan_ip.to_string(),
        ]);
        Host {
            ns: host_ns,
            ip: host_ip,
        }
    }

    /// A carrier-grade NAT `<role>` with WAN 203.0.113.(100+N) and the shared address
    /// space LAN 100.64.N.1/24 (RFC 6598), mapping as `nat` does (it drops unsolicited
    /// WAN traffic, as carrier equipment does).
    pub fn cgn(&self, role: &str, nat: NatKind) -> Cgn {
        assert!(nat != NatKind::None, "a carrier-grade NAT translates");
        let n = self.next_side();
        let wan_ip = Ipv4Addr::new(203, 0, 113, 100 + n);
        let lan_ip = Ipv4Addr::new(100, 64, n, 1);
        let ns = self.namespace(role);
        self.attach(&ns, "wan", wan_ip);
        ip(&["-n", &ns, "route", "add", "default", "dev", "wan"]);
        ip(&["-n", &ns, "link", "add", "lan", "type", "bridge"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{lan_ip}/24"),
            "dev",
            "lan",
        ]);
        ip(&["-n", &ns, "link", "set", "lan", "up"]);
        enable_forwarding(&ns);
        run_tool(
            "ip",
            &["netns", "exec", &ns, "nft", "-f", "-"],
            Some(&router_ruleset(nat, RouterKind::Home)),
        );
        Cgn {
            router: Router { ns, wan_ip, lan_ip },
            n,
        }
    }

    /// A side behind a home router (`nat`, `router_kind`) whose WAN is on `cgn`'s LAN
    /// (100.64.M.K), so that its traffic goes through two NATs.
    pub fn side_behind_cgn(
        &self,
        cgn: &Cgn,
        role: &str,
        nat: NatKind,
        router_kind: RouterKind,
    ) -> Side {
        assert!(
            nat != NatKind::None,
            "behind a carrier-grade NAT there is a home router"
        );
        let n = self.next_side();
        let (wan_ip, port) = {
            let mut guard = self.state();
            let state = &mut *guard;
            let count = state.lan_hosts.entry(1000 + u16::from(cgn.n)).or_insert(0);
            *count += 1;
            let ports = state.lan_ports.entry(cgn.router.ns.clone()).or_insert(0);
            *ports += 1;
            (
                Ipv4Addr::new(100, 64, cgn.n, 1 + *count),
                format!("h{ports}"),
            )
        };
        let router_ns = self.namespace(&format!("{role}r"));
        ip(&[
            "-n",
            &cgn.router.ns,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "wan",
            "netns",
            &router_ns,
        ]);
        ip(&[
            "-n",
            &cgn.router.ns,
            "link",
            "set",
            &port,
            "master",
            "lan",
            "up",
        ]);
        ip(&[
            "-n",
            &router_ns,
            "addr",
            "add",
            &format!("{wan_ip}/24"),
            "dev",
            "wan",
        ]);
        ip(&["-n", &router_ns, "link", "set", "wan", "up"]);
        ip(&[
            "-n",
            &router_ns,
            "route",
            "add",
            "default",
            "via",
            &cgn.router.lan_ip.to_string(),
        ]);
        self.nat_router(
            role,
            router_ns,
            wan_ip,
            n,
            nat,
            router_kind,
            Some(cgn.router.clone()),
        )
    }
}

/// Turns on IPv4 forwarding in namespace `ns` (a router).
fn enable_forwarding(ns: &str) {
    run_tool(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ],
        None,
    );
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let namespaces = std::mem::take(&mut self.state().namespaces);
        for ns in namespaces.iter().rev() {
            remove_namespace(ns);
        }
    }
}
