//! JWK Sets: a trust domain's JWT bundle, as published and as read from files or federation.

use super::*;

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

    pub(super) fn find(&self, kid: &str) -> Option<&jsonwebtoken::jwk::Jwk> {
        self.set.find(kid)
    }
}
