//! The Kubernetes attestor: pod and container of the caller from its cgroups, then what the kubelet
//! knows about them as `k8s:*` selectors.
//!
//! A process that is not in a pod gets no `k8s:*` selectors (its unix selectors still apply). A
//! process in a pod the agent cannot resolve (kubelet down, container not listed within the
//! deadline, contradictory cgroups) is not attested at all: no identity, never a guess.

pub mod cgroup;
pub mod kubelet;
pub mod pod_cache;
pub mod pods;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Attestor, Error, PinnedProcess, read_error};
use crate::selector::SelectorSet;
pub use kubelet::{Kubelet, KubeletConfig};

/// The outcome of one pod lookup.
type Lookup = Result<Vec<crate::selector::Selector>, pod_cache::LookupError>;
/// How long a prefetched answer waits for the blocking part of the same attestation.
const PREFETCH_FRESH: Duration = Duration::from_secs(2);
pub use pod_cache::PodCache;

/// `[kubernetes]` settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesConfig {
    pub kubelet: KubeletConfig,
    pub snapshot_ttl: Duration,
    pub container_wait: Duration,
    /// The kubelet's cgroup roots: pods are recognised only below them.
    pub cgroup_roots: Vec<cgroup::Root>,
    /// The cgroup namespace paths are made absolute in (`None`: read them as the agent sees them).
    pub host_cgroup_ns: Option<std::path::PathBuf>,
}

/// Attests pods through cgroups and the kubelet.
pub struct K8sAttestor {
    cache: Arc<PodCache>,
    /// Answers of [`Attestor::prefetch`], picked up by the blocking part right after.
    prefetched: Arc<Mutex<HashMap<cgroup::Location, (Instant, Lookup)>>>,
    runtime: tokio::runtime::Handle,
    roots: Vec<cgroup::Root>,
    view: cgroup::View,
}

impl K8sAttestor {
    /// Must be called inside the agent's runtime: slow lookups run on it from the blocking pool.
    pub fn new(config: &KubernetesConfig) -> Result<Self, kubelet::Error> {
        let kubelet = Kubelet::new(config.kubelet.clone())?;
        let (view, problem) = cgroup::View::load(config.host_cgroup_ns.as_deref());
        if let Some(e) = problem {
            tracing::warn!(
                "{e}; cgroup paths are read as this agent's cgroup namespace shows them, and pods \
                 outside it are not recognised (run with hostPID and CAP_SYS_ADMIN, or set \
                 kubernetes.host_cgroup_namespace)"
            );
        }
        if config.kubelet.skip_verify {
            tracing::warn!(url = %config.kubelet.url, "kubelet certificate NOT verified (skip_kubelet_verification)");
        }
        Ok(Self {
            cache: Arc::new(PodCache::new(
                kubelet,
                config.snapshot_ttl,
                config.container_wait,
            )),
            runtime: tokio::runtime::Handle::current(),
            prefetched: Arc::default(),
            roots: config.cgroup_roots.clone(),
            view,
        })
    }

    /// The shared pod cache (for counters).
    pub fn cache(&self) -> &Arc<PodCache> {
        &self.cache
    }

    fn locate(&self, process: &PinnedProcess) -> Result<Option<cgroup::Location>, Error> {
        let text = process.dir.read_to_string("cgroup").map_err(read_error)?;
        cgroup::locate(&text, &self.roots, &self.view).map_err(|e| Error::Kubernetes {
            message: format!("pid {}: {e}", process.pid()),
            retryable: false,
        })
    }
}

fn lookup_error(e: pod_cache::LookupError) -> Error {
    let retryable = !matches!(e, pod_cache::LookupError::Ambiguous { .. });
    Error::Kubernetes {
        message: e.to_string(),
        retryable,
    }
}

impl Attestor for K8sAttestor {
    fn name(&self) -> &'static str {
        "k8s"
    }

    fn attest(&self, process: &PinnedProcess, out: &mut SelectorSet) -> Result<(), Error> {
        let Some(location) = self.locate(process)? else {
            return Ok(());
        };
        let prefetched = self
            .prefetched
            .lock()
            .ok()
            .and_then(|p| p.get(&location).cloned())
            .filter(|(at, _)| at.elapsed() < PREFETCH_FRESH);
        let selectors = match prefetched {
            Some((_, answer)) => answer,
            // Not prefetched (a caller that skipped it): wait here.
            None => self.runtime.block_on(self.cache.lookup(&location)),
        }
        .map_err(lookup_error)?;
        out.extend(selectors);
        Ok(())
    }

    fn prefetch(&self, process: &PinnedProcess) -> Option<super::Prefetch> {
        let location = self.locate(process).ok()??;
        if self.cache.cached(&location).is_some() {
            return None;
        }
        let (cache, prefetched) = (self.cache.clone(), self.prefetched.clone());
        // The kubelet request and the wait for a late container happen here, awaited on the
        // runtime: the blocking attestation afterwards picks up this answer.
        Some(Box::pin(async move {
            let answer = cache.lookup(&location).await;
            if let Ok(mut p) = prefetched.lock() {
                if p.len() > 4096 {
                    p.retain(|_, (at, _)| at.elapsed() < PREFETCH_FRESH);
                }
                p.insert(location, (Instant::now(), answer));
            }
            // Its outcome is the blocking part's to report.
            Ok(())
        }))
    }

    fn attest_cached(&self, process: &PinnedProcess, out: &mut SelectorSet) -> Result<bool, Error> {
        let Some(location) = self.locate(process)? else {
            return Ok(true);
        };
        match self.cache.cached(&location) {
            Some(Ok(selectors)) => {
                out.extend(selectors);
                Ok(true)
            }
            Some(Err(e)) => Err(lookup_error(e)),
            None => Ok(false),
        }
    }
}
