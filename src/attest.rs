//! Attestation: what the kernel says about a pinned caller, as selectors.
//!
//! Attestors read facts and nothing else: they never mint or cache credentials.

pub mod caller;
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
    #[error("attestation task failed: {0}")]
    Task(String),
}

/// One source of selectors. Attestors run on the blocking pool: they read `/proc` and may hash files.
pub trait Attestor: Send + Sync + 'static {
    /// A short name for logs (`unix`, `k8s`).
    fn name(&self) -> &'static str;
    /// Adds what this attestor learns about the process to `out`.
    fn attest(&self, process: &PinnedProcess, out: &mut SelectorSet) -> Result<(), Error>;
}

/// Pins the caller and runs every attestor, then proves the process stayed alive throughout.
///
/// Blocking: call from `spawn_blocking`.
pub fn attest_blocking(
    caller: &Caller,
    attestors: &[Box<dyn Attestor>],
) -> Result<(PinnedProcess, SelectorSet), Error> {
    let pinned = PinnedProcess::pin(caller).map_err(|e| match e {
        sys::Error::Exited { pid } => Error::Exited { pid },
        e => Error::Pin(e),
    })?;
    let mut selectors = SelectorSet::new();
    for attestor in attestors {
        attestor.attest(&pinned, &mut selectors)?;
    }
    pinned.confirm().map_err(|e| match e {
        sys::Error::Exited { pid } => Error::Exited { pid },
        e => Error::Pin(e),
    })?;
    Ok((pinned, selectors))
}

fn read_error(e: sys::Error) -> Error {
    match e {
        sys::Error::Exited { pid } => Error::Exited { pid },
        e => Error::Read(e),
    }
}
