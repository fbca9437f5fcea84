//! The unix attestor: uid, gid, user, group, supplementary groups, executable path and hash.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Attestor, Error, ExeFacts, PinnedProcess};
use crate::recency::{insert_bounded, recency};
use crate::selector::{Selector, SelectorSet};
use crate::sys;

mod hash;
mod slots;

use hash::{Hash, Hasher};
use slots::{Slots, UserSlot};

/// Default upper bound on the size of an executable that is hashed for `unix:sha256`.
pub const DEFAULT_HASH_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// How many uids' and gids' names are remembered (each). A full cache makes room for a new id by
/// forgetting the one used least recently ([`insert_bounded`]), not by forgetting all of them.
const NAME_CACHE_CAPACITY: usize = 4096;

/// How long a uid or gid → name lookup is reused. Name-service lookups can cost as much as the rest
/// of attestation together (or block on a remote directory); a renamed user is seen after this.
const NAME_CACHE_TTL: Duration = Duration::from_secs(30);

/// From this age on, a cached name is looked up again on the blocking pool while the calls that
/// meet it are still answered from the cache (it is younger than [`NAME_CACHE_TTL`]): a caller that
/// keeps fetching never waits for the name service, where one of its fetches every 30 s took the
/// whole slow path of attestation (on the blocking pool). No name is ever used older than
/// [`NAME_CACHE_TTL`]: past it, the call looks the name up itself, as before.
const NAME_REFRESH_AFTER: Duration = Duration::from_secs(20);

/// Attests uid/gid/names/groups/path/sha256 of a pinned process.
pub struct UnixAttestor {
    hasher: Arc<Hasher>,
    users: NameCache,
    groups: NameCache,
}

/// A name-service lookup: uid or gid → name (`None`: no such name).
type Lookup = fn(u32) -> Option<String>;

/// How long an attestation waits for the name service to answer for a uid or gid it has not
/// cached; past it the caller gets no identity (`Unavailable`: retry), and the lookup goes on.
const NAME_WAIT: Duration = Duration::from_secs(10);

/// Name-service lookups under way at most, whoever asks: each holds a blocking thread for as long
/// as the name service takes (a directory server that stopped answering holds it until it times
/// out), so the agent's blocking pool is never filled by them.
const MAX_CONCURRENT_NAME_LOOKUPS: usize = 16;

/// Of those, at most this many started for the callers of one user (the uid they count against,
/// [`PinnedProcess::share_uid`]: a user's subordinate uids are that user's): one user whose ids
/// the name service does not answer for cannot hold every lookup and make every other user's
/// first fetch wait. A user's further lookups wait (on the runtime) for one of its own to end.
const MAX_NAME_LOOKUPS_PER_USER: usize = 4;

/// Why [`NameCache::resolve`] has no answer.
#[derive(Debug, PartialEq)]
enum Unresolved {
    /// The lookup was started (or joined) and the name service has not answered.
    NoAnswer,
    /// The user's callers hold all their lookups, and none ended in time.
    UserBusy,
}

/// A small TTL cache for name-service answers (including "no such name"), refreshed ahead of expiry.
///
/// An attestation that needs an answer not cached waits for it on the runtime
/// ([`NameCache::resolve`], from the attestor's prefetch), not on a blocking thread: one lookup
/// per id at a time however many attestations want it, at most [`MAX_CONCURRENT_NAME_LOOKUPS`] in
/// all and [`MAX_NAME_LOOKUPS_PER_USER`] for one user's callers. Before, each attestation looked the name up itself on the blocking pool, so one uid whose
/// lookup hangs, with 1,000 streams opening, took every blocking thread the agent has and every
/// other user's first fetch waited behind them (37 s in `tests/abuse.rs`). Cloning shares it.
#[derive(Clone)]
struct NameCache {
    entries: Arc<Mutex<HashMap<u32, CachedName>>>,
    /// Lookups under way, by id: the flag turns true when one is done (whatever its answer).
    in_flight: Arc<Mutex<HashMap<u32, tokio::sync::watch::Receiver<bool>>>>,
    /// Shared by the user and group caches.
    lookups: Arc<Slots>,
    lookup: Lookup,
}

struct CachedName {
    at: Instant,
    /// When it was last stored or answered from, on the [`recency`] count.
    used: u64,
    name: Option<String>,
    /// A lookup on the blocking pool is under way (one at a time per id).
    refreshing: bool,
}

impl NameCache {
    fn new(lookup: Lookup, lookups: Arc<Slots>) -> Self {
        Self {
            entries: Arc::default(),
            in_flight: Arc::default(),
            lookups,
            lookup,
        }
    }

    /// Whether a lookup of `id` is under way.
    fn looking_up(&self, id: u32) -> bool {
        self.in_flight.lock().is_ok_and(|m| m.contains_key(&id))
    }

    /// The lookup of `id` under way, if there is one.
    fn joined(&self, id: u32) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.in_flight.lock().ok()?.get(&id).cloned()
    }

    /// Waits (on the runtime, at most [`NAME_WAIT`]) until the answer for `id` is cached. A lookup
    /// of `id` under way is joined, whoever started it; otherwise one is started once `user` (the
    /// caller's share uid) has a lookup slot free.
    async fn resolve(&self, id: u32, user: u32) -> Result<(), Unresolved> {
        if self.cached(id, user).is_some() {
            return Ok(());
        }
        let mut under_way = false;
        let _ = tokio::time::timeout(NAME_WAIT, async {
            let mut done = match self.joined(id) {
                Some(done) => done,
                None => {
                    let mut slot = UserSlot::new(&self.lookups, user);
                    if !slot.acquire().await {
                        return;
                    }
                    match self.join_or_start(id, slot) {
                        Some(done) => done,
                        None => return,
                    }
                }
            };
            under_way = true;
            let _ = done.wait_for(|d| *d).await;
        })
        .await;
        match self.peek(id) {
            Some(_) => Ok(()),
            None if under_way => Err(Unresolved::NoAnswer),
            None => Err(Unresolved::UserBusy),
        }
    }

    /// The lookup of `id` under way, or a new one holding `slot` (on the blocking pool, once the
    /// shared gate lets it).
    fn join_or_start(&self, id: u32, slot: UserSlot) -> Option<tokio::sync::watch::Receiver<bool>> {
        let mut in_flight = self.in_flight.lock().ok()?;
        if let Some(done) = in_flight.get(&id) {
            return Some(done.clone());
        }
        let (tx, done) = tokio::sync::watch::channel(false);
        in_flight.insert(id, done.clone());
        let (entries, in_flight, gate, lookup) = (
            self.entries.clone(),
            self.in_flight.clone(),
            self.lookups.gate.clone(),
            self.lookup,
        );
        tokio::spawn(async move {
            // However this ends (even if the lookup panics), the id is no longer in flight, and
            // the user's slot is given back.
            let _done = LookupDone { id, in_flight, tx };
            let _slot = slot;
            let Ok(_permit) = gate.acquire_owned().await else {
                return;
            };
            if let Ok(name) = tokio::task::spawn_blocking(move || lookup(id)).await {
                store(&entries, id, name);
            }
        });
        Some(done)
    }

    /// A cached answer younger than [`NAME_CACHE_TTL`], if any, without starting anything.
    fn peek(&self, id: u32) -> Option<Option<String>> {
        let entries = self.entries.lock().ok()?;
        let entry = entries.get(&id)?;
        (entry.at.elapsed() < NAME_CACHE_TTL).then(|| entry.name.clone())
    }

    /// A cached answer younger than [`NAME_CACHE_TTL`], if any: `Some(answer)`. One older than
    /// [`NAME_REFRESH_AFTER`] is answered and looked up again in the background (when a Tokio
    /// runtime is there to run the lookup, and `user`, the caller's share uid, has a lookup slot
    /// free; otherwise a later call starts it).
    fn cached(&self, id: u32, user: u32) -> Option<Option<String>> {
        let mut entries = self.entries.lock().ok()?;
        let entry = entries.get_mut(&id)?;
        let age = entry.at.elapsed();
        if age >= NAME_CACHE_TTL {
            return None;
        }
        entry.used = recency();
        if age >= NAME_REFRESH_AFTER
            && !entry.refreshing
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let mut slot = UserSlot::new(&self.lookups, user);
            if slot.try_acquire() {
                entry.refreshing = true;
                let (entries, lookup, gate) =
                    (self.entries.clone(), self.lookup, self.lookups.gate.clone());
                // Dropped (not awaited): the answer lands in the cache. Through the gate and on
                // the user's share, as every lookup: refreshes of many ids on a hung name
                // service hold a few threads, not the pool.
                drop(runtime.spawn(async move {
                    let _slot = slot;
                    let Ok(_permit) = gate.acquire_owned().await else {
                        return;
                    };
                    let _ = tokio::task::spawn_blocking(move || {
                        let name = lookup(id);
                        store(&entries, id, name);
                    })
                    .await;
                }));
            }
        }
        Some(entry.name.clone())
    }

    /// The cached answer, or a lookup now (blocking).
    fn get(&self, id: u32, user: u32) -> Option<String> {
        if let Some(name) = self.cached(id, user) {
            return name;
        }
        let name = (self.lookup)(id);
        store(&self.entries, id, name.clone());
        name
    }
}

/// Ends a lookup of [`NameCache::join_or_start`] when dropped: the id leaves the lookups under
/// way, and whoever waits for it is woken.
struct LookupDone {
    id: u32,
    in_flight: Arc<Mutex<HashMap<u32, tokio::sync::watch::Receiver<bool>>>>,
    tx: tokio::sync::watch::Sender<bool>,
}

impl Drop for LookupDone {
    fn drop(&mut self) {
        if let Ok(mut in_flight) = self.in_flight.lock() {
            in_flight.remove(&self.id);
        }
        let _ = self.tx.send(true);
    }
}

/// Keeps a fresh answer for `id` (and ends its refresh).
fn store(entries: &Mutex<HashMap<u32, CachedName>>, id: u32, name: Option<String>) {
    if let Ok(mut cache) = entries.lock() {
        let entry = CachedName {
            at: Instant::now(),
            used: recency(),
            name,
            refreshing: false,
        };
        insert_bounded(&mut cache, NAME_CACHE_CAPACITY, id, entry, |e| e.used);
    }
}

/// The name of `id` for an attestation on the blocking pool: cached (the prefetch waited for it),
/// or looked up here where no lookup of it is under way (no prefetch ran, or the answer expired
/// since); while one is (the name service has not answered within [`NAME_WAIT`]), no identity.
fn name_of(
    cache: &NameCache,
    kind: &'static str,
    id: u32,
    user: u32,
) -> Result<Option<String>, Error> {
    if let Some(name) = cache.cached(id, user) {
        return Ok(name);
    }
    if cache.looking_up(id) {
        return Err(Error::NameService {
            kind,
            id,
            waited: NAME_WAIT,
        });
    }
    Ok(cache.get(id, user))
}

/// What [`NameCache::resolve`] found, as an attestation error.
fn unresolved(why: Unresolved, kind: &'static str, id: u32, user: u32) -> Error {
    match why {
        Unresolved::NoAnswer => Error::NameService {
            kind,
            id,
            waited: NAME_WAIT,
        },
        Unresolved::UserBusy => Error::NameLookups {
            kind,
            id,
            user,
            max: MAX_NAME_LOOKUPS_PER_USER,
            waited: NAME_WAIT,
        },
    }
}

impl UnixAttestor {
    /// An attestor that hashes executables up to `hash_max_bytes` (larger ones get no `unix:sha256`).
    pub fn new(hash_max_bytes: u64) -> Self {
        let lookups = Slots::new(MAX_CONCURRENT_NAME_LOOKUPS, MAX_NAME_LOOKUPS_PER_USER);
        Self {
            hasher: Hasher::new(hash_max_bytes),
            users: NameCache::new(sys::users::user_name, lookups.clone()),
            groups: NameCache::new(sys::users::group_name, lookups),
        }
    }
}

impl UnixAttestor {
    /// Attests; with `allow_slow` false, returns `Ok(false)` instead of hashing or asking the name
    /// service, and leaves the path and the hash to `attest_cached_exe` (after the confirm).
    fn collect(
        &self,
        process: &PinnedProcess,
        out: &mut SelectorSet,
        allow_slow: bool,
    ) -> Result<bool, Error> {
        // Exactly the credentials the process connected with, or the connection is cut off.
        let creds = process.credentials()?;
        let share = process.share_uid();
        let (user, group) = if allow_slow {
            (
                name_of(&self.users, "uid", creds.effective_uid, share)?,
                name_of(&self.groups, "gid", creds.effective_gid, share)?,
            )
        } else {
            match (
                self.users.cached(creds.effective_uid, share),
                self.groups.cached(creds.effective_gid, share),
            ) {
                (Some(u), Some(g)) => (u, g),
                _ => return Ok(false),
            }
        };
        // The fast path looks the hash up after the confirm, with the stamps it reads
        // (`attest_cached_exe`): one `stat` of the executable per call, not two.
        let sha256 = if allow_slow {
            match self.hasher.exe_sha256(process)? {
                Hash::Known(hex) => Some(hex),
                Hash::TooLarge | Hash::NeedsWork => None,
            }
        } else {
            None
        };
        out.insert(Selector::UnixUid(creds.effective_uid));
        out.insert(Selector::UnixGid(creds.effective_gid));
        for gid in &creds.supplementary_gids {
            out.insert(Selector::UnixSupplementaryGid(*gid));
        }
        if let Some(name) = user {
            out.insert(Selector::UnixUser(name));
        }
        if let Some(name) = group {
            out.insert(Selector::UnixGroup(name));
        }
        // A path names a file only in the mount namespace it is read in: in another one (a
        // container, `unshare -m`) the caller may have mounted anything at `/usr/bin/app`. There
        // only `unix:sha256`, read through the pinned `exe` link, says what runs (`read_exe_path`
        // reads no path there). The fast path adds the path after its confirm, from what the
        // connection knows of the executable (`attest_cached_exe`).
        if allow_slow && let Some(path) = process.read_exe_path()? {
            out.insert(Selector::UnixPath(path.to_string()));
        }
        if let Some(hex) = sha256 {
            out.insert(Selector::UnixSha256(hex));
        }
        Ok(true)
    }
}

impl Attestor for UnixAttestor {
    fn name(&self) -> &'static str {
        "unix"
    }

    /// The user and group names the attestation needs, when not cached, and the hash of its
    /// executable, when not known: waited for here, on the runtime ([`NameCache::resolve`],
    /// [`Hasher::ahead`]), so no blocking thread waits on the name service or for a turn to read
    /// a file. Without them in time the attestation ends here: no identity, the reason named.
    fn prefetch(&self, process: &PinnedProcess) -> Option<super::Prefetch> {
        let creds = process.credentials().ok()?;
        let (uid, gid, share) = (
            creds.effective_uid,
            creds.effective_gid,
            process.share_uid(),
        );
        let names_known =
            self.users.cached(uid, share).is_some() && self.groups.cached(gid, share).is_some();
        let hash = self.hasher.ahead(process);
        if names_known && hash.is_none() {
            return None;
        }
        let (users, groups) = (self.users.clone(), self.groups.clone());
        Some(Box::pin(async move {
            if !names_known {
                let (user, group) =
                    tokio::join!(users.resolve(uid, share), groups.resolve(gid, share));
                user.map_err(|why| unresolved(why, "uid", uid, share))?;
                group.map_err(|why| unresolved(why, "gid", gid, share))?;
            }
            match hash {
                Some(hash) => hash.await,
                None => Ok(()),
            }
        }))
    }

    fn attest(&self, process: &PinnedProcess, out: &mut SelectorSet) -> Result<(), Error> {
        self.collect(process, out, true).map(|_| ())
    }

    fn attest_cached(&self, process: &PinnedProcess, out: &mut SelectorSet) -> Result<bool, Error> {
        self.collect(process, out, false)
    }

    fn attest_cached_exe(
        &self,
        process: &PinnedProcess,
        exe: &ExeFacts,
        out: &mut SelectorSet,
    ) -> Result<bool, Error> {
        if let Some(path) = &exe.path {
            out.insert(Selector::UnixPath(path.to_string()));
        }
        match self.hasher.cached(process.pid(), &exe.stamp) {
            Hash::Known(hex) => out.insert(Selector::UnixSha256(hex)),
            Hash::TooLarge => {}
            Hash::NeedsWork => return Ok(false),
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attest::{Caller, attest_blocking};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    /// A cache whose entry for `id` was stored `age` ago with `name`.
    fn aged(lookup: Lookup, id: u32, age: Duration, name: &str) -> NameCache {
        let cache = NameCache::new(lookup, Slots::new(1, MAX_NAME_LOOKUPS_PER_USER));
        cache.entries.lock().unwrap().insert(
            id,
            CachedName {
                at: Instant::now().checked_sub(age).unwrap(),
                used: recency(),
                name: Some(name.into()),
                refreshing: false,
            },
        );
        cache
    }

    /// A full name cache forgets one name to take a new one, the one used least recently: a
    /// caller with thousands of uids does not send every other user's next call to the name
    /// service.
    #[test]
    fn a_full_name_cache_forgets_the_least_recently_used_name_only() {
        fn name(id: u32) -> Option<String> {
            Some(format!("user-{id}"))
        }
        let cache = NameCache::new(name, Slots::new(1, MAX_NAME_LOOKUPS_PER_USER));
        let n = NAME_CACHE_CAPACITY as u32;
        for id in 0..n {
            store(&cache.entries, id, name(id));
        }
        // uid 0 is answered from the cache (used now); uid 1 is not.
        assert_eq!(cache.cached(0, 0), Some(name(0)));
        store(&cache.entries, n, name(n));
        let entries = cache.entries.lock().unwrap();
        assert_eq!(entries.len(), NAME_CACHE_CAPACITY);
        assert!(entries.contains_key(&0), "a name in use was forgotten");
        assert!(
            !entries.contains_key(&1),
            "the least recently used name was kept"
        );
        assert!(
            (2..=n).all(|id| entries.contains_key(&id)),
            "more than one name forgotten"
        );
    }

    static SLOW_LOOKUPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    /// A name service that takes 300 ms to answer.
    fn slow_lookup(id: u32) -> Option<String> {
        SLOW_LOOKUPS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        Some(format!("user-{id}"))
    }

    /// Twenty attestations waiting for one uid's name make one lookup, waited for on the runtime;
    /// while it is under way, the blocking part of an attestation does not look it up itself but
    /// says the name service has not answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn attestations_waiting_for_one_name_share_one_lookup_off_the_blocking_pool() {
        let cache = NameCache::new(slow_lookup, Slots::new(1, MAX_NAME_LOOKUPS_PER_USER));
        let waits: Vec<_> = (0..20)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.resolve(42, 0).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(cache.looking_up(42));
        match name_of(&cache, "uid", 42, 0) {
            Err(Error::NameService {
                kind: "uid",
                id: 42,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        for w in waits {
            assert_eq!(w.await.unwrap(), Ok(()));
        }
        assert_eq!(SLOW_LOOKUPS.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(!cache.looking_up(42));
        assert_eq!(
            name_of(&cache, "uid", 42, 0).unwrap().as_deref(),
            Some("user-42")
        );
    }

    /// Set when the lookups of [`held_lookup`] may answer.
    static RELEASE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    static HELD_LOOKUPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    /// A name service that does not answer for ids 1 to 3 until told to (or 10 s); at once for others.
    fn held_lookup(id: u32) -> Option<String> {
        HELD_LOOKUPS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while (1..=3).contains(&id)
            && !RELEASE.load(std::sync::atomic::Ordering::SeqCst)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        Some(format!("user-{id}"))
    }

    /// One user's callers start at most its share of the lookups: with both of user 1000's held by
    /// a name service that does not answer, its third id waits for one of them to end, while
    /// another user's lookup starts and is answered at once, and a lookup under way for user 1000
    /// is joined by user 2000 without waiting for user 1000's share.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_users_lookups_the_name_service_does_not_answer_leave_the_others_their_lookups() {
        let lookups = Slots::new(16, 2);
        let cache = NameCache::new(held_lookup, lookups.clone());
        let resolve = |id: u32, user: u32| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.resolve(id, user).await })
        };
        let (first, second) = (resolve(1, 1000), resolve(2, 1000));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(cache.looking_up(1) && cache.looking_up(2));
        let third = resolve(3, 1000);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !cache.looking_up(3),
            "user 1000's third lookup waits for its share"
        );
        let t = Instant::now();
        assert_eq!(resolve(4, 2000).await.unwrap(), Ok(()));
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        let joined = resolve(1, 2000);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(HELD_LOOKUPS.load(std::sync::atomic::Ordering::SeqCst), 3);
        RELEASE.store(true, std::sync::atomic::Ordering::SeqCst);
        for wait in [first, second, third, joined] {
            assert_eq!(wait.await.unwrap(), Ok(()));
        }
        assert_eq!(
            HELD_LOOKUPS.load(std::sync::atomic::Ordering::SeqCst),
            4,
            "id 1 was looked up once for both users"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while !lookups.users.lock().unwrap().is_empty() {
            assert!(
                Instant::now() < deadline,
                "a user's slots outlived its lookups"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    static REFRESHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    /// Set by the test when the lookup may answer (a name service that is slow until then).
    static ANSWER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    fn counted_lookup(id: u32) -> Option<String> {
        REFRESHES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ANSWER.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        Some(format!("renamed-{id}"))
    }

    #[tokio::test]
    async fn a_name_near_its_expiry_is_answered_at_once_and_looked_up_again_in_the_background() {
        let cache = aged(counted_lookup, 7, Duration::from_secs(25), "old");
        let t = Instant::now();
        assert_eq!(cache.cached(7, 0), Some(Some("old".into())));
        // Meanwhile other calls get the cached name and start no second lookup.
        assert_eq!(cache.cached(7, 0), Some(Some("old".into())));
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the calls did not wait for the lookup (it answers only when told, or after 10 s)"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while REFRESHES.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "no lookup was started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // While that lookup is under way, a call is answered from the cache and starts no other.
        assert_eq!(cache.cached(7, 0), Some(Some("old".into())));
        assert_eq!(REFRESHES.load(std::sync::atomic::Ordering::SeqCst), 1);
        ANSWER.store(true, std::sync::atomic::Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        while cache.cached(7, 0) != Some(Some("renamed-7".into())) {
            assert!(Instant::now() < deadline, "the refreshed name never landed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(REFRESHES.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(
            cache.entries.lock().unwrap()[&7].at.elapsed() < Duration::from_secs(5),
            "the refreshed name counts its age from its own lookup"
        );
    }

    fn renaming_lookup(id: u32) -> Option<String> {
        Some(format!("renamed-{id}"))
    }

    #[tokio::test]
    async fn a_name_past_its_ttl_is_never_answered_from_the_cache() {
        let cache = aged(renaming_lookup, 7, NAME_CACHE_TTL, "old");
        assert_eq!(cache.cached(7, 0), None, "the fast path must not use it");
        assert_eq!(
            cache.get(7, 0),
            Some("renamed-7".into()),
            "looked up in the call"
        );
    }

    #[test]
    fn without_a_runtime_a_name_near_its_expiry_is_answered_and_nothing_is_started() {
        let cache = aged(renaming_lookup, 7, Duration::from_secs(25), "old");
        assert_eq!(cache.cached(7, 0), Some(Some("old".into())));
        assert!(!cache.entries.lock().unwrap()[&7].refreshing);
    }

    #[test]
    fn attests_this_process_through_a_real_socket() {
        let (a, _b) = UnixStream::pair().unwrap();
        let caller = Caller::from_socket(a.as_fd()).unwrap();
        assert_eq!(caller.cred.pid, std::process::id());
        let attestors: Vec<Box<dyn Attestor>> = vec![Box::new(UnixAttestor::new(u64::MAX))];
        let (_, set) = attest_blocking(&caller, &attestors).unwrap();
        let uid = sys::euid();
        assert!(set.contains_all(&[Selector::UnixUid(uid)]));
        let exe = std::env::current_exe().unwrap();
        assert!(set.contains_all(&[Selector::UnixPath(exe.to_str().unwrap().into())]));
        let bytes = std::fs::read(&exe).unwrap();
        let want = crate::encoding::hex(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes).as_ref(),
        );
        assert!(set.contains_all(&[Selector::UnixSha256(want)]));
    }

    #[test]
    fn fast_path_needs_a_warm_cache_and_then_agrees() {
        let (a, _b) = UnixStream::pair().unwrap();
        let caller = Caller::from_socket(a.as_fd()).unwrap();
        let attestors: Vec<Box<dyn Attestor>> = vec![Box::new(UnixAttestor::new(u64::MAX))];
        assert!(
            crate::attest::attest_fast(&caller, &attestors)
                .unwrap()
                .is_none(),
            "cold cache"
        );
        let (_, slow) = attest_blocking(&caller, &attestors).unwrap();
        let (_, fast) = crate::attest::attest_fast(&caller, &attestors)
            .unwrap()
            .expect("warm cache");
        assert_eq!(fast, slow);
    }

    #[test]
    fn hash_limit_drops_the_sha256_selector() {
        let (a, _b) = UnixStream::pair().unwrap();
        let caller = Caller::from_socket(a.as_fd()).unwrap();
        let attestors: Vec<Box<dyn Attestor>> = vec![Box::new(UnixAttestor::new(16))];
        let (_, set) = attest_blocking(&caller, &attestors).unwrap();
        assert!(!set.iter().any(|s| matches!(s, Selector::UnixSha256(_))));
    }

    /// Many callers of one executable at once, each attested as the agent does (the prefetch on the
    /// runtime, then the blocking part): one read of the file; the others wait for it on the
    /// runtime and find its hash.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_hashing_of_one_file_reads_it_once() {
        let attestor = Arc::new(UnixAttestor::new(u64::MAX));
        let (a, _b) = UnixStream::pair().unwrap();
        let caller = Arc::new(Caller::from_socket(a.as_fd()).unwrap());
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (attestor, caller) = (attestor.clone(), caller.clone());
                tokio::spawn(async move {
                    let pinned = crate::attest::PinnedProcess::pin(&caller).unwrap();
                    if let Some(ahead) = attestor.prefetch(&pinned) {
                        ahead.await.unwrap();
                    }
                    tokio::task::spawn_blocking(move || {
                        let mut set = SelectorSet::new();
                        attestor.attest(&pinned, &mut set).unwrap();
                        set
                    })
                    .await
                    .unwrap()
                })
            })
            .collect();
        let mut sets = Vec::new();
        for t in tasks {
            sets.push(t.await.unwrap());
        }
        assert!(sets.windows(2).all(|w| w[0] == w[1]));
        assert!(sets[0].iter().any(|s| matches!(s, Selector::UnixSha256(_))));
        assert_eq!(
            attestor
                .hasher
                .hashed
                .load(std::sync::atomic::Ordering::Relaxed),
            1,
            "one read of the executable for 16 concurrent callers"
        );
    }
}
