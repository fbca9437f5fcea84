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
}

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
    ) -> Result<(Self, Writer), Error> {
        let conn = crate::db::open(path).map_err(|e| Error::Sql(e.to_string()))?;
        let now = secs(clock.now());
        conn.execute(
            "UPDATE credentials SET withdrawn_at = ?1, withdraw_reason = ?2 WHERE withdrawn_at IS NULL",
            params![now, Reason::AgentStopped.as_str()],
        )?;
        store::prune(&conn, now, retention)?;
        let (tx, rx) = std_mpsc::channel();
        let inventory = Self {
            shared: Arc::new(Shared {
                tx: Mutex::new(tx),
                held: Mutex::new(HashMap::new()),
                clock,
            }),
        };
        Ok((inventory, Writer::new(conn, rx, retention)))
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
        let fresh = {
            let held = self.shared.held.lock().map_err(|_| Error::Stopped)?;
            let known = held.get(&holder.holder);
            let fresh: Vec<Delivery> = deliveries
                .iter()
                .filter(|d| !known.is_some_and(|k| k.contains_key(&(d.kind, d.serial.clone()))))
                .cloned()
                .collect();
            fresh
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
        let (inv, writer) = Inventory::open(&db, Arc::new(SystemClock), RETENTION).unwrap();
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

        let (again, writer) = Inventory::open(&db, Arc::new(SystemClock), RETENTION).unwrap();
        std::thread::spawn(move || writer.run());
        assert_eq!(
            again.query(Filter::default()).await.unwrap().len(),
            2,
            "durable across reopen"
        );
    }
}
