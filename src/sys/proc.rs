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
        let (bytes, _) = self.read_bytes(name, |_| false)?;
        String::from_utf8(bytes).map_err(|e| {
            classify(
                self.pid,
                name,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })
    }

    /// Reads a file below the directory until end of file, or until `enough` says the bytes read so
    /// far hold everything wanted; returns them and whether end of file was reached.
    fn read_bytes(
        &self,
        name: &'static str,
        enough: impl Fn(&[u8]) -> bool,
    ) -> Result<(Vec<u8>, bool), Error> {
        let mut file = self.open_file(name)?;
        // `/proc` files report size 0, so `Read::read_to_string` probes with growing reads (32,
        // 32, 64, ... bytes: seven calls for `status`) after an `fstat` and an `lseek`; one
        // page-sized read gets a whole `status`, and what is read of it is known to be enough
        // without a second read to see the end of the file.
        let mut buf = vec![0u8; 4096];
        let mut len = 0;
        loop {
            if len == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
            match file.read(&mut buf[len..]) {
                Ok(0) => {
                    buf.truncate(len);
                    return Ok((buf, true));
                }
                Ok(n) => {
                    len += n;
                    if enough(&buf[..len]) {
                        buf.truncate(len);
                        return Ok((buf, false));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(classify(self.pid, name, e)),
            }
        }
    }

    /// Every uid and gid and the supplementary groups, from `status` (read up to its `Groups:` line).
    pub fn credentials(&self) -> Result<Credentials, Error> {
        let (text, eof) = self.read_bytes("status", |t| {
            StatusLines::scan(t, false, Until::Groups).groups.is_some()
        })?;
        parse_status(self.pid, &StatusLines::scan(&text, eof, Until::Groups))
    }

    /// The credentials and the permitted capability set (`CapPrm:`, a bit per capability) from one
    /// read of `status`.
    pub fn status(&self) -> Result<(Credentials, u64), Error> {
        let (text, eof) = self.read_bytes("status", |t| {
            StatusLines::scan(t, false, Until::CapPrm).cap_prm.is_some()
        })?;
        let lines = StatusLines::scan(&text, eof, Until::CapPrm);
        Ok((
            parse_status(self.pid, &lines)?,
            parse_permitted_caps(self.pid, &lines)?,
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
        let (text, _) = self.read_bytes("stat", |_| false)?;
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
        "uid_map" => c"uid_map",
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

/// The last `status` line a reader needs: the scan stops there.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Until {
    Groups,
    CapPrm,
}

/// The lines of `/proc/<pid>/status` the agent reads (what follows each prefix), each the first of
/// its name, found in one pass over the bytes. A line counts only when its newline was read (or
/// the file ended): a line cut off by a short read is never parsed. The `Name:` line, the only one
/// a process writes into, has its newlines escaped by the kernel, so it cannot fake another line;
/// its other bytes need not be UTF-8, and nothing here requires them to be.
#[derive(Default)]
struct StatusLines<'a> {
    uid: Option<&'a [u8]>,
    gid: Option<&'a [u8]>,
    groups: Option<&'a [u8]>,
    cap_prm: Option<&'a [u8]>,
}

impl<'a> StatusLines<'a> {
    fn scan(text: &'a [u8], eof: bool, until: Until) -> Self {
        let mut out = Self::default();
        for line in text.split_inclusive(|&b| b == b'\n') {
            let line = match line.strip_suffix(b"\n") {
                Some(line) => line,
                None if eof => line,
                None => break,
            };
            let (slot, last) = if let Some(rest) = line.strip_prefix(b"Uid:") {
                (&mut out.uid, rest)
            } else if let Some(rest) = line.strip_prefix(b"Gid:") {
                (&mut out.gid, rest)
            } else if let Some(rest) = line.strip_prefix(b"Groups:") {
                (&mut out.groups, rest)
            } else if let Some(rest) = line.strip_prefix(b"CapPrm:") {
                (&mut out.cap_prm, rest)
            } else {
                continue;
            };
            slot.get_or_insert(last);
            let done = match until {
                Until::Groups => out.groups.is_some(),
                Until::CapPrm => out.cap_prm.is_some(),
            };
            if done {
                break;
            }
        }
        out
    }
}

/// The whitespace-separated numbers of a line, each `None` if it is not one.
fn numbers(rest: &[u8]) -> impl Iterator<Item = Option<u32>> + '_ {
    words(rest).map(|w| std::str::from_utf8(w).ok()?.parse().ok())
}

/// Like [`numbers`], for fields wider than 32 bits.
fn numbers_u64(rest: &[u8]) -> impl Iterator<Item = Option<u64>> + '_ {
    words(rest).map(|w| std::str::from_utf8(w).ok()?.parse().ok())
}

fn words(rest: &[u8]) -> impl Iterator<Item = &[u8]> {
    rest.split(u8::is_ascii_whitespace)
        .filter(|w| !w.is_empty())
}

fn parse_status(pid: u32, lines: &StatusLines<'_>) -> Result<Credentials, Error> {
    let fmt = |what| Error::ProcFormat {
        pid,
        file: "status",
        what,
    };
    // "Uid:\treal\teffective\tsaved\tfs"
    let four = |line: Option<&[u8]>, missing, bad| -> Result<[u32; 4], Error> {
        let mut values = numbers(line.ok_or_else(|| fmt(missing))?);
        let mut out = [0u32; 4];
        for slot in &mut out {
            *slot = values.next().flatten().ok_or_else(|| fmt(bad))?;
        }
        Ok(out)
    };
    let uids = four(lines.uid, "no Uid line", "bad Uid line")?;
    let gids = four(lines.gid, "no Gid line", "bad Gid line")?;
    let supplementary_gids = numbers(lines.groups.unwrap_or_default())
        .map(|g| g.ok_or_else(|| fmt("bad Groups line")))
        .collect::<Result<_, _>>()?;
    Ok(Credentials {
        effective_uid: uids[1],
        effective_gid: gids[1],
        supplementary_gids,
        uids,
        gids,
    })
}

/// The `CapPrm:` line: the permitted capability set as a bit mask.
fn parse_permitted_caps(pid: u32, lines: &StatusLines<'_>) -> Result<u64, Error> {
    lines
        .cap_prm
        .and_then(|hex| std::str::from_utf8(hex).ok())
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or(Error::ProcFormat {
            pid,
            file: "status",
            what: "no CapPrm line",
        })
}

fn parse_start_time(pid: u32, text: &[u8]) -> Result<u64, Error> {
    // The command name (field 2) may hold spaces, parentheses and bytes that are not UTF-8; fields
    // after the last ')' are plain.
    let after = text
        .iter()
        .rposition(|&b| b == b')')
        .map(|i| &text[i + 1..])
        .ok_or(Error::ProcFormat {
            pid,
            file: "stat",
            what: "no command name",
        })?;
    // `after` starts at field 3 (state); start time is field 22.
    numbers_u64(after)
        .nth(22 - 3)
        .flatten()
        .ok_or(Error::ProcFormat {
            pid,
            file: "stat",
            what: "no start time",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(text: &[u8]) -> Result<Credentials, Error> {
        parse_status(1, &StatusLines::scan(text, true, Until::Groups))
    }

    fn caps(text: &[u8]) -> Result<u64, Error> {
        parse_permitted_caps(1, &StatusLines::scan(text, true, Until::CapPrm))
    }

    #[test]
    fn parses_status() {
        let text =
            b"Name:\tx\nUid:\t1000\t1001\t1002\t1003\nGid:\t50\t51\t52\t53\nGroups:\t4 24 27 \n";
        let c = creds(text).unwrap();
        assert_eq!(c.effective_uid, 1001);
        assert_eq!(c.effective_gid, 51);
        assert_eq!(c.uids, [1000, 1001, 1002, 1003]);
        assert_eq!(c.gids, [50, 51, 52, 53]);
        assert_eq!(c.supplementary_gids, vec![4, 24, 27]);
        let c = creds(b"Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n").unwrap();
        assert!(c.supplementary_gids.is_empty());
        assert!(creds(b"Gid:\t0\t0\t0\t0\n").is_err());
        assert!(
            creds(b"Uid:\t0\t0\t0\nGid:\t0\t0\t0\t0\n").is_err(),
            "three uids"
        );
        assert!(creds(b"Uid:\t0\tx\t0\t0\nGid:\t0\t0\t0\t0\n").is_err());
        assert!(creds(b"Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t4 x\n").is_err());
    }

    /// A process names itself (`prctl(PR_SET_NAME)`) with any bytes but a newline (the kernel
    /// escapes it): its credentials are read all the same, and its name cannot fake a line.
    #[test]
    fn a_name_that_is_not_utf8_or_looks_like_a_line_changes_nothing() {
        let text = b"Name:\t\xff\xfe Uid:\t0\t0\t0\t0\\nUid:\t0\nUid:\t7\t7\t7\t7\nGid:\t8\t8\t8\t8\nGroups:\t\n";
        let c = creds(text).unwrap();
        assert_eq!((c.effective_uid, c.effective_gid), (7, 8));
        let stat = b"42 (\xff) x) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987 1000 10";
        assert_eq!(parse_start_time(42, stat).unwrap(), 987);
    }

    /// A line is used only once its newline was read: a `Groups:` line cut off by a short read is
    /// not taken for the whole of it (it would drop groups); at the end of the file it is.
    #[test]
    fn a_line_cut_off_by_a_short_read_is_not_parsed() {
        let text = b"Uid:\t1\t1\t1\t1\nGid:\t2\t2\t2\t2\nGroups:\t4 2";
        assert!(
            StatusLines::scan(text, false, Until::Groups)
                .groups
                .is_none()
        );
        assert_eq!(creds(text).unwrap().supplementary_gids, vec![4, 2]);
        let cut = StatusLines::scan(b"Uid:\t1\t1\t1\t1\nGi", false, Until::Groups);
        assert!(cut.uid.is_some() && cut.gid.is_none());
        // The first of a name counts; the scan stops at the line asked for.
        let two = StatusLines::scan(
            b"Groups:\t1\nGroups:\t2\nCapPrm:\t1\n",
            false,
            Until::Groups,
        );
        assert_eq!(two.groups, Some(&b"\t1"[..]));
        assert!(two.cap_prm.is_none());
    }

    #[test]
    fn parses_permitted_caps() {
        let text = b"Uid:\t0\t0\t0\t0\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n";
        assert_eq!(caps(text).unwrap(), 0x1ff_ffff_ffff);
        assert_eq!(caps(b"CapPrm:\t0000000000000000\n").unwrap(), 0);
        assert!(caps(b"CapPrm:\tzz\n").is_err());
        assert!(caps(b"Uid:\t0\t0\t0\t0\n").is_err());
    }

    #[test]
    fn parses_start_time_with_odd_command_names() {
        let stat =
            b"42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 123456 1000 10";
        assert_eq!(parse_start_time(42, stat).unwrap(), 123456);
    }

    /// A `Groups:` line longer than the first page-sized read (1,000 groups, about 7 KB) is read
    /// whole: the read goes on until the line's newline.
    #[test]
    fn a_groups_line_longer_than_a_page_is_read_whole() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "setgroups needs root, and CI runs as root"
            );
            eprintln!("*** SKIPPED a_groups_line_longer_than_a_page_is_read_whole: needs root ***");
            return;
        }
        use std::os::unix::process::CommandExt;
        let groups: Vec<libc::gid_t> = (100_000..101_000).collect();
        let set = groups.clone();
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        // SAFETY: only the setgroups syscall runs between fork and exec, on memory owned by the
        // closure.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(set.len(), set.as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        let dir = ProcDir::open(child.id()).unwrap();
        let read = (dir.credentials(), dir.status());
        let _ = child.kill();
        let _ = child.wait();
        let creds = read.0.unwrap();
        assert_eq!(creds.supplementary_gids, groups);
        assert_eq!(read.1.unwrap().0, creds);
    }

    #[test]
    fn reads_own_process() {
        let me = ProcDir::open(std::process::id()).unwrap();
        let creds = me.credentials().unwrap();
        // SAFETY: geteuid has no preconditions.
        assert_eq!(creds.effective_uid, unsafe { libc::geteuid() });
        let (all, _caps) = me.status().unwrap();
        assert_eq!(
            all, creds,
            "credentials() stops at Groups:, status() reads on to CapPrm:"
        );
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
