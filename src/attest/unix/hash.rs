//! `unix:sha256`: the SHA-256 of a caller's executable, read through its pinned `exe` link.
//!
//! Reading a file is the one CPU-heavy part of attestation, and a local user controls how many
//! distinct executables it runs and how big they are (a sparse file of 256 MB costs no disk and
//! about a second of reading). So a reading happens in turn: at most [`MAX_CONCURRENT_HASHES`] at
//! once, first come first served, and at most [`MAX_HASHES_PER_USER`] for the callers of one user
//! (their share uid: a user's subordinate uids are that user's). An attestation waits for its turn
//! on the runtime ([`Hasher::ahead`], from the attestor's prefetch), never on a blocking thread;
//! a reading of the same file under way is joined, whoever started it.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::digest;

use super::slots::{Slots, UserSlot};
use crate::attest::{Error, PinnedProcess, read_error};
use crate::recency::{insert_bounded, recency};
use crate::sys;
use crate::sys::proc::{FileStamp, ProcDir};

/// How many executables' hashes are remembered; a full cache forgets the one used least recently
/// to take a new one.
const HASH_CACHE_CAPACITY: usize = 4096;

/// Files read at the same time, at most, whoever asks.
const MAX_CONCURRENT_HASHES: usize = 2;

/// Of those, at most this many for the callers of one user: one user with many big executables
/// cannot take every turn and make every other user's first fetch of a new program wait.
pub(super) const MAX_HASHES_PER_USER: usize = 1;

/// How long an attestation waits for its turn to read the executable (its user's slot, the shared
/// gate, or another caller's reading of the same file); past it the caller gets no identity
/// (`Unavailable`: retry). A reading once begun is waited for to its end.
pub(super) const HASH_WAIT: Duration = Duration::from_secs(30);

/// Hashes of executables by file identity, and the readings under way.
pub(super) struct Hasher {
    max_bytes: u64,
    hashes: Mutex<HashMap<(u64, u64), CachedHash>>,
    /// Files being read now, by identity: a flag that turns true when the reading ends.
    reading: Mutex<HashMap<(u64, u64), tokio::sync::watch::Receiver<bool>>>,
    slots: Arc<Slots>,
    /// Files read and hashed since start.
    pub(super) hashed: AtomicU64,
}

/// A hash, valid while the file's identity and change stamps are the same.
#[derive(Clone)]
struct CachedHash {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    hex: String,
    /// When it was last stored or found, on the [`recency`] count.
    used: u64,
}

/// The outcome of looking for an executable's hash.
pub(super) enum Hash {
    Known(String),
    TooLarge,
    NeedsWork,
}

/// Ends a reading when dropped (however it ends): the file leaves the readings under way, and
/// whoever waits for it is woken.
struct Reading {
    hasher: Arc<Hasher>,
    key: (u64, u64),
    done: tokio::sync::watch::Sender<bool>,
}

impl Drop for Reading {
    fn drop(&mut self) {
        if let Ok(mut reading) = self.hasher.reading.lock() {
            reading.remove(&self.key);
        }
        let _ = self.done.send(true);
    }
}

impl Hasher {
    /// Hashes executables up to `max_bytes` (larger ones get no `unix:sha256`).
    pub(super) fn new(max_bytes: u64) -> Arc<Self> {
        Arc::new(Self {
            max_bytes,
            hashes: Mutex::default(),
            reading: Mutex::default(),
            slots: Slots::new(MAX_CONCURRENT_HASHES, MAX_HASHES_PER_USER),
            hashed: AtomicU64::new(0),
        })
    }

    /// The hash of the executable with stamps `seen` if the cache has it (or `TooLarge`), without
    /// reading anything.
    pub(super) fn cached(&self, pid: u32, seen: &FileStamp) -> Hash {
        let (key, stamp) = cache_key(seen);
        if let Some(hit) = self.lookup(key, &stamp) {
            return Hash::Known(hit);
        }
        if seen.size > self.max_bytes {
            tracing::debug!(
                pid,
                size = seen.size,
                limit = self.max_bytes,
                "executable larger than the hash limit; no unix:sha256 selector"
            );
            return Hash::TooLarge;
        }
        Hash::NeedsWork
    }

    fn lookup(&self, key: (u64, u64), stamp: &CachedHash) -> Option<String> {
        let mut cache = self.hashes.lock().ok()?;
        let hit = cache.get_mut(&key)?;
        if !hit.same_version(stamp) {
            return None;
        }
        hit.used = recency();
        Some(hit.hex.clone())
    }

    /// For the attestor's prefetch: when the caller's executable is not hashed yet, the work that
    /// hashes it once its turn comes (waited for on the runtime, at most [`HASH_WAIT`]), so the
    /// blocking part of the attestation finds the hash cached.
    pub(super) fn ahead(
        self: &Arc<Self>,
        process: &PinnedProcess,
    ) -> Option<impl Future<Output = Result<(), Error>> + Send + 'static> {
        // A stat that fails is the blocking part's to report.
        let seen = process.dir.exe_stamp().ok()?;
        if !matches!(self.cached(process.pid(), &seen), Hash::NeedsWork) {
            return None;
        }
        let (hasher, dir) = (self.clone(), process.dir.clone());
        let (pid, user) = (process.pid(), process.share_uid());
        Some(async move { hasher.in_turn(dir, pid, user, seen).await })
    }

    async fn in_turn(
        self: Arc<Self>,
        dir: Arc<ProcDir>,
        pid: u32,
        user: u32,
        seen: FileStamp,
    ) -> Result<(), Error> {
        let (key, stamp) = cache_key(&seen);
        let deadline = tokio::time::Instant::now() + HASH_WAIT;
        let mut slot: Option<UserSlot> = None;
        loop {
            if self.lookup(key, &stamp).is_some() {
                return Ok(());
            }
            // A reading of the same file under way (whoever started it): its answer, or, if it
            // read another version of the file or failed, a reading of this caller's own.
            let under_way = self.reading.lock().ok().and_then(|r| r.get(&key).cloned());
            if let Some(mut done) = under_way {
                // Not holding the user's slot meanwhile.
                slot = None;
                if tokio::time::timeout_at(deadline, done.wait_for(|d| *d))
                    .await
                    .is_err()
                {
                    return Err(no_turn(pid, "another caller's reading of the same file"));
                }
                continue;
            }
            // The user's slot first, not holding the file's reading while waiting for it.
            let Some(held) = slot.take() else {
                let mut mine = UserSlot::new(&self.slots, user);
                if !matches!(
                    tokio::time::timeout_at(deadline, mine.acquire()).await,
                    Ok(true)
                ) {
                    return Err(no_turn(
                        pid,
                        &format!(
                            "the callers of user {user} already have {MAX_HASHES_PER_USER} \
                             executable being read (at most {MAX_HASHES_PER_USER} per user)"
                        ),
                    ));
                }
                slot = Some(mine);
                continue;
            };
            let Some(reading) = self.start_reading(key) else {
                slot = Some(held);
                continue;
            };
            let Ok(Ok(turn)) =
                tokio::time::timeout_at(deadline, self.slots.gate.clone().acquire_owned()).await
            else {
                return Err(no_turn(
                    pid,
                    &format!(
                        "other users' executables are being read ({MAX_CONCURRENT_HASHES} at once at most)"
                    ),
                ));
            };
            let hasher = self.clone();
            return tokio::task::spawn_blocking(move || {
                let _held = (turn, reading, held);
                hasher.read_and_keep(&dir, pid, key, &stamp).map(|_| ())
            })
            .await
            .map_err(|e| Error::Task(e.to_string()))?;
        }
    }

    /// Marks `key` as being read, unless a reading of it is under way.
    fn start_reading(self: &Arc<Self>, key: (u64, u64)) -> Option<Reading> {
        let mut reading = self.reading.lock().ok()?;
        if reading.contains_key(&key) {
            return None;
        }
        let (done, waiters) = tokio::sync::watch::channel(false);
        reading.insert(key, waiters);
        Some(Reading {
            hasher: self.clone(),
            key,
            done,
        })
    }

    /// SHA-256 of the caller's executable for the blocking part of an attestation: cached (the
    /// prefetch read it), or read here when that needs no wait — its user's slot and a turn free
    /// now, and no reading of the same file under way (a caller that skipped the prefetch, or a
    /// file that changed since). Otherwise no identity for now: a blocking thread never waits for a
    /// turn, so a user who keeps changing its executable cannot hold threads waiting.
    pub(super) fn exe_sha256(self: &Arc<Self>, process: &PinnedProcess) -> Result<Hash, Error> {
        let pid = process.pid();
        let seen = process.dir.exe_stamp().map_err(read_error)?;
        match self.cached(pid, &seen) {
            Hash::NeedsWork => {}
            known => return Ok(known),
        }
        let (key, stamp) = cache_key(&seen);
        let user = process.share_uid();
        let mut slot = UserSlot::new(&self.slots, user);
        if !slot.try_acquire() {
            return Err(no_turn(
                pid,
                &format!("the callers of user {user} have an executable being read"),
            ));
        }
        let Some(reading) = self.start_reading(key) else {
            return Err(no_turn(pid, "another caller's reading of the same file"));
        };
        let Ok(turn) = self.slots.gate.clone().try_acquire_owned() else {
            return Err(no_turn(pid, "other executables are being read"));
        };
        let _held = (turn, reading, slot);
        match self.read_and_keep(&process.dir, pid, key, &stamp)? {
            Some(hex) => Ok(Hash::Known(hex)),
            None => Err(no_turn(pid, "the file changed while it was being read")),
        }
    }

    /// Reads and hashes the executable and caches its hash, if it is still the file of `key` with
    /// `stamp` once opened (`None`: it changed).
    fn read_and_keep(
        &self,
        dir: &ProcDir,
        pid: u32,
        key: (u64, u64),
        stamp: &CachedHash,
    ) -> Result<Option<String>, Error> {
        let mut file = dir.open_exe().map_err(read_error)?;
        let meta = file.metadata().map_err(|source| {
            read_error(sys::Error::ProcRead {
                pid,
                file: "exe",
                source,
            })
        })?;
        let (opened, opened_stamp) = cache_key(&FileStamp {
            id: sys::proc::FileId {
                dev: meta.dev(),
                ino: meta.ino(),
            },
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        });
        if opened != key || !opened_stamp.same_version(stamp) || meta.size() > self.max_bytes {
            return Ok(None);
        }
        let hex = read_hash(pid, &mut file)?;
        self.hashed.fetch_add(1, Ordering::Relaxed);
        self.remember(key, stamp, &hex);
        Ok(Some(hex))
    }

    /// Keeps `hex` as the hash of the file `key` at the version `stamp` (making room in a full
    /// cache by forgetting the hash used least recently).
    fn remember(&self, key: (u64, u64), stamp: &CachedHash, hex: &str) {
        if let Ok(mut cache) = self.hashes.lock() {
            let hash = CachedHash {
                hex: hex.to_owned(),
                used: recency(),
                ..stamp.clone()
            };
            insert_bounded(&mut cache, HASH_CACHE_CAPACITY, key, hash, |h| h.used);
        }
    }
}

impl CachedHash {
    fn same_version(&self, other: &CachedHash) -> bool {
        self.size == other.size && self.mtime == other.mtime && self.ctime == other.ctime
    }
}

/// No turn to read the executable of `pid`: no identity for now.
fn no_turn(pid: u32, why: &str) -> Error {
    Error::Hashing {
        pid,
        why: why.to_owned(),
    }
}

fn read_hash(pid: u32, file: &mut std::fs::File) -> Result<String, Error> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(|source| {
            read_error(sys::Error::ProcRead {
                pid,
                file: "exe",
                source,
            })
        })?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(crate::encoding::hex(ctx.finish().as_ref()))
}

/// The hash cache's key (device, inode) and the stamps a hit must match.
fn cache_key(s: &FileStamp) -> ((u64, u64), CachedHash) {
    (
        (s.id.dev, s.id.ino),
        CachedHash {
            size: s.size,
            mtime: s.mtime,
            ctime: s.ctime,
            hex: String::new(),
            used: 0,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attest::Caller;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    /// The blocking part never waits for a turn: with the caller's user holding its one slot (a
    /// reading of another of its executables), a caller that skipped the prefetch is refused at
    /// once, and nothing is read; with the slot given back, the same call reads and hashes.
    #[test]
    fn the_blocking_part_refuses_instead_of_waiting_for_its_users_turn() {
        let hasher = Hasher::new(u64::MAX);
        let (a, _b) = UnixStream::pair().unwrap();
        let caller = Caller::from_socket(a.as_fd()).unwrap();
        let pinned = PinnedProcess::pin(&caller).unwrap();
        let mut busy = UserSlot::new(&hasher.slots, pinned.share_uid());
        assert!(busy.try_acquire());
        let t = std::time::Instant::now();
        match hasher.exe_sha256(&pinned) {
            Err(Error::Hashing { pid, why }) => {
                assert_eq!(pid, pinned.pid());
                assert!(why.contains("have an executable being read"), "{why}");
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("hashed while its user's slot was taken"),
        }
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(hasher.hashed.load(Ordering::Relaxed), 0);
        drop(busy);
        assert!(matches!(hasher.exe_sha256(&pinned), Ok(Hash::Known(_))));
        assert_eq!(hasher.hashed.load(Ordering::Relaxed), 1);
        assert!(
            hasher.slots.users.lock().unwrap().is_empty(),
            "the user's slots outlived their use"
        );
    }

    /// A full cache forgets one hash to take a new one, the one used least recently: a caller
    /// with thousands of executables does not make every other user's program be read again.
    #[test]
    fn a_full_hash_cache_forgets_the_least_recently_used_hash_only() {
        let hasher = Hasher::new(u64::MAX);
        let version = |n: u64| CachedHash {
            size: n,
            mtime: (1, 0),
            ctime: (1, 0),
            hex: String::new(),
            used: 0,
        };
        let n = HASH_CACHE_CAPACITY as u64;
        for i in 0..n {
            hasher.remember((1, i), &version(i), &format!("{i:064x}"));
        }
        // The first file's hash is found again (used now), the second's is not.
        assert_eq!(
            hasher.lookup((1, 0), &version(0)),
            Some(format!("{:064x}", 0))
        );
        hasher.remember((1, n), &version(n), "new");
        let cache = hasher.hashes.lock().unwrap();
        assert_eq!(cache.len(), HASH_CACHE_CAPACITY);
        assert!(cache.contains_key(&(1, 0)), "a hash in use was forgotten");
        assert!(
            !cache.contains_key(&(1, 1)),
            "the least recently used hash was kept"
        );
        assert!(
            (2..=n).all(|i| cache.contains_key(&(1, i))),
            "more than one hash forgotten"
        );
    }
}
