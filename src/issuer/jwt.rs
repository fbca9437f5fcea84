//! The JWT-SVID cache: one token per (identity, audience set, lifetime), reused while more than half
//! its life remains, refreshed ahead of time while it is in use, bounded (least recently used go
//! first), and signed once however many callers miss at the same moment.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::Error;
use crate::ca::CaSnapshot;
use crate::clock::SharedClock;
use crate::spiffe_id::SpiffeId;

/// What a JWT-SVID is signed for. Audiences are sorted and without duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JwtRequest {
    pub spiffe_id: SpiffeId,
    pub audiences: Vec<String>,
    pub ttl: Duration,
}

/// A signed JWT-SVID.
pub struct JwtSvid {
    pub spiffe_id: SpiffeId,
    pub token: String,
    pub jti: String,
    pub kid: String,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
}

impl fmt::Debug for JwtSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("jti", &self.jti)
            .field("expires_at", &self.expires_at)
            .field("token", &"[redacted]")
            .finish()
    }
}

type Outcome = Option<Result<Arc<JwtSvid>, Arc<str>>>;

/// The cache. Cloning shares it.
#[derive(Clone)]
pub struct JwtCache {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    ca: watch::Receiver<Arc<CaSnapshot>>,
    clock: SharedClock,
    capacity: usize,
    /// Bytes the cached tokens and their keys may take together.
    max_bytes: usize,
    signed: AtomicU64,
    wake: Notify,
    /// The `iss` claim of every token signed here (OIDC discovery), if any.
    issuer: Option<Arc<str>>,
}

#[derive(Default)]
struct State {
    slots: HashMap<JwtRequest, Slot>,
    refresh: BTreeMap<(Instant, u64), JwtRequest>,
    seq: u64,
    /// Sum of every slot's `bytes`.
    bytes: usize,
}

impl State {
    fn remove(&mut self, req: &JwtRequest) {
        if let Some(slot) = self.slots.remove(req) {
            self.bytes = self.bytes.saturating_sub(slot.bytes);
            if let Some(key) = slot.refresh_at {
                self.refresh.remove(&key);
            }
        }
    }
}

/// What a slot costs before it holds a token: its key and bookkeeping.
fn key_bytes(req: &JwtRequest) -> usize {
    req.spiffe_id.as_str().len() + req.audiences.iter().map(|a| a.len() + 24).sum::<usize>() + 160
}

struct Slot {
    current: Option<Arc<JwtSvid>>,
    pending: Option<watch::Receiver<Outcome>>,
    last_used: Instant,
    refresh_at: Option<(Instant, u64)>,
    /// What this slot takes: key, bookkeeping and the current token.
    bytes: usize,
}

impl JwtCache {
    /// A cache of at most `capacity` tokens taking at most `max_bytes`, signing with whatever `ca`
    /// publishes.
    pub fn new(
        ca: watch::Receiver<Arc<CaSnapshot>>,
        clock: SharedClock,
        capacity: usize,
        max_bytes: usize,
        issuer: Option<&str>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                issuer: issuer.map(Arc::from),
                state: Mutex::new(State::default()),
                ca,
                clock,
                capacity: capacity.max(1),
                max_bytes,
                signed: AtomicU64::new(0),
                wake: Notify::new(),
            }),
        }
    }

    /// Tokens signed since start.
    pub fn signed(&self) -> u64 {
        self.shared.signed.load(Ordering::Relaxed)
    }

    /// Whether `get(req)` would be served without signing (a cached token with more than half its
    /// life left, or a signing already under way).
    pub fn is_fresh(&self, req: &JwtRequest) -> bool {
        let now = self.shared.clock.now();
        self.shared.state.lock().is_ok_and(|state| {
            state.slots.get(req).is_some_and(|slot| {
                slot.pending.is_some()
                    || slot
                        .current
                        .as_ref()
                        .is_some_and(|c| more_than_half_left(c, now))
            })
        })
    }

    /// The cached token for `req` while more than half its life remains — what [`JwtCache::get`]
    /// returns without signing — looked up without copying the request. `None`: call `get`.
    pub fn cached(&self, req: &JwtRequest) -> Option<Arc<JwtSvid>> {
        let now = self.shared.clock.now();
        let mut state = self.shared.state.lock().ok()?;
        let slot = state.slots.get_mut(req)?;
        let current = slot
            .current
            .as_ref()
            .filter(|c| more_than_half_left(c, now))?
            .clone();
        slot.last_used = Instant::now();
        Some(current)
    }

    /// Drops the cached token for `req` if it is `jti` (revoked: its last holder went away), so the
    /// next request signs a new one.
    pub fn forget(&self, req: &JwtRequest, jti: &str) {
        if let Ok(mut state) = self.shared.state.lock()
            && state
                .slots
                .get(req)
                .is_some_and(|slot| slot.current.as_ref().is_some_and(|c| c.jti == jti))
        {
            state.remove(req);
        }
    }

    /// A token for `req`: the cached one while more than half its life remains, else a new one.
    pub async fn get(&self, req: JwtRequest) -> Result<Arc<JwtSvid>, Error> {
        let mut rx = {
            let mut state = self.shared.state.lock().map_err(|_| Error::Stopped)?;
            let now = self.shared.clock.now();
            let state = &mut *state;
            // A hit needs no copy of the request (the common case: a cached token).
            if let Some(slot) = state.slots.get_mut(&req)
                && let Some(current) = &slot.current
                && more_than_half_left(current, now)
            {
                slot.last_used = Instant::now();
                return Ok(current.clone());
            }
            let slot = state.slots.entry(req.clone()).or_insert_with(|| {
                let bytes = key_bytes(&req);
                state.bytes += bytes;
                Slot {
                    current: None,
                    pending: None,
                    last_used: Instant::now(),
                    refresh_at: None,
                    bytes,
                }
            });
            slot.last_used = Instant::now();
            // No token with half its life left (the hit returned above, under this same lock).
            let rx = match &slot.pending {
                Some(rx) => rx.clone(),
                None => self.start_signing(state, req.clone()),
            };
            self.evict_over_capacity(state);
            rx
        };
        let outcome = rx
            .wait_for(std::option::Option::is_some)
            .await
            .map_err(|_| Error::Stopped)?
            .clone();
        match outcome {
            Some(Ok(jwt)) => Ok(jwt),
            Some(Err(why)) => Err(Error::MintFailed(why)),
            None => Err(Error::Stopped),
        }
    }

    /// Starts one signing for `req` and records it as pending; returns the receiver of its outcome.
    fn start_signing(&self, state: &mut State, req: JwtRequest) -> watch::Receiver<Outcome> {
        let (tx, rx) = watch::channel(None);
        if let Some(slot) = state.slots.get_mut(&req) {
            slot.pending = Some(rx.clone());
        }
        let cache = self.clone();
        tokio::spawn(async move {
            let (key, remote) = {
                let ca = cache.shared.ca.borrow();
                (ca.jwt.active.clone(), ca.remote.clone())
            };
            let now = cache.shared.clock.now();
            let issuer = cache.shared.issuer.clone();
            let r = req.clone();
            let signed = match (remote, key) {
                // A SPIRE server signs: one RPC, on this task.
                (Some(remote), _) => Ok(remote.jwt(r.spiffe_id, r.audiences).await),
                (None, Some(key)) => {
                    tokio::task::spawn_blocking(move || {
                        key.sign(&r.spiffe_id, &r.audiences, now, r.ttl, issuer.as_deref())
                    })
                    .await
                }
                (None, None) => Ok(Err(crate::ca::Error::Server(
                    "no JWT signing key is available".into(),
                ))),
            };
            let outcome = match signed {
                Ok(Ok(s)) => {
                    cache.shared.signed.fetch_add(1, Ordering::Relaxed);
                    Ok(Arc::new(JwtSvid {
                        spiffe_id: req.spiffe_id.clone(),
                        token: s.token,
                        jti: s.jti,
                        kid: s.kid,
                        issued_at: s.issued_at,
                        expires_at: s.expires_at,
                    }))
                }
                Ok(Err(e)) => Err(Arc::<str>::from(e.to_string())),
                Err(e) => Err(Arc::<str>::from(e.to_string())),
            };
            cache.finish(&req, &outcome);
            let _ = tx.send(Some(outcome));
        });
        rx
    }

    fn finish(&self, req: &JwtRequest, outcome: &Result<Arc<JwtSvid>, Arc<str>>) {
        let Ok(mut state) = self.shared.state.lock() else {
            return;
        };
        let state = &mut *state;
        let Some(slot) = state.slots.get_mut(req) else {
            return;
        };
        slot.pending = None;
        let rotation = slot.current.is_some();
        crate::metrics::metrics().mint(
            "jwt",
            match outcome {
                Ok(_) if rotation => "rotation",
                Ok(_) => "first",
                Err(_) => "failed",
            },
        );
        match outcome {
            Ok(jwt) => {
                let token = |j: &JwtSvid| j.token.len() + j.jti.len() + j.kid.len();
                let old = slot.current.as_deref().map_or(0, token);
                slot.bytes = slot.bytes - old + token(jwt);
                state.bytes = state.bytes - old + token(jwt);
                slot.current = Some(jwt.clone());
                // Refresh at 40 % of the life, so the new token is there before the old one passes
                // half-life (when `get` stops handing it out).
                let life = jwt
                    .expires_at
                    .duration_since(jwt.issued_at)
                    .unwrap_or_default();
                let age = self
                    .shared
                    .clock
                    .now()
                    .duration_since(jwt.issued_at)
                    .unwrap_or_default();
                let delay = life.mul_f64(0.4).saturating_sub(age);
                if let Some(old) = slot.refresh_at.take() {
                    state.refresh.remove(&old);
                }
                state.seq += 1;
                let key = (Instant::now() + delay, state.seq);
                slot.refresh_at = Some(key);
                state.refresh.insert(key, req.clone());
                self.shared.wake.notify_one();
            }
            Err(why) => {
                tracing::error!(spiffe_id = %req.spiffe_id, error = %why, "jwt-svid signing failed");
            }
        }
    }

    fn evict_over_capacity(&self, state: &mut State) {
        while state.slots.len() > self.shared.capacity || state.bytes > self.shared.max_bytes {
            let Some(oldest) = state
                .slots
                .iter()
                .filter(|(_, s)| s.pending.is_none())
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone())
            else {
                return;
            };
            state.remove(&oldest);
        }
    }

    /// Refreshes tokens ahead of time while they are in use and drops the ones nobody asked for
    /// during their last lifetime. Runs until `shutdown`.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let next = self
                .shared
                .state
                .lock()
                .ok()
                .and_then(|s| s.refresh.keys().next().map(|(at, _)| *at));
            tokio::select! {
                _ = crate::shutdown::signalled(&mut shutdown) => return,
                _ = self.shared.wake.notified() => continue,
                _ = crate::clock::sleep_until(next), if next.is_some() => self.refresh_due(),
            }
        }
    }

    fn refresh_due(&self) {
        let Ok(mut state) = self.shared.state.lock() else {
            return;
        };
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(entry) = state.refresh.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove());
        }
        for req in due {
            let in_use = match state.slots.get_mut(&req) {
                Some(slot) => {
                    slot.refresh_at = None;
                    slot.last_used.elapsed() < req.ttl && slot.pending.is_none()
                }
                None => continue,
            };
            if in_use {
                self.start_signing(&mut state, req);
            } else {
                state.remove(&req);
            }
        }
    }

    /// Tokens currently cached.
    pub fn len(&self) -> usize {
        self.shared.state.lock().map(|s| s.slots.len()).unwrap_or(0)
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn more_than_half_left(jwt: &JwtSvid, now: SystemTime) -> bool {
    let life = jwt
        .expires_at
        .duration_since(jwt.issued_at)
        .unwrap_or_default();
    let left = jwt.expires_at.duration_since(now).unwrap_or_default();
    left > life / 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::Authority;
    use crate::ca::AuthorityConfig;
    use crate::clock::TokioClock;
    use crate::spiffe_id::TrustDomain;

    fn setup(capacity: usize) -> (tempfile::TempDir, JwtCache, SharedClock) {
        let dir = tempfile::tempdir().unwrap();
        let clock: SharedClock = Arc::new(TokioClock::starting_at(SystemTime::now()));
        let td = TrustDomain::parse("example.org").unwrap();
        let cfg = AuthorityConfig::SelfSigned {
            ca_ttl: Duration::from_secs(30 * 86400),
        };
        let a = Authority::load(
            &cfg,
            &td,
            dir.path(),
            Duration::from_secs(86400),
            Default::default(),
            clock.clone(),
        )
        .unwrap();
        let cache = JwtCache::new(a.subscribe(), clock.clone(), capacity, usize::MAX, None);
        std::mem::forget(a);
        (dir, cache, clock)
    }

    fn req(aud: &str) -> JwtRequest {
        JwtRequest {
            spiffe_id: SpiffeId::parse("spiffe://example.org/a").unwrap(),
            audiences: vec![aud.into()],
            ttl: Duration::from_secs(300),
        }
    }

    #[tokio::test]
    async fn concurrent_identical_requests_sign_once() {
        let (_d, cache, _c) = setup(100);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let c = cache.clone();
            tasks.spawn(async move { c.get(req("db")).await.unwrap().jti.clone() });
        }
        let jtis = tasks.join_all().await;
        assert!(jtis.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(cache.signed(), 1, "one signature for 64 concurrent misses");
        cache.get(req("other")).await.unwrap();
        assert_eq!(
            cache.signed(),
            2,
            "a different audience set is a different token"
        );
    }

    /// A token in use is refreshed before the old one passes half-life; unused ones are dropped.
    #[tokio::test(start_paused = true)]
    async fn refreshes_ahead_of_half_life_while_in_use() {
        let (_d, cache, clock) = setup(100);
        let (_stop, shutdown) = watch::channel(false);
        tokio::spawn(cache.clone().run(shutdown));
        let first = cache.get(req("db")).await.unwrap();
        // Use it again at 30 % of its life.
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(cache.get(req("db")).await.unwrap().jti, first.jti);
        // Just before half-life the refreshed token is already there.
        tokio::time::sleep(Duration::from_secs(55)).await;
        let now = clock.now();
        let half = first.issued_at + Duration::from_secs(150);
        assert!(now < half);
        let second = cache.get(req("db")).await.unwrap();
        assert_ne!(
            second.jti, first.jti,
            "refreshed before the old token passed half-life"
        );
        assert_eq!(cache.signed(), 2);
        // Unused for a whole lifetime: dropped, not refreshed.
        tokio::time::sleep(Duration::from_secs(1200)).await;
        assert!(cache.is_empty(), "unused tokens are dropped");
        assert!(
            cache.signed() <= 4,
            "no refreshing for nobody: {}",
            cache.signed()
        );
    }

    /// `cached` answers exactly when `get` would hand out the cached token without signing.
    #[tokio::test(start_paused = true)]
    async fn cached_is_get_without_signing() {
        let (_d, cache, _c) = setup(100);
        assert!(cache.cached(&req("db")).is_none(), "nothing signed yet");
        let first = cache.get(req("db")).await.unwrap();
        assert_eq!(cache.cached(&req("db")).unwrap().jti, first.jti);
        assert!(cache.cached(&req("other")).is_none());
        // Past half of its 300 s life (no refresher runs here): `get` would sign again.
        tokio::time::sleep(Duration::from_secs(151)).await;
        assert!(cache.cached(&req("db")).is_none());
        assert_ne!(cache.get(req("db")).await.unwrap().jti, first.jti);
        assert_eq!(cache.signed(), 2);
    }

    #[tokio::test]
    async fn bounded_by_capacity() {
        let (_d, cache, _c) = setup(3);
        for i in 0..10 {
            cache.get(req(&format!("aud{i}"))).await.unwrap();
        }
        assert!(cache.len() <= 3, "{}", cache.len());
    }
}
