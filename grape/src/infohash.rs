//! Service keys to infohashes, and the time slots that make announces expire.
//!
//! A service key (for example `nano_rpc`) maps to a 20-byte BitTorrent infohash, the SHA-1
//! of the key's UTF-8 bytes ([`infohash`]). That is the plain mapping; announces do not
//! use it directly, because a mainline node keeps announced peers with no TTL (BEP 5 asks
//! for 30 minutes; mainline 8.0.1 keeps them until its LRU evicts them), and every
//! re-announce adds a duplicate entry. A worker that stopped would be found forever.
//!
//! # Time slots
//!
//! [`SlotSchedule`] cuts time into slots of length `S = window / 4` (whole milliseconds,
//! counted from the Unix epoch) and announces into a per-slot infohash,
//! `SHA-1("{key}@{slot_start_ms}")`. A lookup asks for the current slot and the three
//! before it. So:
//!
//! ```text
//!  slot:      k        k+1       k+2       k+3       k+4
//!         |--A------|---------|---------|---------|---------|
//!            ^ announce at t in slot k
//!            visible to lookups until (k+4)·S, i.e. for between 3S and 4S
//! ```
//!
//! - an announce stays visible for more than 3S and at most 4S;
//! - a live announcer must therefore re-announce at least every 3S (3/4 of the window),
//!   less the announce's own latency ([`SlotSchedule::renew_within`]);
//! - an announcer that stops vanishes from lookups within 4S = one window
//!   ([`SlotSchedule::vanish_within`]).
//!
//! The old entries still sit in the DHT under their old slot infohashes until mainline's
//! LRU drops them; nobody asks for them any more.
//!
//! Everything here is pure: the time is an argument (a [`Duration`] since the Unix epoch),
//! never read from a clock, so the rules can be tested at exact boundaries.

use std::time::Duration;

use sha1::{Digest, Sha1};

use crate::defaults::DEFAULT_ANNOUNCE_WINDOW;
use crate::GrapeError;

/// Number of slots in one announce window: a lookup covers this many slots.
pub const SLOTS_PER_WINDOW: u32 = 4;

/// A BitTorrent infohash (BEP 5): 20 bytes, here always a SHA-1 digest.
pub type Infohash = [u8; 20];

/// The infohash of a service key: SHA-1 of the key's UTF-8 bytes.
///
/// This is the key's identity in the DHT without time slots; announces and lookups go
/// through [`SlotSchedule`] instead. (Grenache's grape uses the raw key bytes, hex encoded,
/// as the infohash; DHT-level interop with it is not a goal.)
///
/// ```
/// // SHA-1("abc"), FIPS 180-1 appendix A.
/// assert_eq!(
///     hex::encode(grape::infohash("abc")),
///     "a9993e364706816aba3e25717850c26c9cd0d89d"
/// );
/// ```
pub fn infohash(key: &str) -> Infohash {
    Sha1::digest(key.as_bytes()).into()
}

/// The time-slot rules for announces: which infohash an announce goes to and which
/// infohashes a lookup asks for, given the time.
///
/// The window must be at least [`SlotSchedule::MIN_WINDOW`] (4 ms, so that a slot is at
/// least 1 ms long); the slot length is `window / 4` rounded down to whole milliseconds.
/// All grapes and clients of one network must use the same window, or their slot
/// infohashes differ and they cannot see each other's announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotSchedule {
    window: Duration,
    slot_ms: u64,
}

impl Default for SlotSchedule {
    /// The schedule for [`DEFAULT_ANNOUNCE_WINDOW`] (256 s, slots of 64 s).
    fn default() -> Self {
        Self {
            window: DEFAULT_ANNOUNCE_WINDOW,
            slot_ms: window_slot_ms(DEFAULT_ANNOUNCE_WINDOW),
        }
    }
}

fn window_slot_ms(window: Duration) -> u64 {
    let ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    ms / u64::from(SLOTS_PER_WINDOW)
}

fn unix_ms(unix_time: Duration) -> u64 {
    u64::try_from(unix_time.as_millis()).unwrap_or(u64::MAX)
}

impl SlotSchedule {
    /// The shortest window accepted: 4 ms, one millisecond per slot.
    pub const MIN_WINDOW: Duration = Duration::from_millis(SLOTS_PER_WINDOW as u64);

    /// A schedule whose announces expire after `window` (slot length `window / 4`, in whole
    /// milliseconds).
    ///
    /// # Errors
    ///
    /// [`GrapeError::WindowTooShort`] if `window` is under [`Self::MIN_WINDOW`].
    pub fn new(window: Duration) -> Result<Self, GrapeError> {
        if window < Self::MIN_WINDOW {
            return Err(GrapeError::WindowTooShort { window });
        }
        Ok(Self {
            window,
            slot_ms: window_slot_ms(window),
        })
    }

    /// The announce window this schedule was made with.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The slot length `S` (= window / 4, whole milliseconds).
    pub fn slot_length(&self) -> Duration {
        Duration::from_millis(self.slot_ms)
    }

    /// `3S`: the longest gap between two announces of the same key and port that keeps
    /// it visible without interruption. Subtract the announce's own latency (the time from
    /// the grape receiving the request until the DHT nodes stored it) when scheduling.
    pub fn renew_within(&self) -> Duration {
        Duration::from_millis(self.slot_ms.saturating_mul(3))
    }

    /// `4S`: an announce that is not renewed is gone from lookups at most this long after
    /// it was made.
    pub fn vanish_within(&self) -> Duration {
        Duration::from_millis(self.slot_ms.saturating_mul(u64::from(SLOTS_PER_WINDOW)))
    }

    /// Start of the slot that contains `unix_time`, in milliseconds since the Unix epoch:
    /// `floor(t / S) * S`.
    pub fn slot_start(&self, unix_time: Duration) -> u64 {
        let t = unix_ms(unix_time);
        t - t % self.slot_ms
    }

    /// The infohash an announce made at `unix_time` goes to:
    /// `SHA-1("{key}@{slot_start_ms}")`.
    ///
    /// The slot number is always the digits after the last `@`, so keys that contain `@`
    /// cannot collide with another key's slot.
    pub fn announce_infohash(&self, key: &str, unix_time: Duration) -> Infohash {
        slot_infohash(key, self.slot_start(unix_time))
    }

    /// The infohashes a lookup made at `unix_time` asks for: the current slot first, then
    /// the three before it. Within 3S of the Unix epoch (only in tests) the missing earlier
    /// slots repeat slot 0.
    pub fn lookup_infohashes(&self, key: &str, unix_time: Duration) -> [Infohash; 4] {
        let current = self.slot_start(unix_time);
        std::array::from_fn(|back| {
            let back = back as u64;
            let start = current.saturating_sub(back.saturating_mul(self.slot_ms));
            slot_infohash(key, start)
        })
    }
}

fn slot_infohash(key: &str, slot_start_ms: u64) -> Infohash {
    infohash(&format!("{key}@{slot_start_ms}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn infohash_is_sha1_of_utf8() {
        // SHA-1("abc") from FIPS 180-1, appendix A.
        assert_eq!(
            hex::encode(infohash("abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        // SHA-1 of the empty string.
        assert_eq!(
            hex::encode(infohash("")),
            "da39a3ee5e6b4b0d3255bfef95601890afd80709"
        );
        // Non-ASCII keys hash their UTF-8 bytes.
        let bytes: [u8; 20] = Sha1::digest("nano_rpc_é".as_bytes()).into();
        assert_eq!(infohash("nano_rpc_é"), bytes);
    }

    #[test]
    fn window_validation() {
        assert!(matches!(
            SlotSchedule::new(ms(3)),
            Err(GrapeError::WindowTooShort { window }) if window == ms(3)
        ));
        assert!(SlotSchedule::new(Duration::ZERO).is_err());
        assert!(SlotSchedule::new(Duration::from_micros(3999)).is_err());
        let min = SlotSchedule::new(ms(4)).expect("4 ms is the minimum");
        assert_eq!(min.slot_length(), ms(1));
        assert_eq!(SlotSchedule::MIN_WINDOW, ms(4));
    }

    #[test]
    fn slot_length_is_whole_milliseconds() {
        let s = SlotSchedule::new(ms(800)).unwrap();
        assert_eq!(s.slot_length(), ms(200));
        assert_eq!(s.renew_within(), ms(600));
        assert_eq!(s.vanish_within(), ms(800));
        // 1001 ms / 4 = 250.25 ms: rounded down.
        let s = SlotSchedule::new(ms(1001)).unwrap();
        assert_eq!(s.slot_length(), ms(250));
        // Sub-millisecond parts of the window are ignored.
        let s = SlotSchedule::new(Duration::from_micros(8_999)).unwrap();
        assert_eq!(s.slot_length(), ms(2));
        assert_eq!(s.window(), Duration::from_micros(8_999));
    }

    #[test]
    fn default_schedule() {
        let s = SlotSchedule::default();
        assert_eq!(s, SlotSchedule::new(DEFAULT_ANNOUNCE_WINDOW).unwrap());
        assert_eq!(s.slot_length(), Duration::from_secs(64));
        // Covers grenache-nodejs-link's longest re-announce gap (180 s).
        assert!(s.renew_within() >= Duration::from_secs(180));
    }

    #[test]
    fn slot_start_boundaries() {
        let s = SlotSchedule::new(ms(800)).unwrap(); // S = 200 ms
        assert_eq!(s.slot_start(ms(0)), 0);
        assert_eq!(s.slot_start(ms(199)), 0);
        assert_eq!(s.slot_start(ms(200)), 200);
        assert_eq!(s.slot_start(ms(399)), 200);
        assert_eq!(s.slot_start(ms(400)), 400);
        // Sub-millisecond time truncates to the millisecond first.
        assert_eq!(s.slot_start(Duration::from_micros(199_999)), 0);
        assert_eq!(s.slot_start(Duration::from_micros(200_000)), 200);
        // A realistic Unix time.
        let t = ms(1_700_000_000_123);
        assert_eq!(s.slot_start(t), 1_700_000_000_000);
        // The far future saturates instead of overflowing.
        assert_eq!(s.slot_start(Duration::MAX) % 200, 0);
    }

    #[test]
    fn announce_infohash_format() {
        let s = SlotSchedule::new(ms(800)).unwrap();
        let t = ms(1_700_000_000_123);
        assert_eq!(
            s.announce_infohash("nano_rpc", t),
            infohash("nano_rpc@1700000000000")
        );
        // Same slot, same infohash; next slot, another one.
        assert_eq!(
            s.announce_infohash("nano_rpc", ms(1_700_000_000_000)),
            s.announce_infohash("nano_rpc", ms(1_700_000_000_199))
        );
        assert_ne!(
            s.announce_infohash("nano_rpc", ms(1_700_000_000_199)),
            s.announce_infohash("nano_rpc", ms(1_700_000_000_200))
        );
        // Slot infohashes differ from the plain key's.
        assert_ne!(s.announce_infohash("nano_rpc", t), infohash("nano_rpc"));
        // Different keys, different infohashes.
        assert_ne!(s.announce_infohash("a", t), s.announce_infohash("b", t));
    }

    #[test]
    fn lookup_covers_current_and_three_previous_slots() {
        let s = SlotSchedule::new(ms(800)).unwrap();
        let t = ms(10_050); // slot 10_000
        let hashes = s.lookup_infohashes("k", t);
        assert_eq!(
            hashes,
            [
                infohash("k@10000"),
                infohash("k@9800"),
                infohash("k@9600"),
                infohash("k@9400"),
            ]
        );
    }

    #[test]
    fn lookup_near_the_epoch_repeats_slot_zero() {
        let s = SlotSchedule::new(ms(800)).unwrap();
        let hashes = s.lookup_infohashes("k", ms(250));
        assert_eq!(
            hashes,
            [
                infohash("k@200"),
                infohash("k@0"),
                infohash("k@0"),
                infohash("k@0"),
            ]
        );
    }

    /// Whether a lookup at `lookup` sees an announce made at `announce`.
    fn visible(s: &SlotSchedule, announce: Duration, lookup: Duration) -> bool {
        let target = s.announce_infohash("svc", announce);
        s.lookup_infohashes("svc", lookup).contains(&target)
    }

    #[test]
    fn announce_is_visible_between_3s_and_4s() {
        let s = SlotSchedule::new(ms(800)).unwrap(); // S = 200 ms
        let base = 1_000_000; // a slot start

        // Announced at the very start of a slot: visible for exactly 4S.
        let a = ms(base);
        assert!(visible(&s, a, a));
        assert!(visible(&s, a, ms(base + 799)));
        assert!(!visible(&s, a, ms(base + 800)));

        // Announced at the last millisecond of a slot: visible for 3S + 1 ms.
        let a = ms(base + 199);
        assert!(visible(&s, a, ms(base + 199 + 600)));
        assert!(!visible(&s, a, ms(base + 199 + 601)));

        // Never visible before it was made (a lookup in an earlier slot).
        assert!(!visible(&s, ms(base), ms(base - 1)));
        // But visible to a lookup in the same slot even if slightly earlier: the slot is
        // the unit of time.
        assert!(visible(&s, ms(base + 150), ms(base + 10)));
    }

    #[test]
    fn visibility_window_holds_for_every_offset_in_a_slot() {
        let s = SlotSchedule::new(ms(40)).unwrap(); // S = 10 ms
        let slot = 10;
        for offset in 0..slot {
            let a = 5_000 + offset;
            let last_visible = (0..100)
                .map(|d| a + d)
                .take_while(|&t| visible(&s, ms(a), ms(t)))
                .last()
                .expect("visible at the announce time");
            let lifetime = last_visible + 1 - a;
            // More than 3S, at most 4S: exactly 4S minus the offset into the slot.
            assert!(
                lifetime > 3 * slot && lifetime <= 4 * slot,
                "offset {offset}: lifetime {lifetime} ms"
            );
            assert_eq!(lifetime, 4 * slot - offset);
        }
    }

    #[test]
    fn renewing_within_3s_keeps_an_announce_visible() {
        let s = SlotSchedule::new(ms(40)).unwrap(); // S = 10 ms, 3S = 30 ms
        let renew = s.renew_within().as_millis() as u64;
        for start in 1_000..1_010 {
            let announces: Vec<u64> = (0..10).map(|i| start + i * renew).collect();
            let last = *announces.last().unwrap();
            for t in start..last {
                assert!(
                    announces
                        .iter()
                        .filter(|&&a| a <= t)
                        .any(|&a| visible(&s, ms(a), ms(t))),
                    "gap at {t} ms with announces every {renew} ms from {start}"
                );
            }
        }
    }

    #[test]
    fn renewing_slower_than_4s_leaves_gaps() {
        let s = SlotSchedule::new(ms(40)).unwrap(); // 4S = 40 ms
        let a1 = 1_000;
        let a2 = a1 + 41;
        let gap = (a1..a2).any(|t| !visible(&s, ms(a1), ms(t)));
        assert!(gap);
    }

    #[test]
    fn stopped_announcer_vanishes_within_one_window() {
        let s = SlotSchedule::new(ms(800)).unwrap();
        for offset in [0, 1, 57, 199] {
            let a = ms(2_000_000 + offset);
            assert!(!visible(&s, a, a + s.vanish_within()));
            assert!(visible(&s, a, a + s.renew_within()));
        }
    }

    #[test]
    fn keys_with_at_signs_do_not_collide() {
        let s = SlotSchedule::new(ms(800)).unwrap();
        // "a@1" in slot 200 is "a@1@200"; key "a" would need slot "1@200", not a number.
        let t = ms(200);
        assert_ne!(s.announce_infohash("a@1", t), s.announce_infohash("a", t));
        assert_eq!(s.announce_infohash("a@1", t), infohash("a@1@200"));
    }
}
