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

mod jwks;
mod key;
mod state;
mod validate;

pub use jwks::Jwks;
pub use key::{JwtKey, JwtKeyType, JwtKeys, SignedJwt};
pub(crate) use state::JwtState;
use validate::unix_seconds;
pub use validate::{Invalid, validate};

#[cfg(test)]
mod tests {
    use super::validate::decode_part;
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
            .sign(&sub, &["db".into()], now, Duration::from_secs(300), None)
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
        let mut s = JwtState::load(dir.path(), ttl, JwtKeyType::EcP256, t0).unwrap();
        let first = s.active.kid().to_owned();
        assert_eq!(s.published().published.len(), 1);
        // Two max TTLs before rotation: the next key appears, not yet signing.
        assert!(s.tick(t0 + ttl - 2 * MAX_JWT_TTL).unwrap());
        let p = s.published();
        assert_eq!(p.active.as_ref().unwrap().kid(), first);
        assert_eq!(p.published.len(), 2);
        let next = p.published[1].kid().to_owned();
        // Restart keeps the same keys.
        let reloaded = JwtState::load(dir.path(), ttl, JwtKeyType::EcP256, t0).unwrap();
        assert_eq!(reloaded.published().published.len(), 2);
        // At rotation the next key signs; the old one is still published.
        assert!(s.tick(t0 + ttl).unwrap());
        let p = s.published();
        assert_eq!(p.active.as_ref().unwrap().kid(), next);
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
