//! The JWT RPCs: FetchJWTSVID, FetchJWTBundles (rendering), ValidateJWTSVID (SPEC.md §6).

use std::collections::BTreeMap;

use super::stream::{Attested, View};
use super::{Context, Error};
use crate::ca::jwt::Jwks;
use crate::inventory::{Delivery, Kind};
use crate::issuer::jwt::JwtRequest;
use crate::limits::{MAX_AUDIENCE_BYTES, MAX_AUDIENCES};
use crate::proto::{JwtBundlesResponse, Jwtsvid, JwtsvidRequest};
use crate::registry::{self, Identity};
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// The checked request of FetchJWTSVID.
pub(super) struct JwtAsk {
    audiences: Vec<String>,
    spiffe_id: Option<SpiffeId>,
}

/// EP-6 and the `spiffe_id` field: checked before anything else about the caller.
pub(super) fn check_request(req: &JwtsvidRequest) -> Result<JwtAsk, Error> {
    if req.audience.is_empty() || req.audience.iter().any(std::string::String::is_empty) {
        return Err(Error::InvalidArgument(
            "audience is required: name at least one non-empty audience (EP-6)".into(),
        ));
    }
    check_audiences(&req.audience)?;
    let spiffe_id = if req.spiffe_id.is_empty() {
        None
    } else {
        Some(SpiffeId::parse(&req.spiffe_id).map_err(|e| {
            Error::InvalidArgument(format!("invalid spiffe_id {:?}: {e}", req.spiffe_id))
        })?)
    };
    let mut audiences = req.audience.clone();
    audiences.sort();
    audiences.dedup();
    Ok(JwtAsk {
        audiences,
        spiffe_id,
    })
}

/// Bounded audiences: at most [`MAX_AUDIENCES`], each at most [`MAX_AUDIENCE_BYTES`] bytes.
pub(super) fn check_audiences(audiences: &[String]) -> Result<(), Error> {
    if audiences.len() > MAX_AUDIENCES {
        return Err(Error::InvalidArgument(format!(
            "{} audiences; at most {MAX_AUDIENCES} may be asked for at once",
            audiences.len()
        )));
    }
    if let Some(a) = audiences.iter().find(|a| a.len() > MAX_AUDIENCE_BYTES) {
        return Err(Error::InvalidArgument(format!(
            "an audience of {} bytes (starting {:?}); audiences are at most {MAX_AUDIENCE_BYTES} bytes",
            a.len(),
            a.chars().take(32).collect::<String>()
        )));
    }
    Ok(())
}

/// One JWT-SVID per entitled identity (default first), or the one asked for.
pub(super) async fn fetch(
    ctx: &Context,
    attested: &Attested,
    ask: JwtAsk,
    handed_on: bool,
) -> Result<Vec<Jwtsvid>, Error> {
    let (pid, selectors) = (attested.pinned.pid(), &attested.selectors);
    let policy = ctx.policy.borrow().clone();
    let identities = registry::match_identities(selectors, &policy);
    if identities.is_empty() {
        return Err(Error::NoIdentity {
            pid,
            selectors: selectors.clone(),
        });
    }
    let chosen: Vec<&Identity> = match &ask.spiffe_id {
        Some(id) => {
            let one: Vec<&Identity> = identities.iter().filter(|i| &i.spiffe_id == id).collect();
            if one.is_empty() {
                return Err(Error::NotEntitled(id.to_string()));
            }
            one
        }
        None => identities.iter().collect(),
    };
    // Audience policy: an entry with jwt_audiences only signs for those audiences.
    let mut allowed = Vec::with_capacity(chosen.len());
    let mut first_refusal = None;
    for identity in chosen {
        match registry::forbidden_audience(identity, &ask.audiences) {
            None => match super::gate::permits_audiences(
                ctx,
                selectors,
                identity,
                &ask.audiences,
                super::gate::Act::Jwt,
            ) {
                Ok(by) => allowed.push((identity, by)),
                Err(why) => {
                    first_refusal.get_or_insert(Error::PolicyDenied(why));
                }
            },
            Some(aud) => {
                first_refusal.get_or_insert_with(|| Error::AudienceForbidden {
                    audience: aud.to_owned(),
                    spiffe_id: identity.spiffe_id.as_str().to_owned(),
                });
            }
        }
    }
    if allowed.is_empty() {
        return Err(first_refusal.unwrap_or(Error::EntitlementLost));
    }
    let mut out = Vec::with_capacity(allowed.len());
    let mut deliveries = Vec::with_capacity(allowed.len());
    for (identity, permitted_by) in allowed {
        let req = JwtRequest {
            spiffe_id: identity.spiffe_id.clone(),
            audiences: ask.audiences.clone(),
            ttl: identity.jwt_ttl,
        };
        let mut jwt = match ctx.jwt.cached(&req) {
            Some(jwt) => jwt,
            None => {
                // A token that must be signed is a new credential: it counts against the caller's
                // rate (one already being signed for someone else does not).
                if !ctx.jwt.is_fresh(&req) {
                    ctx.shares.new_credential(attested.share_uid())?;
                }
                ctx.jwt.get(req.clone()).await?
            }
        };
        // A cached token whose last holder exited (revoked) is not handed to anyone again.
        if ctx.inventory.revoked_jwt(&jwt.jti).is_some() {
            ctx.jwt.forget(&req, &jwt.jti);
            jwt = ctx.jwt.get(req).await?;
        }
        if handed_on {
            ctx.inventory.handed_on_jwt(&jwt.jti, jwt.expires_at);
        }
        deliveries.push(Delivery {
            kind: Kind::Jwt,
            serial: jwt.jti.clone(),
            spiffe_id: identity.spiffe_id.as_str().to_owned(),
            entry_id: identity.entry_id.as_str().to_owned(),
            issued_at: jwt.issued_at,
            not_after: jwt.expires_at,
            rotation: false,
            permitted_by,
        });
        crate::metrics::metrics().delivered(identity.spiffe_id.as_str());
        out.push(Jwtsvid {
            spiffe_id: identity.spiffe_id.as_str().to_owned(),
            svid: jwt.token.clone(),
            hint: identity.hint.clone(),
        });
    }
    // Recorded, durably, before any token leaves.
    ctx.inventory
        .record(&attested.holder, &deliveries)
        .await
        .map_err(Error::Inventory)?;
    ctx.lifecycle.watch(&attested.holder);
    Ok(out)
}

/// FetchJWTBundles messages: the own JWT bundle and the federated ones the caller may see (JW-6).
pub(super) fn render_bundles(view: &View<'_>) -> JwtBundlesResponse {
    let mut bundles: std::collections::HashMap<String, Vec<u8>> =
        registry::federated_jwks(view.identities, view.policy)
            .into_iter()
            .map(|(td, j)| (td, j.json().to_vec()))
            .collect();
    bundles.insert(
        view.trust_domain.id_string(),
        view.ca.jwt.jwks_json().to_vec(),
    );
    JwtBundlesResponse { bundles }
}

/// The JWT bundles a validating caller may use: its own trust domain's and those its entries
/// federate with.
pub(super) fn validation_bundles(
    ctx: &Context,
    identities: &[Identity],
) -> BTreeMap<TrustDomain, Jwks> {
    let policy = ctx.policy.borrow().clone();
    let mut out = BTreeMap::new();
    for (td_id, jwks) in registry::federated_jwks(identities, &policy) {
        if let Ok(td) = TrustDomain::parse(&td_id) {
            out.insert(td, jwks.clone());
        }
    }
    out.insert(ctx.trust_domain.clone(), ctx.ca.borrow().jwt.jwks());
    out
}

/// JSON claims as a protobuf Struct.
pub(super) fn to_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(to_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}
