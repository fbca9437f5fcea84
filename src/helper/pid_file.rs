//! The process a pid file names, pinned by a pidfd: the helper signals exactly that process, never
//! "whatever has this PID now".
//!
//! A pid file is trusted only when root or the helper's own uid wrote it (owner root or the helper's
//! euid, not writable by group or others, a regular file reached without following a symlink at its
//! last component). Its PID is opened as a pidfd once and kept while the file is unchanged (same
//! device, inode, size, mtime and ctime); the file is re-read only when it changes. On opening, the
//! process must have started no later than the file was last written: a process that started
//! afterwards holds a reused PID (the one the file meant has exited), and is refused.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::sys::pidfd::Pidfd;
use crate::sys::proc::ProcDir;

/// Allowance for the start time's tick granularity (10 ms at 100 Hz) and the clock conversion.
const START_SLACK_NS: i128 = 20_000_000;

/// What identifies one version of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }
}

struct Pinned {
    stamp: Stamp,
    pid: u32,
    pidfd: Pidfd,
}

/// A pid file and the process it named when last read.
pub(super) struct PidFile {
    path: PathBuf,
    euid: u32,
    pinned: Option<Pinned>,
}

impl PidFile {
    pub(super) fn new(path: PathBuf) -> Self {
        Self {
            path,
            euid: crate::sys::euid(),
            pinned: None,
        }
    }

    /// Sends `sig` to the process the file names; the PID signalled, or why nothing was.
    pub(super) fn signal(&mut self, sig: i32) -> Result<u32, String> {
        let meta = std::fs::symlink_metadata(&self.path)
            .map_err(|e| format!("pid file {}: {e}", self.path.display()))?;
        let stamp = Stamp::of(&meta);
        if self.pinned.as_ref().is_none_or(|p| p.stamp != stamp) {
            self.pinned = None;
            self.pinned = Some(open_checked(&self.path, self.euid)?);
        }
        let Some(p) = &self.pinned else {
            return Err(format!("pid file {}: not read", self.path.display()));
        };
        p.pidfd.send_signal(sig).map_err(|e| {
            format!(
                "process {} named by {} cannot be signalled ({e}); it has exited if ESRCH, and \
                 nothing else is signalled until the file changes",
                p.pid,
                self.path.display()
            )
        })?;
        Ok(p.pid)
    }
}

fn open_checked(path: &Path, euid: u32) -> Result<Pinned, String> {
    let shown = path.display();
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("pid file {shown}: {e} (a symlink is not followed)"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("pid file {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("pid file {shown} is not a regular file"));
    }
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(format!(
            "pid file {shown} is owned by uid {}: only a file written by root or by this helper's \
             uid ({euid}) may name a process to signal",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "pid file {shown} is writable by group or others (mode {:o}): anyone could aim the \
             helper's signals; chmod go-w it",
            meta.mode() & 0o7777
        ));
    }
    let mut text = String::new();
    file.by_ref()
        .take(64)
        .read_to_string(&mut text)
        .map_err(|e| format!("pid file {shown}: {e}"))?;
    let pid: u32 = text
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0 && *p <= i32::MAX as u32)
        .ok_or_else(|| format!("pid file {shown} holds {:?}, not a PID", text.trim()))?;
    let pidfd = Pidfd::open(pid).map_err(|e| format!("process {pid} from {shown}: {e}"))?;
    let started_ticks = ProcDir::open(pid)
        .and_then(|d| d.start_time_ticks())
        .map_err(|e| format!("process {pid} from {shown}: {e}"))?;
    // The pidfd was opened first: if it has not exited now, /proc/<pid> was that same process.
    if pidfd.has_exited().unwrap_or(true) {
        return Err(format!("process {pid} from {shown} has exited"));
    }
    let started_ns = i128::from(started_ticks) * 1_000_000_000
        / i128::from(crate::sys::clock_ticks_per_second());
    let age_ns = i128::from(crate::sys::boottime_ns()) - started_ns;
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    let started_wall_ns = now_ns - age_ns;
    let written_ns = Stamp::of(&meta).mtime_ns;
    if started_wall_ns > written_ns + START_SLACK_NS {
        return Err(format!(
            "process {pid} started {:.3} s after {shown} was last written: the PID was reused (the \
             process the file meant has exited); nothing signalled until the file changes",
            (started_wall_ns - written_ns) as f64 / 1e9
        ));
    }
    Ok(Pinned {
        stamp: Stamp::of(&meta),
        pid,
        pidfd,
    })
}
