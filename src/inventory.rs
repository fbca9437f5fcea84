//! The credential inventory: a durable record of every credential handed to a workload, who holds it,
//! and when and why it was withdrawn.
//!
//! A credential is recorded before it is delivered. Records from many callers are written together in
//! one SQLite transaction (synchronous=FULL, so durable at commit) by one writer thread; each caller
//! waits only for the commit that holds its rows, so the hot path never pays one fsync per SVID. A
//! credential already recorded for the same holder (a reconnect, a second stream) costs a hash lookup.
//!
//! Holders are processes, identified by PID and start time. Each holder is watched through its pidfd;
//! when it exits, its credentials are marked withdrawn at once (event-driven, no polling).

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, params};
use tokio::sync::oneshot;

use crate::clock::SharedClock;
use crate::sys::pidfd::{ExitWatch, Pidfd};

/// Default retention of inventory rows.
pub(crate) const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often old rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// The most operations written in one transaction.
const MAX_BATCH: usize = 512;

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
}

impl Reason {
    /// The text stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ProcessExited => "process exited",
            Reason::EntitlementRemoved => "entitlement removed",
            Reason::Superseded => "superseded by rotation",
            Reason::AgentStopped => "agent stopped",
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
    clock: SharedClock,
    exit_hook: Mutex<Option<ExitHook>>,
}

/// What one holder holds: (kind, serial) → SPIFFE ID.
type Holdings = HashMap<(Kind, String), String>;

/// Called with the SPIFFE IDs of the X.509-SVIDs a process held when it exits.
pub(crate) type ExitHook = Arc<dyn Fn(Vec<String>) + Send + Sync>;

enum Op {
    Record {
        holder: HolderInfo,
        rows: Vec<Delivery>,
        at: i64,
        done: oneshot::Sender<Result<(), Error>>,
    },
    Withdraw {
        holder: Holder,
        which: Option<Vec<(Kind, String)>>,
        reason: Reason,
        at: i64,
    },
    WithdrawAll {
        reason: Reason,
        at: i64,
        done: oneshot::Sender<Result<(), Error>>,
    },
    Query {
        filter: Filter,
        now: i64,
        reply: oneshot::Sender<Result<Vec<Record>, Error>>,
    },
}

impl Inventory {
    /// Opens (creating) the inventory in `path`, marks what a previous run left held as withdrawn
    /// ("agent stopped": nothing tracks those holders any more), prunes old rows, and starts the writer
    /// thread.
    pub fn open(path: &Path, clock: SharedClock, retention: Duration) -> Result<Self, Error> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS credentials (
                 id INTEGER PRIMARY KEY,
                 kind TEXT NOT NULL,
                 serial TEXT NOT NULL,
                 spiffe_id TEXT NOT NULL,
                 entry_id TEXT NOT NULL,
                 pid INTEGER NOT NULL,
                 pid_instance INTEGER NOT NULL,
                 uid INTEGER NOT NULL,
                 exe TEXT NOT NULL,
                 issued_at INTEGER NOT NULL,
                 not_after INTEGER NOT NULL,
                 delivered_at INTEGER NOT NULL,
                 withdrawn_at INTEGER,
                 withdraw_reason TEXT
             );
             CREATE INDEX IF NOT EXISTS credentials_held ON credentials(pid, pid_instance) WHERE withdrawn_at IS NULL;
             CREATE INDEX IF NOT EXISTS credentials_delivered ON credentials(delivered_at);
             CREATE INDEX IF NOT EXISTS credentials_spiffe_id ON credentials(spiffe_id);",
        )?;
        let now = secs(clock.now());
        conn.execute(
            "UPDATE credentials SET withdrawn_at = ?1, withdraw_reason = ?2 WHERE withdrawn_at IS NULL",
            params![now, Reason::AgentStopped.as_str()],
        )?;
        prune(&conn, now, retention)?;
        let (tx, rx) = std_mpsc::channel();
        std::thread::Builder::new()
            .name("lanyard-inventory".into())
            .spawn(move || writer(conn, rx, retention))
            .map_err(|e| Error::Sql(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            shared: Arc::new(Shared {
                tx: Mutex::new(tx),
                held: Mutex::new(HashMap::new()),
                clock,
                exit_hook: Mutex::new(None),
            }),
        })
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
    /// already recorded with cost nothing. Must run inside the tokio runtime (it may start watching the
    /// holder for exit).
    pub async fn record(&self, holder: &HolderInfo, deliveries: &[Delivery]) -> Result<(), Error> {
        let (fresh, first_for_holder) = {
            let held = self.shared.held.lock().map_err(|_| Error::Stopped)?;
            let known = held.get(&holder.holder);
            let fresh: Vec<Delivery> = deliveries
                .iter()
                .filter(|d| !known.is_some_and(|k| k.contains_key(&(d.kind, d.serial.clone()))))
                .cloned()
                .collect();
            (fresh, known.is_none())
        };
        if fresh.is_empty() {
            return Ok(());
        }
        let keys: Vec<((Kind, String), String)> = fresh
            .iter()
            .map(|d| ((d.kind, d.serial.clone()), d.spiffe_id.clone()))
            .collect();
        let (done, wait) = oneshot::channel();
        self.send(Op::Record {
            holder: holder.clone(),
            rows: fresh,
            at: secs(self.shared.clock.now()),
            done,
        })?;
        // Waited for on the blocking pool, so tokio knows work is in flight (with paused time in
        // tests the clock must not jump ahead while a commit is pending).
        tokio::task::spawn_blocking(move || wait.blocking_recv())
            .await
            .map_err(|_| Error::Stopped)?
            .map_err(|_| Error::Stopped)??;
        if let Ok(mut held) = self.shared.held.lock() {
            held.entry(holder.holder).or_default().extend(keys);
        }
        if first_for_holder {
            self.watch_exit(holder);
        }
        Ok(())
    }

    /// Withdraws some (or, with `None`, all) credentials of a holder. Returns at once; the write joins
    /// the next batch.
    pub fn withdraw(&self, holder: Holder, which: Option<Vec<(Kind, String)>>, reason: Reason) {
        if let Ok(mut held) = self.shared.held.lock() {
            match &which {
                None => {
                    held.remove(&holder);
                }
                Some(keys) => {
                    if let Some(map) = held.get_mut(&holder) {
                        for k in keys {
                            map.remove(k);
                        }
                    }
                }
            }
        }
        let at = secs(self.shared.clock.now());
        if let Err(e) = self.send(Op::Withdraw {
            holder,
            which,
            reason,
            at,
        }) {
            tracing::error!(error = %e, "cannot record a withdrawal");
        }
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

    /// Sets what to do when a holder exits (the issuer drops SVIDs nobody holds any more).
    pub fn set_exit_hook(&self, hook: ExitHook) {
        if let Ok(mut h) = self.shared.exit_hook.lock() {
            *h = Some(hook);
        }
    }

    /// Holders currently tracked.
    pub fn holders(&self) -> usize {
        self.shared.held.lock().map(|h| h.len()).unwrap_or(0)
    }

    /// Withdraws everything a holder has when its process exits.
    fn watch_exit(&self, holder: &HolderInfo) {
        let watch = match ExitWatch::new(&holder.pidfd) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(pid = holder.holder.pid, error = %e, "cannot watch a credential holder for exit");
                return;
            }
        };
        let inventory = self.clone();
        let who = holder.holder;
        tokio::spawn(async move {
            watch.exited().await;
            tracing::debug!(pid = who.pid, "credential holder exited; withdrawing");
            let ids: Vec<String> = inventory
                .shared
                .held
                .lock()
                .ok()
                .and_then(|h| {
                    h.get(&who).map(|m| {
                        m.iter()
                            .filter(|((k, _), _)| *k == Kind::X509)
                            .map(|(_, id)| id.clone())
                            .collect()
                    })
                })
                .unwrap_or_default();
            inventory.withdraw(who, None, Reason::ProcessExited);
            let hook = inventory
                .shared
                .exit_hook
                .lock()
                .ok()
                .and_then(|h| h.clone());
            if let Some(hook) = hook
                && !ids.is_empty()
            {
                hook(ids);
            }
        });
    }
}

fn secs(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn prune(conn: &Connection, now: i64, retention: Duration) -> Result<(), Error> {
    let before = now - retention.as_secs() as i64;
    let n = conn.execute(
        "DELETE FROM credentials WHERE delivered_at < ?1 AND (withdrawn_at IS NOT NULL OR not_after < ?2)",
        params![before, now],
    )?;
    if n > 0 {
        tracing::info!(rows = n, "pruned inventory rows past retention");
    }
    Ok(())
}

/// The writer thread: gathers every queued operation into one transaction, commits (durable), then
/// answers the callers of that batch.
fn writer(mut conn: Connection, rx: std_mpsc::Receiver<Op>, retention: Duration) {
    let mut last_prune = std::time::Instant::now();
    loop {
        let first = match rx.recv_timeout(PRUNE_EVERY) {
            Ok(op) => op,
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = prune(&conn, secs(SystemTime::now()), retention) {
                    tracing::error!(error = %e, "inventory prune failed");
                }
                last_prune = std::time::Instant::now();
                continue;
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let result = apply(&mut conn, &batch).map_err(Error::from);
        for op in batch {
            match op {
                Op::Record { done, .. } | Op::WithdrawAll { done, .. } => {
                    let _ = done.send(result.clone());
                }
                Op::Query { filter, now, reply } => {
                    let _ = reply.send(query(&conn, &filter, now).map_err(Error::from));
                }
                Op::Withdraw { .. } => {}
            }
        }
        if let Err(e) = &result {
            tracing::error!(error = %e, "inventory write failed; the credentials of this batch were not delivered");
        }
        if last_prune.elapsed() > PRUNE_EVERY {
            let _ = prune(&conn, secs(SystemTime::now()), retention);
            last_prune = std::time::Instant::now();
        }
    }
}

fn apply(conn: &mut Connection, batch: &[Op]) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction()?;
    for op in batch {
        match op {
            Op::Record {
                holder, rows, at, ..
            } => {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO credentials (kind, serial, spiffe_id, entry_id, pid, pid_instance, uid, exe,
                         issued_at, not_after, delivered_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )?;
                for d in rows {
                    stmt.execute(params![
                        d.kind.as_str(),
                        d.serial,
                        d.spiffe_id,
                        d.entry_id,
                        holder.holder.pid,
                        holder.holder.instance as i64,
                        holder.uid,
                        holder.exe,
                        secs(d.issued_at),
                        secs(d.not_after),
                        at,
                    ])?;
                }
            }
            Op::Withdraw {
                holder,
                which,
                reason,
                at,
            } => match which {
                None => {
                    tx.execute(
                        "UPDATE credentials SET withdrawn_at = ?1, withdraw_reason = ?2
                         WHERE pid = ?3 AND pid_instance = ?4 AND withdrawn_at IS NULL",
                        params![at, reason.as_str(), holder.pid, holder.instance as i64],
                    )?;
                }
                Some(keys) => {
                    let mut stmt = tx.prepare_cached(
                        "UPDATE credentials SET withdrawn_at = ?1, withdraw_reason = ?2
                         WHERE pid = ?3 AND pid_instance = ?4 AND kind = ?5 AND serial = ?6 AND withdrawn_at IS NULL",
                    )?;
                    for (kind, serial) in keys {
                        stmt.execute(params![
                            at,
                            reason.as_str(),
                            holder.pid,
                            holder.instance as i64,
                            kind.as_str(),
                            serial
                        ])?;
                    }
                }
            },
            Op::WithdrawAll { reason, at, .. } => {
                tx.execute(
                    "UPDATE credentials SET withdrawn_at = ?1, withdraw_reason = ?2 WHERE withdrawn_at IS NULL",
                    params![at, reason.as_str()],
                )?;
            }
            Op::Query { .. } => {}
        }
    }
    tx.commit()
}

fn query(conn: &Connection, f: &Filter, now: i64) -> Result<Vec<Record>, rusqlite::Error> {
    let mut sql = String::from(
        "SELECT kind, serial, spiffe_id, entry_id, pid, uid, exe, issued_at, not_after, delivered_at,
                withdrawn_at, withdraw_reason FROM credentials WHERE 1=1",
    );
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    if f.live {
        sql.push_str(" AND withdrawn_at IS NULL AND not_after > ?");
        args.push(now.into());
    }
    if let Some(id) = &f.spiffe_id {
        sql.push_str(" AND spiffe_id = ?");
        args.push(id.clone().into());
    }
    if let Some(since) = f.since {
        sql.push_str(" AND delivered_at >= ?");
        args.push(since.into());
    }
    sql.push_str(" ORDER BY id DESC LIMIT ?");
    args.push(i64::from(f.limit.unwrap_or(1000)).into());
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
        Ok(Record {
            kind: r.get(0)?,
            serial: r.get(1)?,
            spiffe_id: r.get(2)?,
            entry_id: r.get(3)?,
            pid: r.get(4)?,
            uid: r.get(5)?,
            executable: r.get(6)?,
            issued_at: r.get(7)?,
            not_after: r.get(8)?,
            delivered_at: r.get(9)?,
            withdrawn_at: r.get(10)?,
            withdraw_reason: r.get(11)?,
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    fn holder(pidfd: Arc<Pidfd>, pid: u32) -> HolderInfo {
        HolderInfo {
            holder: Holder { pid, instance: 1 },
            uid: 0,
            exe: "/bin/x".into(),
            pidfd,
        }
    }

    fn delivery(serial: &str) -> Delivery {
        Delivery {
            kind: Kind::X509,
            serial: serial.into(),
            spiffe_id: "spiffe://example.org/a".into(),
            entry_id: "e".into(),
            issued_at: SystemTime::now(),
            not_after: SystemTime::now() + Duration::from_secs(3600),
        }
    }

    #[tokio::test]
    async fn records_once_per_holder_withdraws_on_exit_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("inv.db");
        let inv = Inventory::open(&db, Arc::new(SystemClock), DEFAULT_RETENTION).unwrap();
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
        drop(inv);

        let again = Inventory::open(&db, Arc::new(SystemClock), DEFAULT_RETENTION).unwrap();
        assert_eq!(
            again.query(Filter::default()).await.unwrap().len(),
            2,
            "durable across reopen"
        );
    }
}
