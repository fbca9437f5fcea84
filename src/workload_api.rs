//! The SPIFFE Workload API over the agent's Unix socket (SPEC.md §1–3).
//!
//! A request is checked for the security header, its caller attested from the kernel, its selectors
//! matched against the policy, and then it is answered from the issuer's cache. Streams hold no state
//! of their own beyond what they last sent.

mod conn;
pub(crate) mod exec_hub;
pub(crate) mod gate;
pub(crate) mod h2_normalize;
pub(crate) mod header;
mod jwt;
pub(crate) mod listener;
#[cfg(feature = "sds")]
pub(crate) mod sds;
pub(crate) mod service;
pub(crate) mod status;
mod stream;

use std::sync::Arc;

use tokio::sync::{Semaphore, watch};

use crate::attest::Attestor;
use crate::ca::CaSnapshot;
use crate::issuer::IssuerHandle;
use crate::registry::Policy;
use crate::selector::SelectorSet;
use crate::spiffe_id::TrustDomain;

/// Why a Workload API call did not get what it asked for; [`status::to_status`] maps each to a code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("caller not identified: {0}")]
    NoPeer(String),
    #[error("attestation of pid {pid} failed: {source}")]
    Attestation {
        pid: u32,
        #[source]
        source: crate::attest::Error,
    },
    #[error("no entry matches pid {pid} ({selectors})")]
    NoIdentity { pid: u32, selectors: SelectorSet },
    #[error("the caller lost every identity")]
    EntitlementLost,
    #[error("stream limit reached")]
    Overloaded,
    #[error(transparent)]
    Limit(#[from] crate::limits::Refusal),
    #[error("shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Issuer(#[from] crate::issuer::Error),
    #[error("{0} is not implemented")]
    Unimplemented(&'static str),
    #[error("the caller is not entitled to {0}")]
    NotEntitled(String),
    #[error("audience {audience:?} is not allowed for {spiffe_id}")]
    AudienceForbidden { audience: String, spiffe_id: String },
    #[error("invalid JWT-SVID: {0}")]
    InvalidJwt(#[from] crate::ca::jwt::Invalid),
    #[error("{0}")]
    PolicyDenied(String),
    #[error("cannot record the delivery: {0}")]
    Inventory(crate::inventory::Error),
}

/// What the Workload API service needs from the rest of the agent.
#[derive(Clone)]
pub(crate) struct Context {
    pub trust_domain: TrustDomain,
    pub attestors: Arc<Vec<Box<dyn Attestor>>>,
    pub policy: crate::wake::Subscription<Arc<Policy>>,
    pub ca: watch::Receiver<Arc<CaSnapshot>>,
    pub issuer: IssuerHandle,
    pub jwt: crate::issuer::jwt::JwtCache,
    /// Where every delivery is recorded before it is made.
    pub inventory: crate::inventory::Inventory,
    /// Watches every holder for exit once it was given something.
    pub lifecycle: crate::lifecycle::Lifecycle,
    /// Exec notifications from the kernel.
    pub exec: Arc<exec_hub::ExecHub>,
    /// Wall clock for validity checks.
    pub clock: crate::clock::SharedClock,
    pub shutdown: watch::Receiver<bool>,
    /// One permit per open stream (EP-5: beyond the limit, Unavailable).
    pub streams: Arc<Semaphore>,
    /// Each uid's share of connections, streams and new credentials.
    pub shares: crate::limits::Shares,
    /// ValidateJWTSVID refuses tokens the inventory revoked.
    pub jwt_revocation: bool,
    /// The Cedar policies in force, if any.
    pub cedar: gate::Cedar,
    /// Wakes every open stream after `shutdown`, `ca` or `cedar` changed ([`agent_events`]).
    pub events: crate::wake::Subscription<u64>,
}

/// One wake-up list for the agent-wide changes every open stream reacts to — the shutdown signal,
/// a new CA snapshot (bundles), a Cedar reload — announced by a task that follows the three
/// channels. A stream keeps one registration here instead of one in each channel's own list (a
/// boxed wait and a lock to join and to leave each: about a microsecond of every stream's
/// opening and closing, measured with `perf`), and on waking reads the three channels to see what
/// changed. A channel whose sender is gone is announced too (the stream ends, as at shutdown).
/// Must be called within the runtime.
pub(crate) fn agent_events<C, P>(
    mut shutdown: watch::Receiver<bool>,
    mut ca: watch::Receiver<C>,
    mut cedar: watch::Receiver<P>,
) -> crate::wake::Subscription<u64>
where
    C: Send + Sync + 'static,
    P: Send + Sync + 'static,
{
    let (tx, rx) = watch::channel(0u64);
    let waiters = Arc::new(crate::wake::Waiters::default());
    let list = waiters.clone();
    tokio::spawn(async move {
        let mut count = 0u64;
        loop {
            let open = tokio::select! {
                r = shutdown.changed() => r.is_ok(),
                r = ca.changed() => r.is_ok(),
                r = cedar.changed() => r.is_ok(),
            };
            count += 1;
            crate::wake::publish(&tx, &list, count);
            if !open || *shutdown.borrow() {
                break;
            }
        }
        // Streams end on what they read from the channels; the sender stays (held here until the
        // runtime drops this task), or a stream that has not yet seen the last announcement would
        // never see it (a closed channel reports no change).
        let _kept = tx;
        std::future::pending::<()>().await;
    });
    crate::wake::Subscription::new(rx, waiters)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;

    /// The next announcement, within a second.
    async fn announced(updates: &mut crate::wake::Updates<u64>) -> bool {
        tokio::time::timeout(
            Duration::from_secs(1),
            poll_fn(|cx| updates.poll_changed(cx)),
        )
        .await
        .is_ok()
    }

    /// Each of the three channels is announced on the one list, a closed one included, and the
    /// last announcement stays visible after the task has stopped following them.
    #[tokio::test]
    async fn every_agent_wide_change_is_announced_once_on_one_list() {
        let (shutdown_tx, shutdown) = watch::channel(false);
        let (ca_tx, ca) = watch::channel(0u32);
        let (cedar_tx, cedar) = watch::channel(0u32);
        let events = agent_events(shutdown, ca, cedar);
        let mut updates = events.updates(1);
        assert!(!announced(&mut updates).await, "nothing changed yet");
        ca_tx.send_replace(1);
        assert!(announced(&mut updates).await, "a new CA snapshot");
        cedar_tx.send_replace(1);
        assert!(announced(&mut updates).await, "a Cedar reload");
        assert!(!announced(&mut updates).await, "each change once");
        drop(cedar_tx);
        assert!(announced(&mut updates).await, "a closed channel");
        // The task no longer follows the channels, but keeps its sender: a stream that had not
        // seen the last announcement still sees it.
        let mut late = events.updates(2);
        assert!(announced(&mut late).await);
        shutdown_tx.send_replace(true);
        assert!(
            !announced(&mut updates).await,
            "nothing after the task stopped"
        );
    }
}
