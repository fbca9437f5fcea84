//! The admin API (`lanyard.admin.v1.Admin`): entries, inventory and agent info, served only on the
//! admin socket (0600 in a 0700 directory of its own). Callers must be root or the agent's own user.

use std::sync::Arc;

use tokio::sync::{Semaphore, watch};
use tonic::{Request, Response, Status};

use crate::ca::CaSnapshot;
use crate::config::RawEntry;
use crate::inventory::{Filter, Inventory};
use crate::issuer::IssuerHandle;
use crate::issuer::jwt::JwtCache;
use crate::proto::admin::admin_server::{Admin, AdminServer};
use crate::proto::admin::*;
use crate::registry::manager::{Error as RegistryError, Registry};
use crate::selector::Selector;
use crate::workload_api::listener::PeerInfo;

/// What the admin API reads and changes.
#[derive(Clone)]
pub(crate) struct AdminApi {
    pub registry: Arc<Registry>,
    pub inventory: Inventory,
    pub trust_domain: String,
    pub authority_mode: &'static str,
    pub ca: watch::Receiver<Arc<CaSnapshot>>,
    pub issuer: IssuerHandle,
    pub jwt: JwtCache,
    pub streams: Arc<Semaphore>,
    pub max_streams: usize,
    /// The Cedar policies in force and where they come from (shared with reloads).
    pub policies: crate::workload_api::gate::Policies,
}

impl AdminApi {
    /// The tonic service.
    pub(crate) fn into_server(self) -> AdminServer<Self> {
        AdminServer::new(self)
    }
}

/// Only root or the agent's own user may use the admin API (the socket mode already says so; this
/// holds even if someone loosens the mode).
fn authorize<T>(req: &Request<T>) -> Result<(), Status> {
    let me = crate::sys::euid();
    match req.extensions().get::<PeerInfo>().map(|p| &*p.caller) {
        Some(Ok(caller)) if caller.cred.uid == 0 || caller.cred.uid == me => Ok(()),
        Some(Ok(caller)) => {
            tracing::warn!(
                uid = caller.cred.uid,
                pid = caller.cred.pid,
                "admin api refused a caller"
            );
            Err(Status::permission_denied(
                "the admin API is for root and the agent's user only",
            ))
        }
        _ => Err(Status::permission_denied(
            "the admin API could not identify the caller",
        )),
    }
}

fn registry_status(e: RegistryError) -> Status {
    match e {
        RegistryError::Invalid(_) => Status::invalid_argument(e.to_string()),
        RegistryError::NotFound(_) => Status::not_found(e.to_string()),
        RegistryError::Declared(_) | RegistryError::ServerManaged => {
            Status::failed_precondition(e.to_string())
        }
        RegistryError::Duplicate { .. } => Status::already_exists(e.to_string()),
        RegistryError::Store(ref s) => {
            tracing::error!(error = %s, "entry store failed");
            Status::internal("the entry database failed; see the agent's log")
        }
    }
}

fn raw_entry(spec: Option<EntrySpec>) -> RawEntry {
    let spec = spec.unwrap_or_default();
    let opt = |s: String| (!s.is_empty()).then_some(s);
    RawEntry {
        spiffe_id: opt(spec.spiffe_id),
        selectors: spec.selectors,
        x509_ttl: opt(spec.x509_ttl),
        jwt_ttl: opt(spec.jwt_ttl),
        jwt_audiences: spec.jwt_audiences,
        hint: opt(spec.hint),
        dns_names: spec.dns_names,
        federates_with: spec.federates_with,
    }
}

fn to_proto(e: &crate::registry::Entry) -> Entry {
    let ttl = |d: Option<std::time::Duration>| {
        d.map(|d| humantime::format_duration(d).to_string())
            .unwrap_or_default()
    };
    Entry {
        id: e.id.to_string(),
        origin: e.origin.as_str().into(),
        spec: Some(EntrySpec {
            spiffe_id: e.spiffe_id.to_string(),
            selectors: e
                .selectors
                .iter()
                .map(std::string::ToString::to_string)
                .collect(),
            x509_ttl: ttl(e.x509_ttl),
            jwt_ttl: ttl(e.jwt_ttl),
            hint: e.hint.clone(),
            dns_names: e.dns_names.clone(),
            federates_with: e
                .federates_with
                .iter()
                .map(std::string::ToString::to_string)
                .collect(),
            jwt_audiences: e.jwt_audiences.clone(),
        }),
    }
}

/// Runs a registry change on the blocking pool (it waits for SQLite to sync).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(registry_status)
}

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn create_entry(
        &self,
        req: Request<CreateEntryRequest>,
    ) -> Result<Response<Entry>, Status> {
        authorize(&req)?;
        let raw = raw_entry(req.into_inner().spec);
        let registry = self.registry.clone();
        let entry = blocking(move || registry.create(&raw)).await?;
        tracing::info!(id = %entry.id, spiffe_id = %entry.spiffe_id, "entry created");
        Ok(Response::new(to_proto(&entry)))
    }

    async fn update_entry(
        &self,
        req: Request<UpdateEntryRequest>,
    ) -> Result<Response<Entry>, Status> {
        authorize(&req)?;
        let r = req.into_inner();
        let raw = raw_entry(r.spec);
        let registry = self.registry.clone();
        let entry = blocking(move || registry.update(&r.id, &raw)).await?;
        tracing::info!(id = %entry.id, spiffe_id = %entry.spiffe_id, "entry updated");
        Ok(Response::new(to_proto(&entry)))
    }

    async fn delete_entry(
        &self,
        req: Request<DeleteEntryRequest>,
    ) -> Result<Response<DeleteEntryResponse>, Status> {
        authorize(&req)?;
        let id = req.into_inner().id;
        let registry = self.registry.clone();
        let logged = id.clone();
        blocking(move || registry.delete(&id)).await?;
        tracing::info!(id = %logged, "entry deleted");
        Ok(Response::new(DeleteEntryResponse {}))
    }

    async fn get_entry(&self, req: Request<GetEntryRequest>) -> Result<Response<Entry>, Status> {
        authorize(&req)?;
        let id = req.into_inner().id;
        self.registry
            .list()
            .iter()
            .find(|e| e.id.as_str() == id)
            .map(|e| Response::new(to_proto(e)))
            .ok_or_else(|| Status::not_found(format!("no entry with ID {id:?}")))
    }

    async fn list_entries(
        &self,
        req: Request<ListEntriesRequest>,
    ) -> Result<Response<ListEntriesResponse>, Status> {
        authorize(&req)?;
        let r = req.into_inner();
        let selector = if r.selector.is_empty() {
            None
        } else {
            Some(
                Selector::parse(&r.selector)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
            )
        };
        let entries = self
            .registry
            .list()
            .iter()
            .filter(|e| selector.as_ref().is_none_or(|s| e.selectors.contains(s)))
            .filter(|e| r.spiffe_id.is_empty() || e.spiffe_id.as_str() == r.spiffe_id)
            .map(to_proto)
            .collect();
        Ok(Response::new(ListEntriesResponse { entries }))
    }

    async fn list_credentials(
        &self,
        req: Request<ListCredentialsRequest>,
    ) -> Result<Response<ListCredentialsResponse>, Status> {
        authorize(&req)?;
        let r = req.into_inner();
        let rows = self
            .inventory
            .query(Filter {
                live: r.live,
                spiffe_id: (!r.spiffe_id.is_empty()).then_some(r.spiffe_id),
                since: (r.since > 0).then_some(r.since),
                limit: (r.limit > 0).then_some(r.limit),
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let credentials = rows
            .into_iter()
            .map(|c| Credential {
                kind: c.kind,
                serial: c.serial,
                spiffe_id: c.spiffe_id,
                entry_id: c.entry_id,
                pid: c.pid,
                uid: c.uid,
                executable: c.executable,
                issued_at: c.issued_at,
                not_after: c.not_after,
                delivered_at: c.delivered_at,
                withdrawn_at: c.withdrawn_at.unwrap_or(0),
                withdraw_reason: c.withdraw_reason.unwrap_or_default(),
                permitted_by: c.permitted_by.unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(ListCredentialsResponse { credentials }))
    }

    async fn list_policies(
        &self,
        req: Request<ListPoliciesRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        authorize(&req)?;
        Ok(Response::new(self.policies.list()))
    }

    async fn reload_policies(
        &self,
        req: Request<ReloadPoliciesRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        authorize(&req)?;
        self.policies.reload().map_err(|errors| {
            Status::failed_precondition(format!(
                "the policies were not reloaded (the running set stays): {}",
                errors.join("; ")
            ))
        })?;
        Ok(Response::new(self.policies.list()))
    }

    async fn agent_info(
        &self,
        req: Request<AgentInfoRequest>,
    ) -> Result<Response<AgentInfoResponse>, Status> {
        authorize(&req)?;
        let ca = self.ca.borrow().clone();
        let mut chain_pem = String::new();
        if let Some(signer) = &ca.signer {
            for c in signer.chain() {
                chain_pem.push_str(&crate::encoding::pem_cert(c));
            }
            if signer.chain().is_empty() {
                chain_pem.push_str(&crate::encoding::pem_cert(signer.cert()));
            }
        }
        let (declared, managed) = self.registry.counts();
        let live = self
            .inventory
            .query(Filter {
                live: true,
                limit: Some(u32::MAX),
                ..Filter::default()
            })
            .await
            .map(|r| r.len() as u64)
            .unwrap_or(0);
        let stats = self.issuer.stats();
        Ok(Response::new(AgentInfoResponse {
            trust_domain: self.trust_domain.clone(),
            authority_mode: self.authority_mode.into(),
            signing_chain_pem: chain_pem,
            signing_ca_not_after: ca
                .signer
                .as_ref()
                .and_then(|s| s.not_after().duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs() as i64),
            bundle_certificates: ca.bundle.certs().len() as u32,
            entries_declared: declared as u32,
            entries_managed: managed as u32,
            open_streams: self
                .max_streams
                .saturating_sub(self.streams.available_permits()) as u32,
            svids_cached: stats.cached.load(std::sync::atomic::Ordering::Relaxed),
            svids_minted: stats.minted.load(std::sync::atomic::Ordering::Relaxed),
            jwt_svids_signed: self.jwt.signed(),
            credentials_live: live,
            version: env!("CARGO_PKG_VERSION").into(),
        }))
    }
}
