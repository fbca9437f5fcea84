//! The inventory's durable side: one writer thread owns the database connection, gathers every
//! queued operation into one transaction (synchronous=FULL: durable at commit) and answers the
//! callers of that batch. The thread is started and supervised by `app` ([`Writer::run`]).

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, params};
use tokio::sync::oneshot;

use super::{Delivery, Error, Filter, Holder, HolderInfo, Kind, Reason, Record};
use crate::audit::{Audit, Line};

/// How often old rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// How often the row count (a metric) is refreshed, at most.
const COUNT_EVERY: Duration = Duration::from_secs(30);
/// The most operations written in one transaction.
const MAX_BATCH: usize = 512;
/// Finished rows (withdrawn or expired) kept per holder; older ones are compacted away, so one
/// process asking for a new audience per call cannot grow the database without bound.
pub(super) const MAX_FINISHED_ROWS_PER_HOLDER: i64 = 10_000;

pub(super) enum Op {
    /// Stop after everything queued before it is written.
    Stop,
    Record {
        holder: HolderInfo,
        rows: Vec<Delivery>,
        at: i64,
        done: Done,
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

/// What follows a record's commit, run by whoever ends the record: the writer once the batch is
/// durable (or failed), or, with `Stopped`, whatever drops it unanswered (the writer gone).
pub(super) struct Done(Option<Then>);

/// The work a [`Done`] carries.
type Then = Box<dyn FnOnce(Result<(), Error>) + Send>;

impl Done {
    pub(super) fn new(then: impl FnOnce(Result<(), Error>) + Send + 'static) -> Self {
        Self(Some(Box::new(then)))
    }

    pub(super) fn send(mut self, result: Result<(), Error>) {
        if let Some(then) = self.0.take() {
            then(result);
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        if let Some(then) = self.0.take() {
            then(Err(Error::Stopped));
        }
    }
}

/// The writer: run it on a thread of its own (it blocks).
pub(crate) struct Writer {
    conn: Connection,
    rx: std_mpsc::Receiver<Op>,
    retention: Duration,
    audit: Option<Audit>,
    revoked: Revoked,
    handed_on: HandedOn,
}

/// A row a withdrawal changed, for the audit stream.
struct Withdrawn {
    kind: String,
    serial: String,
    spiffe_id: String,
    entry_id: String,
    pid: u32,
    uid: u32,
    exe: String,
    reason: &'static str,
    not_after: i64,
}

/// JWT-SVIDs withdrawn from every holder because it exited or lost its entitlement, by `jti`:
/// (reason, `exp`). ValidateJWTSVID refuses them; the JWT cache does not hand them out again.
pub(crate) type Revoked =
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, (String, i64)>>>;

/// JWT-SVIDs fetched to be handed on (by `jti`, with `exp`): an exit does not revoke them.
pub(crate) type HandedOn = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, i64>>>;

/// Reasons that revoke a JWT-SVID (a rotation or a stopping agent does not).
fn revokes(reason: &str) -> bool {
    reason == super::Reason::ProcessExited.as_str()
        || reason == super::Reason::EntitlementRemoved.as_str()
        || reason == super::Reason::PolicyDenied.as_str()
}

/// Loads the revocations still in force (tokens not yet expired, held by no one).
pub(super) fn load_revoked(conn: &Connection, now: i64) -> Result<Revoked, Error> {
    let mut stmt = conn.prepare(
        "SELECT c.serial, c.withdraw_reason, c.not_after FROM credentials c
         WHERE c.kind = 'jwt' AND c.withdrawn_at IS NOT NULL AND c.not_after > ?1
           AND c.withdraw_reason IN (?2, ?3, ?4)
           AND NOT EXISTS (SELECT 1 FROM credentials l WHERE l.kind = 'jwt' AND l.serial = c.serial
                           AND (l.withdrawn_at IS NULL OR l.withdraw_reason NOT IN (?2, ?3, ?4)))",
    )?;
    let rows = stmt.query_map(
        params![
            now,
            super::Reason::ProcessExited.as_str(),
            super::Reason::EntitlementRemoved.as_str(),
            super::Reason::PolicyDenied.as_str()
        ],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                (r.get::<_, String>(1)?, r.get::<_, i64>(2)?),
            ))
        },
    )?;
    let mut map = std::collections::HashMap::new();
    for row in rows {
        let (serial, v) = row?;
        map.insert(serial, v);
    }
    Ok(std::sync::Arc::new(std::sync::Mutex::new(map)))
}

/// After a commit: JWT-SVIDs whose last holder exited or lost its entitlement become revoked.
fn note_revocations(
    conn: &Connection,
    withdrawn: &[Withdrawn],
    revoked: &Revoked,
    handed_on: &HandedOn,
) {
    let now = secs(SystemTime::now());
    let mut fresh = Vec::new();
    for w in withdrawn {
        if w.kind != "jwt" || !revokes(w.reason) || w.not_after <= now {
            continue;
        }
        // Handed on (CLI, helper): the holder's exit is expected; other reasons still revoke.
        let exit = w.reason == super::Reason::ProcessExited.as_str();
        if exit && handed_on.lock().is_ok_and(|m| m.contains_key(&w.serial)) {
            continue;
        }
        let still_held = conn
            .query_row(
                "SELECT 1 FROM credentials WHERE kind = 'jwt' AND serial = ?1 AND withdrawn_at IS NULL LIMIT 1",
                params![w.serial],
                |_| Ok(()),
            )
            .is_ok();
        if !still_held {
            fresh.push((w.serial.clone(), (w.reason.to_owned(), w.not_after)));
        }
    }
    if let Ok(mut map) = revoked.lock() {
        map.retain(|_, (_, exp)| *exp > now);
        map.extend(fresh);
    }
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        rx: std_mpsc::Receiver<Op>,
        retention: Duration,
        audit: Option<Audit>,
        revoked: Revoked,
        handed_on: HandedOn,
    ) -> Self {
        Self {
            conn,
            rx,
            retention,
            audit,
            revoked,
            handed_on,
        }
    }

    /// Writes until [`super::Inventory::close`] or every handle is gone.
    pub(crate) fn run(self) {
        let revocations = (&self.revoked, &self.handed_on);
        writer(self.conn, self.rx, self.retention, self.audit, revocations);
    }
}

pub(super) fn secs(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(super) fn prune(conn: &Connection, now: i64, retention: Duration) -> Result<(), Error> {
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
fn writer(
    mut conn: Connection,
    rx: std_mpsc::Receiver<Op>,
    retention: Duration,
    mut audit: Option<Audit>,
    (revoked, handed_on): (&Revoked, &HandedOn),
) {
    let mut last_prune = std::time::Instant::now();
    let mut counts = RowCounts::default();
    // Counted soon after start, then at most every COUNT_EVERY.
    let mut last_count = std::time::Instant::now() - COUNT_EVERY * 2;
    loop {
        let first = match rx.recv_timeout(PRUNE_EVERY) {
            Ok(Op::Stop) => return,
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
        let mut stop = false;
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Op::Stop) => {
                    stop = true;
                    break;
                }
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut withdrawn = Vec::new();
        let result = apply(&mut conn, &batch, &mut withdrawn, &mut counts).map_err(Error::from);
        if result.is_err() {
            // Rolled back: what the counts took from it may not hold; read them again.
            counts = RowCounts::default();
        }
        // After the commit: the audit names only what the inventory holds.
        if let (Ok(()), Some(audit)) = (&result, audit.as_mut()) {
            write_audit(audit, &batch, &withdrawn);
        }
        if result.is_ok() && !withdrawn.is_empty() {
            note_revocations(&conn, &withdrawn, revoked, handed_on);
        }
        for op in batch {
            match op {
                Op::Record { done, .. } => done.send(result.clone()),
                Op::WithdrawAll { done, .. } => {
                    let _ = done.send(result.clone());
                }
                Op::Query { filter, now, reply } => {
                    let _ = reply.send(query(&conn, &filter, now).map_err(Error::from));
                }
                Op::Withdraw { .. } | Op::Stop => {}
            }
        }
        if let Err(e) = &result {
            tracing::error!(error = %e, "inventory write failed; the credentials of this batch were not delivered");
        }
        if last_count.elapsed() > COUNT_EVERY {
            if let Ok(n) = conn.query_row("SELECT count(*) FROM credentials", [], |r| {
                r.get::<_, i64>(0)
            }) {
                crate::metrics::metrics().inventory_rows.set(n);
            }
            last_count = std::time::Instant::now();
        }
        if last_prune.elapsed() > PRUNE_EVERY {
            let _ = prune(&conn, secs(SystemTime::now()), retention);
            last_prune = std::time::Instant::now();
        }
        if stop {
            return;
        }
    }
}

/// One audit line per delivered row and per withdrawn row of a committed batch.
fn write_audit(audit: &mut Audit, batch: &[Op], withdrawn: &[Withdrawn]) {
    let time = crate::audit::timestamp(SystemTime::now());
    for op in batch {
        if let Op::Record { holder, rows, .. } = op {
            for d in rows {
                audit.write(&Line {
                    time: time.clone(),
                    event: if d.rotation { "rotated" } else { "issued" },
                    kind: d.kind.as_str(),
                    spiffe_id: &d.spiffe_id,
                    serial: &d.serial,
                    entry: &d.entry_id,
                    pid: holder.holder.pid,
                    uid: holder.uid,
                    executable: &holder.exe,
                    reason: None,
                });
            }
        }
    }
    for w in withdrawn {
        audit.write(&Line {
            time: time.clone(),
            event: "withdrawn",
            kind: &w.kind,
            spiffe_id: &w.spiffe_id,
            serial: &w.serial,
            entry: &w.entry_id,
            pid: w.pid,
            uid: w.uid,
            executable: &w.exe,
            reason: Some(w.reason),
        });
    }
}

/// Runs an UPDATE … RETURNING of withdrawn rows, collecting them for the audit.
fn withdraw_rows(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
    reason: Reason,
    out: &mut Vec<Withdrawn>,
) -> Result<(), rusqlite::Error> {
    let rows = stmt.query_map(params, |r| {
        Ok(Withdrawn {
            kind: r.get(0)?,
            serial: r.get(1)?,
            spiffe_id: r.get(2)?,
            entry_id: r.get(3)?,
            pid: r.get(4)?,
            uid: r.get(5)?,
            exe: r.get(6)?,
            reason: reason.as_str(),
            not_after: r.get(7)?,
        })
    })?;
    for row in rows {
        out.push(row?);
    }
    Ok(())
}

/// How many rows each holder seen since the agent started has in the inventory, at most (read once
/// per holder, then counted up by its inserts): its finished rows are compacted only when it
/// could have more than [`MAX_FINISHED_ROWS_PER_HOLDER`], not on every insert. An overcount (rows
/// pruned meanwhile) only makes a compaction run that deletes nothing; after a batch that was
/// rolled back every count is dropped and read again; a holder whose process exited is forgotten
/// (its rows are read again should it ever record).
#[derive(Default)]
pub(super) struct RowCounts(std::collections::HashMap<Holder, i64>);

impl RowCounts {
    /// Counts `added` more rows for `holder`; whether it may now hold too many finished rows.
    fn add(&mut self, tx: &Connection, holder: Holder, added: usize) -> rusqlite::Result<bool> {
        let n = match self.0.get(&holder) {
            Some(n) => *n,
            None => tx
                .prepare_cached(
                    "SELECT count(*) FROM credentials WHERE pid = ?1 AND pid_instance = ?2",
                )?
                .query_row(params![holder.pid, holder.instance as i64], |r| r.get(0))?,
        };
        let n = n.saturating_add(i64::try_from(added).unwrap_or(i64::MAX));
        self.0.insert(holder, n);
        Ok(n > MAX_FINISHED_ROWS_PER_HOLDER)
    }

    fn deleted(&mut self, holder: Holder, rows: usize) {
        if let Some(n) = self.0.get_mut(&holder) {
            *n = n.saturating_sub(i64::try_from(rows).unwrap_or(i64::MAX));
        }
    }

    fn forget(&mut self, holder: Holder) {
        self.0.remove(&holder);
    }
}

fn apply(
    conn: &mut Connection,
    batch: &[Op],
    withdrawn: &mut Vec<Withdrawn>,
    counts: &mut RowCounts,
) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction()?;
    for op in batch {
        match op {
            Op::Record {
                holder, rows, at, ..
            } => {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO credentials (kind, serial, spiffe_id, entry_id, pid, pid_instance, uid, exe,
                         issued_at, not_after, delivered_at, permitted_by)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
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
                        d.permitted_by,
                    ])?;
                }
                if counts.add(&tx, holder.holder, rows.len())? {
                    let deleted = tx
                        .prepare_cached(
                            "DELETE FROM credentials WHERE id IN (
                                 SELECT id FROM credentials
                                 WHERE pid = ?1 AND pid_instance = ?2
                                   AND (withdrawn_at IS NOT NULL OR not_after < ?3)
                                 ORDER BY id DESC LIMIT -1 OFFSET ?4)",
                        )?
                        .execute(params![
                            holder.holder.pid,
                            holder.holder.instance as i64,
                            at,
                            MAX_FINISHED_ROWS_PER_HOLDER
                        ])?;
                    counts.deleted(holder.holder, deleted);
                }
            }
            Op::Withdraw {
                holder,
                which,
                reason,
                at,
            } => match which {
                None => {
                    counts.forget(*holder);
                    let mut stmt = tx.prepare_cached(
                        "UPDATE credentials SET withdrawn_at = ?1, withdraw_reason = ?2
                         WHERE pid = ?3 AND pid_instance = ?4 AND withdrawn_at IS NULL RETURNING kind, serial, spiffe_id, entry_id, pid, uid, exe, not_after",
                    )?;
                    withdraw_rows(
                        &mut stmt,
                        params![at, reason.as_str(), holder.pid, holder.instance as i64],
                        *reason,
                        withdrawn,
                    )?;
                }
                Some(keys) => {
                    let mut stmt = tx.prepare_cached(
                        "UPDATE credentials SET withdrawn_at = ?1, withdraw_reason = ?2
                         WHERE pid = ?3 AND pid_instance = ?4 AND kind = ?5 AND serial = ?6 AND withdrawn_at IS NULL RETURNING kind, serial, spiffe_id, entry_id, pid, uid, exe, not_after",
                    )?;
                    for (kind, serial) in keys {
                        withdraw_rows(
                            &mut stmt,
                            params![
                                at,
                                reason.as_str(),
                                holder.pid,
                                holder.instance as i64,
                                kind.as_str(),
                                serial
                            ],
                            *reason,
                            withdrawn,
                        )?;
                    }
                }
            },
            Op::WithdrawAll { reason, at, .. } => {
                let mut stmt = tx.prepare_cached(
                    "UPDATE credentials SET withdrawn_at = ?1, withdraw_reason = ?2 WHERE withdrawn_at IS NULL RETURNING kind, serial, spiffe_id, entry_id, pid, uid, exe, not_after",
                )?;
                withdraw_rows(&mut stmt, params![at, reason.as_str()], *reason, withdrawn)?;
            }
            Op::Query { .. } | Op::Stop => {}
        }
    }
    tx.commit()
}

pub(super) fn query(
    conn: &Connection,
    f: &Filter,
    now: i64,
) -> Result<Vec<Record>, rusqlite::Error> {
    let mut sql = String::from(
        "SELECT kind, serial, spiffe_id, entry_id, pid, uid, exe, issued_at, not_after, delivered_at,
                withdrawn_at, withdraw_reason, permitted_by FROM credentials WHERE 1=1",
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
            permitted_by: r.get(12)?,
        })
    })?;
    rows.collect()
}
