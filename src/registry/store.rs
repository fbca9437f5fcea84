//! Durable storage of managed entries in the agent's SQLite database.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, params};

use super::{Entry, EntryId, Origin};
use crate::selector::Selector;
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// Errors of the entry store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("entry database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error(transparent)]
    Db(#[from] crate::db::Error),
    #[error("entry database holds an unreadable entry {id}: {why}")]
    Corrupt { id: String, why: String },
}

/// Managed entries, one row each.
pub struct EntryStore {
    conn: Connection,
}

impl EntryStore {
    /// Opens (creating if needed) the database at `path`. Writes are durable when they return.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let conn = crate::db::open(path)?;
        Ok(Self { conn })
    }

    /// Every managed entry, in creation order.
    pub fn list(&self) -> Result<Vec<Entry>, Error> {
        let mut stmt = self.conn.prepare(
            "SELECT id, spiffe_id, selectors, x509_ttl, jwt_ttl, hint, dns_names, federates_with, jwt_audiences
             FROM entries ORDER BY seq",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, String>(8)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, spiffe_id, selectors, x509, jwt, hint, dns, fed, auds) = row?;
            let corrupt = |why: String| Error::Corrupt {
                id: id.clone(),
                why,
            };
            let list = |text: &str| {
                serde_json::from_str::<Vec<String>>(text).map_err(|e| corrupt(e.to_string()))
            };
            let entry = Entry {
                id: EntryId::from_string(id.clone()),
                spiffe_id: SpiffeId::parse(&spiffe_id).map_err(|e| corrupt(e.to_string()))?,
                selectors: list(&selectors)?
                    .iter()
                    .map(|s| Selector::parse(s).map_err(|e| corrupt(e.to_string())))
                    .collect::<Result<_, _>>()?,
                x509_ttl: x509.map(|s| Duration::from_secs(s.max(0) as u64)),
                jwt_ttl: jwt.map(|s| Duration::from_secs(s.max(0) as u64)),
                jwt_audiences: list(&auds)?,
                hint,
                dns_names: list(&dns)?,
                federates_with: list(&fed)?
                    .iter()
                    .map(|t| TrustDomain::parse(t).map_err(|e| corrupt(e.to_string())))
                    .collect::<Result<_, _>>()?,
                origin: Origin::Managed,
            };
            out.push(entry);
        }
        Ok(out)
    }

    /// Stores a new entry.
    pub fn insert(&self, e: &Entry) -> Result<(), Error> {
        self.conn.execute(
            "INSERT INTO entries (id, spiffe_id, selectors, x509_ttl, jwt_ttl, hint, dns_names, federates_with, jwt_audiences)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            rusqlite::params_from_iter(row(e)),
        )?;
        Ok(())
    }

    /// Replaces an entry's fields, keeping its ID and position. False if there is no such entry.
    pub fn update(&self, e: &Entry) -> Result<bool, Error> {
        let n = self.conn.execute(
            "UPDATE entries SET spiffe_id = ?2, selectors = ?3, x509_ttl = ?4, jwt_ttl = ?5, hint = ?6,
                 dns_names = ?7, federates_with = ?8, jwt_audiences = ?9 WHERE id = ?1",
            rusqlite::params_from_iter(row(e)),
        )?;
        Ok(n == 1)
    }

    /// Deletes an entry. False if there was none.
    pub fn delete(&self, id: &EntryId) -> Result<bool, Error> {
        Ok(self
            .conn
            .execute("DELETE FROM entries WHERE id = ?1", params![id.as_str()])?
            == 1)
    }
}

/// An entry's columns, in the order ?1..?9 of both the INSERT and the UPDATE.
fn row(e: &Entry) -> [rusqlite::types::Value; 9] {
    use rusqlite::types::Value;
    let secs = |d: Option<Duration>| d.map_or(Value::Null, |d| Value::Integer(d.as_secs() as i64));
    [
        Value::Text(e.id.to_string()),
        Value::Text(e.spiffe_id.to_string()),
        Value::Text(json(
            e.selectors.iter().map(std::string::ToString::to_string),
        )),
        secs(e.x509_ttl),
        secs(e.jwt_ttl),
        Value::Text(e.hint.clone()),
        Value::Text(json(e.dns_names.iter().cloned())),
        Value::Text(json(
            e.federates_with
                .iter()
                .map(std::string::ToString::to_string),
        )),
        Value::Text(json(e.jwt_audiences.iter().cloned())),
    ]
}

fn json(items: impl Iterator<Item = String>) -> String {
    serde_json::to_string(&items.collect::<Vec<_>>()).unwrap_or_else(|_| "[]".into())
}
