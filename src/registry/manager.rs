//! The live policy: declared entries (from the config file) plus managed entries (from the admin API,
//! stored in SQLite), and the federated bundles. Every change is published at once to every stream.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::entry::RawEntry;
use super::store::{self, EntryStore};
use super::{Entry, EntryId, FederatedBundle, Origin, Policy, Template};
use crate::fields::FieldError;
use crate::spiffe_id::TrustDomain;

/// Why an entry operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}", crate::fields::Errors(.0.clone()))]
    Invalid(Vec<FieldError>),
    #[error("no entry with ID {0:?}")]
    NotFound(String),
    #[error("entry {0:?} is declared in the config file; change it there and reload (SIGHUP)")]
    Declared(String),
    #[error("an entry for {spiffe_id} with the same selectors exists already: {id}")]
    Duplicate { spiffe_id: String, id: String },
    #[error(
        "entries are managed on the SPIRE server in authority mode \"spire\"; use spire-server entry create/update/delete (or spire-controller-manager) instead"
    )]
    ServerManaged,
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// The policy owner.
pub struct Registry {
    inner: Mutex<Inner>,
    tx: watch::Sender<Arc<Policy>>,
    /// The streams following the policy, woken after each change ([`crate::wake`]).
    waiters: Arc<crate::wake::Waiters>,
}

struct Inner {
    store: EntryStore,
    trust_domain: TrustDomain,
    declared: Vec<Entry>,
    templates: Arc<Vec<Template>>,
    managed: Vec<Entry>,
    federation: Arc<BTreeMap<TrustDomain, FederatedBundle>>,
    default_x509_ttl: Duration,
    default_jwt_ttl: Duration,
    /// Entries and federated bundles come from a SPIRE server; local writes are refused and
    /// locally managed entries do not apply.
    server: bool,
}

/// What the config file contributes to the policy.
pub struct Declared {
    pub trust_domain: TrustDomain,
    pub entries: Vec<Entry>,
    pub templates: Vec<Template>,
    pub federation: BTreeMap<TrustDomain, FederatedBundle>,
    pub default_x509_ttl: Duration,
    pub default_jwt_ttl: Duration,
}

impl Registry {
    /// Opens the entry database at `db` and publishes the first policy.
    pub fn open(db: &Path, declared: Declared) -> Result<Self, Error> {
        let store = EntryStore::open(db)?;
        let managed = store.list()?;
        let inner = Inner {
            store,
            trust_domain: declared.trust_domain,
            declared: declared.entries,
            templates: Arc::new(declared.templates),
            managed,
            federation: Arc::new(declared.federation),
            default_x509_ttl: declared.default_x509_ttl,
            default_jwt_ttl: declared.default_jwt_ttl,
            server: false,
        };
        let (tx, _) = watch::channel(Arc::new(inner.policy()));
        Ok(Self {
            inner: Mutex::new(inner),
            tx,
            waiters: Arc::default(),
        })
    }

    /// A receiver of the policy and its changes.
    pub(crate) fn subscribe(&self) -> crate::wake::Subscription<Arc<Policy>> {
        crate::wake::Subscription::new(self.tx.subscribe(), self.waiters.clone())
    }

    /// Publishes the policy `inner` makes now and wakes the streams that follow it.
    fn publish(&self, inner: &Inner) {
        crate::wake::publish(&self.tx, &self.waiters, Arc::new(inner.policy()));
    }

    /// Replaces what the config file contributes (SIGHUP).
    pub fn reload(&self, declared: Declared) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.trust_domain = declared.trust_domain;
        // In server mode the file has no entries, templates or federation (validation refuses
        // them): keep what the server sent.
        if !inner.server {
            inner.declared = declared.entries;
            inner.templates = Arc::new(declared.templates);
            inner.federation = Arc::new(declared.federation);
        }
        inner.default_x509_ttl = declared.default_x509_ttl;
        inner.default_jwt_ttl = declared.default_jwt_ttl;
        self.publish(&inner);
    }

    /// From now on, entries and federated bundles are the SPIRE server's: what was stored locally
    /// stops applying and the admin API's entry writes are refused.
    pub fn serve_from_server(&self) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.server = true;
        inner.declared.clear();
        inner.templates = Arc::new(Vec::new());
        self.publish(&inner);
    }

    /// The SPIRE server's authorized entries and federated bundles replace the current ones;
    /// published only if something changed.
    pub fn set_server_state(
        &self,
        entries: Vec<Entry>,
        federation: BTreeMap<TrustDomain, FederatedBundle>,
    ) -> bool {
        let Ok(mut inner) = self.inner.lock() else {
            return false;
        };
        if inner.declared == entries && *inner.federation == federation {
            return false;
        }
        inner.declared = entries;
        inner.federation = Arc::new(federation);
        self.publish(&inner);
        true
    }

    /// Replaces the declared entries only (embedding, benchmarks).
    pub fn set_declared_entries(&self, entries: Vec<Entry>) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.declared = entries;
        self.publish(&inner);
    }

    /// Validates and stores a managed entry, then publishes. Durable when it returns.
    pub fn create(&self, spec: &RawEntry) -> Result<Entry, Error> {
        let mut inner = self.inner.lock().map_err(|_| poisoned())?;
        if inner.server {
            return Err(Error::ServerManaged);
        }
        let mut entry = inner.validate(spec)?;
        entry.id = EntryId::managed();
        entry.origin = Origin::Managed;
        inner.check_duplicate(&entry, None)?;
        inner.store.insert(&entry)?;
        inner.managed.push(entry.clone());
        self.publish(&inner);
        Ok(entry)
    }

    /// Replaces a managed entry's fields.
    pub fn update(&self, id: &str, spec: &RawEntry) -> Result<Entry, Error> {
        let mut inner = self.inner.lock().map_err(|_| poisoned())?;
        inner.check_managed(id)?;
        let mut entry = inner.validate(spec)?;
        entry.id = EntryId::from_string(id.to_owned());
        entry.origin = Origin::Managed;
        inner.check_duplicate(&entry, Some(id))?;
        inner.store.update(&entry)?;
        if let Some(slot) = inner.managed.iter_mut().find(|e| e.id.as_str() == id) {
            *slot = entry.clone();
        }
        self.publish(&inner);
        Ok(entry)
    }

    /// Deletes a managed entry.
    pub fn delete(&self, id: &str) -> Result<(), Error> {
        let mut inner = self.inner.lock().map_err(|_| poisoned())?;
        inner.check_managed(id)?;
        inner.store.delete(&EntryId::from_string(id.to_owned()))?;
        inner.managed.retain(|e| e.id.as_str() != id);
        self.publish(&inner);
        Ok(())
    }

    /// Every entry, declared first.
    pub fn list(&self) -> Vec<Entry> {
        self.tx.borrow().entries.as_ref().clone()
    }

    /// Counts of declared and managed entries.
    pub fn counts(&self) -> (usize, usize) {
        self.inner
            .lock()
            .map(|i| (i.declared.len(), i.managed.len()))
            .unwrap_or((0, 0))
    }
}

fn poisoned() -> Error {
    Error::NotFound("(registry lock poisoned)".into())
}

impl Inner {
    fn policy(&self) -> Policy {
        let mut entries = self.declared.clone();
        if !self.server {
            entries.extend(self.managed.iter().cloned());
        }
        Policy {
            entries: Arc::new(entries),
            templates: self.templates.clone(),
            trust_domain: Some(self.trust_domain.clone()),
            federation: self.federation.clone(),
            default_x509_ttl: self.default_x509_ttl,
            default_jwt_ttl: self.default_jwt_ttl,
        }
    }

    fn validate(&self, spec: &RawEntry) -> Result<Entry, Error> {
        let federated: HashSet<TrustDomain> = self.federation.keys().cloned().collect();
        Entry::from_raw("entry", spec, &self.trust_domain, &federated).map_err(Error::Invalid)
    }

    fn check_managed(&self, id: &str) -> Result<(), Error> {
        if self.server {
            return Err(Error::ServerManaged);
        }
        if self.declared.iter().any(|e| e.id.as_str() == id) {
            return Err(Error::Declared(id.into()));
        }
        if !self.managed.iter().any(|e| e.id.as_str() == id) {
            return Err(Error::NotFound(id.into()));
        }
        Ok(())
    }

    fn check_duplicate(&self, entry: &Entry, except: Option<&str>) -> Result<(), Error> {
        let same = self.declared.iter().chain(&self.managed).find(|e| {
            Some(e.id.as_str()) != except
                && e.spiffe_id == entry.spiffe_id
                && e.selectors == entry.selectors
        });
        match same {
            Some(e) => Err(Error::Duplicate {
                spiffe_id: e.spiffe_id.to_string(),
                id: e.id.to_string(),
            }),
            None => Ok(()),
        }
    }
}
