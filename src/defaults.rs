//! Default values, one place, each with the reason it has the value it has.

use std::time::Duration;

/// The service key a Nano RPC worker announces and a client looks up.
pub const DEFAULT_SERVICE_KEY: &str = "nano_rpc";

/// The grape HTTP API a worker or client talks to: Grenache's examples use port 30001.
pub const DEFAULT_GRAPE_URL: &str = "http://127.0.0.1:30001";

/// The Nano node's RPC: the live network's default RPC port is 7076.
pub const DEFAULT_NANO_RPC_URL: &str = "http://127.0.0.1:7076";

/// How often a worker re-announces: Grenache's link uses 120 s with ±50 % jitter, which
/// the grape's default 256 s announce window is sized for (gaps up to 180 s, under the
/// 192 s = 3/4 window that keeps an announce visible, with 12 s for the announce to land).
pub const DEFAULT_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(120);

/// Largest request frame a worker reads, in bytes (prefix not counted). Nano RPC
/// requests are small; the largest legitimate ones (`process` with a JSON block,
/// `blocks_info` with many hashes) stay far below 64 KiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Largest response frame either side accepts, in bytes. Nano answers such as
/// `account_history` or `blocks_info` with a high `count` run to megabytes.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// Time a worker waits for a request frame on a stream before giving up on it.
pub const DEFAULT_STREAM_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A caller's deadline for one request, lookup and connection set-up included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Time one worker has to answer a caller before the request moves on to another. Nano
/// RPC answers of the read-only allowlist take milliseconds to a few hundred; a worker
/// that says nothing for 3 s is more likely gone than busy.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

/// A caller's deadline for one QUIC handshake. Loopback and LAN handshakes take about a
/// millisecond and intercontinental ones a few hundred: two seconds marks a dead address.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Head start a caller gives one worker's handshake before it also dials the next one
/// (a Happy-Eyeballs-style race, RFC 8305 §5 uses 250 ms for the same purpose).
pub const DEFAULT_CONNECT_STAGGER: Duration = Duration::from_millis(250);

/// How long a caller skips an address that failed, before trying it again.
pub const DEFAULT_DEAD_ADDRESS_TTL: Duration = Duration::from_secs(30);

/// How long a client reuses a grape lookup: grenache-nodejs-link caches for 5–10 s.
pub const DEFAULT_LOOKUP_CACHE_TTL: Duration = Duration::from_secs(5);

/// Deadline of one HTTP request to the grape.
pub const DEFAULT_GRAPE_HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// QUIC keep-alive: shorter than the 30 s that many NATs keep an idle UDP mapping
/// (RFC 4787 REQ-5 asks for at least 2 min, but home routers often use 30 s).
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// QUIC idle timeout (RFC 9000 §10.1): quinn's default of 30 s.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Initial RTT estimate (RFC 9002 §6.2.2 suggests 333 ms). Lower, so that a lost first
/// packet is resent sooner; the estimate is replaced by a measurement after one round trip.
pub const DEFAULT_INITIAL_RTT: Duration = Duration::from_millis(100);

/// Concurrent RPC streams (so requests in flight) a caller may have on one connection:
/// one stream per request. Each allowed stream costs the worker memory per connection up
/// front: measured with 2000 idle connections (benches/mesh.sh, section 5), 100 streams
/// cost 35 KB per connection, 128 cost 40.5 KB and 256 cost 51 KB, while 256 requests in
/// flight on one connection ran only ~10 % faster with 256 streams than with 100 (the
/// rest wait for a stream). 100 keeps an idle connection under the 40 KiB goal; a worker
/// that serves few, busy callers can raise it (`worker --max-streams`).
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100;

/// QUIC connections a worker keeps open at once: an idle connection costs about 38 KB
/// (benches/mesh.sh, section 5), so 1024 cap a flood of idle connections near 40 MB (5000
/// took a worker from 12 MB to 183 MB); a worker serving more callers raises it.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// QUIC connections from one IP address at once: many users behind one NAT or a
/// gateway's few connections fit; one host cannot take the whole of
/// [`DEFAULT_MAX_CONNECTIONS`].
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 64;

/// UDP socket send and receive buffers, in bytes: the kernel's 208 KiB default overflows
/// under many connections or handshake bursts (p99 at 256 connections fell from 46 ms to
/// 9 ms with 4 MiB on these machines).
pub const DEFAULT_UDP_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// ALPN protocol id of the nano-connect RPC protocol, version 1 (RFC 7301).
pub const ALPN: &[u8] = b"nano-connect/1";

/// Where `nano-connect gateway` listens: the Nano node's own RPC port on loopback, so
/// that wallet software configured for a local node works unchanged.
pub const DEFAULT_GATEWAY_LISTEN: &str = "127.0.0.1:7076";

/// Largest request body the gateway takes, in bytes: the worker's limit on a request
/// frame ([`DEFAULT_MAX_REQUEST_BYTES`]), since a larger body could not be carried anyway.
pub const DEFAULT_GATEWAY_MAX_BODY_BYTES: usize = DEFAULT_MAX_REQUEST_BYTES;

/// Answers a worker's response cache keeps at most. Read-only answers are mostly under a
/// few KB, so 10 000 entries stay in the tens of MB even for history pages.
pub const DEFAULT_CACHE_ENTRIES: u64 = 10_000;

/// Time between a worker's health probes of its node. A worker whose node died vanishes
/// from lookups after two failed probes (60 s) plus the rest of the grapes' announce
/// window (up to 256 s), which dominates; probing more often would only load the node.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(30);
/// How long the broker keeps a worker's registration without a refresh: three keep-alive
/// intervals, so that two lost refreshes in a row do not drop it.
pub const DEFAULT_REGISTRATION_TTL: Duration = Duration::from_secs(45);

/// Registrations a broker takes from one source IP: a home network runs a few workers
/// behind one public address; more from one IP is a flood, not volunteers.
pub const DEFAULT_MAX_REGISTRATIONS_PER_IP: usize = 16;

/// Registrations a broker takes for one service key: far more than one broker's relay
/// (64 circuits) could ever serve, yet a bound on a registration flood's memory
/// (a record is about 300 bytes).
pub const DEFAULT_MAX_REGISTRATIONS_PER_KEY: usize = 1024;

/// Service keys one broker serves: a mesh has a handful (`nano_rpc`, a test key or two);
/// each one is announced in the DHT every interval, so the count bounds that traffic too.
pub const DEFAULT_MAX_KEYS_PER_BROKER: usize = 64;

/// Registrations one broker keeps in all (about 1.5 MB of records at most).
pub const DEFAULT_MAX_REGISTRATIONS: usize = 4096;

/// How often a worker refreshes its broker registration: shorter than the 30 s many home
/// routers keep an idle UDP mapping, so the mapping the broker saw stays the one in use.
pub const DEFAULT_REGISTRATION_INTERVAL: Duration = Duration::from_secs(15);

/// How long an introduction can still become a relay circuit: a client asks for the
/// relay within its punch deadline, a few seconds at most.
pub const DEFAULT_INTRODUCTION_TTL: Duration = Duration::from_secs(30);

/// Relay circuits open at once on one broker (libp2p circuit relay v2 defaults to 16
/// per peer; a grape serves many peers with small RPC traffic).
pub const DEFAULT_RELAY_MAX_CIRCUITS: usize = 64;

/// Bytes one relay circuit may carry, both directions together. libp2p's default is
/// 128 KiB per circuit for connection upgrades; RPC answers run to megabytes, so more.
pub const DEFAULT_RELAY_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// How long one relay circuit may last (libp2p's default is 2 min; RPC sessions are
/// longer-lived, yet a relay must not become a permanent tunnel).
pub const DEFAULT_RELAY_MAX_DURATION: Duration = Duration::from_secs(600);

/// Relay requests one IP may make per minute: enough for a few clients behind one NAT
/// retrying, few enough that one host cannot monopolise the relay.
pub const DEFAULT_RELAY_REQUESTS_PER_MINUTE: u32 = 30;

/// How long a client tries to open a direct (punched) path after an introduction before
/// it asks the broker to relay. A punch on a real NAT opens in a few to ~60 ms (birthday
/// method); a lost Initial is resent after about 3 × the initial RTT (300 ms).
pub const DEFAULT_PUNCH_DEADLINE: Duration = Duration::from_millis(1500);

/// Interval between punches of the worker's bounded punch schedule, at first.
pub const DEFAULT_PUNCH_INTERVAL: Duration = Duration::from_millis(20);

/// How many punches a worker sends per introduction at most (about 2 s of punching with
/// the schedule's back-off).
pub const DEFAULT_PUNCH_COUNT: u32 = 40;

/// Interval between retransmissions of a broker request that got no answer.
pub const DEFAULT_BROKER_RETRY: Duration = Duration::from_millis(250);

/// Introductions one IP may ask a broker for per minute: each makes a worker punch toward
/// the asker, so an unlimited rate would let a spoofed source aim workers at a victim.
/// A client connects once per session; 60 leaves room for many clients behind one NAT.
pub const DEFAULT_CONNECTS_PER_MINUTE: u32 = 60;
