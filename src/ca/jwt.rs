//! JWT-SVID signing keys (ES256, P-256), their rotation (JW-7), JWK Sets (JW-6), and validation of
//! JWT-SVIDs against own and federated keys (SPEC.md §6).
//!
//! Keys live in `<data_dir>/authority/jwt.json` (0600, replaced atomically). A next key is published
//! in the bundle at least [`MAX_JWT_TTL`] before it signs; a retired key stays published until every
//! token it signed has expired.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::Error;
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// The longest JWT-SVID lifetime an entry may ask for; key rotation is timed from it (JW-7).
pub const MAX_JWT_TTL: Duration = Duration::from_secs(3600);
/// Clock skew tolerated when validating `exp` and `nbf`.
pub const VALIDATION_LEEWAY: Duration = Duration::from_secs(30);

/// One ES256 signing key.
pub struct JwtKey {
    kid: String,
    pkcs8: Zeroizing<Vec<u8>>,
    encoding: EncodingKey,
    /// Public JWK (`kty`, `crv`, `x`, `y`, `kid`, `use`).
    jwk: serde_json::Value,
}

/// The JWT side of the authority as published: who signs, and the trust domain's JWK Set.
pub struct JwtKeys {
    pub active: Arc<JwtKey>,
    /// Every published key: the active one, a prepared next one, retired ones still needed.
    pub published: Vec<Arc<JwtKey>>,
    jwks: Jwks,
}

/// Claims of a JWT-SVID as lanyard writes them.
#[derive(Debug, Serialize)]
struct Claims<'a> {
    sub: &'a str,
    /// A single audience is written as a string (as the SPIFFE reference does), several as a list.
    aud: serde_json::Value,
    exp: u64,
    iat: u64,
    jti: &'a str,
}

/// A signed JWT-SVID.
pub struct SignedJwt {
    pub token: String,
    pub jti: String,
    pub kid: String,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
}

impl fmt::Debug for SignedJwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedJwt")
            .field("jti", &self.jti)
            .field("kid", &self.kid)
            .field("expires_at", &self.expires_at)
            .field("token", &"[redacted]")
            .finish()
    }
}

impl JwtKey {
    /// A fresh P-256 key.
    pub fn generate() -> Result<Self, Error> {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| Error::BadCertificate("JWT key generation failed".into()))?;
        Self::from_pkcs8(doc.as_ref().to_vec())
    }

    fn from_pkcs8(pkcs8: Vec<u8>) -> Result<Self, Error> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8)
            .map_err(|_| Error::BadCertificate("unusable JWT key".into()))?;
        let point = pair.public_key().as_ref();
        // Uncompressed point: 0x04 || X (32) || Y (32).
        if point.len() != 65 || point[0] != 4 {
            return Err(Error::BadCertificate(
                "unexpected P-256 public key form".into(),
            ));
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, point);
        let kid = URL_SAFE_NO_PAD.encode(&digest.as_ref()[..18]);
        let jwk = serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            "kid": kid,
            "use": "jwt-svid",
        });
        Ok(Self {
            kid,
            encoding: EncodingKey::from_ec_der(&pkcs8),
            pkcs8: Zeroizing::new(pkcs8),
            jwk,
        })
    }

    /// The key ID (JW-3).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs a JWT-SVID for `sub` and `audiences`, valid from `now` for `ttl` (JW-1..5).
    pub fn sign(
        &self,
        sub: &SpiffeId,
        audiences: &[String],
        now: SystemTime,
        ttl: Duration,
    ) -> Result<SignedJwt, Error> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        let iat = unix_seconds(now);
        let exp = iat + ttl.as_secs().max(1);
        let mut jti_bytes = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti_bytes)
            .map_err(|_| Error::BadCertificate("random source failed".into()))?;
        let jti = crate::encoding::hex(&jti_bytes);
        let aud = match audiences {
            [one] => serde_json::Value::String(one.clone()),
            many => serde_json::Value::from(many.to_vec()),
        };
        let claims = Claims {
            sub: sub.as_str(),
            aud,
            exp,
            iat,
            jti: &jti,
        };
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| Error::BadCertificate(format!("JWT signing failed: {e}")))?;
        Ok(SignedJwt {
            token,
            jti,
            kid: self.kid.clone(),
            issued_at: SystemTime::UNIX_EPOCH + Duration::from_secs(iat),
            expires_at: SystemTime::UNIX_EPOCH + Duration::from_secs(exp),
        })
    }
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl JwtKeys {
    fn new(active: Arc<JwtKey>, published: Vec<Arc<JwtKey>>) -> Self {
        let keys: Vec<&serde_json::Value> = published.iter().map(|k| &k.jwk).collect();
        let json = serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap_or_default();
        // Our own keys always parse; an empty set would only make validation refuse.
        let jwks = Jwks::parse(&json, "own JWT bundle").unwrap_or_default();
        Self {
            active,
            published,
            jwks,
        }
    }

    /// The trust domain's JWT bundle: an RFC 7517 JWK Set (JW-6), as JSON bytes.
    pub fn jwks_json(&self) -> &[u8] {
        self.jwks.json()
    }

    /// The published keys as a parsed JWK Set, for validation (a cheap clone).
    pub fn jwks(&self) -> Jwks {
        self.jwks.clone()
    }
}

impl fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKeys")
            .field("active", &self.active.kid)
            .field(
                "published",
                &self
                    .published
                    .iter()
                    .map(|k| k.kid.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A trust domain's JWT bundle (JWK Set), checked per JW-6. Clones share the parsed set.
#[derive(Clone, Default)]
pub struct Jwks {
    json: Arc<[u8]>,
    set: Arc<jsonwebtoken::jwk::JwkSet>,
}

impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<&str> = self
            .set
            .keys
            .iter()
            .filter_map(|k| k.common.key_id.as_deref())
            .collect();
        f.debug_struct("Jwks").field("kids", &kids).finish()
    }
}

impl PartialEq for Jwks {
    fn eq(&self, other: &Self) -> bool {
        self.json == other.json
    }
}

impl Jwks {
    /// Parses a JWK Set or a SPIFFE bundle document, keeping the JWT-SVID keys: those with
    /// `use: jwt-svid` or no `use`, and no X.509 material (JW-6). Every key needs `kty` and a unique
    /// `kid`.
    pub fn parse(json: &[u8], origin: &str) -> Result<Self, String> {
        let doc: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| format!("{origin}: not JSON: {e}"))?;
        let keys = doc
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or_else(|| format!("{origin}: no \"keys\" array (JW-6)"))?;
        let mut kept = Vec::new();
        let mut kids = HashSet::new();
        for (i, key) in keys.iter().enumerate() {
            let usage = key.get("use").and_then(|u| u.as_str());
            if usage == Some("x509-svid") || key.get("x5c").is_some() {
                continue;
            }
            if usage.is_some_and(|u| u != "jwt-svid") {
                return Err(format!(
                    "{origin}: key {i} has use {usage:?}; JWT-SVID keys use \"jwt-svid\" or none (JW-6)"
                ));
            }
            if key.get("kty").and_then(|k| k.as_str()).is_none() {
                return Err(format!("{origin}: key {i} has no \"kty\" (JW-6)"));
            }
            let kid = key
                .get("kid")
                .and_then(|k| k.as_str())
                .ok_or_else(|| format!("{origin}: key {i} has no \"kid\" (JW-6)"))?;
            if !kids.insert(kid.to_owned()) {
                return Err(format!("{origin}: kid {kid:?} appears twice (JW-6)"));
            }
            kept.push(key.clone());
        }
        let json = serde_json::to_vec(&serde_json::json!({ "keys": kept }))
            .map_err(|e| format!("{origin}: {e}"))?;
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_slice(&json).map_err(|e| format!("{origin}: unusable key: {e}"))?;
        Ok(Self {
            json: json.into(),
            set: Arc::new(set),
        })
    }

    /// Reads a JWK Set file.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let data = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        Self::parse(&data, &path.display().to_string())
    }

    /// The JWK Set as JSON bytes.
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    fn find(&self, kid: &str) -> Option<&jsonwebtoken::jwk::Jwk> {
        self.set.find(kid)
    }
}

/// Why a JWT-SVID was rejected (each answers InvalidArgument, with this reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("algorithm {0:?} is not allowed for JWT-SVIDs")]
    Algorithm(String),
    #[error("unsupported critical header {0:?}")]
    Crit(String),
    #[error("typ {0:?} is not JWT or JOSE")]
    Typ(String),
    #[error("the header has no kid")]
    NoKid,
    #[error("sub {0:?} is not a SPIFFE ID")]
    Subject(String),
    #[error("no JWT bundle for trust domain {0:?}")]
    NoBundle(String),
    #[error("kid {kid:?} is not in the JWT bundle of {trust_domain}")]
    UnknownKid { kid: String, trust_domain: String },
    #[error("the token does not verify: {0}")]
    Verification(String),
}

/// Validates a JWT-SVID against the bundle of its subject's trust domain and returns the subject and
/// all payload claims (`aud` always as a list).
pub fn validate(
    token: &str,
    audience: &str,
    bundles: &BTreeMap<TrustDomain, Jwks>,
    now: SystemTime,
) -> Result<(SpiffeId, serde_json::Map<String, serde_json::Value>), Invalid> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(Invalid::Malformed(format!(
            "{} parts, a JWS has 3",
            parts.len()
        )));
    }
    let header: serde_json::Map<String, serde_json::Value> = decode_part(parts[0], "header")?;
    let payload: serde_json::Map<String, serde_json::Value> = decode_part(parts[1], "payload")?;
    let alg = header.get("alg").and_then(|a| a.as_str()).unwrap_or("");
    let algorithm = match alg {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        // none, HS*, EdDSA, ES512 (unsupported by the JOSE crate) and anything else.
        other => return Err(Invalid::Algorithm(other.into())),
    };
    if let Some(crit) = header.get("crit") {
        return Err(Invalid::Crit(crit.to_string()));
    }
    if let Some(typ) = header.get("typ") {
        match typ.as_str() {
            Some("JWT") | Some("JOSE") => {}
            _ => {
                return Err(Invalid::Typ(
                    typ.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| typ.to_string()),
                ));
            }
        }
    }
    let kid = header
        .get("kid")
        .and_then(|k| k.as_str())
        .ok_or(Invalid::NoKid)?;
    let sub_text = payload.get("sub").and_then(|s| s.as_str()).unwrap_or("");
    let sub = SpiffeId::parse(sub_text).map_err(|_| Invalid::Subject(sub_text.into()))?;
    let td = sub.trust_domain();
    let jwks = bundles
        .get(&td)
        .ok_or_else(|| Invalid::NoBundle(td.to_string()))?;
    // The key must come from the subject's own trust domain: a key of another trust domain never
    // vouches for this subject.
    let jwk = jwks.find(kid).ok_or_else(|| Invalid::UnknownKid {
        kid: kid.into(),
        trust_domain: td.to_string(),
    })?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk)
        .map_err(|e| Invalid::Verification(format!("unusable key {kid:?}: {e}")))?;
    let mut validation = jsonwebtoken::Validation::new(algorithm);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "sub", "aud"]);
    // Time is checked here against the injected clock, not by the JOSE crate against the system
    // clock, so validity follows the same time as issuance.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    let now_s = unix_seconds(now);
    let leeway = VALIDATION_LEEWAY.as_secs();
    match payload.get("exp").and_then(serde_json::Value::as_u64) {
        Some(exp) if exp + leeway < now_s => return Err(Invalid::Verification("expired".into())),
        Some(_) => {}
        None => return Err(Invalid::Verification("no numeric exp claim".into())),
    }
    if let Some(nbf) = payload.get("nbf").and_then(serde_json::Value::as_u64)
        && nbf > now_s + leeway
    {
        return Err(Invalid::Verification("not valid yet (nbf)".into()));
    }
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
        .map_err(|e| Invalid::Verification(e.to_string()))?;
    let mut claims = payload;
    if let Some(aud) = claims.get_mut("aud")
        && aud.is_string()
    {
        *aud = serde_json::Value::Array(vec![aud.take()]);
    }
    Ok((sub, claims))
}

fn decode_part<T: serde::de::DeserializeOwned>(part: &str, what: &str) -> Result<T, Invalid> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| Invalid::Malformed(format!("{what} is not base64url: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Invalid::Malformed(format!("{what} is not a JSON object: {e}")))
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The lifecycle of the signing keys, persisted in one file.
pub(super) struct JwtState {
    path: PathBuf,
    key_ttl: Duration,
    active: Arc<JwtKey>,
    activated_at: SystemTime,
    next: Option<Arc<JwtKey>>,
    retired: Vec<(Arc<JwtKey>, SystemTime)>,
}

#[derive(Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    pkcs8: String,
    role: String,
    /// Seconds since the epoch: activation (active) or end of publication (retired).
    at: u64,
}

impl JwtState {
    /// Loads the keys from `dir/jwt.json`, creating the first key if there is none.
    pub(super) fn load(dir: &Path, key_ttl: Duration, now: SystemTime) -> Result<Self, Error> {
        let path = dir.join("jwt.json");
        let io = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        match crate::atomic_file::check_key_file(&path, true) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let stored: Vec<StoredKey> = match std::fs::read(&path) {
            Ok(data) => {
                let data = Zeroizing::new(data);
                serde_json::from_slice(&data).map_err(|e| Error::BadFile {
                    path: path.display().to_string(),
                    why: format!("not a lanyard JWT key file: {e}"),
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
            Err(e) => return Err(io(e)),
        };
        let mut active = None;
        let mut next = None;
        let mut retired = Vec::new();
        for k in stored {
            let der = Zeroizing::new(STANDARD.decode(&k.pkcs8).map_err(|e| Error::BadFile {
                path: path.display().to_string(),
                why: format!("key {}: {e}", k.kid),
            })?);
            let key = Arc::new(JwtKey::from_pkcs8(der.to_vec())?);
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(k.at);
            match k.role.as_str() {
                "active" => active = Some((key, at)),
                "next" => next = Some(key),
                _ => retired.push((key, at)),
            }
        }
        let created = active.is_none();
        let (active, activated_at) = match active {
            Some(a) => a,
            None => (Arc::new(JwtKey::generate()?), now),
        };
        let state = Self {
            path,
            key_ttl,
            active,
            activated_at,
            next,
            retired,
        };
        if created {
            state.persist()?;
            tracing::info!(kid = state.active.kid(), "created JWT signing key");
        }
        Ok(state)
    }

    /// Applies due transitions; true if the published set changed.
    pub(super) fn tick(&mut self, now: SystemTime) -> Result<bool, Error> {
        let mut changed = false;
        let rotate_at = self.activated_at + self.key_ttl;
        // JW-7: publish the next key at least one maximum JWT lifetime before it signs.
        let publish_at = rotate_at - 2 * MAX_JWT_TTL;
        if self.next.is_none() && now >= publish_at {
            let next = Arc::new(JwtKey::generate()?);
            tracing::info!(
                kid = next.kid(),
                "prepared next JWT key; published before it signs"
            );
            self.next = Some(next);
            self.persist()?;
            changed = true;
        } else if let Some(next) = self.next.clone()
            && now >= rotate_at
        {
            // JW-7: the old key stays published until every token it signed has expired.
            let until = now + MAX_JWT_TTL + VALIDATION_LEEWAY;
            self.retired.push((self.active.clone(), until));
            tracing::info!(
                kid = next.kid(),
                old = self.active.kid(),
                "next JWT key now signs"
            );
            self.active = next;
            self.activated_at = now;
            self.next = None;
            self.persist()?;
            changed = true;
        }
        let before = self.retired.len();
        self.retired.retain(|(_, until)| *until > now);
        if self.retired.len() != before {
            self.persist()?;
            changed = true;
        }
        Ok(changed)
    }

    pub(super) fn next_transition(&self) -> SystemTime {
        let rotate_at = self.activated_at + self.key_ttl;
        let mut t = match self.next {
            None => rotate_at - 2 * MAX_JWT_TTL,
            Some(_) => rotate_at,
        };
        for (_, until) in &self.retired {
            t = t.min(*until);
        }
        t
    }

    pub(super) fn published(&self) -> JwtKeys {
        let mut keys = vec![self.active.clone()];
        keys.extend(self.next.iter().cloned());
        keys.extend(self.retired.iter().map(|(k, _)| k.clone()));
        JwtKeys::new(self.active.clone(), keys)
    }

    fn persist(&self) -> Result<(), Error> {
        let entry = |k: &JwtKey, role: &str, at: SystemTime| StoredKey {
            kid: k.kid.clone(),
            pkcs8: STANDARD.encode(&*k.pkcs8),
            role: role.into(),
            at: unix_seconds(at),
        };
        let mut stored = vec![entry(&self.active, "active", self.activated_at)];
        if let Some(n) = &self.next {
            stored.push(entry(n, "next", self.activated_at));
        }
        for (k, until) in &self.retired {
            stored.push(entry(k, "retired", *until));
        }
        let json = Zeroizing::new(serde_json::to_vec_pretty(&stored).unwrap_or_default());
        crate::atomic_file::write(&self.path, &json, 0o600).map_err(|source| Error::Io {
            path: self.path.display().to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td(s: &str) -> TrustDomain {
        TrustDomain::parse(s).unwrap()
    }

    #[test]
    fn signs_es256_with_kid_and_typ_and_validates() {
        let key = JwtKey::generate().unwrap();
        let sub = SpiffeId::parse("spiffe://example.org/a").unwrap();
        let now = SystemTime::now();
        let jwt = key
            .sign(&sub, &["db".into()], now, Duration::from_secs(300))
            .unwrap();
        let header: serde_json::Value =
            decode_part(jwt.token.split('.').next().unwrap(), "h").unwrap();
        assert_eq!(
            header,
            serde_json::json!({"alg": "ES256", "kid": key.kid(), "typ": "JWT"}),
            "JW-1"
        );
        let key = Arc::new(key);
        let keys = JwtKeys::new(key.clone(), vec![key.clone()]);
        let own = Jwks::parse(keys.jwks_json(), "test").unwrap();
        assert!(
            own.find(key.kid()).is_some(),
            "JW-3: the kid is in the bundle"
        );
        let bundles = BTreeMap::from([(td("example.org"), own)]);
        let (id, claims) = validate(&jwt.token, "db", &bundles, now).unwrap();
        assert_eq!(id, sub);
        assert_eq!(
            claims["aud"],
            serde_json::json!(["db"]),
            "aud always a list"
        );
        assert!(validate(&jwt.token, "other", &bundles, now).is_err());
    }

    #[test]
    fn jw7_next_key_published_before_it_signs_old_kept_until_tokens_expire() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = SystemTime::now();
        let ttl = Duration::from_secs(24 * 3600);
        let mut s = JwtState::load(dir.path(), ttl, t0).unwrap();
        let first = s.active.kid().to_owned();
        assert_eq!(s.published().published.len(), 1);
        // Two max TTLs before rotation: the next key appears, not yet signing.
        assert!(s.tick(t0 + ttl - 2 * MAX_JWT_TTL).unwrap());
        let p = s.published();
        assert_eq!(p.active.kid(), first);
        assert_eq!(p.published.len(), 2);
        let next = p.published[1].kid().to_owned();
        // Restart keeps the same keys.
        let reloaded = JwtState::load(dir.path(), ttl, t0).unwrap();
        assert_eq!(reloaded.published().published.len(), 2);
        // At rotation the next key signs; the old one is still published.
        assert!(s.tick(t0 + ttl).unwrap());
        let p = s.published();
        assert_eq!(p.active.kid(), next);
        assert!(p.published.iter().any(|k| k.kid() == first));
        // After every token of the old key has expired, it goes.
        assert!(
            s.tick(t0 + ttl + MAX_JWT_TTL + VALIDATION_LEEWAY + Duration::from_secs(1))
                .unwrap()
        );
        assert!(!s.published().published.iter().any(|k| k.kid() == first));
    }

    #[test]
    fn jwks_parsing_follows_jw6() {
        let ok =
            br#"{"keys":[{"kty":"EC","crv":"P-256","x":"a","y":"b","kid":"k1","use":"jwt-svid"},
            {"kty":"EC","kid":"x","use":"x509-svid","x5c":["AA=="]}],"spiffe_sequence":1}"#;
        let j = Jwks::parse(ok, "t");
        // The EC point is bogus, so the crate may refuse it; the structure checks are what is tested.
        if let Ok(j) = j {
            assert!(j.find("k1").is_some() && j.find("x").is_none());
        }
        assert!(
            Jwks::parse(br#"{"nokeys":[]}"#, "t")
                .unwrap_err()
                .contains("keys")
        );
        assert!(
            Jwks::parse(br#"{"keys":[{"kid":"a"}]}"#, "t")
                .unwrap_err()
                .contains("kty")
        );
        assert!(
            Jwks::parse(br#"{"keys":[{"kty":"EC"}]}"#, "t")
                .unwrap_err()
                .contains("kid")
        );
        let dup = br#"{"keys":[{"kty":"EC","kid":"a"},{"kty":"EC","kid":"a"}]}"#;
        assert!(Jwks::parse(dup, "t").unwrap_err().contains("twice"));
    }
}
