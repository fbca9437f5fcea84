//! Who is on the other end of a connection, pinned so that a recycled PID can never stand in for it.
//!
//! At accept the kernel gives the peer's credentials and, since Linux 6.5, a pidfd for the exact
//! process that connected (`SO_PEERPIDFD`). Before any fact is read, [`PinnedProcess::pin`] opens
//! `/proc/<pid>` and proves through the pidfd that the process is still the one that connected; facts
//! are then read relative to that directory, and [`PinnedProcess::confirm`] proves the process was
//! alive for the whole read.

use std::os::fd::BorrowedFd;
use std::sync::Arc;

use crate::sys::peer::{self, PeerCred};
use crate::sys::pidfd::Pidfd;
use crate::sys::proc::ProcDir;
use crate::sys::{self, Error};

/// How the pidfd of a caller was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidfdSource {
    /// `SO_PEERPIDFD`: the kernel's own record of the connecting process.
    Socket,
    /// `pidfd_open(pid)` right at accept, on kernels without `SO_PEERPIDFD`; backed by a start-time
    /// check (see [`PinnedProcess::pin`]).
    PidOpenAtAccept,
}

/// What was learned about a connection at accept.
#[derive(Debug)]
pub struct Caller {
    /// The kernel's record of the connecting process.
    pub cred: PeerCred,
    pidfd: Arc<Pidfd>,
    source: PidfdSource,
    accepted_boottime_ns: u64,
    /// The pidfs inode of the pidfd, looked up once per connection.
    instance: std::sync::OnceLock<Option<u64>>,
}

/// A caller whose `/proc` directory is open and proven to belong to it.
#[derive(Debug)]
pub struct PinnedProcess {
    pub cred: PeerCred,
    pub pidfd: Arc<Pidfd>,
    pub dir: ProcDir,
    /// With the PID, names this process among all that ever had the PID (the inventory's holder
    /// key): the pidfs inode where the kernel has pidfs, else the start time in clock ticks.
    pub instance: u64,
}

impl Caller {
    /// Reads the peer's credentials and pidfd from an accepted Unix socket.
    pub fn from_socket(fd: BorrowedFd<'_>) -> Result<Self, Error> {
        let accepted_boottime_ns = sys::boottime_ns();
        let cred = peer::peer_cred(fd)?;
        let (pidfd, source) = match peer::peer_pidfd(fd)? {
            Some(fd) => (Pidfd::from_owned(fd), PidfdSource::Socket),
            None => (Pidfd::open(cred.pid)?, PidfdSource::PidOpenAtAccept),
        };
        Ok(Self {
            cred,
            pidfd: Arc::new(pidfd),
            source,
            accepted_boottime_ns,
            instance: std::sync::OnceLock::new(),
        })
    }

    /// The pidfs inode of the caller's pidfd (see [`Pidfd::instance`]), computed once.
    fn instance(&self) -> Option<u64> {
        *self.instance.get_or_init(|| self.pidfd.instance())
    }

    /// The pidfd taken at accept (readable once the caller exits).
    pub fn pidfd(&self) -> &Arc<Pidfd> {
        &self.pidfd
    }

    /// How the pidfd was obtained.
    pub fn pidfd_source(&self) -> PidfdSource {
        self.source
    }
}

impl PinnedProcess {
    /// Opens the caller's `/proc` directory and proves it belongs to the caller.
    ///
    /// The process was alive when it connected. If the pidfd shows it alive *after* the directory was
    /// opened, it was alive throughout, so its PID cannot have been reused in between and the
    /// directory is the caller's. Any check that cannot be made is an error: no identity, no guess.
    pub fn pin(caller: &Caller) -> Result<Self, Error> {
        let pid = caller.cred.pid;
        let dir = ProcDir::open(pid)?;
        if caller.source == PidfdSource::PidOpenAtAccept {
            // Without SO_PEERPIDFD the pidfd was opened by PID, which a newcomer could hold. A process
            // that started after the connection was accepted cannot be the one that connected.
            let start_ticks = dir.start_time_ticks()?;
            let started_ns =
                start_ticks.saturating_mul(1_000_000_000 / sys::clock_ticks_per_second());
            if started_ns > caller.accepted_boottime_ns {
                return Err(Error::PidReused { pid });
            }
        }
        let pinned = Self {
            cred: caller.cred,
            pidfd: caller.pidfd.clone(),
            instance: match caller.instance() {
                Some(ino) => ino,
                None => dir.start_time_ticks()?,
            },
            dir,
        };
        pinned.confirm()?;
        Ok(pinned)
    }

    /// Proves the pinned process is still alive. Call after reading facts.
    ///
    /// The pidfd and the PID in the peer credentials name the same kernel process (both were taken
    /// from the socket, or the pidfd was opened by that PID and start-time checked), so "not exited"
    /// is the whole proof; while it holds, the PID cannot have been reused.
    pub fn confirm(&self) -> Result<(), Error> {
        if self.pidfd.has_exited()? {
            return Err(Error::Exited { pid: self.cred.pid });
        }
        Ok(())
    }

    /// The caller's PID.
    pub fn pid(&self) -> u32 {
        self.cred.pid
    }
}
