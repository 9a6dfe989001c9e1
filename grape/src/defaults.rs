//! Default values, one line on why each.
//!
//! [`GrapeConfig::default`](crate::GrapeConfig) is built from these; the CLI should show
//! them in its help rather than repeat the numbers.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// DHT UDP port: Grenache's customary first grape (`grape --dp 20001`).
pub const DEFAULT_DHT_PORT: u16 = 20001;

/// HTTP API port: Grenache's customary `--aph 30001`, where grenache-nodejs-link looks.
pub const DEFAULT_API_PORT: u16 = 30001;

/// DHT bind address: all interfaces, because other grapes must reach the DHT.
pub const DEFAULT_DHT_BIND: Ipv4Addr = Ipv4Addr::UNSPECIFIED;

/// HTTP API bind address: loopback, because the API lets anyone announce and put on this
/// grape's behalf; Grenache binds all interfaces, expose it only on purpose.
pub const DEFAULT_API_BIND: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Announce window: an announce stays visible for 3/4 to 4/4 of it (see
/// [`SlotSchedule`](crate::SlotSchedule)). 256 s puts 3/4 at 192 s, which covers
/// grenache-nodejs-link's longest re-announce gap (120 s + 50 % = 180 s) with 12 s to spare
/// for the announce's own latency and the link's retries (2.5 s request timeout, 3 tries).
pub const DEFAULT_ANNOUNCE_WINDOW: Duration = Duration::from_secs(256);

/// Lookup deadline: mainline's request timeout (2 s), so a dead node costs at most that,
/// and under grenache-nodejs-link's 2.5 s request timeout.
pub const DEFAULT_LOOKUP_DEADLINE: Duration = Duration::from_secs(2);

/// Settle period after the first non-empty batch: on loopback the first batch arrives in
/// about 60 ms and the rest of a healthy neighbourhood within a few mainline ticks (50 ms).
pub const DEFAULT_LOOKUP_SETTLE: Duration = Duration::from_millis(150);

/// Longest wait for a DHT put (announce, BEP 44 put): a put first runs a full iterative
/// query (each dead node costs mainline's 2 s timeout), then waits for the stores; an HTTP
/// request should not hang longer than this.
pub const DEFAULT_PUT_TIMEOUT: Duration = Duration::from_secs(15);

/// Largest HTTP request body: a Grenache request is a small JSON envelope around at most a
/// 1000-byte BEP 44 value; 64 KiB leaves room for JSON escaping and nothing for abuse.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;

/// Mutable targets remembered with their public key and salt, so that `/get` by target
/// alone finds items put through this grape: mainline can only fetch a mutable item by its
/// key. Same order of size as mainline's own store (`MAX_VALUES` = 1000).
pub const DEFAULT_KNOWN_KEYS: usize = 1024;

/// Distinct targets another DHT node may make this grape store per window: a broker's
/// grape announces each key it serves in every slot (4 per window), 64 keys at most, so
/// 256; an API client gets 64 ([`crate::quota::QuotaLimits`]).
pub const DEFAULT_DHT_TARGETS_PER_SOURCE: usize = 256;

/// Infohashes with announces a grape's DHT node stores for others: mainline's default is
/// 2,000, which about 2,100 announces of new keys empty of everything older. With
/// per-source quotas ([`crate::quota`]) one source fills at most 256 of them per window,
/// so 8,000 takes a flood from 31 addresses at once to push a live key out.
pub const DEFAULT_MAX_INFO_HASHES: usize = 8_000;

/// Peers kept per infohash (mainline's default: 500). mainline reserves room for all of
/// them when an infohash is first stored, so 8,000 infohashes of 500 would reserve
/// hundreds of MB under a flood; 128 keeps that near 40 MB, and a lookup is answered
/// with 10 random peers of them anyway.
pub const DEFAULT_MAX_PEERS_PER_INFO_HASH: usize = 128;

/// Distinct peers a lookup is content with: it returns as soon as it has them. A client's
/// `--quorum` goes up to 15 and a request fails over to further workers; 32 leaves a margin
/// for workers that left since they announced. More costs no messages (mainline queries
/// cannot be stopped) but time: the first two or three batches of a busy key give 32.
pub const DEFAULT_LOOKUP_WANT: usize = 32;
