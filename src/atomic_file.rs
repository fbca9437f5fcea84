//! Crash-safe file replacement: temp file in the same directory, exact mode, fsync, rename, fsync of
//! the directory. A crash at any instant leaves the old file or the new one, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Replaces `path` with `data`, mode exactly `mode` (umask does not apply).
pub(crate) fn write(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_owned(path, data, mode, None)
}

/// Like [`write`], and with `owner` (uid, gid) set on the file before it takes the path's place.
pub(crate) fn write_owned(
    path: &Path,
    data: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{:08x}",
        name.to_string_lossy(),
        std::process::id(),
        fastrand::u32(..)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The mode given to open() is filtered by the umask; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `dir` (parents as needed) with exactly `mode`, or adopts an existing one only if it is
/// the agent's own: a real directory (not a symlink), owned by the agent's uid and writable by no
/// one else. Anything else is refused with what is wrong and what to do: a directory another user
/// created first (say a predictable `/tmp/lanyard-<uid>`) could hold keys of their choosing.
pub(crate) fn ensure_dir(dir: &Path, mode: u32) -> io::Result<()> {
    adopt_or_create_dir(dir, mode)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
}

/// Like [`ensure_dir`], but an existing directory keeps its mode (it is only checked): for the
/// socket directory, whose mode the operator may have chosen.
pub(crate) fn adopt_or_create_dir(dir: &Path, mode: u32) -> io::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(mode))?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    check_owned(dir, true)
}

/// Refuses `path` unless it is owned by the agent's uid (or by root, when `ours_only` is false) and
/// not writable by group or others, and is not a symlink.
pub(crate) fn check_owned(path: &Path, ours_only: bool) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(path)?;
    let me = crate::sys::euid();
    let refuse = |what: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} {what}; the agent only uses state it owns",
                path.display()
            ),
        ))
    };
    if meta.file_type().is_symlink() {
        return refuse("is a symbolic link: point the setting at the real path".into());
    }
    if meta.uid() != me && (ours_only || meta.uid() != 0) {
        return refuse(format!(
            "is owned by uid {}, not by the agent's uid {me}: remove it (or chown it to {me}) or choose another path",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return refuse(format!(
            "is writable by group or others (mode {:o}): chmod go-w it",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Refuses a key file that is not the agent's own or that others can read or write.
pub(crate) fn check_key_file(path: &Path, ours_only: bool) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    check_owned(path, ours_only)?;
    let mode = fs::symlink_metadata(path)?.mode();
    if mode & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} holds a private key but is readable or writable by others (mode {:o}): chmod 600 it",
                path.display(),
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_with_exact_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key.pem");
        write(&p, b"one", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        write(&p, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        // No temp files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
