//! Fair shares: no local user can take what the agent has for everyone.
//!
//! Counted per uid (the `SO_PEERCRED` uid of the connection, which a caller cannot change): open
//! connections, open streams, and new credentials (a token bucket on first X.509 mints and JWT cache
//! misses), and new connections (a token bucket too, checked right after `accept` from `SO_PEERCRED`
//! alone, so a uid connecting and closing in a loop is turned away for a few system calls each and
//! cannot keep the socket's listen queue, which every user shares, full). A caller in a user namespace that a user other than root made counts against that
//! user's share (`Ceiling::share_uid`): the subordinate uids a user maps there are still that user, and once known
//! (`Ceiling::share_uids`) a connection from one of them is charged to that user's rate right after `accept`. Agent-wide caps sit above the shares. A caller over *its share* is refused with
//! `ResourceExhausted` naming the limit; an agent over an agent-wide cap sheds load with
//! `Unavailable` (EP-5). Connections that open no stream within `connection_idle` are closed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// The most audiences one JWT-SVID request may name.
pub const MAX_AUDIENCES: usize = 16;
/// The longest audience accepted, in bytes.
pub const MAX_AUDIENCE_BYTES: usize = 256;
/// The longest JWT accepted for validation, in bytes.
pub const MAX_JWT_BYTES: usize = 16 * 1024;

/// `[limits]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// Open connections, all uids together.
    pub max_connections: usize,
    /// Open connections of one uid.
    pub max_connections_per_uid: usize,
    /// A connection that has opened no stream by then is closed.
    pub connection_idle: Duration,
    /// HTTP/2 `MAX_CONCURRENT_STREAMS` of each connection.
    pub max_concurrent_streams: u32,
    /// Open Workload API streams, all uids together (EP-5).
    pub max_streams: usize,
    /// Open streams of one uid.
    pub max_streams_per_uid: usize,
    /// New credentials (first mints, JWT cache misses) per second and uid, refilled continuously.
    pub new_credentials_per_second: f64,
    /// How many new credentials one uid may get at once before the rate applies.
    pub new_credentials_burst: u32,
    /// New connections per second and uid, refilled continuously.
    pub new_connections_per_second: f64,
    /// How many connections one uid may open at once before the rate applies.
    pub new_connections_burst: u32,
}

/// Which share a caller is over.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "uid {uid} has {limit} open connections, its share (limits.max_connections_per_uid); close idle connections"
    )]
    ConnectionsPerUid { uid: u32, limit: usize },
    #[error("the agent has {limit} open connections (limits.max_connections); retry later")]
    Connections { limit: usize },
    #[error(
        "uid {uid} has {limit} open streams, its share (limits.max_streams_per_uid); close streams it does not read"
    )]
    StreamsPerUid { uid: u32, limit: usize },
    #[error(
        "uid {uid} asks for new credentials faster than its share ({rate}/s, burst {burst}: limits.new_credentials_per_second); retry later"
    )]
    NewCredentials { uid: u32, rate: f64, burst: u32 },
    #[error(
        "uid {uid} opens connections faster than its share ({rate}/s, burst {burst}: limits.new_connections_per_second); keep a connection open and reuse it"
    )]
    NewConnections { uid: u32, rate: f64, burst: u32 },
}

impl Refusal {
    /// The setting that refused (a metric label).
    pub fn limit(&self) -> &'static str {
        match self {
            Refusal::ConnectionsPerUid { .. } => "max_connections_per_uid",
            Refusal::Connections { .. } => "max_connections",
            Refusal::StreamsPerUid { .. } => "max_streams_per_uid",
            Refusal::NewCredentials { .. } => "new_credentials_per_second",
            Refusal::NewConnections { .. } => "new_connections_per_second",
        }
    }

    /// Whether the caller is over its own share (`ResourceExhausted`) rather than the agent over a
    /// cap for everyone (`Unavailable`).
    pub fn is_share(&self) -> bool {
        !matches!(self, Refusal::Connections { .. })
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_uid: HashMap<u32, usize>,
}

impl Counts {
    fn take(&mut self, uid: u32) {
        self.total += 1;
        *self.per_uid.entry(uid).or_default() += 1;
    }

    fn give_back(&mut self, uid: u32) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.per_uid.get_mut(&uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_uid.remove(&uid);
            }
        }
    }

    fn of(&self, uid: u32) -> usize {
        self.per_uid.get(&uid).copied().unwrap_or(0)
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets per uid, refilled at `rate` a second up to `burst`.
#[derive(Default)]
struct Buckets(Mutex<HashMap<u32, Bucket>>);

impl Buckets {
    /// Takes one token of `uid`'s bucket; false when it has none.
    fn take(&self, uid: u32, rate: f64, burst: u32) -> bool {
        let now = Instant::now();
        let mut buckets = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let burst = f64::from(burst);
        let refill =
            |b: &Bucket| (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        // Full buckets carry no information: forget them so the map stays small.
        if buckets.len() > 4096 {
            buckets.retain(|_, b| refill(b) < burst);
        }
        let bucket = buckets.entry(uid).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.tokens = refill(bucket);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return false;
        }
        bucket.tokens -= 1.0;
        true
    }
}

/// Host uids learned to be a user's subordinate uids (from the `uid_map` of a user namespace that
/// user made, read when a connection from it was identified): first uid → [`Learned`]. Ranges do
/// not overlap; a new one replaces those it meets.
#[derive(Default)]
struct Subordinates(Mutex<std::collections::BTreeMap<u32, Learned>>);

/// One range of a namespace's map.
#[derive(Clone, Copy)]
struct Learned {
    /// One past the last uid.
    end: u32,
    /// The user who made the namespace.
    owner: u32,
    /// When a connection from a namespace with this map was last identified.
    at: Instant,
}

/// Ranges kept at most (a namespace's map has at most 340 lines; a user's usual 65,536 subordinate
/// uids make at most 65,536 ranges however they are split among namespaces). A full list forgets
/// the ranges past their TTL and, if that is not enough, the half seen least recently
/// ([`forget_older_half`]); a connection from a uid no longer in it is identified before it is charged, as
/// before anything was learned. About 2 MB at most.
const MAX_SUBORDINATE_RANGES: usize = 65_536;

/// A range not seen again in a namespace's map for this long is not used: a map that no longer
/// exists (its namespace is gone, its uids given to someone else) stops counting soon.
const SUBORDINATE_TTL: Duration = Duration::from_secs(60);

/// Makes room in a full list of ranges: forgets those past [`SUBORDINATE_TTL`] and, when that
/// leaves it more than half full, those seen before the median (the older half; ties kept). Half at
/// a time, so the scan is paid once per many new ranges, and a user whose namespace was identified
/// lately keeps its ranges where emptying the list lost everyone's at once.
fn forget_older_half(ranges: &mut std::collections::BTreeMap<u32, Learned>, now: Instant) {
    ranges.retain(|_, l| now.saturating_duration_since(l.at) < SUBORDINATE_TTL);
    if ranges.len() <= MAX_SUBORDINATE_RANGES / 2 {
        return;
    }
    let mut seen: Vec<Instant> = ranges.values().map(|l| l.at).collect();
    let middle = seen.len() / 2;
    let (_, median, _) = seen.select_nth_unstable(middle);
    let median = *median;
    ranges.retain(|_, l| l.at >= median);
    if ranges.len() >= MAX_SUBORDINATE_RANGES {
        // Every range was seen at the same instant: nothing orders them, so start again.
        ranges.clear();
    }
}

impl Subordinates {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<u32, Learned>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn owner_of(&self, uid: u32) -> Option<u32> {
        let ranges = self.lock();
        let (_, learned) = ranges.range(..=uid).next_back()?;
        (uid < learned.end && learned.at.elapsed() < SUBORDINATE_TTL).then_some(learned.owner)
    }

    fn learn(&self, owner: u32, mapped: &[(u32, u32)]) {
        let now = Instant::now();
        let mut ranges = self.lock();
        for &(first, count) in mapped {
            let end = first.saturating_add(count);
            if let Some(same) = ranges.get_mut(&first)
                && same.end == end
                && same.owner == owner
            {
                same.at = now;
                continue;
            }
            // Whatever this range meets was learned from a map that no longer holds.
            let met: Vec<u32> = ranges
                .range(..end)
                .rev()
                .take_while(|(_, l)| l.end > first)
                .map(|(start, _)| *start)
                .collect();
            for start in met {
                ranges.remove(&start);
            }
            if ranges.len() >= MAX_SUBORDINATE_RANGES {
                forget_older_half(&mut ranges, now);
            }
            ranges.insert(
                first,
                Learned {
                    end,
                    owner,
                    at: now,
                },
            );
        }
    }

    fn forget(&self, uid: u32) {
        let mut ranges = self.lock();
        if let Some((&start, l)) = ranges.range(..=uid).next_back()
            && uid < l.end
        {
            ranges.remove(&start);
        }
    }
}

/// The shares of the running agent. Cloning shares them.
#[derive(Clone)]
pub struct Shares {
    inner: Arc<Inner>,
}

struct Inner {
    config: LimitsConfig,
    connections: Mutex<Counts>,
    streams: Mutex<Counts>,
    credentials: Buckets,
    arrivals: Buckets,
    subordinates: Subordinates,
    /// Refused connections kept open for a moment to answer with the refusal.
    answering: std::sync::atomic::AtomicUsize,
}

/// Refused connections answered at once, at most; beyond, a refused connection is closed unanswered
/// (its file descriptor must not outlive the accept by more than a moment).
const MAX_ANSWERING: usize = 64;

/// Held while a refused connection is kept to answer with its refusal.
pub struct AnswerSlot {
    inner: Arc<Inner>,
}

impl Drop for AnswerSlot {
    fn drop(&mut self) {
        self.inner
            .answering
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Takes a token of `uid`'s bucket in `buckets`, or refuses with `refusal` (counted).
fn spend(
    buckets: &Buckets,
    uid: u32,
    rate: f64,
    burst: u32,
    refusal: impl FnOnce() -> Refusal,
) -> Result<(), Refusal> {
    match buckets.take(uid, rate, burst) {
        true => Ok(()),
        false => Err(refuse(refusal())),
    }
}

/// Counts a refusal (a metric by limit) and returns it.
fn refuse(r: Refusal) -> Refusal {
    crate::metrics::metrics().refused(r.limit());
    r
}

/// Held while a connection is open; gives its place back when dropped.
pub struct ConnectionSlot {
    inner: Arc<Inner>,
    uid: u32,
}

/// Held while a stream is open; gives its place back when dropped.
pub struct StreamSlot {
    inner: Arc<Inner>,
    uid: u32,
}

impl Shares {
    pub fn new(config: LimitsConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                connections: Mutex::default(),
                streams: Mutex::default(),
                credentials: Buckets::default(),
                arrivals: Buckets::default(),
                subordinates: Subordinates::default(),
                answering: std::sync::atomic::AtomicUsize::new(0),
            }),
        }
    }

    pub fn config(&self) -> &LimitsConfig {
        &self.inner.config
    }

    /// A place for a new connection of `uid`.
    pub fn connect(&self, uid: u32) -> Result<ConnectionSlot, Refusal> {
        let c = &self.inner.config;
        let mut counts = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if counts.of(uid) >= c.max_connections_per_uid {
            return Err(refuse(Refusal::ConnectionsPerUid {
                uid,
                limit: c.max_connections_per_uid,
            }));
        }
        if counts.total >= c.max_connections {
            return Err(refuse(Refusal::Connections {
                limit: c.max_connections,
            }));
        }
        counts.take(uid);
        Ok(ConnectionSlot {
            inner: self.inner.clone(),
            uid,
        })
    }

    /// A place for a new stream of `uid` (the agent-wide stream cap is a semaphore beside this).
    pub fn stream(&self, uid: u32) -> Result<StreamSlot, Refusal> {
        let limit = self.inner.config.max_streams_per_uid;
        let mut counts = self
            .inner
            .streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if counts.of(uid) >= limit {
            return Err(refuse(Refusal::StreamsPerUid { uid, limit }));
        }
        counts.take(uid);
        Ok(StreamSlot {
            inner: self.inner.clone(),
            uid,
        })
    }

    /// A place to keep a refused connection open long enough to answer it, if one is free.
    pub fn answer_refusal(&self) -> Option<AnswerSlot> {
        use std::sync::atomic::Ordering;
        let taken = self.inner.answering.fetch_add(1, Ordering::Relaxed);
        let slot = AnswerSlot {
            inner: self.inner.clone(),
        };
        (taken < MAX_ANSWERING).then_some(slot)
    }

    /// One new credential for `uid`, if its bucket has a token.
    pub fn new_credential(&self, uid: u32) -> Result<(), Refusal> {
        let c = &self.inner.config;
        let (rate, burst) = (c.new_credentials_per_second, c.new_credentials_burst);
        spend(&self.inner.credentials, uid, rate, burst, || {
            Refusal::NewCredentials { uid, rate, burst }
        })
    }

    /// One new connection of `uid`, if its bucket has a token (asked before [`Self::connect`]).
    pub fn arrive(&self, uid: u32) -> Result<(), Refusal> {
        let c = &self.inner.config;
        let (rate, burst) = (c.new_connections_per_second, c.new_connections_burst);
        spend(&self.inner.arrivals, uid, rate, burst, || {
            Refusal::NewConnections { uid, rate, burst }
        })
    }

    /// The user whose subordinate uid `uid` was learned to be ([`Self::learn_subordinates`]): a
    /// connection from it counts against that user's rate of new connections right after
    /// `accept`, before the caller is identified.
    pub fn owner_of(&self, uid: u32) -> Option<u32> {
        self.inner.subordinates.owner_of(uid)
    }

    /// Learns that the host uids in `mapped` (`(first, count)`) are `owner`'s, from the map of a
    /// user namespace `owner` made (`Ceiling::share_uids`).
    pub fn learn_subordinates(&self, owner: u32, mapped: &[(u32, u32)]) {
        self.inner.subordinates.learn(owner, mapped);
    }

    /// Forgets what was learned about `uid` (a connection from it was found to be no one else's).
    pub fn forget_subordinate(&self, uid: u32) {
        self.inner.subordinates.forget(uid);
    }

    /// (open connections, open streams), for `/ready` and the admin API.
    pub fn open(&self) -> (usize, usize) {
        let n = |m: &Mutex<Counts>| {
            m.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .total
        };
        (n(&self.inner.connections), n(&self.inner.streams))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.inner
            .connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .give_back(self.uid);
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.inner
            .streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .give_back(self.uid);
    }
}

impl std::fmt::Debug for StreamSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StreamSlot(uid {})", self.uid)
    }
}

impl std::fmt::Debug for ConnectionSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConnectionSlot(uid {})", self.uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ranges_name_their_owner_and_a_new_map_replaces_what_it_meets() {
        let s = Shares::new(config());
        assert_eq!(s.owner_of(300_000), None);
        s.learn_subordinates(1000, &[(300_000, 65_536), (1000, 1)]);
        assert_eq!(s.owner_of(300_000), Some(1000));
        assert_eq!(s.owner_of(365_535), Some(1000));
        assert_eq!(s.owner_of(365_536), None);
        assert_eq!(s.owner_of(299_999), None);
        assert_eq!(s.owner_of(1000), Some(1000));
        // Another user's map now holds part of the range: that part and the rest of the old
        // range are forgotten (the old map no longer holds as learned).
        s.learn_subordinates(2000, &[(310_000, 10)]);
        assert_eq!(s.owner_of(310_005), Some(2000));
        assert_eq!(s.owner_of(300_000), None);
        assert_eq!(s.owner_of(320_000), None);
        s.forget_subordinate(310_009);
        assert_eq!(s.owner_of(310_000), None);
        // A range not seen again within the TTL is not used; seeing it again renews it.
        s.learn_subordinates(5, &[(500_000, 10)]);
        s.inner.subordinates.lock().get_mut(&500_000).unwrap().at =
            Instant::now() - SUBORDINATE_TTL;
        assert_eq!(s.owner_of(500_001), None);
        s.learn_subordinates(5, &[(500_000, 10)]);
        assert_eq!(s.owner_of(500_001), Some(5));
        // Bounded: a full list forgets the ranges seen least recently, not all of them. User 9's
        // range, seen again late, survives one user's flood of new ranges.
        s.learn_subordinates(9, &[(900_000, 10)]);
        let flood = MAX_SUBORDINATE_RANGES as u32 + 10;
        for i in 0..flood {
            if i == flood * 3 / 4 {
                s.learn_subordinates(9, &[(900_000, 10)]);
            }
            s.learn_subordinates(7, &[(1_000_000 + 2 * i, 1)]);
        }
        assert!(s.inner.subordinates.lock().len() <= MAX_SUBORDINATE_RANGES);
        assert_eq!(s.owner_of(1_000_000 + 2 * (flood - 1)), Some(7));
        assert_eq!(s.owner_of(900_005), Some(9));
        assert_eq!(s.owner_of(1_000_000), None, "the oldest range is forgotten");
    }

    fn config() -> LimitsConfig {
        LimitsConfig {
            max_connections: 5,
            max_connections_per_uid: 3,
            connection_idle: Duration::from_secs(10),
            max_concurrent_streams: 100,
            max_streams: 100,
            max_streams_per_uid: 2,
            new_credentials_per_second: 10.0,
            new_credentials_burst: 3,
            new_connections_per_second: 100.0,
            new_connections_burst: 4,
        }
    }

    #[test]
    fn one_uid_cannot_take_another_uids_share() {
        let shares = Shares::new(config());
        let mine: Vec<_> = (0..3).map(|_| shares.connect(65534).unwrap()).collect();
        assert_eq!(
            shares.connect(65534).unwrap_err(),
            Refusal::ConnectionsPerUid {
                uid: 65534,
                limit: 3
            }
        );
        let root: Vec<_> = (0..2).map(|_| shares.connect(0).unwrap()).collect();
        let err = shares.connect(1000).unwrap_err();
        assert_eq!(err, Refusal::Connections { limit: 5 });
        assert!(!err.is_share());
        drop(mine);
        assert_eq!(shares.open().0, 2);
        shares.connect(1000).unwrap();
        drop(root);

        let s: Vec<_> = (0..2).map(|_| shares.stream(7).unwrap()).collect();
        assert!(shares.stream(7).unwrap_err().is_share());
        shares.stream(8).unwrap();
        drop(s);
        shares.stream(7).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn new_credentials_are_rate_limited_per_uid() {
        let shares = Shares::new(config());
        for _ in 0..3 {
            shares.new_credential(1).unwrap();
        }
        let err = shares.new_credential(1).unwrap_err();
        assert!(err.to_string().contains("10/s"), "{err}");
        shares.new_credential(2).unwrap();
        tokio::time::advance(Duration::from_millis(110)).await;
        shares.new_credential(1).unwrap();
        assert!(shares.new_credential(1).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn new_connections_are_rate_limited_per_uid() {
        let shares = Shares::new(config());
        for _ in 0..4 {
            shares.arrive(65534).unwrap();
        }
        let err = shares.arrive(65534).unwrap_err();
        assert_eq!(err.limit(), "new_connections_per_second");
        assert!(err.is_share());
        assert!(err.to_string().contains("uid 65534"), "{err}");
        assert!(err.to_string().contains("100/s, burst 4"), "{err}");
        // Another uid's bucket is its own.
        shares.arrive(0).unwrap();
        tokio::time::advance(Duration::from_millis(11)).await;
        shares.arrive(65534).unwrap();
        assert!(shares.arrive(65534).is_err());
    }
}
