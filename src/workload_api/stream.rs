//! One open Workload API stream: the complete current state at once, then again after every change
//! that affects it (ST-1..5), until the caller goes away or loses its entitlement.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, watch};
use tonic::Status;

use super::gate::{self, Act};
use super::status::to_status;
use super::{Context, Error};
use crate::attest::PinnedProcess;
use crate::ca::{CaSnapshot, SvidRequest, X509Svid};
use crate::inventory::{Delivery, Holder, HolderInfo, Kind, Reason};
use crate::issuer::{self, Subscription, SvidState, Updates};
use crate::registry::{self, Identity, Policy};
use crate::selector::Selector;
use crate::selector::SelectorSet;
use crate::spiffe_id::TrustDomain;

/// How long a stream waits for a first mint before answering Unavailable (EP-5: never hang).
const MINT_DEADLINE: Duration = Duration::from_secs(10);

/// A caller that was pinned and attested.
pub(super) struct Attested {
    pub pinned: Arc<PinnedProcess>,
    pub selectors: SelectorSet,
    /// The caller as the inventory knows it.
    pub holder: HolderInfo,
}

impl Attested {
    /// The uid whose fair shares the caller counts against: the one it connected as, or the user
    /// that made its user namespace ([`crate::attest::caller::Ceiling::share_uid`]).
    pub(super) fn share_uid(&self) -> u32 {
        self.pinned.share_uid()
    }

    /// Builds the inventory's view of the caller from what attestation found.
    pub(super) fn new(pinned: PinnedProcess, selectors: SelectorSet) -> Self {
        let uid = selectors
            .iter()
            .find_map(|s| match s {
                Selector::UnixUid(u) => Some(*u),
                _ => None,
            })
            .unwrap_or(pinned.cred.uid);
        let exe = exe_of(&selectors);
        let holder = HolderInfo {
            holder: Holder {
                pid: pinned.pid(),
                instance: pinned.instance,
            },
            uid,
            exe,
            pidfd: pinned.pidfd.clone(),
        };
        Self {
            pinned: Arc::new(pinned),
            selectors,
            holder,
        }
    }
}

/// Streams making a push now: woken by a change, their message not yet handed over.
static PUSHING: AtomicUsize = AtomicUsize::new(0);

/// Whether any stream is making a push now (a rotation's or an entry change's fan-out under way):
/// a connection then puts off its flush a little, so the messages of its other streams go out in
/// the same write ([`super::conn`]).
pub(super) fn pushes_under_way() -> bool {
    PUSHING.load(Ordering::Relaxed) > 0
}

/// Counted in [`PUSHING`] while it lives.
pub(super) struct Pushing;

impl Pushing {
    pub(super) fn start() -> Self {
        PUSHING.fetch_add(1, Ordering::Relaxed);
        Self
    }
}

impl Drop for Pushing {
    fn drop(&mut self) {
        PUSHING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What wakes a following stream besides its SVIDs, each kept registered with its list between
/// pushes. A rotation wakes the streams through their SVID's list; these stay where they are (the
/// entries' and the agent-wide events' in their `wake::Waiters`, the exec notifier's in its own)
/// instead of leaving and joining them again around every message (under a rotation to 10,000
/// streams, `perf` put the leaving alone at about 4 % of the agent's CPU).
struct Wakers {
    /// The agent-wide changes: shutdown, CA snapshot, Cedar reload ([`super::agent_events`]);
    /// what changed is read from the channels themselves ([`agent_event`]).
    events: crate::wake::Updates<u64>,
    /// The entries' list of their own, like an SVID's ([`crate::wake`]): an entry change wakes
    /// one stream of each process before its siblings.
    policy: crate::wake::Updates<Arc<Policy>>,
    /// The caller's exec notifier, and the wait on it (made again each time it fires).
    exec_source: Arc<tokio::sync::Notify>,
    exec: Pin<Box<tokio::sync::futures::OwnedNotified>>,
}

impl Wakers {
    fn new(watcher: &Watcher<impl Sized>, exec: Arc<tokio::sync::Notify>) -> Self {
        let group = u64::from(watcher.attested.pinned.pid());
        // Announcements from here on: a change the watcher has not seen that was announced before
        // now is found by [`agent_event`] before the stream first waits.
        let mut events = watcher.ctx.events.clone();
        events.borrow_and_update();
        Self {
            events: events.updates(group),
            policy: watcher.policy.updates(group),
            exec: Box::pin(exec.clone().notified_owned()),
            exec_source: exec,
        }
    }
}

/// The agent-wide change this stream has not handled yet, if any: the shutdown signal first, then
/// a Cedar reload, then a new CA snapshot. A channel whose sender is gone means the agent is
/// stopping.
fn agent_event<M>(w: &Watcher<M>) -> Option<Woke> {
    let shutdown = &w.ctx.shutdown;
    if shutdown.has_changed().is_err() || *shutdown.borrow() {
        return Some(Woke::Shutdown);
    }
    match w.cedar.has_changed() {
        Err(_) => return Some(Woke::Shutdown),
        Ok(true) => return Some(Woke::Cedar),
        Ok(false) => {}
    }
    match w.ca.has_changed() {
        Err(_) => Some(Woke::Shutdown),
        Ok(true) => Some(Woke::Bundle),
        Ok(false) => None,
    }
}

/// Ready once one of the stream's SVIDs is published again (each wait is polled, so each keeps
/// the stream's current waker); never with no SVIDs.
fn svid_published(updates: &mut [Updates], cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
    let mut ready = false;
    for u in updates.iter_mut() {
        ready |= u.poll_changed(cx).is_ready();
    }
    if ready {
        std::task::Poll::Ready(())
    } else {
        std::task::Poll::Pending
    }
}

/// Ready once an exec of the caller is reported; then waits for the next one.
fn exec_fired(
    exec: &mut Pin<Box<tokio::sync::futures::OwnedNotified>>,
    source: &Arc<tokio::sync::Notify>,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<()> {
    std::task::ready!(exec.as_mut().poll(cx));
    *exec = Box::pin(source.clone().notified_owned());
    std::task::Poll::Ready(())
}

/// Whether an exec of the caller was reported and not yet seen (consumes the report). The wait
/// keeps a waker that does nothing until the stream's next wait polls it again; a report in
/// between leaves it ready, and that poll sees it.
fn exec_reported(wakers: &mut Wakers) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    exec_fired(&mut wakers.exec, &wakers.exec_source, &mut cx).is_ready()
}

fn exe_of(selectors: &SelectorSet) -> String {
    selectors
        .iter()
        .find_map(|s| match s {
            Selector::UnixPath(p) => Some(p.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// What a message is rendered from.
pub(super) struct View<'a> {
    pub trust_domain: &'a TrustDomain,
    pub identities: &'a [Identity],
    /// Aligned with `identities`; `None` when that SVID is not available.
    pub svids: &'a [Option<Arc<X509Svid>>],
    pub ca: &'a CaSnapshot,
    pub policy: &'a Policy,
}

/// Turns the current state into one complete message.
pub(super) type Render<M> = fn(&View<'_>) -> M;

/// The state of one stream.
pub(super) struct Watcher<M> {
    ctx: Arc<Context>,
    attested: Attested,
    render: Render<M>,
    with_svids: bool,
    /// What the stream issues, for the Cedar gate (`None`: bundles only, nothing issued).
    act: Option<Act>,
    /// Policy reloads (a change re-decides what the caller may hold).
    cedar: super::gate::Cedar,
    identities: Vec<Identity>,
    /// The policies that permitted each identity at the last decision (for the inventory).
    permitted_by: gate::PermittedBy,
    subs: Vec<(SvidRequest, Subscription)>,
    /// The waits for the next publication of each SVID in `subs` (aligned with it).
    updates: Vec<Updates>,
    policy: crate::wake::Subscription<Arc<Policy>>,
    ca: watch::Receiver<Arc<CaSnapshot>>,
    last: Option<M>,
    /// What this stream last delivered, per SPIFFE ID: (serial, entry).
    delivered: HashMap<String, String>,
}

impl<M: Clone + PartialEq + Send + 'static> Watcher<M> {
    /// Matches the caller, subscribes to its SVIDs (when `with_svids`) and renders the first message.
    pub(super) async fn open(
        ctx: Arc<Context>,
        attested: Attested,
        render: Render<M>,
        with_svids: bool,
        act: Option<Act>,
    ) -> Result<(Self, M), Error> {
        let mut policy = ctx.policy.clone();
        let mut ca = ctx.ca.clone();
        let mut cedar = ctx.cedar.clone();
        cedar.borrow_and_update();
        let current = policy.borrow_and_update().clone();
        ca.borrow_and_update();
        let identities = registry::match_identities(&attested.selectors, &current);
        if identities.is_empty() {
            return Err(Error::NoIdentity {
                pid: attested.pinned.pid(),
                selectors: attested.selectors.clone(),
            });
        }
        let (identities, permitted_by) = match act {
            Some(act) => gate::permitted(&ctx, &attested.selectors, identities, act)?,
            None => (identities, gate::PermittedBy::new()),
        };
        let mut w = Self {
            ctx,
            attested,
            render,
            with_svids,
            act,
            cedar,
            identities: Vec::new(),
            permitted_by,
            subs: Vec::new(),
            updates: Vec::new(),
            policy,
            ca,
            last: None,
            delivered: HashMap::new(),
        };
        w.set_identities(identities).await?;
        let first = w.render_now();
        w.record_delivery().await?;
        w.last = Some(first.clone());
        Ok((w, first))
    }

    /// Follows changes from here on: see [`Following`].
    /// `exec`: the caller's exec notifier, registered before it was attested (one is registered
    /// here when none was).
    pub(super) fn follow(
        self,
        permit: (OwnedSemaphorePermit, crate::limits::StreamSlot),
        exec: Option<Arc<tokio::sync::Notify>>,
    ) -> Following<M> {
        let exec = exec.unwrap_or_else(|| self.ctx.exec.register(self.attested.pinned.pid()));
        Following {
            wakers: Wakers::new(&self, exec),
            watcher: self,
            _permit: permit,
        }
    }

    /// Attests the pinned process again before a push. A process that exec'd another program or
    /// changed credentials fails here (`attest::Error::Changed`) and the stream ends; selectors may
    /// still change otherwise (a pod's labels), and then entitlements are matched again.
    ///
    /// `woken_by`: the stream was woken by an SVID's publication, and this is the publication
    /// count read then. A re-attestation of the same process by another stream of the connection
    /// that began after that publication stands for this one
    /// ([`crate::attest::PinnedProcess::recent_attestation`]): a rotation pushed to the many
    /// streams of one connection attests the process once, not once per stream.
    async fn reattest(&mut self, woken_by: Option<u64>) -> Result<(), Error> {
        let pinned = self.attested.pinned.clone();
        let recent = woken_by.and_then(|since| pinned.recent_attestation(since));
        crate::metrics::metrics().reattestation(recent.is_some());
        let selectors = match recent {
            Some(selectors) => selectors,
            None => {
                let began = crate::issuer::publications();
                match Self::attest_afresh(pinned.clone(), self.ctx.attestors.clone()).await {
                    Ok(selectors) => {
                        let selectors = Arc::new(selectors);
                        pinned.keep_attestation(began, selectors.clone());
                        selectors
                    }
                    Err(e) => {
                        pinned.forget_attestation();
                        return Err(e);
                    }
                }
            }
        };
        let pid = pinned.pid();
        if *selectors != self.attested.selectors {
            tracing::info!(pid, selectors = %selectors, "caller's selectors changed; re-matching");
            self.attested.holder.exe = exe_of(&selectors);
            self.attested.selectors = Arc::unwrap_or_clone(selectors);
            self.rematch().await?;
        } else if self.act.is_some() && self.cedar.borrow().is_some() {
            // Policies may depend on time: decided again before every push.
            self.rematch().await?;
        }
        Ok(())
    }

    /// Attests the pinned process again, from the kernel.
    async fn attest_afresh(
        pinned: Arc<PinnedProcess>,
        attestors: Arc<Vec<Box<dyn crate::attest::Attestor>>>,
    ) -> Result<SelectorSet, Error> {
        let pid = pinned.pid();
        let fast = crate::attest::reattest_fast(&pinned, &attestors);
        let selectors = match fast {
            Ok(Some(s)) => s,
            Ok(None) => tokio::task::spawn_blocking({
                crate::attest::prefetch(&pinned, &attestors)
                    .await
                    .map_err(|source| Error::Attestation { pid, source })?;
                move || crate::attest::reattest_blocking(&pinned, &attestors)
            })
            .await
            .map_err(|e| Error::Attestation {
                pid,
                source: crate::attest::Error::Task(e.to_string()),
            })?
            .map_err(|source| Error::Attestation { pid, source })?,
            Err(source) => return Err(Error::Attestation { pid, source }),
        };
        Ok(selectors)
    }

    async fn on_policy_change(&mut self) -> Result<(), Error> {
        self.policy.borrow_and_update();
        self.rematch().await
    }

    async fn rematch(&mut self) -> Result<(), Error> {
        let policy = self.policy.borrow().clone();
        let identities = registry::match_identities(&self.attested.selectors, &policy);
        if identities.is_empty() {
            tracing::info!(
                pid = self.attested.pinned.pid(),
                "caller lost every identity; ending stream"
            );
            return Err(Error::EntitlementLost);
        }
        let (identities, permitted_by) = match self.act {
            Some(act) => gate::permitted(&self.ctx, &self.attested.selectors, identities, act)?,
            None => (identities, gate::PermittedBy::new()),
        };
        self.permitted_by = permitted_by;
        if identities != self.identities {
            self.set_identities(identities).await?;
        }
        Ok(())
    }

    /// Subscribes to the SVIDs of `identities`, keeping subscriptions that are still wanted.
    async fn set_identities(&mut self, identities: Vec<Identity>) -> Result<(), Error> {
        if self.with_svids {
            self.updates = Vec::new();
            let mut old: HashMap<SvidRequest, Subscription> = self.subs.drain(..).collect();
            let mut subs = Vec::with_capacity(identities.len());
            for identity in &identities {
                let req = SvidRequest {
                    spiffe_id: identity.spiffe_id.clone(),
                    ttl: identity.x509_ttl,
                    dns_names: identity.dns_names.clone(),
                };
                let mut rx = match old.remove(&req) {
                    Some(rx) => rx,
                    None => {
                        // Not cached: a first mint, a new credential (the caller's rate applies,
                        // once however many streams want it at the same moment).
                        let claim = self.ctx.issuer.claim(&req);
                        if claim.is_some() {
                            // Refused: the claim is given back as it drops.
                            self.ctx.shares.new_credential(self.attested.share_uid())?;
                        }
                        let rx = self.ctx.issuer.subscribe(req.clone()).await?;
                        if let Some(claim) = claim {
                            claim.subscribed();
                        }
                        rx
                    }
                };
                let ready = matches!(&*rx.borrow(), SvidState::Ready(svid) if self.valid_now(svid));
                if ready {
                    subs.push((req, rx));
                    continue;
                }
                match tokio::time::timeout(
                    MINT_DEADLINE,
                    issuer::wait_ready(&mut rx, self.ctx.clock.now()),
                )
                .await
                {
                    Ok(Ok(svid)) if self.valid_now(&svid) => {}
                    Ok(Ok(_)) => {
                        return Err(issuer::Error::MintFailed(
                            format!("the SVID for {} has expired", req.spiffe_id).into(),
                        )
                        .into());
                    }
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_) => return Err(issuer::Error::MintFailed("mint timed out".into()).into()),
                }
                subs.push((req, rx));
            }
            // Grouped by the process served (its pid is unique while it lives).
            let group = u64::from(self.attested.pinned.pid());
            self.updates = subs.iter().map(|(_, sub)| sub.updates(group)).collect();
            self.subs = subs;
            for (req, rx) in old {
                drop(rx);
                self.ctx.issuer.release(req);
            }
        }
        self.identities = identities;
        Ok(())
    }

    /// Whether `svid` may be delivered now: never once it has expired.
    fn valid_now(&self, svid: &X509Svid) -> bool {
        svid.not_after > self.ctx.clock.now()
    }

    /// After an SVID update: a subscription that failed (or holds an expired SVID) ends the stream
    /// with `Unavailable`; an expired SVID is never sent.
    fn check_svids(&self) -> Result<(), Error> {
        for (req, rx) in &self.subs {
            match &*rx.borrow() {
                SvidState::Failed(why) => {
                    return Err(issuer::Error::MintFailed(why.clone()).into());
                }
                SvidState::Ready(svid) if !self.valid_now(svid) => {
                    return Err(issuer::Error::MintFailed(
                        format!("the SVID for {} has expired", req.spiffe_id).into(),
                    )
                    .into());
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn current_svids(&self) -> Vec<Option<Arc<X509Svid>>> {
        self.subs
            .iter()
            .map(|(_, rx)| match &*rx.borrow() {
                SvidState::Ready(svid) => Some(svid.clone()),
                _ => None,
            })
            .collect()
    }

    fn render_now(&self) -> M {
        let svids = self.current_svids();
        let policy = self.policy.borrow().clone();
        let ca = self.ca.borrow().clone();
        (self.render)(&View {
            trust_domain: &self.ctx.trust_domain,
            identities: &self.identities,
            svids: &svids,
            ca: &ca,
            policy: &policy,
        })
    }

    /// The current state, if it differs from what was last sent (ST-3: no message when nothing
    /// changed), recorded in the inventory first.
    async fn changed_message(&mut self) -> Result<Option<M>, Error> {
        let msg = self.render_now();
        if self.last.as_ref() == Some(&msg) {
            return Ok(None);
        }
        self.record_delivery().await?;
        self.last = Some(msg.clone());
        Ok(Some(msg))
    }

    /// Records the SVIDs about to be delivered (durably, before delivery) and withdraws the ones this
    /// stream delivered before that the new message no longer carries.
    async fn record_delivery(&mut self) -> Result<(), Error> {
        if !self.with_svids {
            return Ok(());
        }
        let svids = self.current_svids();
        let mut now_delivered = HashMap::new();
        let mut deliveries = Vec::new();
        for (identity, svid) in self.identities.iter().zip(&svids) {
            let Some(svid) = svid else { continue };
            now_delivered.insert(identity.spiffe_id.as_str().to_owned(), svid.serial.clone());
            let before = self.delivered.get(identity.spiffe_id.as_str());
            if before != Some(&svid.serial) {
                crate::metrics::metrics().delivered(identity.spiffe_id.as_str());
                deliveries.push(Delivery {
                    kind: Kind::X509,
                    serial: svid.serial.clone(),
                    spiffe_id: identity.spiffe_id.as_str().to_owned(),
                    entry_id: identity.entry_id.as_str().to_owned(),
                    issued_at: svid.not_before,
                    not_after: svid.not_after,
                    rotation: before.is_some(),
                    permitted_by: self.permitted_by.get(identity.spiffe_id.as_str()).cloned(),
                });
            }
        }
        self.ctx
            .inventory
            .record(&self.attested.holder, &deliveries)
            .await
            .map_err(Error::Inventory)?;
        if !deliveries.is_empty() {
            self.ctx.lifecycle.watch(&self.attested.holder);
        }
        let mut superseded = Vec::new();
        let mut removed = Vec::new();
        for (id, serial) in &self.delivered {
            match now_delivered.get(id) {
                Some(s) if s == serial => {}
                Some(_) => superseded.push((Kind::X509, serial.clone())),
                None => removed.push((Kind::X509, serial.clone())),
            }
        }
        let holder = self.attested.holder.holder;
        if !superseded.is_empty() {
            self.ctx
                .inventory
                .withdraw(holder, Some(superseded), Reason::Superseded);
        }
        if !removed.is_empty() {
            self.ctx
                .inventory
                .withdraw(holder, Some(removed), Reason::EntitlementRemoved);
        }
        self.delivered = now_delivered;
        Ok(())
    }

    fn delivered_keys(&self) -> Vec<(Kind, String)> {
        self.delivered
            .values()
            .map(|s| (Kind::X509, s.clone()))
            .collect()
    }
}

/// What woke a stream.
enum Woke {
    Shutdown,
    /// Entries or templates changed.
    Policy,
    /// Cedar policies were reloaded.
    Cedar,
    /// The trust bundle changed.
    Bundle,
    /// One of its SVIDs was published (a rotation, or a failure).
    Svid,
    /// The caller exec'd.
    Exec,
}

/// An open stream after its first message: the next message is made when whoever reads the
/// stream asks for it (the response body's task, see `service::Watch`), so a push costs no task
/// or channel hop of its own, and dropping it (the caller cancelled or went away) ends the watch.
/// It holds the stream's permits until then.
pub(super) struct Following<M> {
    watcher: Watcher<M>,
    wakers: Wakers,
    _permit: (OwnedSemaphorePermit, crate::limits::StreamSlot),
}

impl<M: Clone + PartialEq + Send + 'static> Following<M> {
    /// The next message once something changes; an error status when the stream must end (the
    /// caller lost its entitlement, changed, or the agent stops); `None` when the caller went away.
    /// After anything but a message the stream has ended: `service::Watch` drops it (and its
    /// permits) then, and polls each call to completion (it is not cancel-safe).
    pub(super) async fn next(&mut self) -> Option<Result<M, Status>> {
        // No exit watch of its own: when the caller exits its connection closes (the stream is
        // dropped), the inventory's per-process watch withdraws its credentials, and a connection
        // handed to another process is caught by the re-attestation before the next push.
        let w = &mut self.watcher;
        let wakers = &mut self.wakers;
        let pid = w.attested.pinned.pid();
        loop {
            // An agent-wide change not handled yet is handled before waiting (one at a time: an
            // announcement of two is then found here again).
            let woke = match agent_event(w) {
                Some(woke) => woke,
                None => tokio::select! {
                    () = std::future::poll_fn(|cx| wakers.events.poll_changed(cx)) => continue,
                    () = std::future::poll_fn(|cx| wakers.policy.poll_changed(cx)) => Woke::Policy,
                    () = std::future::poll_fn(|cx| svid_published(&mut w.updates, cx)) => Woke::Svid,
                    // The caller exec'd: re-attested below before anything is sent.
                    () = std::future::poll_fn(|cx| exec_fired(&mut wakers.exec, &wakers.exec_source, cx)) => Woke::Exec,
                },
            };
            // Counted from here until the message is handed over (or the push ends).
            let _pushing = Pushing::start();
            // Woken by an SVID's publication: the count read then ([`crate::issuer::publications`]).
            let mut woken_by = None;
            let outcome = match woke {
                Woke::Shutdown => Err(Error::ShuttingDown),
                Woke::Policy => w.on_policy_change().await,
                Woke::Cedar => {
                    w.cedar.borrow_and_update();
                    w.rematch().await
                }
                Woke::Bundle => {
                    w.ca.borrow_and_update();
                    Ok(())
                }
                Woke::Svid => {
                    woken_by = Some(crate::issuer::publications());
                    w.check_svids()
                }
                Woke::Exec => {
                    // Afresh, and not by another stream's attestation from before the exec.
                    w.attested.pinned.forget_attestation();
                    Ok(())
                }
            };
            // An exec reported since (kept as a permit while this stream was busy): afresh.
            if woken_by.is_some() && exec_reported(wakers) {
                w.attested.pinned.forget_attestation();
                woken_by = None;
            }
            let outcome = match outcome {
                Ok(()) => w.reattest(woken_by).await,
                Err(e) => Err(e),
            };
            let e = match outcome {
                Ok(()) => match w.changed_message().await {
                    Ok(None) => continue,
                    Ok(Some(msg)) => return Some(Ok(msg)),
                    // The delivery could not be recorded: not sent.
                    Err(e) => e,
                },
                Err(
                    e @ Error::Attestation {
                        source:
                            crate::attest::Error::Kubernetes { .. }
                            | crate::attest::Error::NameService { .. }
                            | crate::attest::Error::NameLookups { .. }
                            | crate::attest::Error::Hashing { .. },
                        ..
                    },
                ) => {
                    // The pod could not be resolved (kubelet unreachable, never seen), or the
                    // name service did not answer (or the user's lookups were all taken), or the
                    // executable could not be hashed now: say why.
                    e
                }
                Err(Error::Attestation { source, .. })
                    if !matches!(source, crate::attest::Error::Changed { .. }) =>
                {
                    tracing::debug!(pid, "caller gone during re-attestation; stream closed");
                    return None;
                }
                Err(e) => {
                    // Lost its entitlement, or the pinned process exec'd or changed credentials
                    // (cut off, never followed): what it holds is withdrawn.
                    let cut_off = match e {
                        Error::PolicyDenied(_) => Some(Reason::PolicyDenied),
                        Error::EntitlementLost
                        | Error::Attestation {
                            source: crate::attest::Error::Changed { .. },
                            ..
                        } => Some(Reason::EntitlementRemoved),
                        _ => None,
                    };
                    if let Some(reason) = cut_off {
                        w.ctx.inventory.withdraw(
                            w.attested.holder.holder,
                            Some(w.delivered_keys()),
                            reason,
                        );
                    }
                    e
                }
            };
            return Some(Err(to_status(&e)));
        }
    }
}

/// FetchX509SVID messages: one X509SVID per identity, default first (ST-7), own bundle in each (TB-1),
/// federated bundles for the entries that federate (TB-2).
pub(super) fn render_svids(view: &View<'_>) -> crate::proto::X509svidResponse {
    let bundle = view.ca.bundle.der_shared();
    let svids = view
        .identities
        .iter()
        .zip(view.svids)
        .filter_map(|(identity, svid)| {
            let svid = svid.as_ref()?;
            Some(crate::proto::X509svid {
                spiffe_id: identity.spiffe_id.as_str().to_owned(),
                x509_svid: svid.chain_shared(),
                x509_svid_key: svid.key_shared(),
                bundle: bundle.clone(),
                hint: identity.hint.clone(),
            })
        })
        .collect();
    let federated_bundles = registry::federated_bundles(view.identities, view.policy)
        .into_iter()
        .map(|(td, b)| (td, b.concat_der()))
        .collect();
    crate::proto::X509svidResponse {
        svids,
        crl: vec![],
        federated_bundles,
    }
}

/// FetchX509Bundles messages: the own trust domain's bundle and the federated ones the caller may see.
pub(super) fn render_bundles(view: &View<'_>) -> crate::proto::X509BundlesResponse {
    let mut bundles: std::collections::HashMap<String, Vec<u8>> =
        registry::federated_bundles(view.identities, view.policy)
            .into_iter()
            .map(|(td, b)| (td, b.concat_der()))
            .collect();
    bundles.insert(view.trust_domain.id_string(), view.ca.bundle.concat_der());
    crate::proto::X509BundlesResponse {
        crl: vec![],
        bundles,
    }
}
