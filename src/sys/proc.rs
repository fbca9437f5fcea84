//! `/proc/<pid>` read through a directory handle opened once.
//!
//! Files opened relative to the handle belong to the process the directory was opened for: if that
//! process goes away, reads fail (ESRCH) instead of silently reading a newcomer that got the same PID.

use std::ffi::{CStr, CString, OsString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use super::Error;

/// An open `/proc/<pid>` directory.
#[derive(Debug)]
pub struct ProcDir {
    pid: u32,
    dir: OwnedFd,
}

/// What `/proc/<pid>/status` says about credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub effective_uid: u32,
    pub effective_gid: u32,
    pub supplementary_gids: Vec<u32>,
    /// Real, effective, saved and filesystem uid (the `Uid:` line), to notice any change at all.
    pub uids: [u32; 4],
    /// Real, effective, saved and filesystem gid (the `Gid:` line).
    pub gids: [u32; 4],
}

/// A file's identity and what changes when its content may have: size, mtime and ctime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub id: FileId,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

/// Which file a path names: device and inode, as `stat` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// Which namespace: its inode number on nsfs (unique among the namespaces that exist).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NsId(pub u64);

impl ProcDir {
    /// Opens `/proc/<pid>`.
    pub fn open(pid: u32) -> Result<Self, Error> {
        let path = CString::new(format!("/proc/{pid}")).map_err(|_| Error::Exited { pid })?;
        // SAFETY: `path` is a valid NUL-terminated string.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(classify(pid, "", std::io::Error::last_os_error()));
        }
        // SAFETY: the kernel returned a new file descriptor that nothing else owns.
        Ok(Self {
            pid,
            dir: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The PID this directory was opened for.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Opens a file below the directory, read-only.
    pub fn open_file(&self, name: &'static str) -> Result<File, Error> {
        let cname = c_name(name);
        // SAFETY: `dir` is an open directory fd and `cname` a valid NUL-terminated string.
        let fd = unsafe {
            libc::openat(
                self.dir.as_raw_fd(),
                cname.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(classify(self.pid, name, std::io::Error::last_os_error()));
        }
        // SAFETY: the kernel returned a new file descriptor that nothing else owns.
        Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Reads a whole text file below the directory.
    pub fn read_to_string(&self, name: &'static str) -> Result<String, Error> {
        let mut file = self.open_file(name)?;
        // `/proc` files report size 0, so `Read::read_to_string` probes with growing reads (32,
        // 32, 64, ... bytes: seven calls for `status`) after an `fstat` and an `lseek`; one
        // page-sized read gets a whole `status` and the next says end of file.
        let mut buf = vec![0u8; 4096];
        let mut len = 0;
        loop {
            if len == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
            match file.read(&mut buf[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(classify(self.pid, name, e)),
            }
        }
        buf.truncate(len);
        String::from_utf8(buf).map_err(|e| {
            classify(
                self.pid,
                name,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })
    }

    /// Effective uid and gid and the supplementary groups, from `status`.
    pub fn credentials(&self) -> Result<Credentials, Error> {
        Ok(self.status()?.0)
    }

    /// The credentials and the permitted capability set (`CapPrm:`, a bit per capability) from one
    /// read of `status`.
    pub fn status(&self) -> Result<(Credentials, u64), Error> {
        let text = self.read_to_string("status")?;
        Ok((
            parse_status(self.pid, &text)?,
            parse_permitted_caps(self.pid, &text)?,
        ))
    }

    /// The path of the executable (`exe` link). A deleted executable reads as `"<path> (deleted)"`.
    pub fn exe_path(&self) -> Result<PathBuf, Error> {
        // Most paths fit the stack buffer; a longer one is read again at full size.
        let mut short = [0u8; 256];
        let n = self.read_link("exe", &mut short)?;
        if n < short.len() {
            return Ok(PathBuf::from(OsString::from_vec(short[..n].to_vec())));
        }
        let mut buf = vec![0u8; libc::PATH_MAX as usize];
        let n = self.read_link("exe", &mut buf)?;
        buf.truncate(n);
        Ok(PathBuf::from(OsString::from_vec(buf)))
    }

    /// `readlinkat` of `name` in this directory into `buf`; the length read (`buf.len()` when it
    /// may have been cut short).
    fn read_link(&self, name: &'static str, buf: &mut [u8]) -> Result<usize, Error> {
        let cname = c_name(name);
        // SAFETY: `buf` is writable for `buf.len()` bytes; `dir` is an open directory fd.
        let n = unsafe {
            libc::readlinkat(
                self.dir.as_raw_fd(),
                cname.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(classify(self.pid, name, std::io::Error::last_os_error()));
        }
        Ok(n as usize)
    }

    /// A namespace of the process (`ns/<kind>`), named by the inode number its link reads as
    /// (`<kind>:[<inode>]`). `readlink` only formats that name; `stat` through the link would open
    /// the namespace file (several times the cost, measured on every attestation).
    fn namespace(&self, name: &'static str, kind: &str) -> Result<NsId, Error> {
        let mut buf = [0u8; 64];
        let n = self.read_link(name, &mut buf)?;
        std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(|link| link.strip_prefix(kind))
            .and_then(|rest| rest.strip_prefix(":["))
            .and_then(|rest| rest.strip_suffix(']'))
            .and_then(|ino| ino.parse().ok())
            .map(NsId)
            .ok_or(Error::ProcFormat {
                pid: self.pid,
                file: name,
                what: "not a namespace link",
            })
    }

    /// Opens the executable itself (the file the process runs, even if its path was replaced).
    pub fn open_exe(&self) -> Result<File, Error> {
        self.open_file("exe")
    }

    /// The file the process runs (`stat` through the `exe` link): changes when it execs another
    /// program, whatever path that program had.
    pub fn exe_id(&self) -> Result<FileId, Error> {
        self.stat_at("exe")
    }

    /// The process's mount namespace (`ns/mnt`): the namespace in which its paths mean something.
    pub fn mount_ns(&self) -> Result<NsId, Error> {
        self.namespace("ns/mnt", "mnt")
    }

    /// The process's user namespace (`ns/user`).
    pub fn user_ns(&self) -> Result<NsId, Error> {
        self.namespace("ns/user", "user")
    }

    /// Whether the process holds a descriptor of the socket with inode `ino` (its `fd` directory,
    /// read through this directory handle, so it is the pinned process's and no newcomer's).
    pub fn holds_socket(&self, ino: u64) -> Result<bool, Error> {
        let want = format!("socket:[{ino}]");
        let fds = format!("/proc/self/fd/{}/fd", self.dir.as_raw_fd());
        let entries = std::fs::read_dir(&fds).map_err(|e| classify(self.pid, "fd", e))?;
        for entry in entries {
            let entry = entry.map_err(|e| classify(self.pid, "fd", e))?;
            if std::fs::read_link(entry.path()).is_ok_and(|t| t.as_os_str() == want.as_str()) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// `fstatat` below the directory, following the link (one system call).
    fn stat_at(&self, name: &'static str) -> Result<FileId, Error> {
        let st = self.full_stat_at(name)?;
        Ok(FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }

    /// Identity and change stamps of the executable (`stat` through the `exe` link), without
    /// opening it.
    pub fn exe_stamp(&self) -> Result<FileStamp, Error> {
        let st = self.full_stat_at("exe")?;
        Ok(FileStamp {
            id: FileId {
                dev: st.st_dev,
                ino: st.st_ino,
            },
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        })
    }

    fn full_stat_at(&self, name: &'static str) -> Result<libc::stat, Error> {
        let cname = c_name(name);
        // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `dir` is an open directory fd, `cname` a valid NUL-terminated string and `st`
        // writable for one `stat`.
        let ret = unsafe { libc::fstatat(self.dir.as_raw_fd(), cname.as_ptr(), &mut st, 0) };
        if ret < 0 {
            return Err(classify(self.pid, name, std::io::Error::last_os_error()));
        }
        Ok(st)
    }

    /// Process start time in clock ticks since boot (field 22 of `stat`).
    pub fn start_time_ticks(&self) -> Result<u64, Error> {
        let text = self.read_to_string("stat")?;
        parse_start_time(self.pid, &text)
    }
}

fn c_name(name: &'static str) -> &'static CStr {
    match name {
        "status" => c"status",
        "exe" => c"exe",
        "stat" => c"stat",
        "cgroup" => c"cgroup",
        "environ" => c"environ",
        "ns/mnt" => c"ns/mnt",
        "ns/user" => c"ns/user",
        _ => {
            // A name missing here reads as "no such file" (the process "exited"): caught in tests.
            debug_assert!(false, "no C name for /proc/<pid>/{name}");
            c""
        }
    }
}

/// ESRCH and ENOENT under `/proc/<pid>` mean the process is gone.
fn classify(pid: u32, file: &'static str, source: std::io::Error) -> Error {
    match source.raw_os_error() {
        Some(libc::ESRCH) | Some(libc::ENOENT) => Error::Exited { pid },
        _ => Error::ProcRead { pid, file, source },
    }
}

fn parse_status(pid: u32, text: &str) -> Result<Credentials, Error> {
    let fmt = |what| Error::ProcFormat {
        pid,
        file: "status",
        what,
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|rest| rest.split_whitespace().collect::<Vec<_>>())
    };
    // "Uid:\treal\teffective\tsaved\tfs"
    let uid = field("Uid:").ok_or_else(|| fmt("no Uid line"))?;
    let gid = field("Gid:").ok_or_else(|| fmt("no Gid line"))?;
    let four = |v: &[&str], what| -> Result<[u32; 4], Error> {
        let mut out = [0u32; 4];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = v
                .get(i)
                .and_then(|x| x.parse().ok())
                .ok_or_else(|| fmt(what))?;
        }
        Ok(out)
    };
    let uids = four(&uid, "bad Uid line")?;
    let gids = four(&gid, "bad Gid line")?;
    let (effective_uid, effective_gid) = (uids[1], gids[1]);
    let supplementary_gids = field("Groups:")
        .unwrap_or_default()
        .iter()
        .map(|g| g.parse().map_err(|_| fmt("bad Groups line")))
        .collect::<Result<_, _>>()?;
    Ok(Credentials {
        effective_uid,
        effective_gid,
        supplementary_gids,
        uids,
        gids,
    })
}

/// The `CapPrm:` line: the permitted capability set as a bit mask.
fn parse_permitted_caps(pid: u32, text: &str) -> Result<u64, Error> {
    text.lines()
        .find_map(|l| l.strip_prefix("CapPrm:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or(Error::ProcFormat {
            pid,
            file: "status",
            what: "no CapPrm line",
        })
}

fn parse_start_time(pid: u32, text: &str) -> Result<u64, Error> {
    // The command name (field 2) may hold spaces and parentheses; fields after the last ')' are plain.
    let after = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or(Error::ProcFormat {
            pid,
            file: "stat",
            what: "no command name",
        })?;
    // `after` starts at field 3 (state); start time is field 22.
    after
        .split_whitespace()
        .nth(22 - 3)
        .and_then(|v| v.parse().ok())
        .ok_or(Error::ProcFormat {
            pid,
            file: "stat",
            what: "no start time",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        let text =
            "Name:\tx\nUid:\t1000\t1001\t1002\t1003\nGid:\t50\t51\t52\t53\nGroups:\t4 24 27 \n";
        let c = parse_status(1, text).unwrap();
        assert_eq!(c.effective_uid, 1001);
        assert_eq!(c.effective_gid, 51);
        assert_eq!(c.supplementary_gids, vec![4, 24, 27]);
        let c = parse_status(1, "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n").unwrap();
        assert!(c.supplementary_gids.is_empty());
        assert!(parse_status(1, "Gid:\t0\t0\t0\t0\n").is_err());
    }

    #[test]
    fn parses_permitted_caps() {
        let text = "Uid:\t0\t0\t0\t0\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n";
        assert_eq!(parse_permitted_caps(1, text).unwrap(), 0x1ff_ffff_ffff);
        let none = "CapPrm:\t0000000000000000\n";
        assert_eq!(parse_permitted_caps(1, none).unwrap(), 0);
        assert!(parse_permitted_caps(1, "CapPrm:\tzz\n").is_err());
        assert!(parse_permitted_caps(1, "Uid:\t0\t0\t0\t0\n").is_err());
    }

    #[test]
    fn parses_start_time_with_odd_command_names() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 123456 1000 10";
        assert_eq!(parse_start_time(42, stat).unwrap(), 123456);
    }

    #[test]
    fn reads_own_process() {
        let me = ProcDir::open(std::process::id()).unwrap();
        let creds = me.credentials().unwrap();
        // SAFETY: geteuid has no preconditions.
        assert_eq!(creds.effective_uid, unsafe { libc::geteuid() });
        assert_eq!(me.exe_path().unwrap(), std::env::current_exe().unwrap());
        assert!(me.start_time_ticks().unwrap() > 0);
        // The namespace read from the link is the namespace file's inode.
        use std::os::unix::fs::MetadataExt;
        for (ns, path) in [
            (me.mount_ns().unwrap(), "/proc/self/ns/mnt"),
            (me.user_ns().unwrap(), "/proc/self/ns/user"),
        ] {
            assert_eq!(ns.0, std::fs::metadata(path).unwrap().ino(), "{path}");
        }
    }
}
