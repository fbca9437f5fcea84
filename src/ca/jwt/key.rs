//! One ES256 signing key, the set the authority publishes, and signing a JWT-SVID.

use super::*;

/// One ES256 signing key.
pub struct JwtKey {
    pub(super) kid: String,
    pub(super) pkcs8: Zeroizing<Vec<u8>>,
    encoding: EncodingKey,
    /// Public JWK (`kty`, `crv`, `x`, `y`, `kid`, `use`).
    jwk: serde_json::Value,
}

/// The JWT side of the authority as published: who signs, and the trust domain's JWK Set.
pub struct JwtKeys {
    /// The key that signs here (`None` when a SPIRE server signs and only its public keys are known).
    pub active: Option<Arc<JwtKey>>,
    /// Every published key: the active one, a prepared next one, retired ones still needed.
    pub published: Vec<Arc<JwtKey>>,
    jwks: Jwks,
}

/// Claims of a JWT-SVID as lanyard writes them.
#[derive(Debug, Serialize)]
pub(super) struct Claims<'a> {
    sub: &'a str,
    /// A single audience is written as a string (as the SPIFFE reference does), several as a list.
    aud: serde_json::Value,
    exp: u64,
    iat: u64,
    jti: &'a str,
    /// Set when OIDC discovery is served: relying parties match it against the discovery document.
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
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

    pub(super) fn from_pkcs8(pkcs8: Vec<u8>) -> Result<Self, Error> {
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

    /// Signs a JWT-SVID for `sub` and `audiences`, valid from `now` for `ttl` (JW-1..5), with `iss`
    /// when an issuer is given.
    pub fn sign(
        &self,
        sub: &SpiffeId,
        audiences: &[String],
        now: SystemTime,
        ttl: Duration,
        issuer: Option<&str>,
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
            iss: issuer,
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
    /// The trust domain's JWT bundle as a SPIRE server publishes it: public keys only, nothing signs
    /// here.
    pub fn public_only(jwks: Jwks) -> Self {
        Self {
            active: None,
            published: Vec::new(),
            jwks,
        }
    }

    pub(super) fn new(active: Arc<JwtKey>, published: Vec<Arc<JwtKey>>) -> Self {
        let keys: Vec<&serde_json::Value> = published.iter().map(|k| &k.jwk).collect();
        let json = serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap_or_default();
        // Our own keys always parse; an empty set would only make validation refuse.
        let jwks = Jwks::parse(&json, "own JWT bundle").unwrap_or_default();
        Self {
            active: Some(active),
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
            .field("active", &self.active.as_ref().map(|k| k.kid.as_str()))
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
