//! Who is on the other end of a connection, pinned so that a recycled PID can never stand in for it,
//! and the ceiling of what that connection can ever get.
//!
//! At accept the kernel gives the peer's credentials (`SO_PEERCRED`, taken at `connect()`) and, since
//! Linux 6.5, a pidfd for the exact process that connected (`SO_PEERPIDFD`). The agent records then
//! the [`Ceiling`]: those credentials (all of them, as `/proc` shows them, which must agree with
//! `SO_PEERCRED`), the executable the process runs and its mount namespace. Whoever holds the socket
//! can speak on it (fork, fd passing), so every later attestation on the connection is bounded by
//! it: a pinned process whose credentials, program or mount namespace changed is cut off
//! ([`Error::Changed`]) and must connect again to be attested as what it is now. Identity never
//! *follows* a change (a setuid exec must not hand root's SVID to the child that kept the socket).
//!
//! [`PinnedProcess::pin`] opens `/proc/<pid>` and proves through the pidfd that the process is
//! still the one that connected before slow work reads its facts; the cached path opens the
//! directory only ([`PinnedProcess::open`]). Facts are read relative to that directory, and
//! [`PinnedProcess::confirm`] proves, after the last read, that the process was alive throughout
//! (so the directory was its own) and unchanged. The first directory a confirm proves is kept for
//! the connection and used by every later attestation on it (no `open` and `close` per call): a
//! handle on `/proc/<pid>` stays bound to the process it was opened for — once that process is
//! gone, reads through it fail; they never reach a process that takes the PID later.

use std::os::fd::BorrowedFd;
use std::sync::{Arc, OnceLock};

use super::Error;
use crate::sys;
use crate::sys::peer::{self, PeerCred};
use crate::sys::pidfd::Pidfd;
use crate::sys::proc::{Credentials, FileId, FileStamp, NsId, ProcDir};

/// How the pidfd of a caller was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidfdSource {
    /// `SO_PEERPIDFD`: the kernel's own record of the connecting process.
    Socket,
    /// `pidfd_open(pid)` right at accept, on kernels without `SO_PEERPIDFD`; backed by a start-time
    /// check (see [`PinnedProcess::pin`]).
    PidOpenAtAccept,
}

/// What a connection may ever be attested as: the connecting process as the kernel saw it at
/// connect (credentials) and as the agent saw it at accept (program, mount namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ceiling {
    /// Every uid and gid and the supplementary groups; the effective ones equal `SO_PEERCRED`'s.
    pub creds: Credentials,
    /// The executable the process ran at accept.
    pub exe: FileId,
    /// Its mount namespace at accept.
    pub mount_ns: NsId,
    /// Its user namespace at accept.
    pub user_ns: NsId,
    /// Whether it could change its supplementary groups without an exec: `CAP_SETGID` was in its
    /// permitted set at accept. The permitted set never grows without an exec or another user
    /// namespace, so a process without it keeps the groups it connected with for as long as it
    /// stays in `user_ns` — and then its uids and gids alone (one ioctl) say whether its
    /// credentials changed; otherwise `/proc/<pid>/status` is read on every attestation.
    pub may_set_groups: bool,
}

/// `CAP_SETGID`'s bit in a capability set.
const CAP_SETGID: u64 = 1 << 6;

/// What was learned about a connection at accept.
#[derive(Debug)]
pub struct Caller {
    /// The kernel's record of the connecting process.
    pub cred: PeerCred,
    pidfd: Arc<Pidfd>,
    source: PidfdSource,
    ceiling: Arc<Ceiling>,
    /// The pidfs inode of the pidfd, looked up once per connection.
    instance: OnceLock<Option<u64>>,
    /// The caller's `/proc` directory, once a confirm through it succeeded ([`ProvenDir`]).
    proven: ProvenDir,
}

/// Where a connection keeps its caller's `/proc` directory. Filled only by a successful
/// [`PinnedProcess::confirm`] through that directory — the proof that the directory was the
/// caller's — and never replaced; idle connections (no attestation yet) hold none, so the
/// descriptors an idle connection costs stay two (its socket and its pidfd).
type ProvenDir = Arc<OnceLock<Arc<ProcDir>>>;

/// A caller whose `/proc` directory is open and proven to belong to it.
#[derive(Debug)]
pub struct PinnedProcess {
    pub cred: PeerCred,
    pub pidfd: Arc<Pidfd>,
    pub dir: Arc<ProcDir>,
    /// With the PID, names this process among all that ever had the PID (the inventory's holder
    /// key): the pidfs inode where the kernel has pidfs, else the start time in clock ticks.
    pub instance: u64,
    ceiling: Arc<Ceiling>,
    /// The connection's slot for a proven directory (filled by `confirm`).
    proven: ProvenDir,
}

impl Caller {
    /// Reads the peer's credentials and pidfd from an accepted Unix socket and records the ceiling.
    pub fn from_socket(fd: BorrowedFd<'_>) -> Result<Self, Error> {
        Self::from_socket_with(fd, true)
    }

    /// Like [`Caller::from_socket`]; with `use_peer_pidfd` false the `SO_PEERPIDFD` answer is not
    /// used even where the kernel has it, so the path of older kernels runs (and is tested) here.
    pub fn from_socket_with(fd: BorrowedFd<'_>, use_peer_pidfd: bool) -> Result<Self, Error> {
        let accepted_boottime_ns = sys::boottime_ns();
        let cred = peer::peer_cred(fd).map_err(Error::Pin)?;
        let pid = cred.pid;
        let from_socket = if use_peer_pidfd {
            peer::peer_pidfd(fd).map_err(Error::Pin)?
        } else {
            None
        };
        let (pidfd, source) = match from_socket {
            Some(fd) => (Pidfd::from_owned(fd), PidfdSource::Socket),
            None => (
                Pidfd::open(pid).map_err(pin_error)?,
                PidfdSource::PidOpenAtAccept,
            ),
        };
        let dir = ProcDir::open(pid).map_err(pin_error)?;
        if source == PidfdSource::PidOpenAtAccept {
            // Without SO_PEERPIDFD the pidfd was opened by PID, which a newcomer could hold. The
            // process must be older than the accept and must hold the other end of this very
            // connection: a newcomer that took the PID holds no such socket.
            let start_ticks = dir.start_time_ticks().map_err(pin_error)?;
            let started_ns =
                start_ticks.saturating_mul(1_000_000_000 / sys::clock_ticks_per_second());
            if started_ns > accepted_boottime_ns {
                return Err(Error::Pin(sys::Error::PidReused { pid }));
            }
            if !sys::sock_diag::holds_peer_of(fd, &dir).map_err(Error::Pin)? {
                return Err(Error::Pin(sys::Error::PidReused { pid }));
            }
        }
        let (creds, permitted) = dir.status().map_err(pin_error)?;
        let ceiling = Ceiling {
            exe: dir.exe_id().map_err(pin_error)?,
            mount_ns: dir.mount_ns().map_err(pin_error)?,
            user_ns: dir.user_ns().map_err(pin_error)?,
            may_set_groups: permitted & CAP_SETGID != 0,
            creds,
        };
        if pidfd.has_exited().map_err(pin_error)? {
            return Err(Error::Exited { pid });
        }
        // SO_PEERCRED holds the effective ids at connect(); /proc what the process is now. A
        // process that changed in between (a setuid exec right after connecting) gets nothing.
        if ceiling.creds.effective_uid != cred.uid || ceiling.creds.effective_gid != cred.gid {
            return Err(Error::Changed {
                pid,
                what: "credentials (its effective uid or gid differ from those it connected with)",
            });
        }
        Ok(Self {
            cred,
            pidfd: Arc::new(pidfd),
            source,
            ceiling: Arc::new(ceiling),
            instance: OnceLock::new(),
            proven: ProvenDir::default(),
        })
    }

    /// What this connection can ever be attested as.
    pub fn ceiling(&self) -> &Ceiling {
        &self.ceiling
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
    /// Opens the caller's `/proc` directory and proves it belongs to the caller; read its facts,
    /// then [`PinnedProcess::confirm`] proves it unchanged.
    ///
    /// The process was alive when it connected. If the pidfd shows it alive *after* the directory was
    /// opened, it was alive throughout, so its PID cannot have been reused in between and the
    /// directory is the caller's. Any check that cannot be made is an error: no identity, no guess.
    pub fn pin(caller: &Caller) -> Result<Self, Error> {
        let pinned = Self::open(caller)?;
        // Alive after the open: the directory is the caller's. (Whether it is unchanged is for the
        // `confirm` after its facts are read.)
        if pinned.pidfd.has_exited().map_err(pin_error)? {
            return Err(Error::Exited {
                pid: caller.cred.pid,
            });
        }
        Ok(pinned)
    }

    /// Opens the caller's `/proc` directory without proving yet that it is the caller's: for reads
    /// that are cheap and kept only if [`PinnedProcess::confirm`] succeeds after them. Confirm's
    /// "not exited" proves the caller was alive when the directory was opened, so the directory was
    /// its own and every fact read through it was the caller's (a directory handle never moves to a
    /// process that later takes the PID). The cached attestation uses this: one `poll` fewer.
    ///
    /// A connection whose caller was confirmed before reuses that directory (already proven the
    /// caller's): nothing is opened.
    pub fn open(caller: &Caller) -> Result<Self, Error> {
        let dir = match caller.proven.get() {
            Some(dir) => dir.clone(),
            None => Arc::new(ProcDir::open(caller.cred.pid).map_err(pin_error)?),
        };
        let pinned = Self {
            cred: caller.cred,
            pidfd: caller.pidfd.clone(),
            instance: match caller.instance() {
                Some(ino) => ino,
                None => dir.start_time_ticks().map_err(pin_error)?,
            },
            dir,
            ceiling: caller.ceiling.clone(),
            proven: caller.proven.clone(),
        };
        Ok(pinned)
    }

    /// Proves the pinned process is still alive and still what it was at accept (same program, same
    /// mount namespace). Call after reading facts. Returns the stamps of the executable it read
    /// (one `stat`): the last fact read, and proven the caller's.
    ///
    /// The pidfd and the PID in the peer credentials name the same kernel process (both were taken
    /// from the socket, or the pidfd was opened by that PID and checked at accept), so "not exited"
    /// proves the PID was not reused while the facts were read.
    pub fn confirm(&self) -> Result<FileStamp, Error> {
        let pid = self.cred.pid;
        let exe = self.dir.exe_stamp().map_err(pin_error)?;
        let mount_ns = self.dir.mount_ns().map_err(pin_error)?;
        // Liveness after the last read, and before the comparisons: a caller that exited (its PID
        // perhaps taken by another process) is reported as gone, never as changed.
        if self.pidfd.has_exited().map_err(pin_error)? {
            return Err(Error::Exited { pid });
        }
        if exe.id != self.ceiling.exe {
            return Err(Error::Changed {
                pid,
                what: "program (it exec'd another executable)",
            });
        }
        if mount_ns != self.ceiling.mount_ns {
            return Err(Error::Changed {
                pid,
                what: "mount namespace",
            });
        }
        // Alive after the last read through `dir`: it is the caller's, for as long as it is open.
        // The connection keeps the first one proven (a later one is the same process's anyway).
        let _ = self.proven.set(self.dir.clone());
        Ok(exe)
    }

    /// The process's credentials now, which must be exactly those it had at accept.
    pub fn credentials(&self) -> Result<Credentials, Error> {
        let creds = match self.ids_with_fixed_groups()? {
            Some(creds) => creds,
            None => self.dir.credentials().map_err(pin_error)?,
        };
        if creds != self.ceiling.creds {
            // Read through a directory not yet proven the caller's ([`PinnedProcess::open`]), a
            // mismatch may be another process's: the caller is gone then, not changed.
            if self.pidfd.has_exited().map_err(pin_error)? {
                return Err(Error::Exited { pid: self.cred.pid });
            }
            return Err(Error::Changed {
                pid: self.cred.pid,
                what: "credentials (uid, gid or groups)",
            });
        }
        Ok(creds)
    }

    /// The credentials without reading `status`, where that is exact: the uids and gids from the
    /// pidfd, and the groups from the ceiling when the process cannot have changed them (no
    /// `CAP_SETGID` at accept and still in the same user namespace). `None`: read `status`.
    fn ids_with_fixed_groups(&self) -> Result<Option<Credentials>, Error> {
        if self.ceiling.may_set_groups {
            return Ok(None);
        }
        let Some(ids) = self.pidfd.ids(self.cred.pid).map_err(pin_error)? else {
            return Ok(None);
        };
        if self.dir.user_ns().map_err(pin_error)? != self.ceiling.user_ns {
            return Ok(None);
        }
        Ok(Some(Credentials {
            effective_uid: ids.uids[1],
            effective_gid: ids.gids[1],
            supplementary_gids: self.ceiling.creds.supplementary_gids.clone(),
            uids: ids.uids,
            gids: ids.gids,
        }))
    }

    /// Whether the caller's paths mean what they mean to the agent: same mount namespace. Elsewhere
    /// (a container, `unshare -m`) a path can name any file the caller mounted there.
    pub fn shares_agent_mount_ns(&self) -> bool {
        agent_mount_ns().is_some_and(|ns| ns == self.ceiling.mount_ns)
    }

    /// The caller's PID.
    pub fn pid(&self) -> u32 {
        self.cred.pid
    }
}

/// The agent's own mount namespace, read once (`None` if it cannot be read: then no caller is
/// taken to share it).
fn agent_mount_ns() -> Option<NsId> {
    static NS: OnceLock<Option<NsId>> = OnceLock::new();
    *NS.get_or_init(|| {
        ProcDir::open(std::process::id())
            .and_then(|d| d.mount_ns())
            .ok()
    })
}

fn pin_error(e: sys::Error) -> Error {
    match e {
        sys::Error::Exited { pid } => Error::Exited { pid },
        e => Error::Pin(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    /// Nothing is kept before a confirm; the first directory a confirm proves is kept for the
    /// connection (later opens reuse it) and never replaced; another connection has its own.
    #[test]
    fn the_first_confirmed_directory_is_kept_for_the_connection() {
        let (a, _b) = UnixStream::pair().unwrap();
        let caller = Caller::from_socket(a.as_fd()).unwrap();
        let first = PinnedProcess::open(&caller).unwrap();
        let second = PinnedProcess::open(&caller).unwrap();
        assert!(!Arc::ptr_eq(&first.dir, &second.dir), "nothing kept yet");
        first.confirm().unwrap();
        second.confirm().unwrap();
        let third = PinnedProcess::open(&caller).unwrap();
        assert!(
            Arc::ptr_eq(&first.dir, &third.dir),
            "the first proven is kept"
        );
        assert!(Arc::ptr_eq(
            &first.dir,
            &PinnedProcess::pin(&caller).unwrap().dir
        ));
        let (c, _d) = UnixStream::pair().unwrap();
        let other = Caller::from_socket(c.as_fd()).unwrap();
        assert!(!Arc::ptr_eq(
            &first.dir,
            &PinnedProcess::open(&other).unwrap().dir
        ));
    }
}
