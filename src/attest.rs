//! Attestation: what the kernel says about a pinned caller, as selectors.
//!
//! Attestors read facts and nothing else: they never mint or cache credentials.

pub mod caller;
pub mod k8s;
pub mod unix;

use crate::selector::SelectorSet;
use crate::sys;
pub use caller::{Caller, PinnedProcess};

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

    /// The fast path's last step, after [`PinnedProcess::confirm`] proved every fact the caller's:
    /// what can be known from the executable's stamps that confirm read (`exe`), such as a cached
    /// hash. `Ok(false)`: slow work is needed after all ([`Attestor::attest`] on the blocking pool).
    /// The default adds nothing.
    fn attest_cached_exe(
        &self,
        _process: &PinnedProcess,
        _exe: &crate::sys::proc::FileStamp,
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

/// Async work an attestor can do ahead of its blocking part.
pub type Prefetch = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Runs every attestor's [`Attestor::prefetch`] for `pinned`, on the async runtime.
pub async fn prefetch(pinned: &PinnedProcess, attestors: &[Box<dyn Attestor>]) {
    for attestor in attestors {
        if let Some(work) = attestor.prefetch(pinned) {
            work.await;
        }
    }
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
    let exe = pinned.confirm()?;
    for attestor in attestors {
        if !attestor.attest_cached_exe(pinned, &exe, &mut selectors)? {
            return Ok(None);
        }
    }
    Ok(Some(selectors))
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
