//! The agent's SQLite database (`<data_dir>/lanyard.db`): one place that opens it, sets its pragmas
//! and brings its schema up to date.
//!
//! The schema is versioned with SQLite's `user_version`: migration N (1-based) takes version N-1 to
//! N, in one transaction with the version bump, so a crash leaves the old schema or the new one. A
//! database newer than this binary knows is refused (never written by an older agent). Migration 1
//! is the schema of the releases before versioning (`CREATE ... IF NOT EXISTS`), so their databases
//! are adopted as version 1.

use std::path::Path;

use rusqlite::Connection;

/// Errors opening the database.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("database {path}: {message}")]
    Sql { path: String, message: String },
    #[error(
        "database {path} has schema version {found}, newer than this agent knows ({known}): run a newer lanyard, or point data_dir elsewhere"
    )]
    TooNew {
        path: String,
        found: i64,
        known: i64,
    },
}

/// Each migration, in order; index + 1 is the version it produces.
const MIGRATIONS: &[&str] = &[
    // 1: managed entries and the credential inventory.
    "CREATE TABLE IF NOT EXISTS entries (
         seq INTEGER PRIMARY KEY AUTOINCREMENT,
         id TEXT NOT NULL UNIQUE,
         spiffe_id TEXT NOT NULL,
         selectors TEXT NOT NULL,
         x509_ttl INTEGER,
         jwt_ttl INTEGER,
         hint TEXT NOT NULL,
         dns_names TEXT NOT NULL,
         federates_with TEXT NOT NULL,
         jwt_audiences TEXT NOT NULL
     );
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
    // 2: rows by holder, for compacting each holder's finished rows.
    "CREATE INDEX IF NOT EXISTS credentials_holder ON credentials(pid, pid_instance, id);",
    // 3: the Cedar policies that permitted each issuance (NULL: no `[policy]` in force).
    "ALTER TABLE credentials ADD COLUMN permitted_by TEXT;",
];

/// The schema version this binary writes.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Opens (creating) the database at `path`: WAL, `synchronous=FULL` (a commit is durable when it
/// returns), a busy timeout for the agent's two connections, and the schema migrated to
/// [`SCHEMA_VERSION`].
pub(crate) fn open(path: &Path) -> Result<Connection, Error> {
    let shown = path.display().to_string();
    let sql = |e: rusqlite::Error| Error::Sql {
        path: shown.clone(),
        message: e.to_string(),
    };
    let mut conn = Connection::open(path).map_err(sql)?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         PRAGMA synchronous=FULL;
         PRAGMA busy_timeout=5000;",
    )
    .map_err(sql)?;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sql)?;
    let found: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql)?;
    if found > SCHEMA_VERSION {
        return Err(Error::TooNew {
            path: shown,
            found,
            known: SCHEMA_VERSION,
        });
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        tx.execute_batch(step).map_err(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
            .map_err(sql)?;
    }
    tx.commit().map_err(sql)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_fresh_and_pre_versioning_databases_and_refuses_newer_ones() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("fresh.db");
        let conn = open(&fresh).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        drop(conn);
        // Opening again changes nothing.
        open(&fresh).unwrap();

        // A database written before versioning (tables, user_version 0) is adopted as is.
        let old = dir.path().join("old.db");
        let c = Connection::open(&old).unwrap();
        c.execute_batch(MIGRATIONS[0]).unwrap();
        c.execute(
            "INSERT INTO entries (id, spiffe_id, selectors, hint, dns_names, federates_with, jwt_audiences)
             VALUES ('ent-1', 'spiffe://example.org/a', '[]', '', '[]', '[]', '[]')",
            [],
        )
        .unwrap();
        drop(c);
        let conn = open(&old).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM entries", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1, "no data lost");

        // Newer than known: refused, untouched.
        conn.execute_batch("PRAGMA user_version = 99").unwrap();
        drop(conn);
        let err = open(&old).unwrap_err().to_string();
        assert!(
            err.contains("schema version 99") && err.contains("newer"),
            "{err}"
        );
    }
}
