//! Validation of a JWT-SVID against the bundles of every trust domain the agent knows (SPEC §6).

use super::*;

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
    #[error("the token was withdrawn ({0}): its holder is gone, so it is no longer accepted here")]
    Withdrawn(String),
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

pub(super) fn decode_part<T: serde::de::DeserializeOwned>(
    part: &str,
    what: &str,
) -> Result<T, Invalid> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| Invalid::Malformed(format!("{what} is not base64url: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Invalid::Malformed(format!("{what} is not a JSON object: {e}")))
}

pub(super) fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
