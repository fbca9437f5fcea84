//! The authority's lifecycle: load or create, rotate, persist, publish.
//!
//! - `self-signed`: a P-256 root kept in `<data_dir>/authority/root.pem` (certificate and key in one
//!   0600 file, so it is replaced in one atomic rename). At half its life a next root is generated and
//!   published in the bundle; at three quarters it starts signing; the old root stays in the bundle
//!   until it expires (TB-3).
//! - `upstream`: a root certificate and key from files; the agent mints its own intermediate (kept in
//!   memory only) and replaces it at half its life. The bundle is the upstream file's certificates.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{KeyPair, PublicKeyData};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tokio::sync::watch;
use zeroize::Zeroizing;

use super::bundle::X509Bundle;
use super::jwt::JwtState;
use super::mint::{self, Signer, cert_facts};
use super::{CaSnapshot, Error};
use crate::ca::AuthorityConfig;
use crate::clock::SharedClock;
use crate::encoding::{pem_block, pem_cert};
use crate::spiffe_id::TrustDomain;

/// The longest the lifecycle sleeps without reading the wall clock again.
const WALL_CLOCK_CHECK: Duration = Duration::from_secs(5);

/// The signing authority of one trust domain.
pub struct Authority {
    td: TrustDomain,
    clock: SharedClock,
    mode: Mode,
    jwt: JwtState,
    tx: watch::Sender<Arc<CaSnapshot>>,
}

enum Mode {
    SelfSigned(SelfSigned),
    Upstream(Upstream),
}

struct SelfSigned {
    dir: PathBuf,
    ttl: Duration,
    active: Arc<Signer>,
    next: Option<Arc<Signer>>,
    retired: Vec<CertificateDer<'static>>,
}

struct Upstream {
    root: Box<Signer>,
    bundle: Arc<X509Bundle>,
    ttl: Duration,
    active: Arc<Signer>,
}

impl Authority {
    /// Loads the authority (creating a self-signed root on first start) and applies any rotation that
    /// is already due. Blocking: reads files and may generate keys.
    pub fn load(
        config: &AuthorityConfig,
        td: &TrustDomain,
        data_dir: &Path,
        jwt_key_ttl: Duration,
        jwt_key_type: super::jwt::JwtKeyType,
        clock: SharedClock,
    ) -> Result<Self, Error> {
        let now = clock.now();
        let dir = data_dir.join("authority");
        crate::atomic_file::ensure_dir(&dir, 0o700).map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let jwt = JwtState::load(&dir, jwt_key_ttl, jwt_key_type, now)?;
        let mode = match config {
            AuthorityConfig::SelfSigned { ca_ttl } => Mode::SelfSigned(SelfSigned::load(
                &data_dir.join("authority"),
                td,
                *ca_ttl,
                now,
            )?),
            AuthorityConfig::Upstream {
                cert_path,
                key_path,
                intermediate_ttl,
            } => Mode::Upstream(Upstream::load(
                cert_path,
                key_path,
                td,
                *intermediate_ttl,
                now,
            )?),
            AuthorityConfig::Spire(_) => {
                return Err(Error::Server(
                    "in mode \"spire\" the SPIRE server is the authority; nothing is signed here"
                        .into(),
                ));
            }
        };
        let snapshot = Arc::new(mode.snapshot(&jwt));
        let (tx, _) = watch::channel(snapshot);
        let mut authority = Self {
            td: td.clone(),
            clock,
            mode,
            jwt,
            tx,
        };
        authority.tick()?;
        Ok(authority)
    }

    /// A receiver of the current snapshot and every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<CaSnapshot>> {
        self.tx.subscribe()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<CaSnapshot> {
        self.tx.borrow().clone()
    }

    /// Applies every transition due now, publishes if anything changed, and returns the time until
    /// the next one.
    pub fn tick(&mut self) -> Result<Duration, Error> {
        let now = self.clock.now();
        let x509_changed = match &mut self.mode {
            Mode::SelfSigned(s) => s.tick(&self.td, now)?,
            Mode::Upstream(u) => u.tick(&self.td, now)?,
        };
        let jwt_changed = self.jwt.tick(now)?;
        if x509_changed || jwt_changed {
            let snapshot = Arc::new(self.mode.snapshot(&self.jwt));
            tracing::info!(
                signer_serial = snapshot.signer.as_ref().map(|s| s.serial()),
                bundle_size = snapshot.bundle.certs().len(),
                "authority updated"
            );
            self.tx.send_replace(snapshot);
        }
        let next = match &self.mode {
            Mode::SelfSigned(s) => s.next_transition(),
            Mode::Upstream(u) => u.next_transition(),
        }
        .min(self.jwt.next_transition());
        // Sleeping is monotonic, transitions are wall-clock: a suspend or a clock step can pass a
        // transition while the sleep still runs, so the clock is looked at again at least every
        // `WALL_CLOCK_CHECK`.
        Ok(next
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
            .clamp(Duration::from_secs(1), WALL_CLOCK_CHECK))
    }

    /// Runs the lifecycle until `shutdown` fires. Transitions wake it through `tokio::time`.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), Error> {
        let mut wait = self.tick()?;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {
                    wait = match self.tick() {
                        Ok(w) => w,
                        Err(e) => {
                            // Keep serving with what we have; try again shortly.
                            tracing::error!(error = %e, "authority rotation failed; retrying in 60s");
                            Duration::from_secs(60)
                        }
                    };
                }
                _ = crate::shutdown::signalled(&mut shutdown) => return Ok(()),
            }
        }
    }
}

impl Mode {
    fn snapshot(&self, jwt: &JwtState) -> CaSnapshot {
        let jwt = Arc::new(jwt.published());
        match self {
            Mode::SelfSigned(s) => {
                let mut certs = vec![s.active.cert().clone()];
                if let Some(next) = &s.next {
                    certs.push(next.cert().clone());
                }
                for c in &s.retired {
                    if !certs.contains(c) {
                        certs.push(c.clone());
                    }
                }
                CaSnapshot {
                    signer: Some(s.active.clone()),
                    remote: None,
                    bundle: Arc::new(X509Bundle::new(certs)),
                    jwt,
                }
            }
            Mode::Upstream(u) => CaSnapshot {
                signer: Some(u.active.clone()),
                remote: None,
                bundle: u.bundle.clone(),
                jwt,
            },
        }
    }
}

/// When a signer of this lifetime should be succeeded: `fraction` of the way through its life.
fn at_fraction(signer: &Signer, fraction: f64) -> SystemTime {
    let life = signer
        .not_after()
        .duration_since(signer.not_before())
        .unwrap_or_default();
    signer.not_before() + life.mul_f64(fraction)
}

impl SelfSigned {
    fn load(dir: &Path, td: &TrustDomain, ttl: Duration, now: SystemTime) -> Result<Self, Error> {
        crate::atomic_file::ensure_dir(dir, 0o700).map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let root_path = dir.join("root.pem");
        let active = match read_signer(&root_path)? {
            Some(signer) => {
                check_trust_domain(&root_path, signer.cert(), td)?;
                tracing::info!(serial = signer.serial(), path = %root_path.display(), "loaded root");
                signer
            }
            None => {
                let (key, cert) = mint::self_signed_root(td, now, ttl)?;
                write_signer(&root_path, &key, &cert)?;
                let signer = Signer::new(key, cert, vec![])?;
                tracing::info!(serial = signer.serial(), path = %root_path.display(), "created root");
                signer
            }
        };
        let next = read_signer(&dir.join("next.pem"))?.filter(|n| n.cert() != active.cert());
        let retired = read_certs(&dir.join("retired.pem"))?;
        Ok(Self {
            dir: dir.to_owned(),
            ttl,
            active: Arc::new(active),
            next: next.map(Arc::new),
            retired,
        })
    }

    fn tick(&mut self, td: &TrustDomain, now: SystemTime) -> Result<bool, Error> {
        let mut changed = false;
        if self.next.is_none() && now >= at_fraction(&self.active, 0.5) {
            let (key, cert) = mint::self_signed_root(td, now, self.ttl)?;
            write_signer(&self.dir.join("next.pem"), &key, &cert)?;
            let next = Signer::new(key, cert, vec![])?;
            tracing::info!(
                serial = next.serial(),
                "prepared next root; published in the bundle before it signs"
            );
            self.next = Some(Arc::new(next));
            changed = true;
        }
        // Activate only a next root that was already published by an earlier tick.
        if !changed
            && let Some(next) = &self.next
            && now >= at_fraction(&self.active, 0.75)
        {
            let next = next.clone();
            let mut retired = self.retired.clone();
            retired.push(self.active.cert().clone());
            write_certs(&self.dir.join("retired.pem"), &retired)?;
            write_signer(&self.dir.join("root.pem"), next.issuer().key(), next.cert())?;
            // A crash before this removal leaves next.pem equal to root.pem, which load() ignores.
            std::fs::remove_file(self.dir.join("next.pem")).map_err(|source| Error::Io {
                path: self.dir.display().to_string(),
                source,
            })?;
            tracing::info!(
                serial = next.serial(),
                old = self.active.serial(),
                "next root now signs"
            );
            self.retired = retired;
            self.active = next;
            self.next = None;
            changed = true;
        }
        let before = self.retired.len();
        self.retired
            .retain(|c| cert_facts(c).map(|(_, na, _)| na > now).unwrap_or(false));
        if self.retired.len() != before {
            write_certs(&self.dir.join("retired.pem"), &self.retired)?;
            changed = true;
        }
        Ok(changed)
    }

    fn next_transition(&self) -> SystemTime {
        let mut t = match &self.next {
            None => at_fraction(&self.active, 0.5),
            Some(_) => at_fraction(&self.active, 0.75),
        };
        for c in &self.retired {
            if let Ok((_, not_after, _)) = cert_facts(c) {
                t = t.min(not_after);
            }
        }
        t
    }
}

impl Upstream {
    fn load(
        cert_path: &Path,
        key_path: &Path,
        td: &TrustDomain,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Self, Error> {
        let bundle = X509Bundle::from_pem_file(cert_path).map_err(|e| Error::BadFile {
            path: cert_path.display().to_string(),
            why: e.to_string(),
        })?;
        // An operator's key file: the agent's own or root's, and nobody else's to read or write.
        crate::atomic_file::check_key_file(key_path, false).map_err(|source| Error::Io {
            path: key_path.display().to_string(),
            source,
        })?;
        let key_pem = Zeroizing::new(std::fs::read(key_path).map_err(|source| Error::Io {
            path: key_path.display().to_string(),
            source,
        })?);
        let key = key_from_pem(key_path, &key_pem)?;
        // The key signs with the first certificate whose public key it matches.
        let root_cert = bundle
            .certs()
            .iter()
            .find(|c| key_matches(&key, c))
            .cloned()
            .ok_or_else(|| Error::BadFile {
                path: key_path.display().to_string(),
                why: format!(
                    "the key matches no certificate in {}; give the root's own key",
                    cert_path.display()
                ),
            })?;
        for cert in bundle.certs() {
            check_trust_domain(cert_path, cert, td)?;
        }
        let root = Box::new(Signer::new(key, root_cert, vec![])?);
        if root.not_after() <= now {
            return Err(Error::BadFile {
                path: cert_path.display().to_string(),
                why: "the upstream root has expired; install a current one".into(),
            });
        }
        let active = Arc::new(mint_intermediate(td, &root, now, ttl)?);
        Ok(Self {
            root,
            bundle: Arc::new(bundle),
            ttl,
            active,
        })
    }

    fn tick(&mut self, td: &TrustDomain, now: SystemTime) -> Result<bool, Error> {
        if now >= at_fraction(&self.active, 0.5) && self.root.not_after() > now {
            self.active = Arc::new(mint_intermediate(td, &self.root, now, self.ttl)?);
            tracing::info!(serial = self.active.serial(), "rotated intermediate");
            return Ok(true);
        }
        Ok(false)
    }

    fn next_transition(&self) -> SystemTime {
        at_fraction(&self.active, 0.5)
    }
}

fn mint_intermediate(
    td: &TrustDomain,
    root: &Signer,
    now: SystemTime,
    ttl: Duration,
) -> Result<Signer, Error> {
    let (key, cert) = mint::intermediate(td, root, now, ttl)?;
    Signer::new(key, cert.clone(), vec![cert])
}

fn key_from_pem(path: &Path, pem: &[u8]) -> Result<KeyPair, Error> {
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem).map_err(|e| Error::BadFile {
        path: path.display().to_string(),
        why: format!(
            "no PKCS#8 \"PRIVATE KEY\" block ({e}); convert with `openssl pkcs8 -topk8 -nocrypt`"
        ),
    })?;
    KeyPair::try_from(&der).map_err(|e| Error::BadFile {
        path: path.display().to_string(),
        why: format!("unusable private key: {e}"),
    })
}

fn key_matches(key: &KeyPair, cert: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(cert)
        .map(|(_, c)| c.public_key().subject_public_key.data.as_ref() == key.der_bytes())
        .unwrap_or(false)
}

/// X5-9: a signing certificate carries the URI SAN `spiffe://<trust-domain>`.
fn check_trust_domain(path: &Path, cert: &[u8], td: &TrustDomain) -> Result<(), Error> {
    let want = td.id_string();
    let ok = x509_parser::parse_x509_certificate(cert)
        .ok()
        .and_then(|(_, c)| {
            c.subject_alternative_name().ok().flatten().map(|san| {
                san.value.general_names.iter().any(
                    |n| matches!(n, x509_parser::extensions::GeneralName::URI(u) if *u == want),
                )
            })
        })
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(Error::BadFile {
            path: path.display().to_string(),
            why: format!(
                "the CA certificate lacks the URI SAN {want} (X5-9); is it for another trust domain?"
            ),
        })
    }
}

/// Reads a combined certificate + key file; `None` if it does not exist.
fn read_signer(path: &Path) -> Result<Option<Signer>, Error> {
    match crate::atomic_file::check_key_file(path, true) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Io {
                path: path.display().to_string(),
                source,
            });
        }
    }
    let data = match std::fs::read(path) {
        Ok(d) => Zeroizing::new(d),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let cert = CertificateDer::pem_slice_iter(&data)
        .next()
        .and_then(std::result::Result::ok)
        .ok_or_else(|| Error::BadFile {
            path: path.display().to_string(),
            why: "no CERTIFICATE block".into(),
        })?;
    let key = key_from_pem(path, &data)?;
    if !key_matches(&key, &cert) {
        return Err(Error::BadFile {
            path: path.display().to_string(),
            why: "the key does not match the certificate; restore the file from a backup or remove it to create a new root (workloads must then trust the new bundle)".into(),
        });
    }
    Ok(Some(Signer::new(key, cert, vec![])?))
}

fn write_signer(path: &Path, key: &KeyPair, cert: &CertificateDer<'_>) -> Result<(), Error> {
    let key_der = Zeroizing::new(key.serialize_der());
    let mut text = Zeroizing::new(pem_cert(cert));
    text.push_str(&pem_block("PRIVATE KEY", &key_der));
    crate::atomic_file::write(path, text.as_bytes(), 0o600).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    match std::fs::read(path) {
        Ok(data) => Ok(CertificateDer::pem_slice_iter(&data)
            .filter_map(std::result::Result::ok)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(source) => Err(Error::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

fn write_certs(path: &Path, certs: &[CertificateDer<'_>]) -> Result<(), Error> {
    let text: String = certs.iter().map(|c| pem_cert(c)).collect();
    crate::atomic_file::write(path, text.as_bytes(), 0o644).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::os::unix::fs::PermissionsExt;

    const JWT_KEY_TTL: Duration = Duration::from_secs(86400);

    fn td() -> TrustDomain {
        TrustDomain::parse("example.org").unwrap()
    }

    #[test]
    fn self_signed_root_is_created_once_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(SystemTime::now());
        let cfg = AuthorityConfig::SelfSigned {
            ca_ttl: Duration::from_secs(86400),
        };
        let a = Authority::load(
            &cfg,
            &td(),
            dir.path(),
            JWT_KEY_TTL,
            Default::default(),
            Arc::new(clock.clone()),
        )
        .unwrap();
        let first = a.snapshot().signer.as_ref().unwrap().serial().to_owned();
        let path = dir.path().join("authority/root.pem");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        drop(a);
        let b = Authority::load(
            &cfg,
            &td(),
            dir.path(),
            JWT_KEY_TTL,
            Default::default(),
            Arc::new(clock),
        )
        .unwrap();
        assert_eq!(b.snapshot().signer.as_ref().unwrap().serial(), first);
    }

    /// TB-3: the next root is in the bundle before it signs; the old one stays until it expires.
    #[test]
    fn tb3_root_rotation_publishes_before_signing() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(SystemTime::now());
        let cfg = AuthorityConfig::SelfSigned {
            ca_ttl: Duration::from_secs(1000),
        };
        let mut a = Authority::load(
            &cfg,
            &td(),
            dir.path(),
            JWT_KEY_TTL,
            Default::default(),
            Arc::new(clock.clone()),
        )
        .unwrap();
        let old = a.snapshot();
        assert_eq!(old.bundle.certs().len(), 1);

        clock.advance(Duration::from_secs(520));
        a.tick().unwrap();
        let prepared = a.snapshot();
        assert_eq!(
            prepared.signer.as_ref().unwrap().serial(),
            old.signer.as_ref().unwrap().serial(),
            "next root must not sign yet"
        );
        assert_eq!(
            prepared.bundle.certs().len(),
            2,
            "next root published beside the old"
        );
        let next_cert = prepared.bundle.certs()[1].clone();
        assert!(dir.path().join("authority/next.pem").exists());

        clock.advance(Duration::from_secs(250));
        a.tick().unwrap();
        let active = a.snapshot();
        assert_eq!(
            active.signer.as_ref().unwrap().cert(),
            &next_cert,
            "next root signs after activation"
        );
        assert!(
            active
                .bundle
                .certs()
                .contains(old.signer.as_ref().unwrap().cert()),
            "old root stays while valid"
        );

        // A restart in this state keeps the same signer and bundle.
        let b = Authority::load(
            &cfg,
            &td(),
            dir.path(),
            JWT_KEY_TTL,
            Default::default(),
            Arc::new(clock.clone()),
        )
        .unwrap();
        assert_eq!(b.snapshot().signer.as_ref().unwrap().cert(), &next_cert);
        assert_eq!(b.snapshot().bundle.certs().len(), 2);

        clock.advance(Duration::from_secs(300));
        a.tick().unwrap();
        assert!(
            !a.snapshot()
                .bundle
                .certs()
                .contains(old.signer.as_ref().unwrap().cert()),
            "expired root removed"
        );
    }

    #[test]
    fn upstream_mints_and_rotates_an_intermediate() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let (key, cert) =
            mint::self_signed_root(&td(), now, Duration::from_secs(86400 * 30)).unwrap();
        let cert_path = dir.path().join("root.crt");
        let key_path = dir.path().join("root.key");
        std::fs::write(&cert_path, pem_cert(&cert)).unwrap();
        std::fs::write(&key_path, pem_block("PRIVATE KEY", &key.serialize_der())).unwrap();
        // An operator's key file must be 0600 (the agent refuses one others can read).
        std::fs::set_permissions(
            &key_path,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
        )
        .unwrap();
        let clock = ManualClock::new(now);
        let cfg = AuthorityConfig::Upstream {
            cert_path: cert_path.clone(),
            key_path: key_path.clone(),
            intermediate_ttl: Duration::from_secs(3600),
        };
        let mut a = Authority::load(
            &cfg,
            &td(),
            dir.path(),
            JWT_KEY_TTL,
            Default::default(),
            Arc::new(clock.clone()),
        )
        .unwrap();
        let s = a.snapshot();
        assert_eq!(s.bundle.certs(), std::slice::from_ref(&cert));
        assert_eq!(
            s.signer.as_ref().unwrap().chain().len(),
            1,
            "SVID chains carry the intermediate"
        );
        let first = s.signer.as_ref().unwrap().serial().to_owned();
        clock.advance(Duration::from_secs(1900));
        a.tick().unwrap();
        assert_ne!(a.snapshot().signer.as_ref().unwrap().serial(), first);
        assert_eq!(a.snapshot().bundle.certs(), std::slice::from_ref(&cert));

        // A key that matches no certificate is refused with the path named.
        let other = mint::generate_key().unwrap();
        std::fs::write(&key_path, pem_block("PRIVATE KEY", &other.serialize_der())).unwrap();
        let err = Authority::load(
            &cfg,
            &td(),
            dir.path(),
            JWT_KEY_TTL,
            Default::default(),
            Arc::new(clock),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("matches no certificate"), "{err}");
    }
}
