//! Envoy's Secret Discovery Service (SDS v3) on the Workload API socket, as SPIRE's agent serves it.
//!
//! The caller is attested like any workload (the `workload.spiffe.io` header is not required: Envoy
//! does not send it) and what it may have is watched by the same stream machinery as
//! FetchX509SVID: limits, the inventory record before delivery, the cut-off on exec, rotations.
//! Resource names: `default` (the caller's first SVID), a SPIFFE ID (that SVID), `ROOTCA` (the own
//! bundle), a trust domain ID `spiffe://td` (that bundle, own or federated), `ALL` (own and
//! federated bundles in one validation context); none = every resource. Validation contexts carry
//! Envoy's SPIFFE certificate validator unless `[sds] disable_spiffe_cert_validation` is set, or the
//! node's metadata sets `disable_spiffe_cert_validation: true` (then plain `trusted_ca`).
//!
//! xDS state machine (per stream): every change of what the caller holds is a new version; a
//! response carries a fresh nonce; a request whose nonce is not the last one sent is stale and
//! ignored; a request with the last nonce acknowledges (its version is the one sent) or rejects
//! (an older version, usually with `error_detail`: logged with the node ID, never re-sent in a
//! loop); a response is sent on the first request, when the requested names change, and on every
//! new version.

use std::collections::BTreeSet;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{DataSource, TypedExtensionConfig, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, TlsCertificate, secret,
    spiffe_cert_validator_config,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Name as _;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use zeroize::Zeroizing;

use super::service::{BoxStream, WorkloadApi, observed};
use super::stream::View;
use crate::ca::{X509Bundle, X509Svid};

/// The resource naming the caller's first SVID.
pub(crate) const DEFAULT_SVID: &str = "default";
/// The resource naming the own trust domain's bundle.
pub(crate) const ROOT_CA: &str = "ROOTCA";
/// The resource naming every bundle the caller may have, in one validation context.
pub(crate) const ALL_BUNDLES: &str = "ALL";
/// Envoy's name of the SPIFFE certificate validator extension.
const SPIFFE_VALIDATOR: &str = "envoy.tls.cert_validator.spiffe";

/// What an SDS stream is built from: the caller's SVIDs and bundles, re-rendered on every change.
#[derive(Clone)]
pub(super) struct SdsState {
    /// Ready SVIDs in identity order (the first is `default`).
    svids: Vec<Arc<X509Svid>>,
    /// The own trust domain ID and bundle.
    own: (String, Arc<X509Bundle>),
    /// Federated bundles the caller may have, by trust domain ID.
    federated: Vec<(String, X509Bundle)>,
}

impl PartialEq for SdsState {
    fn eq(&self, other: &Self) -> bool {
        self.svids.len() == other.svids.len()
            && self
                .svids
                .iter()
                .zip(&other.svids)
                .all(|(a, b)| a.spiffe_id == b.spiffe_id && a.serial == b.serial)
            && self.own.0 == other.own.0
            && self.own.1 == other.own.1
            && self.federated == other.federated
    }
}

fn render_sds(view: &View<'_>) -> SdsState {
    SdsState {
        svids: view.svids.iter().flatten().cloned().collect(),
        own: (view.trust_domain.id_string(), view.ca.bundle.clone()),
        federated: crate::registry::federated_bundles(view.identities, view.policy)
            .into_iter()
            .map(|(td, b)| (td, b.clone()))
            .collect(),
    }
}

/// The SDS service.
#[derive(Clone)]
pub(crate) struct Sds {
    api: WorkloadApi,
    /// Plain `trusted_ca` validation contexts for every node.
    disable_spiffe_validation: bool,
}

impl Sds {
    pub(crate) fn new(api: WorkloadApi, disable_spiffe_validation: bool) -> Self {
        Self {
            api,
            disable_spiffe_validation,
        }
    }

    pub(crate) fn into_server(self) -> SecretDiscoveryServiceServer<Self> {
        SecretDiscoveryServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for Sds {
    type StreamSecretsStream = BoxStream<DiscoveryResponse>;
    type DeltaSecretsStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let start = std::time::Instant::now();
        let result = async {
            let states = self
                .api
                .open_watch(&request, render_sds, true, Some(super::gate::Act::Sds))
                .await?;
            let requests = request.into_inner();
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(follow(requests, states, tx, self.disable_spiffe_validation));
            Ok(Response::new(
                Box::pin(ReceiverStream::new(rx)) as Self::StreamSecretsStream
            ))
        }
        .await;
        observed("StreamSecrets", start, result)
    }

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        observed(
            "DeltaSecrets",
            std::time::Instant::now(),
            Err(Status::unimplemented(
                "DeltaSecrets is not implemented; use StreamSecrets (SDS state of the world)",
            )),
        )
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let start = std::time::Instant::now();
        let result = async {
            let mut states = self
                .api
                .open_watch(&request, render_sds, true, Some(super::gate::Act::Sds))
                .await?;
            let state = match states.next().await {
                Some(Ok(state)) => state,
                Some(Err(status)) => return Err(status),
                None => return Err(Status::unavailable("the agent is shutting down")),
            };
            // The watch ends when `states` is dropped.
            let req = request.into_inner();
            let disable = self.disable_spiffe_validation || node_disables_validation(&req);
            build(&req, &state, "", String::new(), disable).map(Response::new)
        }
        .await;
        observed("FetchSecrets", start, result)
    }
}

/// One SDS stream: requests from Envoy and states from the watch, answered per the xDS protocol.
async fn follow(
    mut requests: Streaming<DiscoveryRequest>,
    mut states: super::service::Watch<SdsState>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    disable_globally: bool,
) {
    let mut version = 0u64;
    let mut state: Option<SdsState> = None;
    let mut last: Option<DiscoveryRequest> = None;
    let mut last_nonce = String::new();
    loop {
        tokio::select! {
            () = tx.closed() => return,
            req = requests.message() => {
                let Ok(Some(req)) = req else {
                    return;
                };
                let node = req.node.as_ref().map(|n| n.id.as_str()).unwrap_or_default().to_owned();
                if !last_nonce.is_empty() {
                    if req.response_nonce != last_nonce {
                        tracing::debug!(node, nonce = %req.response_nonce, expected = %last_nonce, "stale SDS request ignored");
                        continue;
                    }
                    if req.version_info != version.to_string() {
                        let why = req.error_detail.as_ref().map(|e| e.message.clone()).unwrap_or_default();
                        tracing::warn!(
                            node,
                            rejected = version,
                            kept = %req.version_info,
                            resources = ?req.resource_names,
                            error = %why,
                            "Envoy rejected the secrets (NACK); not re-sent until something changes"
                        );
                        crate::metrics::metrics().count(&crate::metrics::metrics().sds_nacks, "nack");
                    }
                }
                let changed = last
                    .as_ref()
                    .is_none_or(|l| names(&l.resource_names) != names(&req.resource_names));
                last = Some(req);
                if !changed || state.is_none() {
                    continue;
                }
            }
            next = states.next() => match next {
                Some(Ok(s)) => {
                    version += 1;
                    state = Some(s);
                    if last.is_none() {
                        continue;
                    }
                }
                Some(Err(status)) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                None => return,
            },
        }
        let (Some(req), Some(current)) = (&last, &state) else {
            continue;
        };
        let disable = disable_globally || node_disables_validation(req);
        let response = build(req, current, &version.to_string(), nonce(), disable);
        match response {
            Ok(resp) => {
                last_nonce.clone_from(&resp.nonce);
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        }
    }
}

fn names(list: &[String]) -> BTreeSet<&str> {
    list.iter()
        .map(String::as_str)
        .filter(|n| !n.is_empty())
        .collect()
}

/// A fresh nonce (8 hex digits, as SPIRE's agent sends).
fn nonce() -> String {
    let mut b = [0u8; 4];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        b = fastrand::u32(..).to_le_bytes();
    }
    crate::encoding::hex(&b)
}

/// The node's metadata asks for plain `trusted_ca` validation contexts.
fn node_disables_validation(req: &DiscoveryRequest) -> bool {
    use envoy_types::pb::google::protobuf::value::Kind;
    req.node
        .as_ref()
        .and_then(|n| n.metadata.as_ref())
        .and_then(|m| m.fields.get("disable_spiffe_cert_validation"))
        .is_some_and(|v| match &v.kind {
            Some(Kind::BoolValue(b)) => *b,
            Some(Kind::StringValue(s)) => s == "true",
            _ => false,
        })
}

/// The response to `req` from `state`: the requested resources, or `InvalidArgument` naming those
/// the caller may not have.
fn build(
    req: &DiscoveryRequest,
    state: &SdsState,
    version: &str,
    nonce: String,
    disable_validation: bool,
) -> Result<DiscoveryResponse, Status> {
    let mut wanted = names(&req.resource_names);
    let all = wanted.is_empty();
    let mut resources = Vec::new();
    let (own_td, own) = (&state.own.0, &*state.own.1);
    let take = |name: &str, wanted: &mut BTreeSet<&str>| all || wanted.remove(name);
    if take(own_td, &mut wanted) {
        resources.push(validation(own_td, &[(own_td, own)], disable_validation));
    }
    if !all && take(ROOT_CA, &mut wanted) {
        resources.push(validation(ROOT_CA, &[(own_td, own)], disable_validation));
    }
    if !all && take(ALL_BUNDLES, &mut wanted) {
        if disable_validation {
            return Err(Status::invalid_argument(
                "\"ALL\" needs the SPIFFE certificate validator (one trusted_ca cannot keep trust domains apart); request each trust domain by ID, or enable SPIFFE validation",
            ));
        }
        let mut every: Vec<(&String, &X509Bundle)> = vec![(own_td, own)];
        every.extend(state.federated.iter().map(|(td, b)| (td, b)));
        resources.push(validation(ALL_BUNDLES, &every, false));
    }
    for (td, bundle) in &state.federated {
        if take(td, &mut wanted) {
            resources.push(validation(td, &[(td, bundle)], disable_validation));
        }
    }
    for (i, svid) in state.svids.iter().enumerate() {
        if take(svid.spiffe_id.as_str(), &mut wanted) {
            resources.push(tls_certificate(svid.spiffe_id.as_str(), svid));
        }
        if i == 0 && !all && take(DEFAULT_SVID, &mut wanted) {
            resources.push(tls_certificate(DEFAULT_SVID, svid));
        }
    }
    if !wanted.is_empty() {
        return Err(Status::invalid_argument(format!(
            "the caller is not entitled to the requested resources {:?}; it may ask for \"default\", \"ROOTCA\", \"ALL\", its own SPIFFE IDs and the trust domain IDs it may trust",
            wanted.into_iter().collect::<Vec<_>>()
        )));
    }
    Ok(DiscoveryResponse {
        version_info: version.to_owned(),
        resources,
        type_url: Secret::type_url(),
        nonce,
        ..DiscoveryResponse::default()
    })
}

fn inline(bytes: Vec<u8>) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes)),
        ..DataSource::default()
    })
}

fn pack<M: prost::Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// A validation context named `name` trusting `bundles` (trust domain ID, bundle): the SPIFFE
/// validator with one trust domain each, or (validation disabled) plain `trusted_ca`.
fn validation(name: &str, bundles: &[(&String, &X509Bundle)], disable_validation: bool) -> Any {
    let context = if disable_validation {
        let pem: String = bundles.iter().map(|(_, b)| b.to_pem()).collect();
        CertificateValidationContext {
            trusted_ca: inline(pem.into_bytes()),
            ..CertificateValidationContext::default()
        }
    } else {
        let mut trust_domains: Vec<_> = bundles
            .iter()
            .map(|(td, b)| spiffe_cert_validator_config::TrustDomain {
                name: td.strip_prefix("spiffe://").unwrap_or(td).to_owned(),
                trust_bundle: inline(b.to_pem().into_bytes()),
                ..Default::default()
            })
            .collect();
        trust_domains.sort_by(|a, b| a.name.cmp(&b.name));
        CertificateValidationContext {
            custom_validator_config: Some(TypedExtensionConfig {
                name: SPIFFE_VALIDATOR.into(),
                typed_config: Some(pack(&SpiffeCertValidatorConfig {
                    trust_domains,
                    ..SpiffeCertValidatorConfig::default()
                })),
            }),
            ..CertificateValidationContext::default()
        }
    };
    pack(&Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::ValidationContext(context)),
    })
}

/// A TLS certificate named `name`: the SVID's chain and its key, PEM.
fn tls_certificate(name: &str, svid: &X509Svid) -> Any {
    let chain: String = svid
        .chain
        .iter()
        .map(|c| crate::encoding::pem_cert(c))
        .collect();
    let key = Zeroizing::new(crate::encoding::pem_block(
        "PRIVATE KEY",
        svid.key_pkcs8_der(),
    ));
    pack(&Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(chain.into_bytes()),
            private_key: inline(key.as_bytes().to_vec()),
            ..TlsCertificate::default()
        })),
    })
}
