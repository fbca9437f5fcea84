//! Who is on the other end of a connection, pinned so that a recycled PID can never stand in for it,
//! and the ceiling of what that connection can ever get.
//!
//! At accept the kernel gives the peer's credentials (`SO_PEERCRED`, taken at `connect()`) and, since
//! Linux 6.5, a pidfd for the exact process that connected (`SO_PEERPIDFD`). The agent records then
//! the [`Ceiling`]: those credentials (all of them, as `/proc` shows them, which must agree with
//! `SO_PEERCRED`), the executable the process runs and its mount namespace. Whoever holds the socket
//! can speak on it (fork, fd passing), so every later attestation on the connection is bounded by
//! it: a pinned process whose credentials or program changed is cut off ([`Error::Changed`]), as is
//! one found in another mount namespace when its executable's path is read, and must connect again
//! to be attested as what it is now. Identity never
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
//!
//! The executable's path is read only where it means what it says (the caller in the agent's mount
//! namespace, checked after the read) and kept for the connection with the stamps of the file it
//! named ([`ExeFacts`]). A later attestation on a proven directory that finds the same stamps uses
//! it and reads neither the path nor the mount namespace again ([`PinnedProcess::confirm_known`]):
//! no selector depends on the mount namespace except through that path.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock};

use super::Error;
use crate::selector::SelectorSet;
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
    /// Its mount namespace at accept: where its executable's path is read ([`ExeFacts`]); a path
    /// read while the caller is elsewhere is refused ([`Error::Changed`]).
    pub mount_ns: NsId,
    /// Its user namespace at accept.
    pub user_ns: NsId,
    /// Whether it could change its supplementary groups without an exec: `CAP_SETGID` was in its
    /// permitted set at accept. The permitted set never grows without an exec or another user
    /// namespace, so a process without it keeps the groups it connected with for as long as it
    /// stays in `user_ns` — and then its uids and gids alone (one ioctl) say whether its
    /// credentials changed; otherwise `/proc/<pid>/status` is read on every attestation.
    pub may_set_groups: bool,
    /// The uid whose fair shares (`limits.rs`) the connection counts against: its own effective
    /// uid, or, for a caller in a user namespace a user other than root made, that user's
    /// ([`sys::userns::share_owner`]): a user's subordinate uids are still that user.
    pub share_uid: u32,
    /// When `share_uid` is another user's and that user made the caller's user namespace in the
    /// agent's own: the host uids it maps (`(first, count)`), all that user's, so the accept of a
    /// later connection from any of them counts against that user before anything else is read
    /// ([`crate::limits::Shares::owner_of`]). Empty otherwise.
    pub share_uids: Vec<(u32, u32)>,
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
    /// The executable as the connection last read it ([`ExeFacts`]).
    known_exe: KnownExe,
    /// The connection's newest successful re-attestation ([`Recent`]).
    recent: Recent,
}

/// What the agent knows of a caller's executable: the stamps `stat` read through its `exe` link,
/// and the path that link named, read before those stamps and in the agent's mount namespace (else
/// `None`: no `unix:path` selector).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExeFacts {
    pub stamp: FileStamp,
    pub path: Option<Arc<str>>,
}

/// Where a connection keeps its [`ExeFacts`]: filled by an attestation that read the path and
/// proved, after the read, that the program and the mount namespace were still the ceiling's and the
/// stamps unchanged across the read; replaced whenever an attestation reads them again.
type KnownExe = Arc<Mutex<Option<ExeFacts>>>;

/// Where a connection keeps its newest successful re-attestation, with the issuer's publication
/// count read before it began ([`PinnedProcess::recent_attestation`]).
type Recent = Arc<Mutex<Option<(u64, Arc<SelectorSet>)>>>;

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
    /// The connection's [`ExeFacts`].
    known_exe: KnownExe,
    /// The connection's newest re-attestation.
    recent: Recent,
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
        let user_ns = dir.user_ns().map_err(pin_error)?;
        // Read before the liveness check below, which proves the directory was the caller's.
        let (share_uid, made_by_host_user) = match agent_user_ns() {
            Some(agent) if agent != user_ns => {
                let ns = OwnedFd::from(dir.open_file("ns/user").map_err(pin_error)?);
                match sys::userns::share_owner(ns, agent.0) {
                    Some(owner) => (owner.uid, owner.made_in_agent_ns),
                    None => (cred.uid, false),
                }
            }
            _ => (cred.uid, false),
        };
        // The map of a namespace a host user made (other than the caller's own uid's): every uid
        // in it is that user's. Deeper namespaces are left out: the map of one made inside a
        // container may hold uids of the container that are not its maker's.
        let share_uids = if share_uid == cred.uid || !made_by_host_user {
            Vec::new()
        } else {
            dir.open_file("uid_map")
                .ok()
                .and_then(|mut f| {
                    let mut text = String::new();
                    std::io::Read::read_to_string(&mut f, &mut text).ok()?;
                    Some(sys::userns::mapped_uids(&text))
                })
                .unwrap_or_default()
        };
        let ceiling = Ceiling {
            exe: dir.exe_id().map_err(pin_error)?,
            mount_ns: dir.mount_ns().map_err(pin_error)?,
            user_ns,
            may_set_groups: permitted & CAP_SETGID != 0,
            creds,
            share_uid,
            share_uids,
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
            known_exe: KnownExe::default(),
            recent: Recent::default(),
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
            known_exe: caller.known_exe.clone(),
            recent: caller.recent.clone(),
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
        self.same_program(&exe)?;
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

    /// The [`ExeFacts`] this connection read before, if any, when this attestation reads through the
    /// connection's proven directory (the only case [`PinnedProcess::confirm_known`] may be used).
    pub fn known_exe(&self) -> Option<ExeFacts> {
        // Proven: this very directory is the one a confirm kept for the connection (a stream's
        // pinned process, opened before any confirm, is proven by its first).
        if !self.proven.get().is_some_and(|d| Arc::ptr_eq(d, &self.dir)) {
            return None;
        }
        self.known_exe.lock().ok()?.clone()
    }

    /// What a re-attestation of this connection's process found, if one succeeded that began after
    /// the issuer's publication count reached `since` (read by the caller after the publication
    /// that woke it): a re-attestation made after that publication, of this same pinned process,
    /// by another stream of the connection woken by it. `None`: attest afresh.
    pub fn recent_attestation(&self, since: u64) -> Option<Arc<SelectorSet>> {
        match &*self.recent.lock().ok()? {
            Some((at, selectors)) if *at >= since => Some(selectors.clone()),
            _ => None,
        }
    }

    /// Keeps a successful re-attestation, begun when the publication count was `at`, for the
    /// connection's other streams (the newest is kept; shared, not copied, with each of them).
    pub fn keep_attestation(&self, at: u64, selectors: Arc<SelectorSet>) {
        if let Ok(mut slot) = self.recent.lock()
            && slot.as_ref().is_none_or(|(kept, _)| *kept <= at)
        {
            *slot = Some((at, selectors));
        }
    }

    /// Forgets the connection's kept re-attestation (one failed, or the process exec'd): the
    /// connection's other streams attest afresh.
    pub fn forget_attestation(&self) {
        if let Ok(mut slot) = self.recent.lock() {
            *slot = None;
        }
    }

    /// Keeps `facts` for the connection's later attestations.
    pub fn remember_exe(&self, facts: ExeFacts) {
        if let Ok(mut slot) = self.known_exe.lock() {
            *slot = Some(facts);
        }
    }

    /// The confirm of an attestation through the connection's proven directory whose executable
    /// was read before (`known`): one `stat` of the executable, read last. `Ok(false)`: its stamps
    /// differ from `known`'s (renamed, linked, unlinked, rewritten, its mode changed), so its path
    /// must be read again ([`PinnedProcess::read_exe_path`], then [`PinnedProcess::confirm`]).
    ///
    /// Why this `stat` is enough:
    /// - *Alive.* The directory is bound to the caller (proven), so every read through it and
    ///   through the pidfd was the caller's. The `exe` link resolves only while the process has its
    ///   memory, which it gives up at exit before it closes a descriptor; a `stat` that succeeds
    ///   after every other read proves the caller had not exited when they were made (an exited one
    ///   is [`Error::Exited`]).
    /// - *Same program.* Device and inode equal the ceiling's, as in [`PinnedProcess::confirm`].
    /// - *Same path.* Stamps equal to those read before the path (`known`): a rename, link or
    ///   unlink of the file changes its change time. A directory above it renamed does not, nor
    ///   an exec of the same file through another name: the path stays the one the file had when
    ///   it was read (the same file, in the agent's mount namespace).
    /// - *The mount namespace.* Nothing else a selector says depends on it: the path is never read
    ///   here, and a path read again ([`PinnedProcess::confirm`]) is checked against the ceiling's
    ///   namespace after the read. A process that enters another mount namespace keeps the answer
    ///   it had (same ids, same program, the path read in the agent's namespace) until its
    ///   executable's stamps change, and is cut off then.
    pub fn confirm_known(&self, known: &ExeFacts) -> Result<bool, Error> {
        let exe = self.dir.exe_stamp().map_err(pin_error)?;
        self.same_program(&exe)?;
        Ok(exe == known.stamp)
    }

    /// The executable `exe` (stamps read through the `exe` link) is the one of the ceiling, or the
    /// caller exec'd another: [`Error::Changed`].
    fn same_program(&self, exe: &FileStamp) -> Result<(), Error> {
        if exe.id != self.ceiling.exe {
            return Err(Error::Changed {
                pid: self.cred.pid,
                what: "program (it exec'd another executable)",
            });
        }
        Ok(())
    }

    /// The executable's path as a `unix:path` value: `None` outside the agent's mount namespace
    /// (a path there can name any file the caller mounted) or when it is not UTF-8. Read before the
    /// confirm that proves it the caller's.
    pub fn read_exe_path(&self) -> Result<Option<Arc<str>>, Error> {
        if !self.shares_agent_mount_ns() {
            return Ok(None);
        }
        let path = self.dir.exe_path().map_err(pin_error)?;
        match path.to_str() {
            Some(p) => Ok(Some(Arc::from(p))),
            None => {
                tracing::debug!(
                    pid = self.pid(),
                    "executable path is not UTF-8; no unix:path selector"
                );
                Ok(None)
            }
        }
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

    /// The uid whose fair shares the connection counts against ([`Ceiling::share_uid`]).
    pub fn share_uid(&self) -> u32 {
        self.ceiling.share_uid
    }
}

/// The agent's own user namespace, read once (`None` if it cannot be read: then every caller counts
/// against its own uid's shares).
fn agent_user_ns() -> Option<NsId> {
    static NS: OnceLock<Option<NsId>> = OnceLock::new();
    agent_ns(&NS, ProcDir::user_ns)
}

/// The agent's own mount namespace, read once (`None` if it cannot be read: then no caller is
/// taken to share it).
fn agent_mount_ns() -> Option<NsId> {
    static NS: OnceLock<Option<NsId>> = OnceLock::new();
    agent_ns(&NS, ProcDir::mount_ns)
}

/// One of the agent's own namespaces, read into `cell` on first use.
fn agent_ns(
    cell: &OnceLock<Option<NsId>>,
    read: fn(&ProcDir) -> Result<NsId, sys::Error>,
) -> Option<NsId> {
    *cell.get_or_init(|| {
        ProcDir::open(std::process::id())
            .and_then(|d| read(&d))
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

    /// What a connection knows of its caller's executable: nothing until an attestation read it;
    /// then its stamps and path, offered only through the proven directory. A confirm that finds the
    /// same stamps needs nothing more; other stamps send the attestation back to the path.
    #[test]
    fn the_executable_read_once_is_kept_with_its_stamps() {
        let (a, _b) = UnixStream::pair().unwrap();
        let caller = Caller::from_socket(a.as_fd()).unwrap();
        let first = PinnedProcess::open(&caller).unwrap();
        let unproven = PinnedProcess::open(&caller).unwrap();
        assert_eq!(first.known_exe(), None, "nothing read yet");
        let path = first.read_exe_path().unwrap();
        let stamp = first.confirm().unwrap();
        assert_eq!(path.as_deref(), std::env::current_exe().unwrap().to_str());
        first.remember_exe(ExeFacts {
            stamp,
            path: path.clone(),
        });
        let known = first.known_exe().expect("kept for the connection");
        assert_eq!(known, ExeFacts { stamp, path });
        assert_eq!(
            unproven.known_exe(),
            None,
            "a directory no confirm kept is offered nothing"
        );
        let later = PinnedProcess::open(&caller).unwrap();
        assert_eq!(later.known_exe().as_ref(), Some(&known));
        assert!(later.confirm_known(&known).unwrap());
        let mut renamed = known.clone();
        renamed.stamp.ctime.1 += 1;
        assert!(!later.confirm_known(&renamed).unwrap());
        let (c, _d) = UnixStream::pair().unwrap();
        let other = Caller::from_socket(c.as_fd()).unwrap();
        let other = PinnedProcess::open(&other).unwrap();
        other.confirm().unwrap();
        assert_eq!(other.known_exe(), None, "another connection knows nothing");
    }

    /// A connection's kept re-attestation stands for another of its streams only when it began at
    /// or after the publication that woke that stream; the newest is kept; a failure or an exec
    /// forgets it; another connection never sees it.
    #[test]
    fn a_kept_reattestation_stands_only_for_what_woke_before_it_began() {
        use crate::selector::Selector;
        let (a, _b) = UnixStream::pair().unwrap();
        let caller = Caller::from_socket(a.as_fd()).unwrap();
        let (one, two) = (
            PinnedProcess::open(&caller).unwrap(),
            PinnedProcess::open(&caller).unwrap(),
        );
        let mut found = SelectorSet::new();
        found.insert(Selector::UnixUid(1000));
        let found = Arc::new(found);
        assert_eq!(two.recent_attestation(0), None, "nothing kept yet");
        one.keep_attestation(7, found.clone());
        assert_eq!(two.recent_attestation(7).as_ref(), Some(&found));
        assert_eq!(two.recent_attestation(3).as_ref(), Some(&found));
        assert_eq!(
            two.recent_attestation(8),
            None,
            "began before the publication that woke the stream"
        );
        let mut older = SelectorSet::new();
        older.insert(Selector::UnixUid(1));
        two.keep_attestation(5, Arc::new(older));
        assert_eq!(
            one.recent_attestation(7).as_ref(),
            Some(&found),
            "an older one does not replace the newest"
        );
        let (c, _d) = UnixStream::pair().unwrap();
        let other = Caller::from_socket(c.as_fd()).unwrap();
        assert_eq!(
            PinnedProcess::open(&other).unwrap().recent_attestation(0),
            None
        );
        one.forget_attestation();
        assert_eq!(
            two.recent_attestation(0),
            None,
            "forgotten for every stream"
        );
    }
}
