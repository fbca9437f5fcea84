//! This node's identity at the SPIRE server: attestation (`join_token`), the agent SVID kept in
//! `<data_dir>/spire/agent.pem` (chain and key, 0600, replaced atomically) with the trust bundle in
//! `<data_dir>/spire/bundle.pem`, so a restart does not attest again (join tokens are single use),
//! and renewal (`RenewAgent`).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine as _;
use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tokio_stream::StreamExt as _;
use zeroize::Zeroizing;

use super::proto::{agent, bundle, types};
use super::tls::{self, ClientCert, Trust};
use super::{Error, convert};
use crate::ca::{NodeAttestation, SpireConfig, X509Bundle};
use crate::encoding::{pem_block, pem_cert};

/// The agent SVID: what this node presents to the server.
pub(super) struct AgentSvid {
    pub(super) id: String,
    pub(super) chain: Vec<CertificateDer<'static>>,
    key_pkcs8: Zeroizing<Vec<u8>>,
    pub(super) not_before: SystemTime,
    pub(super) not_after: SystemTime,
}

impl std::fmt::Debug for AgentSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSvid")
            .field("id", &self.id)
            .field("not_after", &self.not_after)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl AgentSvid {
    fn new(
        chain: Vec<CertificateDer<'static>>,
        key_pkcs8: Zeroizing<Vec<u8>>,
    ) -> Result<Self, Error> {
        let leaf = chain
            .first()
            .ok_or_else(|| Error::Server("empty agent SVID".into()))?;
        let (not_before, not_after, _) =
            crate::ca::mint::cert_facts(leaf).map_err(|e| Error::Server(e.to_string()))?;
        let id = crate::encoding::uri_sans(leaf)
            .map_err(Error::Server)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Server("the agent SVID has no SPIFFE ID".into()))?;
        Ok(Self {
            id,
            chain,
            key_pkcs8,
            not_before,
            not_after,
        })
    }

    pub(super) fn client_cert(&self) -> ClientCert {
        ClientCert {
            chain: self.chain.clone(),
            key_pkcs8: self.key_pkcs8.to_vec(),
        }
    }

    /// Half its life has passed: time to renew.
    pub(super) fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life / 2
    }
}

/// Where the node's state lives.
#[derive(Debug, Clone)]
pub(super) struct Files {
    dir: PathBuf,
}

impl Files {
    pub(super) fn new(data_dir: &Path) -> Result<Self, Error> {
        let dir = data_dir.join("spire");
        crate::atomic_file::ensure_dir(&dir, 0o700).map_err(|e| Error::Io {
            path: dir.display().to_string(),
            source: e,
        })?;
        Ok(Self { dir })
    }

    fn agent(&self) -> PathBuf {
        self.dir.join("agent.pem")
    }

    fn bundle(&self) -> PathBuf {
        self.dir.join("bundle.pem")
    }

    /// The persisted agent SVID and bundle, if both are there (expired or not: the caller decides).
    pub(super) fn load(&self) -> Result<Option<(AgentSvid, X509Bundle)>, Error> {
        let path = self.agent();
        if !path.exists() {
            return Ok(None);
        }
        crate::atomic_file::check_key_file(&path, true).map_err(|e| Error::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        let data = Zeroizing::new(std::fs::read(&path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            source: e,
        })?);
        let bad = |why: String| Error::Server(format!("{}: {why}", path.display()));
        let chain = CertificateDer::pem_slice_iter(&data)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        let key = PrivatePkcs8KeyDer::from_pem_slice(&data).map_err(|e| bad(e.to_string()))?;
        let svid = AgentSvid::new(chain, Zeroizing::new(key.secret_pkcs8_der().to_vec()))?;
        let bundle = X509Bundle::from_pem_file(&self.bundle())
            .map_err(|e| Error::Server(format!("persisted trust bundle: {e}")))?;
        Ok(Some((svid, bundle)))
    }

    pub(super) fn save_agent(&self, svid: &AgentSvid) -> Result<(), Error> {
        let mut text = Zeroizing::new(String::new());
        for c in &svid.chain {
            text.push_str(&pem_cert(c));
        }
        text.push_str(&pem_block("PRIVATE KEY", &svid.key_pkcs8));
        let path = self.agent();
        crate::atomic_file::write(&path, text.as_bytes(), 0o600).map_err(|e| Error::Io {
            path: path.display().to_string(),
            source: e,
        })
    }

    pub(super) fn save_bundle(&self, bundle: &X509Bundle) -> Result<(), Error> {
        let path = self.bundle();
        crate::atomic_file::write(&path, bundle.to_pem().as_bytes(), 0o644).map_err(|e| Error::Io {
            path: path.display().to_string(),
            source: e,
        })
    }
}

/// A fresh key and a CSR for it (the server takes only the key from it).
pub(super) fn key_and_csr() -> Result<(KeyPair, Vec<u8>), Error> {
    let key = crate::ca::mint::generate_key().map_err(|e| Error::Server(e.to_string()))?;
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .map_err(|e| Error::Server(format!("CSR: {e}")))?;
    Ok((key, csr.der().to_vec()))
}

/// Attests this node and returns its agent SVID and the trust domain's bundle.
pub(super) async fn attest(
    config: &SpireConfig,
    bootstrap: Trust,
) -> Result<(AgentSvid, X509Bundle), Error> {
    let (key, csr) = key_and_csr()?;
    let channel =
        tls::channel(&config.server_address, bootstrap.clone(), None).map_err(Error::Server)?;
    let (data, pop) = attestation_data(&config.attestation)?;
    let first = agent::AttestAgentRequest {
        step: Some(agent::attest_agent_request::Step::Params(
            agent::attest_agent_request::Params {
                data: Some(data),
                params: Some(agent::AgentX509svidParams { csr }),
            },
        )),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let _ = tx.send(first).await;
    let mut client = agent::agent_client::AgentClient::new(channel.clone());
    let mut responses = client
        .attest_agent(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| Error::from_status("node attestation", &s))?
        .into_inner();
    let svid = loop {
        let msg = responses
            .next()
            .await
            .ok_or_else(|| Error::Server("the server ended attestation without a result".into()))?
            .map_err(|s| Error::from_status("node attestation", &s))?;
        match msg.step {
            Some(agent::attest_agent_response::Step::Result(r)) => {
                break r
                    .svid
                    .ok_or_else(|| Error::Server("attestation result without an SVID".into()))?;
            }
            Some(agent::attest_agent_response::Step::Challenge(challenge)) => {
                let Some(key) = &pop else {
                    return Err(Error::Server(format!(
                        "the server sent a challenge; {} attestation has none",
                        config.attestation.kind()
                    )));
                };
                let response = key.respond(&challenge)?;
                let step = agent::AttestAgentRequest {
                    step: Some(agent::attest_agent_request::Step::ChallengeResponse(
                        response,
                    )),
                };
                tx.send(step)
                    .await
                    .map_err(|_| Error::Server("attestation stream closed".into()))?;
            }
            None => {}
        }
    };
    drop(tx);
    let svid = AgentSvid::new(
        svid.cert_chain
            .into_iter()
            .map(CertificateDer::from)
            .collect(),
        Zeroizing::new(key.serialize_der()),
    )?;
    // The bundle: from the server over the channel just verified (or, on an insecure bootstrap, the
    // channel that gave this SVID; the SVID must chain to what it sends).
    let bundle = fetch_bundle(channel).await?;
    if let Trust::Insecure = bootstrap {
        tracing::warn!(
            server = %config.server_address,
            "insecure_bootstrap: the trust bundle was taken from whatever answered at server_address; pin it with trust_bundle_path"
        );
    }
    Ok((svid, bundle))
}

/// The trust domain's bundle from the server.
pub(super) async fn fetch_bundle(channel: tonic::transport::Channel) -> Result<X509Bundle, Error> {
    let b = bundle::bundle_client::BundleClient::new(channel)
        .get_bundle(bundle::GetBundleRequest::default())
        .await
        .map_err(|s| Error::from_status("GetBundle", &s))?
        .into_inner();
    let bundle = convert::x509_bundle(&b);
    if bundle.certs().is_empty() {
        return Err(Error::Server(
            "the server's bundle has no X.509 authorities".into(),
        ));
    }
    Ok(bundle)
}

/// A new agent SVID for the current one (`RenewAgent`), over a channel presenting the current one.
pub(super) async fn renew(channel: tonic::transport::Channel) -> Result<AgentSvid, Error> {
    let (key, csr) = key_and_csr()?;
    let r = agent::agent_client::AgentClient::new(channel)
        .renew_agent(agent::RenewAgentRequest {
            params: Some(agent::AgentX509svidParams { csr }),
        })
        .await
        .map_err(|s| Error::from_status("RenewAgent", &s))?
        .into_inner();
    let svid = r
        .svid
        .ok_or_else(|| Error::Server("RenewAgent answered without an SVID".into()))?;
    AgentSvid::new(
        svid.cert_chain
            .into_iter()
            .map(CertificateDer::from)
            .collect(),
        Zeroizing::new(key.serialize_der()),
    )
}

/// What the server's node attestor reads, and the key that answers its challenge (x509pop).
fn attestation_data(
    attestation: &NodeAttestation,
) -> Result<(types::AttestationData, Option<PopKey>), Error> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            source: e,
        })
    };
    Ok(match attestation {
        NodeAttestation::JoinToken(token) => (
            types::AttestationData {
                r#type: "join_token".into(),
                payload: token.as_bytes().to_vec(),
            },
            None,
        ),
        NodeAttestation::X509Pop {
            cert_path,
            key_path,
        } => {
            let pem = read(cert_path)?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::Server(format!("{}: {e}", cert_path.display())))?;
            if chain.is_empty() {
                return Err(Error::Server(format!(
                    "{}: no certificate (x509pop needs the node certificate, leaf first)",
                    cert_path.display()
                )));
            }
            crate::atomic_file::check_key_file(key_path, false).map_err(|e| Error::Io {
                path: key_path.display().to_string(),
                source: e,
            })?;
            let key = PopKey::load(&Zeroizing::new(read(key_path)?), key_path)?;
            let certificates: Vec<String> = chain
                .iter()
                .map(|c| base64::engine::general_purpose::STANDARD.encode(c))
                .collect();
            let payload = serde_json::to_vec(&serde_json::json!({ "certificates": certificates }))
                .map_err(|e| Error::Server(e.to_string()))?;
            (
                types::AttestationData {
                    r#type: "x509pop".into(),
                    payload,
                },
                Some(key),
            )
        }
        NodeAttestation::K8sPsat {
            cluster,
            token_path,
        } => {
            let token = Zeroizing::new(
                String::from_utf8_lossy(&read(token_path)?)
                    .trim()
                    .to_owned(),
            );
            if token.is_empty() {
                return Err(Error::Server(format!(
                    "{}: empty service account token",
                    token_path.display()
                )));
            }
            let payload = Zeroizing::new(
                serde_json::to_vec(&serde_json::json!({ "cluster": cluster, "token": &*token }))
                    .map_err(|e| Error::Server(e.to_string()))?,
            );
            (
                types::AttestationData {
                    r#type: "k8s_psat".into(),
                    payload: payload.to_vec(),
                },
                None,
            )
        }
    })
}

/// The x509pop key: answers the server's signature challenge as SPIRE's agent does — a fresh
/// 32-byte nonce, and a signature over SHA-256(challenge nonce ‖ own nonce) (ECDSA P-256, or RSA-PSS
/// with SHA-256).
enum PopKey {
    Ecdsa(aws_lc_rs::signature::EcdsaKeyPair),
    Rsa(aws_lc_rs::rsa::KeyPair),
}

impl PopKey {
    fn load(pem_text: &[u8], path: &Path) -> Result<Self, Error> {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let bad = |why: &str| Error::Server(format!("{}: {why}", path.display()));
        let block = pem::parse(pem_text).map_err(|e| bad(&e.to_string()))?;
        let der = Zeroizing::new(block.contents().to_vec());
        match block.tag() {
            "PRIVATE KEY" | "EC PRIVATE KEY" => {
                if let Ok(k) =
                    EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
                {
                    return Ok(PopKey::Ecdsa(k));
                }
                aws_lc_rs::rsa::KeyPair::from_pkcs8(&der)
                    .map(PopKey::Rsa)
                    .map_err(|_| bad("not an EC P-256 or RSA private key"))
            }
            "RSA PRIVATE KEY" => aws_lc_rs::rsa::KeyPair::from_der(&der)
                .map(PopKey::Rsa)
                .map_err(|_| bad("not a valid RSA private key")),
            other => Err(bad(&format!("a {other:?} block is not a private key"))),
        }
    }

    fn respond(&self, challenge: &[u8]) -> Result<Vec<u8>, Error> {
        use base64::engine::general_purpose::STANDARD;
        let bad = |why: String| Error::Server(format!("x509pop challenge: {why}"));
        let c: serde_json::Value =
            serde_json::from_slice(challenge).map_err(|e| bad(e.to_string()))?;
        let field = match self {
            PopKey::Ecdsa(_) => "ecdsa_signature",
            PopKey::Rsa(_) => "rsa_signature",
        };
        let theirs = c[field]["nonce"]
            .as_str()
            .and_then(|n| STANDARD.decode(n).ok())
            .ok_or_else(|| {
                bad(format!(
                    "no {field} nonce (the key type does not match the certificate?)"
                ))
            })?;
        let mut ours = [0u8; 32];
        aws_lc_rs::rand::fill(&mut ours).map_err(|_| bad("random source failed".into()))?;
        // Signing hashes the message with SHA-256, so the signed digest is SHA-256(theirs ‖ ours).
        let mut message = theirs;
        message.extend_from_slice(&ours);
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let response = match self {
            PopKey::Ecdsa(key) => {
                let sig = key
                    .sign(&rng, &message)
                    .map_err(|_| bad("signing failed".into()))?;
                let (r, s) = sig.as_ref().split_at(sig.as_ref().len() / 2);
                serde_json::json!({ field: { "nonce": STANDARD.encode(ours), "r": STANDARD.encode(r), "s": STANDARD.encode(s) } })
            }
            PopKey::Rsa(key) => {
                let mut sig = vec![0u8; key.public_modulus_len()];
                key.sign(
                    &aws_lc_rs::signature::RSA_PSS_SHA256,
                    &rng,
                    &message,
                    &mut sig,
                )
                .map_err(|_| bad("signing failed".into()))?;
                serde_json::json!({ field: { "nonce": STANDARD.encode(ours), "signature": STANDARD.encode(&sig) } })
            }
        };
        serde_json::to_vec(&response).map_err(|e| bad(e.to_string()))
    }
}
