//! pidfds: a handle on one process that stays tied to it even if its PID is reused.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Error, check};

/// A process's uids and gids as `PIDFD_GET_INFO` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    /// Real, effective, saved and filesystem uid.
    pub uids: [u32; 4],
    /// Real, effective, saved and filesystem gid.
    pub gids: [u32; 4],
}

/// A pidfd. It refers to one process for its whole life; once that process exits the pidfd becomes
/// readable and never refers to anything else.
#[derive(Debug)]
pub struct Pidfd(OwnedFd);

impl Pidfd {
    /// Wraps a pidfd received from the kernel (for example from `SO_PEERPIDFD`).
    pub fn from_owned(fd: OwnedFd) -> Self {
        Self(fd)
    }

    /// `pidfd_open(pid)`: the process that has this PID now (which may not be the one you meant; the
    /// caller must prove that separately).
    pub fn open(pid: u32) -> Result<Self, Error> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        let fd = check("pidfd_open", ret as libc::c_int)?;
        // SAFETY: the kernel returned a new file descriptor that nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// `pidfd_send_signal`: signals exactly this process; `Err` (ESRCH) once it has exited, whatever
    /// now has its PID.
    pub fn send_signal(&self, sig: i32) -> Result<(), Error> {
        // SAFETY: an open pidfd, a signal number, no siginfo, no flags.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            )
        };
        check("pidfd_send_signal", ret as libc::c_int).map(|_| ())
    }

    /// True once the process has exited (it may still be a zombie). Never blocks.
    pub fn has_exited(&self) -> Result<bool, Error> {
        let mut pfd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let ret = unsafe { libc::poll(&mut pfd, 1, 0) };
        check("poll(pidfd)", ret)?;
        Ok(ret > 0 && (pfd.revents & (libc::POLLIN | libc::POLLHUP)) != 0)
    }

    /// The process's uids and gids (real, effective, saved, filesystem; as this agent's user
    /// namespace sees them) from one `PIDFD_GET_INFO` ioctl (Linux 6.13+): `Ok(None)` where the
    /// kernel lacks it, `Err(Exited)` once the process is gone (a zombie still answers: use
    /// [`Pidfd::has_exited`] for liveness). Supplementary groups are not part of the answer.
    pub fn ids(&self, pid: u32) -> Result<Option<Ids>, Error> {
        /// `struct pidfd_info` as first published (`PIDFD_INFO_SIZE_VER0`, 64 bytes).
        #[repr(C)]
        #[derive(Default)]
        struct PidfdInfo {
            mask: u64,
            cgroupid: u64,
            pid: u32,
            tgid: u32,
            ppid: u32,
            ruid: u32,
            rgid: u32,
            euid: u32,
            egid: u32,
            suid: u32,
            sgid: u32,
            fsuid: u32,
            fsgid: u32,
            exit_code: i32,
        }
        const _: () = assert!(std::mem::size_of::<PidfdInfo>() == 64);
        /// `_IOWR(PIDFS_IOCTL_MAGIC = 0xFF, 11, struct pidfd_info)` for the 64-byte struct.
        const PIDFD_GET_INFO: libc::c_ulong = 0xC040_FF0B;
        const PIDFD_INFO_CREDS: u64 = 1 << 1;
        static UNSUPPORTED: AtomicBool = AtomicBool::new(false);
        if UNSUPPORTED.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let mut info = PidfdInfo {
            mask: PIDFD_INFO_CREDS,
            ..PidfdInfo::default()
        };
        // SAFETY: an open pidfd and a writable struct of exactly the size the request encodes.
        let ret = unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                PIDFD_GET_INFO,
                std::ptr::from_mut(&mut info),
            )
        };
        if ret < 0 {
            let source = std::io::Error::last_os_error();
            return match source.raw_os_error() {
                Some(libc::ESRCH) => Err(Error::Exited { pid }),
                // Kernels before 6.13 (or a pidfd that is not on pidfs): read /proc instead.
                Some(libc::ENOTTY | libc::EINVAL | libc::EOPNOTSUPP) => {
                    UNSUPPORTED.store(true, Ordering::Relaxed);
                    Ok(None)
                }
                _ => Err(Error::Syscall {
                    call: "ioctl(PIDFD_GET_INFO)",
                    source,
                }),
            };
        }
        if info.mask & PIDFD_INFO_CREDS == 0 {
            return Ok(None);
        }
        Ok(Some(Ids {
            uids: [info.ruid, info.euid, info.suid, info.fsuid],
            gids: [info.rgid, info.egid, info.sgid, info.fsgid],
        }))
    }

    /// A number unique to this process for the life of the system, if the kernel offers one cheaply:
    /// the inode of the pidfd on pidfs (Linux 6.9+), one `fstat`. `None` on older kernels.
    pub fn instance(&self) -> Option<u64> {
        const PIDFS_MAGIC: i64 = 0x5049_4446;
        // SAFETY: statfs/stat are plain out-parameters; the fd is open.
        unsafe {
            let mut fs: libc::statfs = std::mem::zeroed();
            if libc::fstatfs(self.0.as_raw_fd(), &mut fs) != 0 || fs.f_type as i64 != PIDFS_MAGIC {
                return None;
            }
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(self.0.as_raw_fd(), &mut st) != 0 {
                return None;
            }
            Some(st.st_ino)
        }
    }

    /// The PID this pidfd refers to as the kernel reports it now, `None` once the process is gone
    /// (or in a PID namespace this agent cannot see).
    pub fn current_pid(&self) -> Result<Option<u32>, Error> {
        let path = format!("/proc/self/fdinfo/{}", self.0.as_raw_fd());
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Syscall {
            call: "read(/proc/self/fdinfo)",
            source,
        })?;
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("Pid:") {
                let v: i64 = v.trim().parse().unwrap_or(-1);
                return Ok(u32::try_from(v).ok().filter(|&p| p > 0));
            }
        }
        Ok(None)
    }
}

/// An async wait for one process's exit, registered with the tokio reactor.
#[derive(Debug)]
pub struct ExitWatch(tokio::io::unix::AsyncFd<OwnedFd>);

impl ExitWatch {
    /// Watches the process of `pidfd`. Uses its own duplicate of the descriptor, since one descriptor
    /// cannot be registered with the reactor twice. Must be called inside a tokio runtime.
    pub fn new(pidfd: &Pidfd) -> Result<Self, Error> {
        let fd = pidfd.0.try_clone().map_err(|source| Error::Syscall {
            call: "dup(pidfd)",
            source,
        })?;
        // SAFETY: `fd` is a valid, open descriptor that this AsyncFd owns for its whole life; it is
        // never closed or replaced while registered.
        let afd =
            unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| Error::Syscall {
                call: "epoll_ctl(pidfd)",
                source: std::io::Error::other(e.to_string()),
            })?;
        Ok(Self(afd))
    }

    /// Resolves once the process has exited.
    pub async fn exited(&self) {
        let _ = self.0.readable().await;
    }
}

impl AsFd for Pidfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Pidfd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_a_child_exit() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pidfd = Pidfd::open(child.id()).unwrap();
        assert!(!pidfd.has_exited().unwrap());
        assert_eq!(pidfd.current_pid().unwrap(), Some(child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(pidfd.has_exited().unwrap());
        assert_eq!(pidfd.current_pid().unwrap(), None);
    }

    #[test]
    fn ids_are_the_status_ids_and_end_with_the_process() {
        let me = Pidfd::open(std::process::id()).unwrap();
        let Some(ids) = me.ids(std::process::id()).unwrap() else {
            eprintln!("PIDFD_GET_INFO is not offered by this kernel (before 6.13): not checked");
            return;
        };
        let creds = crate::sys::proc::ProcDir::open(std::process::id())
            .unwrap()
            .credentials()
            .unwrap();
        assert_eq!((ids.uids, ids.gids), (creds.uids, creds.gids));
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pidfd = Pidfd::open(child.id()).unwrap();
        assert!(pidfd.ids(child.id()).unwrap().is_some());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(matches!(
            pidfd.ids(child.id()),
            Err(Error::Exited { pid }) if pid == child.id()
        ));
    }

    #[test]
    fn instance_is_per_process_where_pidfs_exists() {
        let me = Pidfd::open(std::process::id()).unwrap();
        let again = Pidfd::open(std::process::id()).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let other = Pidfd::open(child.id()).unwrap();
        if let (Some(a), Some(b), Some(c)) = (me.instance(), again.instance(), other.instance()) {
            assert_eq!(a, b, "two pidfds of one process share the instance");
            assert_ne!(a, c, "another process has another instance");
        } else {
            eprintln!("no pidfs on this kernel: instance falls back to the start time");
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[tokio::test]
    async fn exit_watch_fires_on_exit() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pidfd = Pidfd::open(child.id()).unwrap();
        let watch = ExitWatch::new(&pidfd).unwrap();
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(100), watch.exited());
        assert!(
            waiting.await.is_err(),
            "must not fire while the process runs"
        );
        child.kill().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), watch.exited())
            .await
            .expect("fires after exit");
        child.wait().unwrap();
    }
}
