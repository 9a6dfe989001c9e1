//! How a lookup collects peers from its BEP 5 `get_peers` queries.
//!
//! The collection takes the queries' streams of batches (one batch per responding node:
//! the peers that node returned for the slot infohash) and tokio's clock, no sockets, so
//! it runs on a paused clock in tests. [`GrapeDht::lookup`](super::GrapeDht::lookup)
//! decides which slots to ask and when (see the module doc of [`super`]).
//!
//! A mainline query cannot be cancelled: once started, it runs to its end in mainline's
//! thread whether or not anyone listens. Stopping to listen saves time, not messages;
//! the only way a lookup saves messages is by not starting a query. So the older slots are
//! asked only when the freshest ones cannot give enough peers.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::poll_fn;
use std::net::SocketAddrV4;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::Stream;
use tokio::time::Instant;

/// The most peers a mainline 8.0.1 node returns for one infohash in one `get_peers`
/// answer (`PeersStore::get_random_peers`, a random sample when it stores more). A smaller
/// batch means the node sent everything it stores for that slot.
pub(crate) const PEERS_PER_RESPONSE: usize = 10;

/// Keys whose last lookup is remembered (see [`LookupMemory`]); a grape serves few keys.
const REMEMBERED_KEYS: usize = 256;

/// Why a lookup stopped collecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LookupEnd {
    /// It had the number of distinct peers it wants ([`GrapeDht::with_lookup_want`]).
    ///
    /// [`GrapeDht::with_lookup_want`]: super::GrapeDht::with_lookup_want
    Enough,
    /// No new peer arrived for the settle period after the last new one.
    Settled,
    /// Every query it started ended.
    Exhausted,
    /// The deadline passed.
    Deadline,
}

/// What a lookup found, and how ([`GrapeDht::lookup_report`](super::GrapeDht::lookup_report)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupReport {
    /// The distinct peers, sorted by IP then port.
    pub peers: Vec<SocketAddrV4>,
    /// Slot infohashes queried (1 to 4): 2 when the two freshest slots gave enough.
    pub slots_asked: usize,
    /// Why it stopped.
    pub end: LookupEnd,
    /// How long it took.
    pub took: Duration,
}

/// Whether the last lookup of a key found as many peers as wanted, for the last
/// [`REMEMBERED_KEYS`] keys looked up: a key that had plenty is looked up freshest slots
/// first.
#[derive(Debug, Default)]
pub(crate) struct LookupMemory {
    abundant: HashMap<String, bool>,
    order: VecDeque<String>,
}

impl LookupMemory {
    /// Whether the last lookup of `key` had enough peers (false for a key not seen).
    pub(crate) fn abundant(&self, key: &str) -> bool {
        self.abundant.get(key).copied().unwrap_or(false)
    }

    /// Records the outcome of a lookup of `key`.
    pub(crate) fn record(&mut self, key: &str, abundant: bool) {
        if self.abundant.insert(key.to_owned(), abundant).is_none() {
            self.order.push_back(key.to_owned());
        }
        while self.order.len() > REMEMBERED_KEYS {
            if let Some(old) = self.order.pop_front() {
                self.abundant.remove(&old);
            }
        }
    }
}

/// What the collection asks of its caller and knows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Collect {
    /// Stop as soon as this many distinct peers are in (at least 1).
    pub(crate) want: usize,
    /// Stop (or ask the older slots) when no new peer came for this long after the last
    /// new one.
    pub(crate) settle: Duration,
    /// Stop when this much time has passed since the start, whatever else.
    pub(crate) deadline: Duration,
}

enum Event<T> {
    /// A batch from the stream at this index.
    Item(usize, T),
    /// A stream ended.
    Ended,
}

fn poll_any<S, T>(streams: &mut [Option<S>], cx: &mut Context<'_>) -> Poll<Option<Event<T>>>
where
    S: Stream<Item = T> + Unpin,
{
    let mut open = false;
    for (i, slot) in streams.iter_mut().enumerate() {
        let Some(stream) = slot else { continue };
        open = true;
        match Pin::new(stream).poll_next(cx) {
            Poll::Ready(Some(item)) => return Poll::Ready(Some(Event::Item(i, item))),
            Poll::Ready(None) => {
                *slot = None;
                return Poll::Ready(Some(Event::Ended));
            }
            Poll::Pending => {}
        }
    }
    if open {
        Poll::Pending
    } else {
        Poll::Ready(None)
    }
}

/// Collects peers from the queries of the `fresh` slots, and from those `older` starts
/// if the fresh ones fall short: returns the distinct peers, the number of slot queries
/// started, and why it stopped.
///
/// `first` is what the caller holds itself (a grape's own store of what was announced
/// through it): the first batch, so that a lone grape answers, and the settle period
/// starts with it, so that a grape that was told is never slower than its peers.
///
/// Stops when `want` distinct peers are in, when no new peer came for `settle` after the
/// last new one, when every query ended, or at the deadline. `older` is called at most
/// once, when fewer than `want` peers are in and either every fresh query ended or
/// answered with a short batch (its slot holds fewer than
/// [`PEERS_PER_RESPONSE`] peers, so it has no more to give), or the fresh queries settled;
/// the settle period then starts again with the first batch of the older slots.
pub(crate) async fn collect<S, F>(
    first: BTreeSet<SocketAddrV4>,
    fresh: Vec<S>,
    older: Option<F>,
    params: Collect,
) -> (BTreeSet<SocketAddrV4>, usize, LookupEnd)
where
    S: Stream<Item = Vec<SocketAddrV4>> + Unpin,
    F: FnOnce() -> Vec<S>,
{
    let want = params.want.max(1);
    let hard_stop = Instant::now() + params.deadline;
    let fresh_count = fresh.len();
    let mut streams: Vec<Option<S>> = fresh.into_iter().map(Some).collect();
    let mut complete = vec![false; fresh_count];
    let mut older = older;
    let mut asked = fresh_count;
    let mut quiet: Option<Instant> = (!first.is_empty()).then(|| Instant::now() + params.settle);
    let mut found = first;
    // Whether the fresh slots have nothing more to give.
    let fresh_done = |streams: &[Option<S>], complete: &[bool]| {
        (0..fresh_count).all(|i| complete[i] || streams[i].is_none())
    };
    loop {
        if found.len() >= want {
            return (found, asked, LookupEnd::Enough);
        }
        let stop = quiet.map_or(hard_stop, |q| q.min(hard_stop));
        let event = tokio::time::timeout_at(stop, poll_fn(|cx| poll_any(&mut streams, cx))).await;
        let escalate = match event {
            Ok(Some(Event::Item(i, batch))) => {
                if let Some(c) = complete.get_mut(i) {
                    *c |= batch.len() < PEERS_PER_RESPONSE;
                }
                let before = found.len();
                let nonempty = !batch.is_empty();
                found.extend(batch);
                if found.len() > before || (quiet.is_none() && nonempty) {
                    quiet = Some(Instant::now() + params.settle);
                }
                found.len() < want && fresh_done(&streams, &complete)
            }
            Ok(Some(Event::Ended)) => found.len() < want && fresh_done(&streams, &complete),
            Ok(None) => {
                if older.is_none() {
                    return (found, asked, LookupEnd::Exhausted);
                }
                true
            }
            Err(_) => {
                if Instant::now() >= hard_stop {
                    return (found, asked, LookupEnd::Deadline);
                }
                if older.is_none() {
                    return (found, asked, LookupEnd::Settled);
                }
                true
            }
        };
        if escalate {
            if let Some(start) = older.take() {
                let more = start();
                asked += more.len();
                streams.extend(more.into_iter().map(Some));
                quiet = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::stream;
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    type Batches = Pin<Box<dyn Stream<Item = Vec<SocketAddrV4>> + Send>>;

    fn peers(range: std::ops::Range<u16>) -> Vec<SocketAddrV4> {
        range
            .map(|p| SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), p))
            .collect()
    }

    /// A stream that yields each batch after its delay (ms, from the previous one), then
    /// ends `end_after` ms later, or never if `None`.
    fn timed(items: Vec<(u64, Vec<SocketAddrV4>)>, end_after: Option<u64>) -> Batches {
        let items = stream::unfold(items.into_iter(), |mut it| async move {
            let (delay, batch) = it.next()?;
            tokio::time::sleep(Duration::from_millis(delay)).await;
            Some((batch, it))
        });
        let tail = stream::unfold(end_after, |end| async move {
            match end {
                Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                None => std::future::pending::<()>().await,
            }
            None
        });
        Box::pin(futures_lite::StreamExt::chain(items, tail))
    }

    fn params(want: usize) -> Collect {
        Collect {
            want,
            settle: Duration::from_millis(150),
            deadline: Duration::from_millis(2000),
        }
    }

    type Older = Box<dyn FnOnce() -> Vec<Batches>>;

    /// An `older` that records being called and yields `streams`.
    fn older(streams: Vec<Batches>) -> (Arc<AtomicBool>, Option<Older>) {
        let called = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&called);
        let f: Older = Box::new(move || {
            flag.store(true, Ordering::SeqCst);
            streams
        });
        (called, Some(f))
    }

    async fn run(
        fresh: Vec<Batches>,
        older: Option<Older>,
        params: Collect,
    ) -> (usize, usize, LookupEnd, u64) {
        let start = Instant::now();
        let (found, asked, end) = collect(BTreeSet::new(), fresh, older, params).await;
        (found.len(), asked, end, start.elapsed().as_millis() as u64)
    }

    // Paused clock: timers fire in virtual time, so the times asserted are exact.

    #[tokio::test(start_paused = true)]
    async fn stops_as_soon_as_it_has_enough() {
        let fresh = vec![
            timed(
                vec![(60, peers(0..10)), (40, peers(10..20)), (40, peers(20..30))],
                None,
            ),
            timed(vec![(70, peers(100..110))], None),
        ];
        let (called, older) = older(vec![timed(vec![(10, peers(200..210))], None)]);
        let (n, asked, end, ms) = run(fresh, older, params(25)).await;
        // 10 at 60 ms, 20 at 70 ms, 30 at 100 ms.
        assert_eq!((n, asked, end, ms), (30, 2, LookupEnd::Enough, 100));
        assert!(
            !called.load(Ordering::SeqCst),
            "older slots asked needlessly"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn settles_after_the_last_new_peer_not_the_first() {
        let fresh = vec![timed(
            vec![
                (60, peers(0..10)),
                (100, peers(10..20)),
                (100, peers(5..15)),
            ],
            None,
        )];
        let (n, _, end, ms) = run(fresh, None::<Older>, params(100)).await;
        // New peers at 60 and 160 ms; the duplicate batch at 260 ms brings none.
        assert_eq!((n, end, ms), (20, LookupEnd::Settled, 160 + 150));
    }

    #[tokio::test(start_paused = true)]
    async fn short_batches_from_every_fresh_slot_ask_the_older_slots_at_once() {
        // Each fresh slot holds 3 peers: its nodes answer with all 3.
        let fresh = vec![
            timed(vec![(60, peers(0..3))], None),
            timed(vec![(70, peers(3..6))], None),
        ];
        let (called, older) = older(vec![
            timed(vec![(60, peers(6..9))], Some(10)),
            timed(vec![(65, peers(9..10))], Some(10)),
        ]);
        let (n, asked, end, ms) = run(fresh, older, params(32)).await;
        assert!(called.load(Ordering::SeqCst));
        // Older slots asked at 70 ms, their batches at 130 and 135 ms, then settle.
        assert_eq!((n, asked, end, ms), (10, 4, LookupEnd::Settled, 135 + 150));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fresh_slot_still_open_makes_it_wait_for_the_settle_period() {
        // The current slot's query hangs (a dead node) and has no peers; the previous
        // slot gives full batches but not enough.
        let fresh = vec![
            timed(vec![], None),
            timed(vec![(60, peers(0..10)), (20, peers(10..20))], None),
        ];
        let (called, older) = older(vec![timed(vec![(60, peers(20..40))], None)]);
        let (n, asked, end, ms) = run(fresh, older, params(32)).await;
        assert!(called.load(Ordering::SeqCst));
        // Last new peer at 80 ms, older slots asked at 230 ms, their batch at 290 ms
        // makes 40 peers: enough.
        assert_eq!((n, asked, end, ms), (40, 3, LookupEnd::Enough, 290));
    }

    #[tokio::test(start_paused = true)]
    async fn fresh_queries_that_end_short_ask_the_older_slots() {
        let fresh = vec![timed(vec![], Some(100)), timed(vec![], Some(120))];
        let (called, older) = older(vec![timed(vec![(50, peers(0..4))], Some(5))]);
        let (n, asked, end, ms) = run(fresh, older, params(32)).await;
        assert!(called.load(Ordering::SeqCst));
        assert_eq!((n, asked, end, ms), (4, 3, LookupEnd::Exhausted, 175));
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_caps_both_rounds() {
        let fresh = vec![timed(vec![(1900, peers(0..10))], None)];
        let (_, older) = older(vec![timed(vec![], None)]);
        let (n, asked, end, ms) = run(fresh, older, params(32)).await;
        // Settled at 2050 would be after the deadline.
        assert_eq!((n, asked, end, ms), (10, 1, LookupEnd::Deadline, 2000));
        let (n, _, end, ms) = run(vec![timed(vec![], None)], None::<Older>, params(1)).await;
        assert_eq!((n, end, ms), (0, LookupEnd::Deadline, 2000));
    }

    #[tokio::test(start_paused = true)]
    async fn no_queries_end_at_once() {
        let (n, asked, end, ms) = run(Vec::<Batches>::new(), None::<Older>, params(32)).await;
        assert_eq!((n, asked, end, ms), (0, 0, LookupEnd::Exhausted, 0));
    }

    #[test]
    fn memory_is_bounded_and_remembers_the_last_outcome() {
        let mut m = LookupMemory::default();
        assert!(!m.abundant("k"));
        m.record("k", true);
        assert!(m.abundant("k"));
        m.record("k", false);
        assert!(!m.abundant("k"));
        for i in 0..(REMEMBERED_KEYS + 5) {
            m.record(&format!("key{i}"), true);
        }
        assert_eq!(m.order.len(), REMEMBERED_KEYS);
        assert_eq!(m.abundant.len(), REMEMBERED_KEYS);
        assert!(!m.abundant("key0"), "the oldest key went first");
        assert!(m.abundant(&format!("key{}", REMEMBERED_KEYS + 4)));
    }
}
