//! The only module with `unsafe`: thin, checked wrappers over the kernel interfaces attestation needs.
//!
//! - [`peer`]: peer credentials and the peer's pidfd from a connected Unix socket.
//! - [`pidfd`]: a handle on one process that survives PID reuse.
//! - [`proc`]: `/proc/<pid>` read through a directory handle pinned to one process.
//! - [`socket`]: a socket read straight into a caller's buffer.
//! - [`users`]: user and group names through the system's name service.

pub mod exec_events;
pub mod peer;
pub mod pidfd;
pub mod proc;
pub mod sock_diag;
pub mod socket;
pub mod userns;
pub mod users;

use std::io;

/// Errors from the kernel interfaces, with the call that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{call} failed: {source}")]
    Syscall {
        call: &'static str,
        source: io::Error,
    },
    #[error("process {pid} has exited")]
    Exited { pid: u32 },
    #[error("reading /proc/{pid}/{file}: {source}")]
    ProcRead {
        pid: u32,
        file: &'static str,
        source: io::Error,
    },
    #[error("unexpected content in /proc/{pid}/{file}: {what}")]
    ProcFormat {
        pid: u32,
        file: &'static str,
        what: &'static str,
    },
    #[error(
        "pid {pid} was reused: the process at that pid started after the connection was accepted"
    )]
    PidReused { pid: u32 },
}

/// Turns a libc return value into a `Result`, naming the call.
fn check(call: &'static str, ret: libc::c_int) -> Result<libc::c_int, Error> {
    if ret < 0 {
        Err(Error::Syscall {
            call,
            source: io::Error::last_os_error(),
        })
    } else {
        Ok(ret)
    }
}

/// The agent's effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Runs `f` with the umask `mask` on a short-lived thread that has its own filesystem context
/// (`unshare(CLONE_FS)`), so no other thread of the process ever sees that umask. For `bind()` of a
/// Unix socket, whose file mode can only be chosen through the umask (a later path-based chmod
/// would follow a symlink swapped in meanwhile; fchmod on a socket does not reach its file).
pub fn with_private_umask<T: Send + 'static>(
    mask: u32,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Error> {
    let thread = std::thread::Builder::new()
        .name("umask".into())
        .spawn(move || -> Result<T, Error> {
            // SAFETY: unshare(CLONE_FS) only detaches this thread's cwd/root/umask from the others.
            check("unshare(CLONE_FS)", unsafe {
                libc::unshare(libc::CLONE_FS)
            })?;
            // SAFETY: umask has no preconditions and cannot fail; it affects this thread only now.
            unsafe { libc::umask(mask as libc::mode_t) };
            Ok(f())
        })
        .map_err(|source| Error::Syscall {
            call: "spawning a thread",
            source,
        })?;
    thread.join().map_err(|_| Error::Syscall {
        call: "thread",
        source: io::Error::other("the umask thread panicked"),
    })?
}

/// `CLOCK_BOOTTIME` now, in nanoseconds: the clock `/proc/<pid>/stat` start times count on.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_BOOTTIME exists on every supported kernel.
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if ret != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Clock ticks per second, for `/proc/<pid>/stat` times.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// Moves the calling thread (only it) into the cgroup namespace `ns` (an open `/proc/<pid>/ns/cgroup`).
/// Needs `CAP_SYS_ADMIN`. Paths in `/proc/*/cgroup` and cgroup mount roots read afterwards by this
/// thread are relative to that namespace's root.
pub fn enter_cgroup_ns(ns: &std::fs::File) -> Result<(), Error> {
    use std::os::fd::AsRawFd;
    // SAFETY: `ns` is an open file descriptor for the duration of the call; setns only changes the
    // calling thread's namespace.
    check("setns(CLONE_NEWCGROUP)", unsafe {
        libc::setns(ns.as_raw_fd(), libc::CLONE_NEWCGROUP)
    })
    .map(|_| ())
}

/// Raises the soft limit on open files to the hard limit; returns the soft limit now in force.
pub fn raise_nofile() -> Result<u64, Error> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-parameter.
    check("getrlimit(RLIMIT_NOFILE)", unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim)
    })?;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit with cur <= max.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(raised.rlim_cur);
        }
    }
    Ok(lim.rlim_cur)
}

/// Makes the program `cmd` starts begin with the default action for each of `signals`, whatever
/// this process does with them: a signal ignored here (a helper started under `nohup`, or in the
/// background by a shell) would otherwise stay ignored across exec, and a consumer that ignores
/// its reload signal never reloads.
pub fn default_signals_in_child(cmd: &mut tokio::process::Command, signals: &[i32]) {
    let signals = signals.to_vec();
    // SAFETY: the closure runs in the child between fork and exec; it only calls `signal`, which is
    // async-signal-safe, and allocates nothing (the list was made before the fork).
    unsafe {
        cmd.pre_exec(move || {
            for &s in &signals {
                libc::signal(s, libc::SIG_DFL);
            }
            Ok(())
        });
    }
}

/// File descriptors this process has open (entries of `/proc/self/fd`).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}
