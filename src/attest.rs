//! Attestation: what the kernel says about a pinned caller, as selectors.
//!
//! Attestors read facts and nothing else: they never mint or cache credentials.

pub mod caller;
pub mod k8s;
pub mod unix;

use crate::selector::SelectorSet;
use crate::sys;
pub use caller::{Caller, ExeFacts, PinnedProcess};

/// Why a caller could not be attested. Any of these means no identity.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot pin the caller: {0}")]
    Pin(#[source] sys::Error),
    #[error("reading the caller's process facts: {0}")]
    Read(#[source] sys::Error),
    #[error("the caller (pid {pid}) exited during attestation")]
    Exited { pid: u32 },
    /// The pinned process is no longer what connected: the connection is cut off for good.
    #[error("the process (pid {pid}) changed its {what} since it connected")]
    Changed { pid: u32, what: &'static str },
    /// The caller is in a pod the agent could not resolve (message names pod and container).
    #[error("{message}")]
    Kubernetes { message: String, retryable: bool },
    /// The name service did not answer for the caller's uid or gid in time (a lookup is still
    /// under way): no identity for now.
    #[error("the name service did not answer for {kind} {id} within {} s", waited.as_secs())]
    NameService {
        kind: &'static str,
        id: u32,
        waited: std::time::Duration,
    },
    /// The callers of one user already hold every name-service lookup one user may have under
    /// way, and none ended in time to look up the caller's uid or gid: no identity for now.
    #[error(
        "the name service has not answered {max} lookups for callers of user {user} (at most {max} \
         per user), and {kind} {id} waited {} s for one of them to end",
        waited.as_secs()
    )]
    NameLookups {
        kind: &'static str,
        id: u32,
        user: u32,
        max: usize,
        waited: std::time::Duration,
    },
    /// The caller's executable could not be read for `unix:sha256` now (no turn came in time, or
    /// it changed while it was read): no identity for now.
    #[error("the executable of pid {pid} could not be hashed for unix:sha256 now: {why}")]
    Hashing { pid: u32, why: String },
    #[error("attestation task failed: {0}")]
    Task(String),
}

/// One source of selectors. Attestors run on the blocking pool: they read `/proc` and may hash files.
pub trait Attestor: Send + Sync + 'static {
    /// A short name for logs (`unix`, `k8s`).
    fn name(&self) -> &'static str;
    /// Adds what this attestor learns about the process to `out`. May block (hashing, name service).
    fn attest(&self, process: &PinnedProcess, out: &mut SelectorSet) -> Result<(), Error>;

    /// Like [`Attestor::attest`], but using only work that cannot block (procfs reads, caches).
    /// Returns `Ok(false)` when slow work is needed; the caller then runs [`Attestor::attest`] on the
    /// blocking pool. The default never takes the fast path.
    fn attest_cached(
        &self,
        _process: &PinnedProcess,
        _out: &mut SelectorSet,
    ) -> Result<bool, Error> {
        Ok(false)
    }

    /// The fast path's last step, after the confirm proved every fact the caller's: what can be
    /// known from the executable as that confirm found it (`exe`: its stamps and path), such as a
    /// cached hash. `Ok(false)`: slow work is needed after all ([`Attestor::attest`] on the
    /// blocking pool). The default adds nothing.
    fn attest_cached_exe(
        &self,
        _process: &PinnedProcess,
        _exe: &ExeFacts,
        _out: &mut SelectorSet,
    ) -> Result<bool, Error> {
        Ok(true)
    }

    /// Slow work that can be awaited instead of blocked on (a kubelet request): started before
    /// [`Attestor::attest`] runs on the blocking pool, so that call finds its answer cached and no
    /// blocking thread waits on the network. The default has none.
    fn prefetch(&self, _process: &PinnedProcess) -> Option<Prefetch> {
        None
    }
}

/// Async work an attestor can do ahead of its blocking part; an error ends the attestation there.
pub type Prefetch = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Error>> + Send>>;

/// Runs every attestor's [`Attestor::prefetch`] for `pinned`, on the async runtime.
pub async fn prefetch(
    pinned: &PinnedProcess,
    attestors: &[Box<dyn Attestor>],
) -> Result<(), Error> {
    for attestor in attestors {
        if let Some(work) = attestor.prefetch(pinned) {
            work.await?;
        }
    }
    Ok(())
}

/// Pins the caller and attests it with cached, non-blocking work only. `Ok(None)` when an attestor
/// needs slow work: use [`attest_blocking`] on the blocking pool instead.
///
/// The directory is opened without the liveness check of [`PinnedProcess::pin`]: cached reads are
/// cheap, and the confirm after them proves the directory was the caller's (or refuses).
pub fn attest_fast(
    caller: &Caller,
    attestors: &[Box<dyn Attestor>],
) -> Result<Option<(PinnedProcess, SelectorSet)>, Error> {
    let pinned = PinnedProcess::open(caller)?;
    Ok(reattest_fast(&pinned, attestors)?.map(|s| (pinned, s)))
}

/// Attests an already pinned process again (it may have exec'd another program), with cached work
/// only; `Ok(None)` when slow work is needed ([`reattest_blocking`]).
///
/// The executable is read last. Where the connection read it before and finds it with the same
/// stamps, that one `stat` is the confirm ([`PinnedProcess::confirm_known`]); otherwise its path is
/// read and the full [`PinnedProcess::confirm`] follows, and what it found is kept for the next
/// attestation when the stamps did not change across the read.
pub fn reattest_fast(
    pinned: &PinnedProcess,
    attestors: &[Box<dyn Attestor>],
) -> Result<Option<SelectorSet>, Error> {
    let mut selectors = SelectorSet::new();
    for attestor in attestors {
        if !attestor.attest_cached(pinned, &mut selectors)? {
            return Ok(None);
        }
    }
    let exe = match pinned.known_exe() {
        Some(known) if pinned.confirm_known(&known)? => known,
        _ => read_exe(pinned)?,
    };
    for attestor in attestors {
        if !attestor.attest_cached_exe(pinned, &exe, &mut selectors)? {
            return Ok(None);
        }
    }
    Ok(Some(selectors))
}

/// Reads the executable's path and confirms (program, mount namespace, alive) after it; keeps what
/// it found for the connection when the stamps before the path read equal those of the confirm
/// (nothing renamed or linked in between). The stamps before are read only when a path is.
fn read_exe(pinned: &PinnedProcess) -> Result<ExeFacts, Error> {
    let before = match pinned.shares_agent_mount_ns() {
        true => Some(pinned.dir.exe_stamp().map_err(read_error)?),
        false => None,
    };
    let path = pinned.read_exe_path()?;
    let stamp = pinned.confirm()?;
    let facts = ExeFacts { stamp, path };
    if before.is_none_or(|b| b == stamp) {
        pinned.remember_exe(facts.clone());
    }
    Ok(facts)
}

/// Attests an already pinned process again. Blocking.
pub fn reattest_blocking(
    pinned: &PinnedProcess,
    attestors: &[Box<dyn Attestor>],
) -> Result<SelectorSet, Error> {
    let mut selectors = SelectorSet::new();
    for attestor in attestors {
        attestor.attest(pinned, &mut selectors)?;
    }
    pinned.confirm()?;
    Ok(selectors)
}

/// Pins the caller and runs every attestor, then proves the process stayed alive throughout.
///
/// Blocking: call from `spawn_blocking`.
pub fn attest_blocking(
    caller: &Caller,
    attestors: &[Box<dyn Attestor>],
) -> Result<(PinnedProcess, SelectorSet), Error> {
    let pinned = PinnedProcess::pin(caller)?;
    let selectors = reattest_blocking(&pinned, attestors)?;
    Ok((pinned, selectors))
}

fn read_error(e: sys::Error) -> Error {
    match e {
        sys::Error::Exited { pid } => Error::Exited { pid },
        e => Error::Read(e),
    }
}
