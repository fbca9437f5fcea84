//! One signing key (ES256 on P-256, or RS256 on RSA-2048), the set the authority publishes, and
//! signing a JWT-SVID.

use super::*;

/// The kind of JWT signing key (`[authority] jwt_key_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JwtKeyType {
    /// ES256 (the default).
    #[default]
    EcP256,
    /// RS256 with a 2048-bit key (for relying parties that accept only RSA, such as Azure).
    Rsa2048,
}

/// How a key signs.
enum Signing {
    Ec(EncodingKey),
    Rsa(aws_lc_rs::rsa::KeyPair),
}

/// One signing key.
pub struct JwtKey {
    pub(super) kid: String,
    pub(super) pkcs8: Zeroizing<Vec<u8>>,
    signing: Signing,
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
    /// A fresh key of `kind`.
    pub fn generate_as(kind: JwtKeyType) -> Result<Self, Error> {
        match kind {
            JwtKeyType::EcP256 => Self::generate(),
            JwtKeyType::Rsa2048 => {
                use aws_lc_rs::encoding::AsDer as _;
                let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                    .map_err(|_| Error::BadCertificate("RSA key generation failed".into()))?;
                let der = pair
                    .as_der()
                    .map_err(|_| Error::BadCertificate("RSA key encoding failed".into()))?;
                Self::from_pkcs8(der.as_ref().to_vec())
            }
        }
    }

    /// A fresh P-256 key.
    pub fn generate() -> Result<Self, Error> {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| Error::BadCertificate("JWT key generation failed".into()))?;
        Self::from_pkcs8(doc.as_ref().to_vec())
    }

    pub(super) fn from_pkcs8(pkcs8: Vec<u8>) -> Result<Self, Error> {
        let Ok(pair) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8) else {
            return Self::rsa_from_pkcs8(pkcs8);
        };
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
            signing: Signing::Ec(EncodingKey::from_ec_der(&pkcs8)),
            pkcs8: Zeroizing::new(pkcs8),
            jwk,
        })
    }

    /// An RSA key (PKCS#8): its JWK carries `n` and `e`; the kid is a digest of its public key.
    fn rsa_from_pkcs8(pkcs8: Vec<u8>) -> Result<Self, Error> {
        use aws_lc_rs::encoding::AsDer as _;
        use aws_lc_rs::signature::KeyPair as _;
        let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(&pkcs8).map_err(|_| {
            Error::BadCertificate("unusable JWT key (neither P-256 nor RSA)".into())
        })?;
        if pair.public_modulus_len() < 256 {
            return Err(Error::BadCertificate(
                "RSA JWT keys must have at least 2048 bits".into(),
            ));
        }
        let spki = pair
            .public_key()
            .as_der()
            .map_err(|_| Error::BadCertificate("RSA public key encoding failed".into()))?;
        let (n, e) = rsa_components(spki.as_ref())?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki.as_ref());
        let kid = URL_SAFE_NO_PAD.encode(&digest.as_ref()[..18]);
        let jwk = serde_json::json!({
            "kty": "RSA",
            "n": URL_SAFE_NO_PAD.encode(&n),
            "e": URL_SAFE_NO_PAD.encode(&e),
            "kid": kid,
            "use": "jwt-svid",
        });
        Ok(Self {
            kid,
            signing: Signing::Rsa(pair),
            pkcs8: Zeroizing::new(pkcs8),
            jwk,
        })
    }

    /// The JWS algorithm this key signs with.
    pub fn algorithm(&self) -> &'static str {
        match self.signing {
            Signing::Ec(_) => "ES256",
            Signing::Rsa(_) => "RS256",
        }
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
        let token = match &self.signing {
            Signing::Ec(encoding) => jsonwebtoken::encode(&header, &claims, encoding)
                .map_err(|e| Error::BadCertificate(format!("JWT signing failed: {e}")))?,
            Signing::Rsa(pair) => {
                let header = serde_json::json!({"alg": "RS256", "kid": self.kid, "typ": "JWT"});
                let body = serde_json::to_vec(&claims)
                    .map_err(|e| Error::BadCertificate(format!("JWT claims: {e}")))?;
                let signing_input = format!(
                    "{}.{}",
                    URL_SAFE_NO_PAD.encode(header.to_string()),
                    URL_SAFE_NO_PAD.encode(body)
                );
                let mut sig = vec![0u8; pair.public_modulus_len()];
                pair.sign(
                    &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    signing_input.as_bytes(),
                    &mut sig,
                )
                .map_err(|_| Error::BadCertificate("RSA signing failed".into()))?;
                format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
            }
        };
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

/// The modulus and exponent of an RSA public key (DER SubjectPublicKeyInfo), big-endian without
/// leading zeros.
fn rsa_components(spki: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
    use x509_parser::prelude::FromDer as _;
    use x509_parser::public_key::PublicKey;
    let bad = || Error::BadCertificate("unreadable RSA public key".into());
    let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki).map_err(|_| bad())?;
    match info.parsed().map_err(|_| bad())? {
        PublicKey::RSA(rsa) => {
            let trim = |b: &[u8]| {
                let start = b.iter().position(|x| *x != 0).unwrap_or(b.len());
                b[start..].to_vec()
            };
            Ok((trim(rsa.modulus), trim(rsa.exponent)))
        }
        _ => Err(bad()),
    }
}
