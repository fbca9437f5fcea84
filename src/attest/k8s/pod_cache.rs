//! The shared pod-list snapshot that concurrent attestations wait on.
//!
//! Unlike a poll of the whole list per attestation, one request is in flight at a time and every
//! attestation that arrives meanwhile shares its answer; an answer younger than the snapshot TTL is
//! reused outright, and one past three quarters of it is asked for again in the background by the
//! attestation that notices, so workloads that keep fetching never wait on the kubelet once their
//! container is known. A container not in the list yet is looked for in fresh snapshots until a
//! short, configured deadline.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use super::cgroup::Location;
use super::kubelet::{Error, Kubelet};
use super::pods::{Found, PodList, selectors};
use crate::selector::Selector;

/// How long to wait between fresh snapshots while a container is missing.
const POLL: Duration = Duration::from_millis(250);
/// While the kubelet cannot be asked, a container found in the last good pod list (younger than
/// this) keeps its facts: a container ID never moves to another pod, so only label changes can be
/// missed meanwhile. Containers the agent has not seen in a good list get the kubelet's error.
pub const MAX_STALE: Duration = Duration::from_secs(300);

/// Why a container could not be resolved to selectors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    Kubelet(#[from] Error),
    #[error(
        "container {container} of pod {pod} is not in the kubelet's pod list after {waited:?}; it may still be starting (retry), or it is not a Kubernetes container"
    )]
    NotFound {
        pod: String,
        container: String,
        waited: Duration,
    },
    #[error("container {container} appears in several pods ({pods}); refusing to guess")]
    Ambiguous { container: String, pods: String },
}

struct Snapshot {
    /// When the request that produced it was sent.
    requested: Instant,
    pods: PodList,
}

enum Last {
    Ok(Arc<Snapshot>),
    Err { requested: Instant, error: Error },
}

/// The shared pod-list snapshot.
pub struct PodCache {
    kubelet: Kubelet,
    /// Snapshots younger than this are reused.
    ttl: Duration,
    /// How long a missing container is waited for.
    wait: Duration,
    /// Held while a request is in flight, so concurrent lookups share it.
    last: tokio::sync::Mutex<Option<Last>>,
    /// The latest good snapshot, for lookups that must not wait.
    latest: RwLock<Option<Arc<Snapshot>>>,
    /// Set while a background refresh is under way (at most one at a time).
    refreshing: AtomicBool,
    requests: AtomicU64,
}

/// Clears [`PodCache::refreshing`] when the background refresh ends, however it ends.
struct Refreshing(Arc<PodCache>);

impl Drop for Refreshing {
    fn drop(&mut self) {
        self.0.refreshing.store(false, Ordering::Release);
    }
}

impl PodCache {
    pub fn new(kubelet: Kubelet, ttl: Duration, wait: Duration) -> Self {
        Self {
            kubelet,
            ttl,
            wait,
            last: tokio::sync::Mutex::new(None),
            latest: RwLock::new(None),
            refreshing: AtomicBool::new(false),
            requests: AtomicU64::new(0),
        }
    }

    /// Requests sent to the kubelet so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Snapshots at least this old are asked for again in the background when used.
    fn refresh_after(&self) -> Duration {
        self.ttl * 3 / 4
    }

    /// The selectors of `location` from a fresh snapshot, without waiting; `None` when a request is
    /// needed. A snapshot past [`Self::refresh_after`] still answers, and starts one request on the
    /// current runtime (if any) whose answer replaces it.
    pub fn cached(
        self: &Arc<Self>,
        location: &Location,
    ) -> Option<Result<Vec<Selector>, LookupError>> {
        let latest = self.latest.read().ok()?.clone()?;
        let age = latest.requested.elapsed();
        if age >= self.ttl {
            return None;
        }
        if age >= self.refresh_after() {
            self.refresh_in_background();
        }
        match latest.pods.find(location) {
            Found::Container(pod, status) => Some(Ok(selectors(pod, status))),
            Found::Ambiguous(pods) => Some(Err(ambiguous(location, pods))),
            Found::Missing => None,
        }
    }

    /// The selectors of `location`, waiting for fresh snapshots up to the configured deadline while
    /// the container is missing. When the kubelet cannot be asked, the last good pod list serves
    /// containers it lists, up to [`MAX_STALE`].
    pub async fn lookup(&self, location: &Location) -> Result<Vec<Selector>, LookupError> {
        let error = match self.lookup_fresh(location).await {
            Err(LookupError::Kubelet(e)) => e,
            other => return other,
        };
        let latest = self.latest.read().ok().and_then(|l| l.clone());
        if let Some(latest) = latest
            && latest.requested.elapsed() < MAX_STALE
            && let Found::Container(pod, status) = latest.pods.find(location)
        {
            tracing::warn!(
                container = %location.container_id,
                age = ?latest.requested.elapsed(),
                %error,
                "kubelet unavailable; using the pod facts of its last good answer for this container"
            );
            return Ok(selectors(pod, status));
        }
        Err(LookupError::Kubelet(error))
    }

    /// Starts one request for a new snapshot unless one is under way or no runtime is current. A
    /// snapshot (or kubelet error) newer than [`Self::refresh_after`] — one that came in meanwhile
    /// — is taken as the answer, so a failing kubelet is not asked more often than that; after a
    /// failed refresh, none is started again for the same snapshot.
    fn refresh_in_background(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let guard = Refreshing(self.clone());
        runtime.spawn(async move {
            let cache = &guard.0;
            let since = Instant::now()
                .checked_sub(cache.refresh_after())
                .unwrap_or_else(Instant::now);
            // An error is logged and counted by `snapshot_since`. The refresh then stays "under
            // way" until the snapshot in use expires, so the fetches meanwhile start no task
            // each; after that, callers wait for the kubelet themselves, as without a refresh.
            if cache.snapshot_since(since).await.is_err() {
                let expires = cache
                    .latest
                    .read()
                    .ok()
                    .and_then(|l| l.as_ref().map(|s| s.requested + cache.ttl));
                if let Some(expires) = expires {
                    tokio::time::sleep_until(expires).await;
                }
            }
        });
    }

    async fn lookup_fresh(&self, location: &Location) -> Result<Vec<Selector>, LookupError> {
        let start = Instant::now();
        let deadline = start + self.wait;
        let mut since = start.checked_sub(self.ttl).unwrap_or(start);
        loop {
            let snapshot =
                match tokio::time::timeout_at(deadline + POLL, self.snapshot_since(since)).await {
                    Ok(r) => r?,
                    Err(_) => {
                        return Err(LookupError::Kubelet(Error::Unreachable {
                            url: self.kubelet.url().to_owned(),
                            why: format!("no answer within {:?}", self.wait + POLL),
                        }));
                    }
                };
            match snapshot.pods.find(location) {
                Found::Container(pod, status) => return Ok(selectors(pod, status)),
                Found::Ambiguous(pods) => return Err(ambiguous(location, pods)),
                Found::Missing => {}
            }
            if Instant::now() + POLL > deadline {
                return Err(LookupError::NotFound {
                    pod: location
                        .pod_uid
                        .clone()
                        .unwrap_or_else(|| "(unknown: cgroup namespace)".into()),
                    container: location.container_id.clone(),
                    waited: start.elapsed(),
                });
            }
            tokio::time::sleep(POLL).await;
            since = Instant::now();
        }
    }

    /// A snapshot requested at or after `since`: the last one if it qualifies (or the error it
    /// ended in), else a new request. One request at a time; waiters share its answer.
    async fn snapshot_since(&self, since: Instant) -> Result<Arc<Snapshot>, Error> {
        let mut last = self.last.lock().await;
        match &*last {
            Some(Last::Ok(s)) if s.requested >= since => return Ok(s.clone()),
            Some(Last::Err { requested, error }) if *requested >= since => {
                return Err(error.clone());
            }
            _ => {}
        }
        let requested = Instant::now();
        self.requests.fetch_add(1, Ordering::Relaxed);
        let result =
            match tokio::time::timeout(self.kubelet.config.request_timeout, self.kubelet.pods())
                .await
            {
                Ok(r) => r,
                Err(_) => Err(Error::Unreachable {
                    url: self.kubelet.url().to_owned(),
                    why: format!("no answer within {:?}", self.kubelet.config.request_timeout),
                }),
            };
        let m = crate::metrics::metrics();
        m.kubelet_seconds.observe(requested.elapsed().as_secs_f64());
        m.count(
            &m.kubelet_requests,
            if result.is_ok() { "ok" } else { "error" },
        );
        match result {
            Ok(pods) => {
                let snapshot = Arc::new(Snapshot { requested, pods });
                *last = Some(Last::Ok(snapshot.clone()));
                if let Ok(mut latest) = self.latest.write() {
                    *latest = Some(snapshot.clone());
                }
                Ok(snapshot)
            }
            Err(error) => {
                tracing::warn!(%error, "kubelet pod list unavailable");
                *last = Some(Last::Err {
                    requested,
                    error: error.clone(),
                });
                Err(error)
            }
        }
    }
}

fn ambiguous(location: &Location, pods: Vec<String>) -> LookupError {
    LookupError::Ambiguous {
        container: location.container_id.clone(),
        pods: pods.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attest::k8s::KubeletConfig;

    /// A cache whose kubelet refuses connections (nothing listens on the discard port here),
    /// holding a pod list requested `age` ago.
    fn cache_with_snapshot(ttl: Duration, age: Duration) -> Arc<PodCache> {
        let kubelet = Kubelet::new(KubeletConfig {
            url: "http://127.0.0.1:9".into(),
            token_path: None,
            ca_path: None,
            server_name: None,
            skip_verify: false,
            request_timeout: Duration::from_secs(2),
        })
        .unwrap();
        let cache = Arc::new(PodCache::new(kubelet, ttl, Duration::ZERO));
        let snapshot = Arc::new(Snapshot {
            requested: Instant::now() - age,
            pods: PodList::default(),
        });
        *cache.latest.write().unwrap() = Some(snapshot.clone());
        *cache.last.try_lock().unwrap() = Some(Last::Ok(snapshot));
        cache
    }

    fn somewhere() -> Location {
        Location {
            pod_uid: None,
            container_id: "0".repeat(64),
        }
    }

    #[tokio::test]
    async fn a_young_snapshot_starts_no_request() {
        let cache = cache_with_snapshot(Duration::from_secs(20), Duration::from_secs(1));
        assert!(cache.cached(&somewhere()).is_none(), "not listed");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(cache.requests(), 0);
        assert!(!cache.refreshing.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn a_failed_refresh_is_not_started_again_for_the_same_snapshot() {
        // 3.2 s old with a TTL of 4 s: past three quarters, expiring in 0.8 s.
        let cache = cache_with_snapshot(Duration::from_secs(4), Duration::from_millis(3200));
        let expires = cache.latest.read().unwrap().as_ref().unwrap().requested + cache.ttl;
        assert!(cache.cached(&somewhere()).is_none(), "not listed");
        let failed = async {
            loop {
                if matches!(&*cache.last.lock().await, Some(Last::Err { .. })) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(2), failed)
            .await
            .expect("the refresh asks the kubelet and fails");
        assert_eq!(cache.requests(), 1);
        // Until the snapshot expires, the failed refresh counts as under way: fetches start
        // nothing (a task they started would have ended by the check below and let go).
        for _ in 0..10 {
            assert!(cache.cached(&somewhere()).is_none());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            Instant::now() >= expires || cache.refreshing.load(Ordering::Acquire),
            "still held before the snapshot expires"
        );
        tokio::time::sleep_until(expires + Duration::from_millis(200)).await;
        assert!(
            !cache.refreshing.load(Ordering::Acquire),
            "let go once it expired"
        );
        assert_eq!(cache.requests(), 1, "no caller of `cached` asked again");
    }
}
