//! `[[federation]]`: the trust domains this agent federates with and where their bundles are read.

use std::collections::HashSet;

use super::Federation;
use super::raw::RawFederation;
use super::validate::absolute;
use crate::fields::Collector;
use crate::spiffe_id::TrustDomain;

/// The federations, and the set of their trust domains (entries may federate only with these).
pub(super) fn federation(
    errs: &mut Collector,
    raw: &[RawFederation],
    own: Option<&TrustDomain>,
) -> (Vec<Federation>, HashSet<TrustDomain>) {
    let mut federation = Vec::new();
    let mut fed_names = HashSet::new();
    for (i, f) in raw.iter().enumerate() {
        let field = |name: &str| format!("federation[{i}].{name}");
        let td = match f.trust_domain.as_deref() {
            None => {
                errs.push(
                    field("trust_domain"),
                    "missing; name the federated trust domain",
                );
                None
            }
            Some(text) => match TrustDomain::parse(text) {
                Ok(td) if Some(&td) == own => {
                    errs.push(
                        field("trust_domain"),
                        format!("{text:?} is this agent's own trust domain; federation is with other trust domains"),
                    );
                    None
                }
                Ok(td) if !fed_names.insert(td.clone()) => {
                    errs.push(field("trust_domain"), format!("{text:?} is listed twice"));
                    None
                }
                Ok(td) => Some(td),
                Err(e) => {
                    errs.push(
                        field("trust_domain"),
                        format!("invalid trust domain {text:?}: {e}"),
                    );
                    None
                }
            },
        };
        if f.bundle_path.is_none() && f.jwks_path.is_none() {
            errs.push(
                field("bundle_path"),
                "missing; give bundle_path (PEM CA certificates) and/or jwks_path (JWT keys, JSON)",
            );
        }
        for (name, p) in [("bundle_path", &f.bundle_path), ("jwks_path", &f.jwks_path)] {
            if let Some(p) = p {
                absolute(errs, &field(name), p);
            }
        }
        if let Some(trust_domain) = td {
            federation.push(Federation {
                trust_domain,
                bundle_path: f.bundle_path.clone(),
                jwks_path: f.jwks_path.clone(),
            });
        }
    }

    (federation, fed_names)
}
