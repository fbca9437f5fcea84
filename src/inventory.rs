//! The credential inventory: a durable record of every credential handed to a workload, who holds it,
//! and when and why it was withdrawn.
//!
//! A credential is recorded before it is delivered. Records from many callers are written together in
//! one SQLite transaction (synchronous=FULL, so durable at commit) by one writer thread; each caller
//! waits only for the commit that holds its rows, so the hot path never pays one fsync per SVID. A
//! credential already recorded for the same holder (a reconnect, a second stream) costs a hash lookup.
//!
//! Holders are processes, identified by PID and an instance number. The inventory tracks what each
//! holder was given; `lifecycle` reports when a holder's process exits, and its credentials are
//! then marked withdrawn at once (event-driven, no polling). The durable side is `store.rs`.

mod store;

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rusqlite::params;
use tokio::sync::oneshot;

use crate::clock::SharedClock;
use crate::sys::pidfd::Pidfd;
pub(crate) use store::Writer;
use store::{Op, secs};

/// Errors of the inventory.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("inventory database: {0}")]
    Sql(String),
    #[error("the inventory writer has stopped")]
    Stopped,
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Sql(e.to_string())
    }
}

/// What kind of credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    X509,
    Jwt,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::X509 => "x509",
            Kind::Jwt => "jwt",
        }
    }
}

/// Why a credential was withdrawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    ProcessExited,
    EntitlementRemoved,
    Superseded,
    AgentStopped,
    PolicyDenied,
}

impl Reason {
    /// The text stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ProcessExited => "process exited",
            Reason::EntitlementRemoved => "entitlement removed",
            Reason::Superseded => "superseded by rotation",
            Reason::AgentStopped => "agent stopped",
            Reason::PolicyDenied => "policy denied",
        }
    }
}

/// A process holding credentials: PID plus an instance number (pidfs inode or start time), so a
/// reused PID is another holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Holder {
    pub pid: u32,
    pub instance: u64,
}

/// Who receives a delivery.
#[derive(Debug, Clone)]
pub struct HolderInfo {
    pub holder: Holder,
    pub uid: u32,
    pub exe: String,
    pub pidfd: Arc<Pidfd>,
}

/// One credential handed over.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub kind: Kind,
    /// Certificate serial (hex) or JWT `jti`.
    pub serial: String,
    pub spiffe_id: String,
    pub entry_id: String,
    pub issued_at: SystemTime,
    pub not_after: SystemTime,
    /// Delivered in place of an older serial of the same identity (a rotation), for the audit.
    pub rotation: bool,
    /// The Cedar policies that permitted it (ids, comma-separated); `None` without `[policy]`.
    pub permitted_by: Option<String>,
}

/// A row of the inventory.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Record {
    pub kind: String,
    pub serial: String,
    pub spiffe_id: String,
    pub entry_id: String,
    pub pid: u32,
    pub uid: u32,
    pub executable: String,
    pub issued_at: i64,
    pub not_after: i64,
    pub delivered_at: i64,
    pub withdrawn_at: Option<i64>,
    pub withdraw_reason: Option<String>,
    /// The Cedar policies that permitted the issuance; `None` when no policy was in force.
    pub permitted_by: Option<String>,
}

/// A query of the inventory.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only credentials still held and not expired.
    pub live: bool,
    pub spiffe_id: Option<String>,
    /// Delivered at or after (seconds since the epoch).
    pub since: Option<i64>,
    pub limit: Option<u32>,
}

/// The inventory handle. Cloning shares it.
#[derive(Clone)]
pub struct Inventory {
    shared: Arc<Shared>,
}

struct Shared {
    tx: Mutex<std_mpsc::Sender<Op>>,
    /// Per holder: what it holds, and for which SPIFFE ID.
    held: Mutex<HashMap<Holder, Holdings>>,
    /// Deliveries whose rows are being written: a concurrent delivery of the same credential to
    /// the same holder waits for that commit instead of writing a second row. Locked after `held`.
    pending: Mutex<HashMap<(Holder, Kind, String), Commit>>,
    /// The last commit's error, until a commit succeeds (a full disk, for `/ready`).
    write_error: Mutex<Option<String>>,
    clock: SharedClock,
    /// JWT-SVIDs revoked because their last holder exited or lost its entitlement.
    revoked: store::Revoked,
    /// JWT-SVIDs fetched to be handed on: an exit does not revoke them.
    handed_on: store::HandedOn,
}

/// Credentials remembered per holder for de-duplication.
const MAX_HELD_PER_HOLDER: usize = 10_000;

/// The outcome of one commit, for whoever waits on it (`None` until it is known).
type Commit = tokio::sync::watch::Receiver<Option<Result<(), Error>>>;

/// What one holder holds: (kind, serial) → SPIFFE ID.
type Holdings = HashMap<(Kind, String), String>;

impl Inventory {
    /// Opens (creating) the inventory in `path`, marks what a previous run left held as withdrawn
    /// ("agent stopped": nothing tracks those holders any more) and prunes old rows. The returned
    /// [`Writer`] must run (on a thread of its own) for anything to be written.
    pub(crate) fn open(
        path: &Path,
        clock: SharedClock,
        retention: Duration,
        audit: Option<crate::audit::Audit>,
    ) -> Result<(Self, Writer), Error> {
        let conn = crate::db::open(path).map_err(|e| Error::Sql(e.to_string()))?;
        let now = secs(clock.now());
        conn.execute(
            "UPDATE credentials SET withdrawn_at = ?1, withdraw_reason = ?2 WHERE withdrawn_at IS NULL",
            params![now, Reason::AgentStopped.as_str()],
        )?;
        store::prune(&conn, now, retention)?;
        let revoked = store::load_revoked(&conn, now)?;
        let handed_on = store::HandedOn::default();
        let (tx, rx) = std_mpsc::channel();
        let inventory = Self {
            shared: Arc::new(Shared {
                tx: Mutex::new(tx),
                held: Mutex::new(HashMap::new()),
                pending: Mutex::new(HashMap::new()),
                write_error: Mutex::new(None),
                clock,
                revoked: revoked.clone(),
                handed_on: handed_on.clone(),
            }),
        };
        Ok((
            inventory,
            Writer::new(conn, rx, retention, audit, revoked, handed_on),
        ))
    }

    /// The JWT-SVID `jti` was fetched to be handed on (CLI, helper): its holder's exit does not
    /// revoke it. Kept in memory until it expires.
    pub(crate) fn handed_on_jwt(&self, jti: &str, expires_at: SystemTime) {
        if let Ok(mut map) = self.shared.handed_on.lock() {
            let now = store::secs(self.shared.clock.now());
            map.retain(|_, exp| *exp > now);
            map.insert(jti.to_owned(), store::secs(expires_at));
        }
    }

    /// Why the JWT-SVID with this `jti` was revoked (its last holder exited or lost its
    /// entitlement), while it has not expired.
    pub(crate) fn revoked_jwt(&self, jti: &str) -> Option<String> {
        let now = store::secs(self.shared.clock.now());
        self.shared
            .revoked
            .lock()
            .ok()?
            .get(jti)
            .filter(|(_, exp)| *exp > now)
            .map(|(reason, _)| reason.clone())
    }

    /// Asks the writer to stop once everything queued so far is written.
    pub(crate) fn close(&self) {
        let _ = self.send(Op::Stop);
    }

    fn send(&self, op: Op) -> Result<(), Error> {
        self.shared
            .tx
            .lock()
            .map_err(|_| Error::Stopped)?
            .send(op)
            .map_err(|_| Error::Stopped)
    }

    /// Records `deliveries` to `holder`; returns once they are durable. Credentials this holder was
    /// already recorded with cost nothing. The caller has the holder watched for exit (`lifecycle`).
    pub async fn record(&self, holder: &HolderInfo, deliveries: &[Delivery]) -> Result<(), Error> {
        let who = holder.holder;
        // Everything already held by this holder (a repeat delivery): nothing to write or wait for.
        {
            let held = self.shared.held.lock().map_err(|_| Error::Stopped)?;
            if let Some(known) = held.get(&who)
                && deliveries
                    .iter()
                    .all(|d| known.contains_key(&(d.kind, d.serial.clone())))
            {
                return Ok(());
            }
        }
        let mut tx = None;
        let (fresh, others) = {
            let held = self.shared.held.lock().map_err(|_| Error::Stopped)?;
            let mut pending = self.shared.pending.lock().map_err(|_| Error::Stopped)?;
            let known = held.get(&who);
            let mut fresh = Vec::new();
            let mut others: Vec<Commit> = Vec::new();
            for d in deliveries {
                let key = (who, d.kind, d.serial.clone());
                if known.is_some_and(|k| k.contains_key(&(d.kind, d.serial.clone()))) {
                    continue;
                }
                match pending.get(&key) {
                    Some(commit) => others.push(commit.clone()),
                    None => {
                        // Made only when this delivery writes rows of its own.
                        let tx = tx.get_or_insert_with(|| tokio::sync::watch::channel(None).0);
                        pending.insert(key, tx.subscribe());
                        fresh.push(d.clone());
                    }
                }
            }
            (fresh, others)
        };
        let mine = if let Some(tx) = tx {
            // The writer settles the commit itself as soon as it is durable: the keys leave
            // `pending` (and are held), and every delivery waiting on them is woken, even if this
            // caller has gone away meanwhile (a stream dropped in mid-delivery), and without a
            // turn in the runtime's queue first (behind, say, the other streams a rotation woke).
            let wait = self.commit(holder, fresh, tx);
            self.wait_commit(wait).await
        } else {
            Ok(())
        };
        // Rows another delivery is writing: delivered only once that commit is durable.
        for mut commit in others {
            let outcome = commit
                .wait_for(Option::is_some)
                .await
                .map_err(|_| Error::Stopped)?
                .clone();
            outcome.unwrap_or(Err(Error::Stopped))?;
        }
        mine
    }

    /// After a commit of `keys` for `who`: they leave `pending`, and on success they are held.
    fn settle(&self, who: Holder, keys: &[((Kind, String), String)], result: &Result<(), Error>) {
        {
            if let (Ok(mut held), Ok(mut pending)) =
                (self.shared.held.lock(), self.shared.pending.lock())
            {
                for ((kind, serial), _) in keys {
                    pending.remove(&(who, *kind, serial.clone()));
                }
                if result.is_ok() {
                    let holdings = held.entry(who).or_default();
                    holdings.extend(keys.iter().cloned());
                    // Bounded per holder: JWT keys beyond the cap are forgotten (a repeat delivery
                    // of a forgotten token writes one more row; X.509 keys are few and kept).
                    if holdings.len() > MAX_HELD_PER_HOLDER {
                        let excess = holdings.len() - MAX_HELD_PER_HOLDER;
                        let drop: Vec<(Kind, String)> = holdings
                            .keys()
                            .filter(|(k, _)| *k == Kind::Jwt)
                            .take(excess)
                            .cloned()
                            .collect();
                        for k in drop {
                            holdings.remove(&k);
                        }
                    }
                }
            }
        }
    }

    /// Queues `rows` for `holder`; the writer, once they are durable (or failed), settles them
    /// ([`Inventory::settle`]), tells those waiting on `tx`, and answers the returned receiver.
    fn commit(
        &self,
        holder: &HolderInfo,
        rows: Vec<Delivery>,
        tx: tokio::sync::watch::Sender<Option<Result<(), Error>>>,
    ) -> oneshot::Receiver<Result<(), Error>> {
        let who = holder.holder;
        let keys: Vec<((Kind, String), String)> = rows
            .iter()
            .map(|d| ((d.kind, d.serial.clone()), d.spiffe_id.clone()))
            .collect();
        let (answer, wait) = oneshot::channel();
        let this = self.clone();
        let started = std::time::Instant::now();
        let done = store::Done::new(move |result: Result<(), Error>| {
            this.settle(who, &keys, &result);
            let m = crate::metrics::metrics();
            m.inventory_commit_seconds
                .observe(started.elapsed().as_secs_f64());
            m.count(
                &m.inventory_writes,
                if result.is_ok() { "ok" } else { "error" },
            );
            if let Ok(mut last) = this.shared.write_error.lock() {
                *last = result.as_ref().err().map(ToString::to_string);
            }
            tx.send_replace(Some(result.clone()));
            let _ = answer.send(result);
        });
        // Refused (the writer has stopped): the op is dropped with `done`, which settles as
        // `Stopped`.
        let _ = self.send(Op::Record {
            holder: holder.clone(),
            rows,
            at: secs(self.shared.clock.now()),
            done,
        });
        wait
    }

    /// Waits for the writer's answer to a commit.
    async fn wait_commit(&self, wait: oneshot::Receiver<Result<(), Error>>) -> Result<(), Error> {
        if self.shared.clock.follows_tokio_time() {
            // Waited for on the blocking pool, so tokio knows work is in flight: with paused time
            // (tests) the clock must not jump ahead while a commit is pending.
            tokio::task::spawn_blocking(move || wait.blocking_recv())
                .await
                .map_err(|_| Error::Stopped)?
        } else {
            // The writer thread's answer wakes this task directly (no blocking-pool thread per
            // waiting commit: a rotation across 1,000 holders waits on 1,000 commits at once).
            wait.await
        }
        .map_err(|_| Error::Stopped)?
    }

    /// Why the last write failed, while no write has succeeded since.
    pub(crate) fn write_error(&self) -> Option<String> {
        self.shared.write_error.lock().ok().and_then(|e| e.clone())
    }

    /// Withdraws some (or, with `None`, all) credentials of a holder. Returns at once; the write joins
    /// the next batch.
    ///
    /// An X.509-SVID this holder no longer holds here was already withdrawn (by another stream of
    /// the same process after a rotation, or with all its credentials when it exited): nothing is
    /// written for it again. JWT-SVIDs are always written (the per-holder memory forgets some).
    /// Returns whether a write was queued.
    pub fn withdraw(
        &self,
        holder: Holder,
        which: Option<Vec<(Kind, String)>>,
        reason: Reason,
    ) -> bool {
        let which = match self.shared.held.lock() {
            Ok(mut held) => match which {
                None => {
                    held.remove(&holder);
                    None
                }
                Some(keys) => {
                    let map = held.get_mut(&holder);
                    let keys: Vec<(Kind, String)> = match map {
                        Some(map) => keys
                            .into_iter()
                            .filter(|k| map.remove(k).is_some() || k.0 == Kind::Jwt)
                            .collect(),
                        None => keys.into_iter().filter(|k| k.0 == Kind::Jwt).collect(),
                    };
                    if keys.is_empty() {
                        return false;
                    }
                    Some(keys)
                }
            },
            Err(_) => which,
        };
        let at = secs(self.shared.clock.now());
        if let Err(e) = self.send(Op::Withdraw {
            holder,
            which,
            reason,
            at,
        }) {
            tracing::error!(error = %e, "cannot record a withdrawal");
            return false;
        }
        true
    }

    /// Marks every held credential withdrawn (agent stopping) and waits for it to be written.
    pub async fn withdraw_all(&self, reason: Reason) -> Result<(), Error> {
        if let Ok(mut held) = self.shared.held.lock() {
            held.clear();
        }
        let (done, wait) = oneshot::channel();
        self.send(Op::WithdrawAll {
            reason,
            at: secs(self.shared.clock.now()),
            done,
        })?;
        wait.await.map_err(|_| Error::Stopped)?
    }

    /// Reads the inventory.
    pub async fn query(&self, filter: Filter) -> Result<Vec<Record>, Error> {
        let (reply, wait) = oneshot::channel();
        self.send(Op::Query {
            filter,
            now: secs(self.shared.clock.now()),
            reply,
        })?;
        wait.await.map_err(|_| Error::Stopped)?
    }

    /// Holders currently tracked.
    pub fn holders(&self) -> usize {
        self.shared.held.lock().map(|h| h.len()).unwrap_or(0)
    }

    /// The holder's process exited: everything it holds is withdrawn; returns the SPIFFE IDs of the
    /// X.509-SVIDs it held (for the issuer to drop the ones no stream holds).
    pub(crate) fn holder_exited(&self, holder: Holder) -> Vec<String> {
        let ids: Vec<String> = self
            .shared
            .held
            .lock()
            .ok()
            .and_then(|h| {
                h.get(&holder).map(|m| {
                    m.iter()
                        .filter(|((k, _), _)| *k == Kind::X509)
                        .map(|(_, id)| id.clone())
                        .collect()
                })
            })
            .unwrap_or_default();
        self.withdraw(holder, None, Reason::ProcessExited);
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    const RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

    fn holder(pidfd: Arc<Pidfd>, pid: u32) -> HolderInfo {
        HolderInfo {
            holder: Holder { pid, instance: 1 },
            uid: 0,
            exe: "/bin/x".into(),
            pidfd,
        }
    }

    /// An inventory in `dir` (`inv.db`) with its writer running on a thread.
    fn open_with_writer(dir: &std::path::Path) -> (Inventory, std::thread::JoinHandle<()>) {
        let (inv, writer) =
            Inventory::open(&dir.join("inv.db"), Arc::new(SystemClock), RETENTION, None).unwrap();
        (inv, std::thread::spawn(move || writer.run()))
    }

    /// An inventory in a new directory with its writer running, and this process as a holder.
    fn with_this_process() -> (
        tempfile::TempDir,
        Inventory,
        std::thread::JoinHandle<()>,
        HolderInfo,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (inv, writer) = open_with_writer(dir.path());
        let pidfd = Arc::new(Pidfd::open(std::process::id()).unwrap());
        let h = holder(pidfd, std::process::id());
        (dir, inv, writer, h)
    }

    fn delivery(serial: &str) -> Delivery {
        Delivery {
            kind: Kind::X509,
            serial: serial.into(),
            spiffe_id: "spiffe://example.org/a".into(),
            entry_id: "e".into(),
            issued_at: SystemTime::now(),
            not_after: SystemTime::now() + Duration::from_secs(3600),
            rotation: false,
            permitted_by: None,
        }
    }

    /// A delivery whose caller went away in mid-commit (a stream dropped by its client while its
    /// watcher was recording) must not leave its rows pending forever: the next delivery of the
    /// same rows to the same holder succeeds (it used to fail with `Stopped`).
    #[tokio::test]
    async fn a_delivery_dropped_in_mid_commit_does_not_fail_the_next() {
        let (_dir, inv, writer, h) = with_this_process();
        let rows = [delivery("cc")];
        {
            let mut first = std::pin::pin!(inv.record(&h, &rows));
            // One poll: the rows are pending and their commit is under way; then the caller is gone.
            std::future::poll_fn(|cx| {
                assert!(first.as_mut().poll(cx).is_pending());
                std::task::Poll::Ready(())
            })
            .await;
        }
        tokio::time::timeout(Duration::from_secs(10), inv.record(&h, &rows))
            .await
            .expect("the second delivery waited forever")
            .expect("the second delivery of the same rows is recorded");
        assert_eq!(inv.query(Filter::default()).await.unwrap().len(), 1);
        inv.close();
        writer.join().unwrap();
    }

    /// A commit is settled by the writer as soon as it is durable — held, no longer pending — with
    /// no turn of the runtime in between: a rotation that woke thousands of streams at once does
    /// not hold back the deliveries waiting on that commit (nor the ones that would find it held)
    /// until every other woken stream has run.
    #[tokio::test]
    async fn a_commit_is_settled_by_the_writer_without_a_turn_of_the_runtime() {
        let (_dir, inv, writer, h) = with_this_process();
        let rows = [delivery("dd")];
        let key = (Kind::X509, "dd".to_owned());
        let mut first = std::pin::pin!(inv.record(&h, &rows));
        std::future::poll_fn(|cx| {
            assert!(first.as_mut().poll(cx).is_pending());
            std::task::Poll::Ready(())
        })
        .await;
        // This thread is the runtime's only one, and it blocks: nothing else of the runtime runs.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let held = |inv: &Inventory| {
            inv.shared
                .held
                .lock()
                .unwrap()
                .get(&h.holder)
                .is_some_and(|k| k.contains_key(&key))
        };
        while !held(&inv) {
            assert!(
                std::time::Instant::now() < deadline,
                "the commit was not settled without the runtime"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(inv.shared.pending.lock().unwrap().is_empty());
        // The caller learns it too, and the same rows again cost nothing.
        first.await.unwrap();
        inv.record(&h, &rows).await.unwrap();
        assert_eq!(inv.query(Filter::default()).await.unwrap().len(), 1);
        inv.close();
        writer.join().unwrap();
    }

    #[tokio::test]
    async fn records_once_per_holder_withdraws_on_exit_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("inv.db");
        let (inv, writer) = Inventory::open(&db, Arc::new(SystemClock), RETENTION, None).unwrap();
        let writer = std::thread::spawn(move || writer.run());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pidfd = Arc::new(Pidfd::open(child.id()).unwrap());
        let h = holder(pidfd, child.id());
        inv.record(&h, &[delivery("aa")]).await.unwrap();
        inv.record(&h, &[delivery("aa")]).await.unwrap();
        let all = inv.query(Filter::default()).await.unwrap();
        assert_eq!(
            all.len(),
            1,
            "a repeat delivery to the same holder is one row"
        );
        assert_eq!(
            inv.query(Filter {
                live: true,
                ..Filter::default()
            })
            .await
            .unwrap()
            .len(),
            1
        );

        inv.record(&h, &[delivery("bb")]).await.unwrap();
        inv.withdraw(
            h.holder,
            Some(vec![(Kind::X509, "aa".into())]),
            Reason::Superseded,
        );
        child.kill().unwrap();
        child.wait().unwrap();
        // (`lifecycle` reports the exit; see its tests.)
        assert_eq!(inv.holder_exited(h.holder), ["spiffe://example.org/a"]);
        let mut rows = vec![];
        for _ in 0..100 {
            rows = inv.query(Filter::default()).await.unwrap();
            if rows.iter().all(|r| r.withdrawn_at.is_some()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let reason = |s: &str| {
            rows.iter()
                .find(|r| r.serial == s)
                .unwrap()
                .withdraw_reason
                .clone()
        };
        assert_eq!(reason("aa").as_deref(), Some("superseded by rotation"));
        assert_eq!(reason("bb").as_deref(), Some("process exited"));
        inv.close();
        writer.join().unwrap();
        drop(inv);

        let (again, writer) = Inventory::open(&db, Arc::new(SystemClock), RETENTION, None).unwrap();
        std::thread::spawn(move || writer.run());
        assert_eq!(
            again.query(Filter::default()).await.unwrap().len(),
            2,
            "durable across reopen"
        );
    }

    /// A holder keeps at most `MAX_FINISHED_ROWS_PER_HOLDER` finished rows, the newest: counted
    /// from the database the first time the agent sees the holder (rows a previous run wrote
    /// count), then by its inserts; below the cap nothing is deleted.
    #[tokio::test]
    async fn a_holders_finished_rows_are_capped_across_restarts() {
        let cap = usize::try_from(store::MAX_FINISHED_ROWS_PER_HOLDER).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("inv.db");
        let pidfd = Arc::new(Pidfd::open(std::process::id()).unwrap());
        let h = holder(pidfd, std::process::id());
        let expired = |from: usize, n: usize| -> Vec<Delivery> {
            (from..from + n)
                .map(|i| Delivery {
                    not_after: SystemTime::now() - Duration::from_secs(60),
                    ..delivery(&format!("{i:06}"))
                })
                .collect()
        };
        let rows = |db: &std::path::Path| -> (usize, String) {
            rusqlite::Connection::open(db)
                .unwrap()
                .query_row(
                    "SELECT count(*), min(serial) FROM credentials WHERE pid = ?1",
                    [std::process::id()],
                    |r| Ok((r.get::<_, i64>(0)? as usize, r.get(1)?)),
                )
                .unwrap()
        };
        let (inv, writer) = open_with_writer(dir.path());
        inv.record(&h, &expired(0, cap - 2)).await.unwrap();
        assert_eq!(rows(&db).0, cap - 2, "below the cap nothing is deleted");
        inv.close();
        writer.join().unwrap();
        drop(inv);

        // Another run of the agent: what the holder has is read from the database.
        let (inv, writer) = open_with_writer(dir.path());
        inv.record(&h, &expired(cap - 2, 5)).await.unwrap();
        assert_eq!(
            rows(&db),
            (cap, format!("{:06}", 3)),
            "the oldest finished rows go, the newest stay"
        );
        inv.record(&h, &expired(cap + 3, 1)).await.unwrap();
        assert_eq!(rows(&db), (cap, format!("{:06}", 4)));
        inv.close();
        writer.join().unwrap();
    }

    /// Ten streams of one process each withdraw the serial a rotation superseded: one write; a
    /// credential delivered again after its withdrawal is a new row, withdrawn again in its turn
    /// (the skip never leaves a row live).
    #[tokio::test]
    async fn a_withdrawal_repeated_by_every_stream_is_written_once_and_never_skipped_wrongly() {
        let (_dir, inv, _writer, h) = with_this_process();
        let old = vec![(Kind::X509, "01".to_owned())];
        inv.record(&h, &[delivery("01")]).await.unwrap();
        inv.record(&h, &[delivery("02")]).await.unwrap();
        let written: Vec<bool> = (0..10)
            .map(|_| inv.withdraw(h.holder, Some(old.clone()), Reason::Superseded))
            .collect();
        assert_eq!(written.iter().filter(|w| **w).count(), 1, "{written:?}");
        assert!(written[0], "the first withdrawal is the one written");
        inv.record(&h, &[delivery("01")]).await.unwrap();
        let live = |rows: &[Record], serial: &str| {
            rows.iter()
                .filter(|r| r.serial == serial && r.withdrawn_at.is_none())
                .count()
        };
        let rows = inv.query(Filter::default()).await.unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(live(&rows, "01"), 1, "delivered again: a new live row");
        assert!(inv.withdraw(h.holder, Some(old.clone()), Reason::Superseded));
        assert!(!inv.withdraw(h.holder, Some(old), Reason::Superseded));
        let rows = inv.query(Filter::default()).await.unwrap();
        assert_eq!(live(&rows, "01"), 0, "every row of 01 withdrawn");
        assert_eq!(live(&rows, "02"), 1);
    }

    /// Many first deliveries of one credential to one holder at once: one row, and every caller
    /// returns only once that row is durable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_deliveries_write_one_row() {
        let (_dir, inv, _writer, h) = with_this_process();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let (inv, h) = (inv.clone(), h.clone());
            tasks.spawn(async move { inv.record(&h, &[delivery("same")]).await });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap().unwrap();
        }
        assert_eq!(inv.query(Filter::default()).await.unwrap().len(), 1);
    }
}
