//! The SVID cache and rotation scheduler: one task owns every cached SVID and publishes each through
//! a `watch` channel that streams subscribe to.
//!
//! - One SVID per [`SvidRequest`] (ID, lifetime, DNS names), minted on first demand; concurrent first
//!   requests share one mint.
//! - Re-minted at a jittered 45–55 % of its lifetime and pushed to every subscriber.
//! - Dropped at its rotation time when nobody holds it any more.
//! - Minting runs on the blocking pool, never on the async workers.
//! - A failed rotation keeps the current SVID while it is valid and retries with jittered
//!   exponential backoff ([`RETRY`]), never later than its expiry; once it has expired it is never
//!   published again: subscribers see `Failed` (streams end with `Unavailable`) and the retries go
//!   on while anyone holds it. A success resets the backoff. The first failure of a kind is logged at
//!   WARN, repeats at DEBUG until the error changes or a mint succeeds.

pub(crate) mod jwt;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::ca::{CaSnapshot, SvidRequest, X509Svid, mint};
use crate::wake::Waiters;

/// A stream's view of one SVID (see [`crate::wake`]).
pub(crate) type Subscription = crate::wake::Subscription<SvidState>;
/// A stream's wait for one SVID's next publication.
pub(crate) type Updates = crate::wake::Updates<SvidState>;
use crate::clock::{Backoff, SharedClock};

/// The issuer's publications so far (every change of an SVID's state that wakes its streams), in
/// this process. Counted before each is sent: a stream reads it once woken, and an attestation that
/// began when the count had reached that value began after the publication that woke the stream.
static PUBLICATIONS: AtomicU64 = AtomicU64::new(0);

/// The number of publications so far ([`PUBLICATIONS`]).
pub(crate) fn publications() -> u64 {
    PUBLICATIONS.load(Ordering::SeqCst)
}

/// Publishes `state` to the streams of one SVID, counted first, and wakes the streams that follow it.
fn publish(tx: &watch::Sender<SvidState>, waiters: &Waiters, state: SvidState) {
    PUBLICATIONS.fetch_add(1, Ordering::SeqCst);
    crate::wake::publish(tx, waiters, state);
}

/// Retry delays of a failed rotation (capped further by the SVID's expiry).
const RETRY: Backoff = Backoff {
    first: Duration::from_secs(1),
    cap: Duration::from_secs(30),
};

/// The state of one cached SVID, as subscribers see it.
#[derive(Clone, Debug)]
pub enum SvidState {
    /// The first mint is under way.
    Pending,
    /// The current SVID.
    Ready(Arc<X509Svid>),
    /// The first mint failed (the message is for logs, not callers).
    Failed(Arc<str>),
}

/// Errors seen by users of the issuer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("the issuer has stopped")]
    Stopped,
    #[error("minting failed: {0}")]
    MintFailed(Arc<str>),
}

/// A cloneable handle for subscribing to SVIDs.
#[derive(Clone)]
pub struct IssuerHandle {
    tx: mpsc::Sender<Command>,
    stats: Arc<Stats>,
    published: Published,
    claimed: Claimed,
    clock: SharedClock,
}

impl std::fmt::Debug for IssuerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerHandle")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The issuer's read-only index of ready SVIDs: written only by the issuer task, read by streams so a
/// cached SVID costs no round trip to the task. The lock is never held across an `.await`.
type Published = Arc<RwLock<HashMap<SvidRequest, (watch::Sender<SvidState>, Arc<Waiters>)>>>;

/// Requests a subscriber has claimed as new credentials (see [`IssuerHandle::claim`]) whose mint
/// has not finished: concurrent subscribers to one new request count it once.
type Claimed = Arc<Mutex<HashSet<SvidRequest>>>;

/// One caller's claim on a new request (see [`IssuerHandle::claim`]).
#[must_use]
pub struct Claim {
    claimed: Claimed,
    req: Option<SvidRequest>,
}

impl Claim {
    /// The caller subscribed: the issuer ends the claim when the mint is done.
    pub fn subscribed(mut self) {
        self.req = None;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(req) = self.req.take()
            && let Ok(mut claimed) = self.claimed.lock()
        {
            claimed.remove(&req);
        }
    }
}

/// Counters, for tests, benchmarks and the admin API.
#[derive(Debug, Default)]
pub struct Stats {
    /// SVIDs minted since start (first mints and rotations).
    pub minted: AtomicU64,
    /// SVIDs currently cached.
    pub cached: AtomicU64,
}

/// The issuer task.
pub(crate) struct Issuer {
    rx: mpsc::Receiver<Command>,
    published: Published,
    claimed: Claimed,
    ca: watch::Receiver<Arc<CaSnapshot>>,
    clock: SharedClock,
    stats: Arc<Stats>,
    slots: HashMap<SvidRequest, Slot>,
    timers: BTreeMap<(Instant, u64), SvidRequest>,
    timer_seq: u64,
    mints: JoinSet<(SvidRequest, Result<X509Svid, crate::ca::Error>)>,
}

enum Command {
    Subscribe {
        req: SvidRequest,
        reply: oneshot::Sender<Subscription>,
    },
    /// A subscriber let go: drop the SVID now if nobody else holds it.
    Release { req: SvidRequest },
    /// A process holding SVIDs for this ID exited: drop the ones no stream holds.
    ReleaseId { spiffe_id: String },
}

struct Slot {
    tx: watch::Sender<SvidState>,
    waiters: Arc<Waiters>,
    minting: bool,
    timer: Option<(Instant, u64)>,
    /// Consecutive failed mints (0 after a success).
    failures: u32,
    /// The last failure's message, to log a repeat quietly.
    last_error: Option<Arc<str>>,
}

impl Issuer {
    /// A new issuer signing with whatever `ca` publishes.
    pub(crate) fn new(
        ca: watch::Receiver<Arc<CaSnapshot>>,
        clock: SharedClock,
    ) -> (Self, IssuerHandle) {
        let (tx, rx) = mpsc::channel(1024);
        let issuer_clock = clock.clone();
        let stats = Arc::new(Stats::default());
        let published = Published::default();
        let claimed = Claimed::default();
        let issuer = Self {
            rx,
            published: published.clone(),
            claimed: claimed.clone(),
            ca,
            clock,
            stats: stats.clone(),
            slots: HashMap::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            mints: JoinSet::new(),
        };
        (
            issuer,
            IssuerHandle {
                tx,
                stats,
                published,
                claimed,
                clock: issuer_clock,
            },
        )
    }

    /// Runs until `shutdown` fires or every handle is gone.
    pub(crate) async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let next_timer = self.timers.keys().next().map(|(at, _)| *at);
            tokio::select! {
                _ = crate::shutdown::signalled(&mut shutdown) => return,
                cmd = self.rx.recv() => match cmd {
                    Some(Command::Subscribe { req, reply }) => self.subscribe(req, reply),
                    Some(Command::Release { req }) => self.release(&req),
                    Some(Command::ReleaseId { spiffe_id }) => {
                        let reqs: Vec<SvidRequest> = self
                            .slots
                            .keys()
                            .filter(|r| r.spiffe_id.as_str() == spiffe_id)
                            .cloned()
                            .collect();
                        for req in reqs {
                            self.release(&req);
                        }
                    }
                    None => return,
                },
                Some(done) = self.mints.join_next(), if !self.mints.is_empty() => match done {
                    Ok((req, result)) => self.minted(req, result),
                    Err(e) => tracing::error!(error = %e, "mint task failed"),
                },
                _ = crate::clock::sleep_until(next_timer), if next_timer.is_some() => self.rotate_due(),
            }
        }
    }

    fn subscribe(&mut self, req: SvidRequest, reply: oneshot::Sender<Subscription>) {
        let slot = self.slots.entry(req.clone()).or_insert_with(|| Slot {
            tx: watch::Sender::new(SvidState::Pending),
            waiters: Arc::default(),
            minting: false,
            timer: None,
            failures: 0,
            last_error: None,
        });
        let retry = matches!(*slot.tx.borrow(), SvidState::Failed(_));
        if retry {
            publish(&slot.tx, &slot.waiters, SvidState::Pending);
        }
        // The wall clock jumped past the SVID (a suspended machine, a clock step) before its
        // rotation timer, which follows the monotonic clock, fired: mint now.
        let now = self.clock.now();
        let expired = matches!(&*slot.tx.borrow(), SvidState::Ready(svid) if svid.not_after <= now);
        let needs_mint =
            !slot.minting && (expired || matches!(*slot.tx.borrow(), SvidState::Pending));
        let _ = reply.send(Subscription::new(slot.tx.subscribe(), slot.waiters.clone()));
        let minting = slot.minting;
        if needs_mint {
            self.start_mint(req);
        } else if !minting && let Ok(mut claimed) = self.claimed.lock() {
            // Nothing to mint (already there): the claim ends here, not at a mint.
            claimed.remove(&req);
        }
    }

    /// Drops the SVID for `req` if nobody holds it (and it is not being minted).
    fn release(&mut self, req: &SvidRequest) {
        let Some(slot) = self.slots.get(req) else {
            return;
        };
        if slot.minting {
            return;
        }
        // As in rotate_due: count under the index's write lock so a fast-path subscriber is not missed.
        let unheld = match self.published.write() {
            Ok(mut index) => {
                let unheld = slot.tx.receiver_count() == 0;
                if unheld {
                    index.remove(req);
                }
                unheld
            }
            Err(_) => false,
        };
        if unheld {
            if let Some(slot) = self.slots.remove(req)
                && let Some(key) = slot.timer
            {
                self.timers.remove(&key);
            }
            tracing::debug!(spiffe_id = %req.spiffe_id, "svid no longer held; dropped from the cache");
            self.stats
                .cached
                .store(self.slots.len() as u64, Ordering::Relaxed);
        }
    }

    fn start_mint(&mut self, req: SvidRequest) {
        let Some(slot) = self.slots.get_mut(&req) else {
            return;
        };
        slot.minting = true;
        let (signer, remote) = {
            let ca = self.ca.borrow();
            (ca.signer.clone(), ca.remote.clone())
        };
        match (remote, signer) {
            // A SPIRE server signs: the request is an RPC, awaited on this task's set.
            (Some(remote), _) => {
                self.mints.spawn(async move {
                    let result = remote.x509(req.clone()).await;
                    (req, result)
                });
            }
            (None, Some(signer)) => {
                let clock = self.clock.clone();
                self.mints.spawn_blocking(move || {
                    let result = mint::mint_svid(&signer, &req, clock.now());
                    (req, result)
                });
            }
            (None, None) => {
                self.mints.spawn(async move {
                    let why = crate::ca::Error::Server("nothing can sign SVIDs".into());
                    (req, Err(why))
                });
            }
        }
    }

    fn minted(&mut self, req: SvidRequest, result: Result<X509Svid, crate::ca::Error>) {
        self.publish_minted(&req, result);
        // Only once the outcome is published does the claim end: a caller never finds the request
        // neither claimed nor published while its mint completes (it would be charged again).
        if let Ok(mut claimed) = self.claimed.lock() {
            claimed.remove(&req);
        }
    }

    /// Publishes the outcome of a mint for `req` (and schedules what follows).
    fn publish_minted(&mut self, req: &SvidRequest, result: Result<X509Svid, crate::ca::Error>) {
        let Some(slot) = self.slots.get_mut(req) else {
            return;
        };
        slot.minting = false;
        match result {
            Ok(svid) => {
                self.stats.minted.fetch_add(1, Ordering::Relaxed);
                let rotation = matches!(*slot.tx.borrow(), SvidState::Ready(_));
                crate::metrics::metrics().mint("x509", if rotation { "rotation" } else { "first" });
                let rotate_in = rotation_delay(&svid, self.clock.now());
                if slot.failures > 0 {
                    tracing::info!(
                        spiffe_id = %svid.spiffe_id,
                        failures = slot.failures,
                        "svid minted again after failures"
                    );
                }
                slot.failures = 0;
                slot.last_error = None;
                tracing::debug!(
                    spiffe_id = %svid.spiffe_id,
                    serial = %svid.serial,
                    rotate_in = ?rotate_in,
                    "svid minted"
                );
                publish(&slot.tx, &slot.waiters, SvidState::Ready(Arc::new(svid)));
                if let Ok(mut index) = self.published.write() {
                    index.insert(req.clone(), (slot.tx.clone(), slot.waiters.clone()));
                }
                self.schedule(req, rotate_in);
            }
            Err(e) => {
                crate::metrics::metrics().mint("x509", "failed");
                let message: Arc<str> = e.to_string().into();
                let repeat = slot.last_error.as_deref() == Some(&*message);
                slot.failures = slot.failures.saturating_add(1);
                slot.last_error = Some(message.clone());
                let failures = slot.failures;
                let current = match &*slot.tx.borrow() {
                    SvidState::Ready(svid) => Some(svid.clone()),
                    _ => None,
                };
                let left = current.as_ref().map(|svid| {
                    svid.not_after
                        .duration_since(self.clock.now())
                        .unwrap_or_default()
                });
                let what = match left {
                    // Subscribers keep the current SVID while it is valid; retry before it expires.
                    Some(left) if !left.is_zero() => {
                        let retry_in = RETRY.delay(failures).min(left);
                        self.schedule(req, retry_in);
                        "svid rotation failed; keeping the current one while it is valid and retrying"
                    }
                    // Expired (or never minted): nothing valid to publish. Retry while held.
                    Some(_) => {
                        publish(
                            &slot.tx,
                            &slot.waiters,
                            SvidState::Failed(
                                format!("the SVID expired and minting a new one fails: {message}")
                                    .into(),
                            ),
                        );
                        if let Ok(mut index) = self.published.write() {
                            index.remove(req);
                        }
                        self.schedule(req, RETRY.delay(failures));
                        "svid expired and re-minting fails; callers get Unavailable, retrying"
                    }
                    // Never minted, or failing since it expired: retried while anyone holds it
                    // (an unheld slot is dropped when the timer fires).
                    None => {
                        publish(&slot.tx, &slot.waiters, SvidState::Failed(message.clone()));
                        self.schedule(req, RETRY.delay(failures));
                        "svid mint failed; retrying while it is wanted"
                    }
                };
                if repeat {
                    tracing::debug!(spiffe_id = %req.spiffe_id, error = %message, failures, "{what}");
                } else {
                    tracing::warn!(spiffe_id = %req.spiffe_id, error = %message, failures, "{what}");
                }
            }
        }
        self.stats
            .cached
            .store(self.slots.len() as u64, Ordering::Relaxed);
    }

    fn schedule(&mut self, req: &SvidRequest, delay: Duration) {
        let Some(slot) = self.slots.get_mut(req) else {
            return;
        };
        if let Some(old) = slot.timer.take() {
            self.timers.remove(&old);
        }
        self.timer_seq += 1;
        let key = (Instant::now() + delay, self.timer_seq);
        slot.timer = Some(key);
        self.timers.insert(key, req.clone());
    }

    fn rotate_due(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let req = entry.remove();
            let Some(slot) = self.slots.get_mut(&req) else {
                continue;
            };
            slot.timer = None;
            // Readers subscribe under the index's read lock, so counting under its write lock cannot
            // miss a subscriber that arrives through the fast path.
            let unheld = match self.published.write() {
                Ok(mut index) => {
                    let unheld = slot.tx.receiver_count() == 0;
                    if unheld {
                        index.remove(&req);
                    }
                    unheld
                }
                Err(_) => false,
            };
            if unheld {
                tracing::debug!(spiffe_id = %req.spiffe_id, "svid no longer held; dropped from the cache");
                self.slots.remove(&req);
                continue;
            }
            if !slot.minting {
                self.start_mint(req);
            }
        }
        self.stats
            .cached
            .store(self.slots.len() as u64, Ordering::Relaxed);
    }
}

impl IssuerHandle {
    /// Subscribes to the SVID for `req`, minting it if it is not cached.
    pub async fn subscribe(&self, req: SvidRequest) -> Result<Subscription, Error> {
        // Fast path: a ready SVID is subscribed to directly from the published index.
        // (Not one the wall clock has passed: that one goes to the task, which mints anew.)
        let now = self.clock.now();
        if let Ok(index) = self.published.read()
            && let Some((tx, waiters)) = index.get(&req)
            && matches!(&*tx.borrow(), SvidState::Ready(svid) if svid.not_after > now)
        {
            return Ok(Subscription::new(tx.subscribe(), waiters.clone()));
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Subscribe { req, reply })
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Whether a ready SVID for `req` is cached (subscribing to it mints nothing).
    pub fn is_published(&self, req: &SvidRequest) -> bool {
        self.published
            .read()
            .is_ok_and(|index| index.contains_key(req))
    }

    /// Whether subscribing to `req` is a new credential the caller must be charged for: a claim for
    /// exactly one of any number of concurrent callers while `req` is neither published nor being
    /// minted for an earlier claim. Dropping the claim gives it back (the charge was refused, or the
    /// caller went away before subscribing), so the next caller is charged instead; once the caller
    /// has subscribed ([`Claim::subscribed`]) the issuer ends it when the mint is done.
    pub fn claim(&self, req: &SvidRequest) -> Option<Claim> {
        if self.is_published(req) {
            return None;
        }
        let fresh = self
            .claimed
            .lock()
            .map_or(true, |mut claimed| claimed.insert(req.clone()));
        let claim = fresh.then(|| Claim {
            claimed: self.claimed.clone(),
            req: Some(req.clone()),
        })?;
        // The issuer publishes a mint before it ends that mint's claim: published now means a mint
        // finished between the check above and the insert, and nothing new is asked for (the
        // dropped claim is given back).
        if self.is_published(req) {
            return None;
        }
        Some(claim)
    }

    /// Tells the issuer a subscriber let go of `req` (after dropping its receiver), so an SVID nobody
    /// holds leaves the cache at once. Best effort: a full queue leaves it to the rotation timer.
    pub fn release(&self, req: SvidRequest) {
        let _ = self.tx.try_send(Command::Release { req });
    }

    /// Tells the issuer that a process holding SVIDs for `spiffe_id` exited: the ones no open stream
    /// holds leave the cache at once. Best effort.
    pub fn release_id(&self, spiffe_id: String) {
        let _ = self.tx.try_send(Command::ReleaseId { spiffe_id });
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// Waits until the subscribed SVID is minted (or failed).
pub(crate) async fn wait_ready(
    rx: &mut watch::Receiver<SvidState>,
    now: std::time::SystemTime,
) -> Result<Arc<X509Svid>, Error> {
    // An SVID already expired by the wall clock is waiting for its re-mint: not ready.
    let state = rx
        .wait_for(|s| match s {
            SvidState::Pending => false,
            SvidState::Ready(svid) => svid.not_after > now,
            SvidState::Failed(_) => true,
        })
        .await
        .map_err(|_| Error::Stopped)?;
    match &*state {
        SvidState::Ready(svid) => Ok(svid.clone()),
        SvidState::Failed(why) => Err(Error::MintFailed(why.clone())),
        SvidState::Pending => Err(Error::Stopped),
    }
}

/// Time from now to a jittered 45–55 % of the SVID's lifetime.
fn rotation_delay(svid: &X509Svid, now: std::time::SystemTime) -> Duration {
    let life = svid
        .not_after
        .duration_since(svid.not_before)
        .unwrap_or_default();
    let at = svid.not_before + life.mul_f64(0.45 + 0.10 * fastrand::f64());
    at.duration_since(now).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::ca::Authority;
    use crate::ca::AuthorityConfig;
    use crate::clock::TokioClock;
    use crate::spiffe_id::{SpiffeId, TrustDomain};
    use std::time::SystemTime;

    fn setup() -> (tempfile::TempDir, Authority, SharedClock) {
        let dir = tempfile::tempdir().unwrap();
        let clock: SharedClock = Arc::new(TokioClock::starting_at(SystemTime::now()));
        let td = TrustDomain::parse("example.org").unwrap();
        let cfg = AuthorityConfig::SelfSigned {
            ca_ttl: Duration::from_secs(30 * 86400),
        };
        let authority = Authority::load(
            &cfg,
            &td,
            dir.path(),
            Duration::from_secs(86400),
            Default::default(),
            clock.clone(),
        )
        .unwrap();
        (dir, authority, clock)
    }

    fn req(path: &str, ttl: u64) -> SvidRequest {
        SvidRequest {
            spiffe_id: SpiffeId::parse(&format!("spiffe://example.org{path}")).unwrap(),
            ttl: Duration::from_secs(ttl),
            dns_names: vec![],
        }
    }

    #[tokio::test]
    async fn concurrent_first_requests_mint_once() {
        let (_dir, authority, clock) = setup();
        let (issuer, handle) = Issuer::new(authority.subscribe(), clock);
        let (_stop, shutdown) = watch::channel(false);
        tokio::spawn(issuer.run(shutdown));
        let mut tasks = JoinSet::new();
        for _ in 0..32 {
            let h = handle.clone();
            tasks.spawn(async move {
                let mut rx = h.subscribe(req("/a", 600)).await.unwrap();
                wait_ready(&mut rx, std::time::SystemTime::UNIX_EPOCH)
                    .await
                    .unwrap()
                    .serial
                    .clone()
            });
        }
        let serials: Vec<String> = tasks.join_all().await;
        assert!(serials.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(handle.stats().minted.load(Ordering::Relaxed), 1);
    }

    /// Rotation at ~half-life, on paused time: a new serial for the same ID before the old expires.
    /// One claim per new request however many ask; a claim dropped before subscribing is given
    /// back; a subscribed one ends when the mint is done (then the SVID is published: no claim).
    #[tokio::test]
    async fn one_claim_per_new_request_until_its_mint_is_done() {
        let (_dir, authority, clock) = setup();
        let (issuer, handle) = Issuer::new(authority.subscribe(), clock);
        let (_stop, shutdown) = watch::channel(false);
        tokio::spawn(issuer.run(shutdown));
        let r = req("/claimed", 600);
        let first = handle.claim(&r).expect("the first caller claims");
        assert!(
            handle.claim(&r).is_none(),
            "a concurrent caller is not charged"
        );
        drop(first);
        let again = handle
            .claim(&r)
            .expect("given back when dropped unsubscribed");
        let mut rx = handle.subscribe(r.clone()).await.unwrap();
        again.subscribed();
        wait_ready(&mut rx, std::time::SystemTime::UNIX_EPOCH)
            .await
            .unwrap();
        assert!(handle.claim(&r).is_none(), "published: nothing to charge");
        assert!(
            handle.claimed.lock().unwrap().is_empty(),
            "the mint ended the claim"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rotates_at_half_life_before_expiry() {
        let (_dir, authority, clock) = setup();
        let (issuer, handle) = Issuer::new(authority.subscribe(), clock.clone());
        let (_stop, shutdown) = watch::channel(false);
        tokio::spawn(issuer.run(shutdown));
        let mut rx = handle.subscribe(req("/rot", 600)).await.unwrap();
        let first = wait_ready(&mut rx, std::time::SystemTime::UNIX_EPOCH)
            .await
            .unwrap();
        rx.mark_unchanged();
        rx.changed().await.unwrap();
        let SvidState::Ready(second) = rx.borrow().clone() else {
            panic!("expected a rotated SVID");
        };
        let now = clock.now();
        assert_eq!(second.spiffe_id, first.spiffe_id);
        assert_ne!(second.serial, first.serial);
        assert!(now < first.not_after, "rotated before expiry");
        let elapsed = now.duration_since(first.not_before).unwrap();
        let life = first.not_after.duration_since(first.not_before).unwrap();
        let frac = elapsed.as_secs_f64() / life.as_secs_f64();
        assert!(
            (0.44..=0.56).contains(&frac),
            "rotated at {frac:.3} of lifetime"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unheld_svids_are_dropped_at_rotation_time() {
        let (_dir, authority, clock) = setup();
        let (issuer, handle) = Issuer::new(authority.subscribe(), clock);
        let (_stop, shutdown) = watch::channel(false);
        tokio::spawn(issuer.run(shutdown));
        let mut rx = handle.subscribe(req("/gone", 600)).await.unwrap();
        wait_ready(&mut rx, std::time::SystemTime::UNIX_EPOCH)
            .await
            .unwrap();
        drop(rx);
        tokio::time::sleep(Duration::from_secs(400)).await;
        assert_eq!(handle.stats().cached.load(Ordering::Relaxed), 0);
        assert_eq!(
            handle.stats().minted.load(Ordering::Relaxed),
            1,
            "not re-minted for nobody"
        );
    }

    /// A rotation that keeps failing: the current SVID is kept while valid, retried with backoff
    /// never later than its expiry, never published once expired (subscribers see `Failed`), and a
    /// success afterwards publishes a fresh one and resets the backoff.
    #[tokio::test(start_paused = true)]
    async fn an_svid_is_never_published_past_its_expiry() {
        let (_dir, authority, clock) = setup();
        let good = authority.subscribe().borrow().clone();
        // A second authority whose CA expires in 100 s: it cannot sign for long.
        let dir = tempfile::tempdir().unwrap();
        let short = Authority::load(
            &AuthorityConfig::SelfSigned {
                ca_ttl: Duration::from_secs(100),
            },
            &TrustDomain::parse("example.org").unwrap(),
            dir.path(),
            Duration::from_secs(86400),
            Default::default(),
            clock.clone(),
        )
        .unwrap();
        let expired = short.subscribe().borrow().clone();
        let (ca_tx, ca_rx) = watch::channel(good.clone());
        let (issuer, handle) = Issuer::new(ca_rx, clock.clone());
        let (_stop, shutdown) = watch::channel(false);
        tokio::spawn(issuer.run(shutdown));
        let mut rx = handle.subscribe(req("/x", 600)).await.unwrap();
        let first = wait_ready(&mut rx, std::time::SystemTime::UNIX_EPOCH)
            .await
            .unwrap();
        ca_tx.send_replace(expired);
        // Every state seen until well past the first SVID's expiry.
        let mut failed_at = None;
        let deadline = Instant::now() + Duration::from_secs(900);
        while Instant::now() < deadline {
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => break,
            }
            let now = clock.now();
            match &*rx.borrow_and_update() {
                SvidState::Ready(svid) => {
                    assert!(svid.not_after > now, "an expired SVID was published");
                    assert_eq!(svid.serial, first.serial, "nothing new could be minted");
                }
                SvidState::Failed(why) => {
                    assert!(now >= first.not_after, "failed while still valid");
                    assert!(why.contains("expired"), "{why}");
                    failed_at.get_or_insert(now);
                }
                SvidState::Pending => {}
            }
        }
        let failed_at = failed_at.expect("subscribers were told the SVID is gone");
        assert!(
            failed_at.duration_since(first.not_after).unwrap() < Duration::from_secs(2),
            "told at expiry, not later"
        );
        let minted_before = handle.stats().minted.load(Ordering::Relaxed);
        // The CA recovers: the next retry (within the 30 s cap) publishes a fresh SVID.
        ca_tx.send_replace(good);
        let fresh = tokio::time::timeout(Duration::from_secs(31), async {
            loop {
                rx.changed().await.unwrap();
                if let SvidState::Ready(svid) = &*rx.borrow_and_update() {
                    return svid.clone();
                }
            }
        })
        .await
        .expect("re-minted once the CA works again");
        assert!(fresh.not_after > clock.now());
        assert_eq!(
            handle.stats().minted.load(Ordering::Relaxed),
            minted_before + 1
        );
    }
}
