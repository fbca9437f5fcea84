//! The unix attestor: uid, gid, user, group, supplementary groups, executable path and hash.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;

use aws_lc_rs::digest;

use super::{Attestor, Error, PinnedProcess, read_error};
use crate::selector::{Selector, SelectorSet};
use crate::sys;

/// Default upper bound on the size of an executable that is hashed for `unix:sha256`.
pub const DEFAULT_HASH_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// How many executables' hashes are remembered.
const HASH_CACHE_CAPACITY: usize = 4096;

/// Attests uid/gid/names/groups/path/sha256 of a pinned process.
pub struct UnixAttestor {
    hash_max_bytes: u64,
    hashes: Mutex<HashMap<(u64, u64), CachedHash>>,
}

/// A hash, valid while the file's identity and change stamps are the same.
#[derive(Clone)]
struct CachedHash {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    hex: String,
}

impl UnixAttestor {
    /// An attestor that hashes executables up to `hash_max_bytes` (larger ones get no `unix:sha256`).
    pub fn new(hash_max_bytes: u64) -> Self {
        Self {
            hash_max_bytes,
            hashes: Mutex::new(HashMap::new()),
        }
    }

    /// SHA-256 of the caller's executable, read through the pinned process (the exact file it runs),
    /// cached by device/inode/size/mtime/ctime so a repeat costs one `fstat`.
    fn exe_sha256(&self, process: &PinnedProcess) -> Result<Option<String>, Error> {
        let mut file = process.dir.open_exe().map_err(read_error)?;
        let meta = file.metadata().map_err(|source| {
            read_error(sys::Error::ProcRead {
                pid: process.pid(),
                file: "exe",
                source,
            })
        })?;
        let key = (meta.dev(), meta.ino());
        let stamp = CachedHash {
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            hex: String::new(),
        };
        if let Some(hit) = self.lookup(key, &stamp) {
            return Ok(Some(hit));
        }
        if meta.size() > self.hash_max_bytes {
            tracing::debug!(
                pid = process.pid(),
                size = meta.size(),
                limit = self.hash_max_bytes,
                "executable larger than the hash limit; no unix:sha256 selector"
            );
            return Ok(None);
        }
        let mut ctx = digest::Context::new(&digest::SHA256);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = file.read(&mut buf).map_err(|source| {
                read_error(sys::Error::ProcRead {
                    pid: process.pid(),
                    file: "exe",
                    source,
                })
            })?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
        }
        let hex = to_hex(ctx.finish().as_ref());
        if let Ok(mut cache) = self.hashes.lock() {
            if cache.len() >= HASH_CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(
                key,
                CachedHash {
                    hex: hex.clone(),
                    ..stamp
                },
            );
        }
        Ok(Some(hex))
    }

    fn lookup(&self, key: (u64, u64), stamp: &CachedHash) -> Option<String> {
        let cache = self.hashes.lock().ok()?;
        let hit = cache.get(&key)?;
        (hit.size == stamp.size && hit.mtime == stamp.mtime && hit.ctime == stamp.ctime)
            .then(|| hit.hex.clone())
    }
}

impl Attestor for UnixAttestor {
    fn name(&self) -> &'static str {
        "unix"
    }

    fn attest(&self, process: &PinnedProcess, out: &mut SelectorSet) -> Result<(), Error> {
        let creds = process.dir.credentials().map_err(read_error)?;
        out.insert(Selector::UnixUid(creds.effective_uid));
        out.insert(Selector::UnixGid(creds.effective_gid));
        for gid in &creds.supplementary_gids {
            out.insert(Selector::UnixSupplementaryGid(*gid));
        }
        if let Some(name) = sys::users::user_name(creds.effective_uid) {
            out.insert(Selector::UnixUser(name));
        }
        if let Some(name) = sys::users::group_name(creds.effective_gid) {
            out.insert(Selector::UnixGroup(name));
        }
        let path = process.dir.exe_path().map_err(read_error)?;
        match path.to_str() {
            Some(p) => out.insert(Selector::UnixPath(p.to_owned())),
            None => tracing::debug!(
                pid = process.pid(),
                "executable path is not UTF-8; no unix:path selector"
            ),
        }
        if let Some(hex) = self.exe_sha256(process)? {
            out.insert(Selector::UnixSha256(hex));
        }
        Ok(())
    }
}

/// Lowercase hex, as `sha256sum` prints.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attest::{Caller, attest_blocking};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn attests_this_process_through_a_real_socket() {
        let (a, _b) = UnixStream::pair().unwrap();
        let caller = Caller::from_socket(a.as_fd()).unwrap();
        assert_eq!(caller.cred.pid, std::process::id());
        let attestors: Vec<Box<dyn Attestor>> = vec![Box::new(UnixAttestor::new(u64::MAX))];
        let (_, set) = attest_blocking(&caller, &attestors).unwrap();
        let uid = sys::users::effective_uid();
        assert!(set.contains_all(&[Selector::UnixUid(uid)]));
        let exe = std::env::current_exe().unwrap();
        assert!(set.contains_all(&[Selector::UnixPath(exe.to_str().unwrap().into())]));
        let bytes = std::fs::read(&exe).unwrap();
        let want = to_hex(digest::digest(&digest::SHA256, &bytes).as_ref());
        assert!(set.contains_all(&[Selector::UnixSha256(want)]));
    }

    #[test]
    fn hash_limit_drops_the_sha256_selector() {
        let (a, _b) = UnixStream::pair().unwrap();
        let caller = Caller::from_socket(a.as_fd()).unwrap();
        let attestors: Vec<Box<dyn Attestor>> = vec![Box::new(UnixAttestor::new(16))];
        let (_, set) = attest_blocking(&caller, &attestors).unwrap();
        assert!(!set.iter().any(|s| matches!(s, Selector::UnixSha256(_))));
    }
}
