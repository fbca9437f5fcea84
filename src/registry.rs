//! Registration entries and matching: which identities a caller's selectors entitle it to.
//!
//! Matching is a pure function of (selectors, entries); the entry store and reloads live around it.

pub mod entry;
pub mod manager;
pub mod store;
pub mod template;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::ca::bundle::X509Bundle;
use crate::ca::jwt::Jwks;
use crate::selector::{Selector, SelectorSet};
use crate::spiffe_id::{SpiffeId, TrustDomain};
pub use entry::{RawEntry, valid_dns_name, validate_entry};
pub use template::{RenderError, Template};

/// A stable entry identifier.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId(String);

/// A registration entry: processes with all of `selectors` get `spiffe_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: EntryId,
    pub spiffe_id: SpiffeId,
    /// Sorted, without duplicates, never empty.
    pub selectors: Vec<Selector>,
    /// Overrides the default X.509-SVID lifetime.
    pub x509_ttl: Option<Duration>,
    /// Overrides the default JWT-SVID lifetime.
    pub jwt_ttl: Option<Duration>,
    /// When not empty, the only audiences JWT-SVIDs of this entry may name.
    pub jwt_audiences: Vec<String>,
    /// Names this SVID for clients that pick among several (ST-7); empty for none.
    pub hint: String,
    /// DNS SANs added after the URI SAN.
    pub dns_names: Vec<String>,
    /// Trust domains whose bundles the holder receives (TB-2).
    pub federates_with: Vec<TrustDomain>,
    /// Where the entry comes from.
    pub origin: Origin,
}

/// Where an entry comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The config file (read-only through the admin API).
    Declared,
    /// The admin API (stored in the database).
    Managed,
    /// A SPIRE server (authorized for this agent; managed on the server).
    Server,
}

impl Origin {
    /// `declared` or `managed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Origin::Declared => "declared",
            Origin::Managed => "managed",
            Origin::Server => "server",
        }
    }
}

/// One identity a caller is entitled to, with everything needed to issue and deliver it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub spiffe_id: SpiffeId,
    pub entry_id: EntryId,
    pub x509_ttl: Duration,
    pub jwt_ttl: Duration,
    /// Allowed JWT audiences; empty means any.
    pub jwt_audiences: Vec<String>,
    /// Unique within one match result, or empty.
    pub hint: String,
    pub dns_names: Vec<String>,
    pub federates_with: Vec<TrustDomain>,
}

/// The policy in force: entries and federated bundles, replaced as a whole on reload.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub entries: Arc<Vec<Entry>>,
    /// Identity templates, after the entries (file order).
    pub templates: Arc<Vec<Template>>,
    /// The agent's trust domain (templates render into it); `None` disables templates.
    pub trust_domain: Option<TrustDomain>,
    pub federation: Arc<BTreeMap<TrustDomain, FederatedBundle>>,
    pub default_x509_ttl: Duration,
    pub default_jwt_ttl: Duration,
}

/// What is known of a federated trust domain.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FederatedBundle {
    pub x509: Option<X509Bundle>,
    pub jwt: Option<Jwks>,
}

impl EntryId {
    /// The ID of an entry declared in the config file: derived from its SPIFFE ID and selectors, so it
    /// is the same across restarts and reorderings of the file.
    pub fn declared(spiffe_id: &SpiffeId, selectors: &[Selector]) -> Self {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(spiffe_id.as_str().as_bytes());
        for s in selectors {
            ctx.update(b"\n");
            ctx.update(s.to_string().as_bytes());
        }
        let hex = crate::encoding::hex(ctx.finish().as_ref());
        Self(format!("decl-{}", &hex[..16]))
    }

    /// A new ID for a managed entry.
    pub fn managed() -> Self {
        let mut b = [0u8; 12];
        if aws_lc_rs::rand::fill(&mut b).is_err() {
            b.iter_mut().for_each(|x| *x = fastrand::u8(..));
        }
        Self(format!("ent-{}", crate::encoding::hex(&b)))
    }

    /// Wraps an ID read back from storage or a client.
    pub fn from_string(id: String) -> Self {
        Self(id)
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntryId({})", self.0)
    }
}

/// The identities `selectors` entitle a caller to: matching entries in entry order, then matching
/// templates in file order (the first identity is the default, ST-7). Template errors are logged
/// once per template and pod.
pub fn match_identities(selectors: &SelectorSet, policy: &Policy) -> Vec<Identity> {
    let (identities, errors) = match_all(selectors, policy);
    for e in errors {
        log_render_error(&e);
    }
    identities
}

/// [`match_identities`] without logging: the identities, and the templates that applied but
/// rendered something invalid (those give no identity).
///
/// An entry matches when all its selectors are present; a template when its required selectors and
/// every selector its placeholders name are present. A SPIFFE ID appears once (the first entry or
/// template wins); a hint already used by an earlier identity is dropped (ST-7: first one wins).
pub fn match_all(selectors: &SelectorSet, policy: &Policy) -> (Vec<Identity>, Vec<RenderError>) {
    let mut seen_ids = HashSet::new();
    let mut seen_hints = HashSet::new();
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut push = |identity: Identity, out: &mut Vec<Identity>| {
        if !seen_ids.insert(identity.spiffe_id.clone()) {
            return;
        }
        let hint = if identity.hint.is_empty() || seen_hints.insert(identity.hint.clone()) {
            identity.hint.clone()
        } else {
            String::new()
        };
        out.push(Identity { hint, ..identity });
    };
    for entry in policy.entries.iter() {
        if !selectors.contains_all(&entry.selectors) {
            continue;
        }
        push(
            Identity {
                spiffe_id: entry.spiffe_id.clone(),
                entry_id: entry.id.clone(),
                x509_ttl: entry.x509_ttl.unwrap_or(policy.default_x509_ttl),
                jwt_ttl: entry.jwt_ttl.unwrap_or(policy.default_jwt_ttl),
                jwt_audiences: entry.jwt_audiences.clone(),
                hint: entry.hint.clone(),
                dns_names: entry.dns_names.clone(),
                federates_with: entry.federates_with.clone(),
            },
            &mut out,
        );
    }
    if let Some(td) = &policy.trust_domain {
        for template in policy.templates.iter() {
            match template.apply(td, selectors) {
                None => {}
                Some(Err(e)) => errors.push(e),
                Some(Ok((spiffe_id, dns_names))) => push(
                    Identity {
                        spiffe_id,
                        entry_id: template.id.clone(),
                        x509_ttl: template.x509_ttl.unwrap_or(policy.default_x509_ttl),
                        jwt_ttl: template.jwt_ttl.unwrap_or(policy.default_jwt_ttl),
                        jwt_audiences: template.jwt_audiences.clone(),
                        hint: template.hint.clone(),
                        dns_names,
                        federates_with: template.federates_with.clone(),
                    },
                    &mut out,
                ),
            }
        }
    }
    (out, errors)
}

/// One log line per (template, pod): a pod reconnecting in a loop does not flood the log.
fn log_render_error(e: &RenderError) {
    static SEEN: std::sync::Mutex<Option<HashSet<(String, String)>>> = std::sync::Mutex::new(None);
    let Ok(mut seen) = SEEN.lock() else {
        return;
    };
    let seen = seen.get_or_insert_with(HashSet::new);
    if seen.len() > 10_000 {
        seen.clear();
    }
    if seen.insert((e.template.as_str().to_owned(), e.subject.clone())) {
        tracing::warn!(template = %e.template, subject = %e.subject, "{}; no identity from this template", e.message);
    }
}

/// The federated X.509 bundles the holder of `identities` may receive (TB-2), keyed by trust domain ID.
pub fn federated_bundles<'a>(
    identities: &[Identity],
    policy: &'a Policy,
) -> BTreeMap<String, &'a X509Bundle> {
    federated(identities, policy, |b| b.x509.as_ref())
}

/// The federated JWT bundles the holder of `identities` may receive, keyed by trust domain ID.
pub fn federated_jwks<'a>(
    identities: &[Identity],
    policy: &'a Policy,
) -> BTreeMap<String, &'a Jwks> {
    federated(identities, policy, |b| b.jwt.as_ref())
}

fn federated<'a, T>(
    identities: &[Identity],
    policy: &'a Policy,
    pick: impl Fn(&'a FederatedBundle) -> Option<&'a T>,
) -> BTreeMap<String, &'a T> {
    let mut out = BTreeMap::new();
    for identity in identities {
        for td in &identity.federates_with {
            if let Some(bundle) = policy.federation.get(td).and_then(&pick) {
                out.insert(td.id_string(), bundle);
            }
        }
    }
    out
}

/// Where `audiences` breaks the entry's audience policy: the first audience it does not allow.
pub fn forbidden_audience<'a>(identity: &Identity, audiences: &'a [String]) -> Option<&'a str> {
    if identity.jwt_audiences.is_empty() {
        return None;
    }
    audiences
        .iter()
        .find(|a| !identity.jwt_audiences.contains(a))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, selectors: &[&str], hint: &str) -> Entry {
        let spiffe_id = SpiffeId::parse(id).unwrap();
        let mut selectors: Vec<Selector> = selectors
            .iter()
            .map(|s| Selector::parse(s).unwrap())
            .collect();
        selectors.sort();
        Entry {
            id: EntryId::declared(&spiffe_id, &selectors),
            spiffe_id,
            selectors,
            x509_ttl: None,
            jwt_ttl: None,
            jwt_audiences: vec![],
            hint: hint.into(),
            dns_names: vec![],
            federates_with: vec![],
            origin: Origin::Declared,
        }
    }

    fn set(selectors: &[&str]) -> SelectorSet {
        selectors
            .iter()
            .map(|s| Selector::parse(s).unwrap())
            .collect()
    }

    fn policy(entries: Vec<Entry>) -> Policy {
        Policy {
            entries: Arc::new(entries),
            federation: Default::default(),
            default_x509_ttl: Duration::from_secs(3600),
            default_jwt_ttl: Duration::from_secs(300),
            ..Default::default()
        }
    }

    /// Entries first, in entry order, then templates in file order; an ID an entry already gave is
    /// not repeated by a template (the order users can rely on, README "Identity templates").
    #[test]
    fn entries_then_templates_in_stable_order() {
        let mut p = policy(vec![entry(
            "spiffe://td/ns/shop/sa/cart",
            &["k8s:ns:shop"],
            "",
        )]);
        let template = |pattern: &str| Template {
            id: EntryId::from_string(format!("tmpl-{pattern}")),
            spiffe_id: template::Pattern::parse(pattern).unwrap(),
            selectors: vec![],
            x509_ttl: Some(Duration::from_secs(600)),
            jwt_ttl: None,
            jwt_audiences: vec![],
            hint: String::new(),
            dns_names: vec![],
            federates_with: vec![],
        };
        p.templates = Arc::new(vec![
            template("spiffe://{trust_domain}/pod/{k8s:pod-name}"),
            template("spiffe://{trust_domain}/ns/{k8s:ns}/sa/{k8s:sa}"),
            template("spiffe://{trust_domain}/bad/{k8s:pod-label:app}"),
        ]);
        p.trust_domain = Some(TrustDomain::parse("td").unwrap());
        let selectors = set(&[
            "k8s:ns:shop",
            "k8s:sa:cart",
            "k8s:pod-name:cart-1",
            "k8s:pod-label:app:a%b",
        ]);
        let (ids, errors) = match_all(&selectors, &p);
        let ids: Vec<String> = ids.iter().map(|i| i.spiffe_id.to_string()).collect();
        assert_eq!(
            ids,
            ["spiffe://td/ns/shop/sa/cart", "spiffe://td/pod/cart-1"]
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.contains("a%b"));
        // Without the k8s selectors, no template applies.
        assert!(match_all(&set(&["unix:uid:1"]), &p).0.is_empty());
    }

    #[test]
    fn subset_match_in_entry_order_with_unique_ids_and_hints() {
        let p = policy(vec![
            entry("spiffe://td/a", &["unix:uid:1000"], "web"),
            entry(
                "spiffe://td/b",
                &["unix:uid:1000", "unix:path:/bin/b"],
                "web",
            ),
            entry("spiffe://td/c", &["unix:uid:1001"], "c"),
            entry("spiffe://td/a", &["unix:gid:5"], "other"),
            entry("spiffe://td/d", &["unix:gid:5"], "d"),
        ]);
        type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);
        let table: &[Case] = &[
            (&["unix:uid:1000"], &[("spiffe://td/a", "web")]),
            (
                &["unix:uid:1000", "unix:path:/bin/b", "unix:gid:5"],
                &[
                    ("spiffe://td/a", "web"),
                    ("spiffe://td/b", ""),
                    ("spiffe://td/d", "d"),
                ],
            ),
            (&["unix:uid:1001"], &[("spiffe://td/c", "c")]),
            (&["unix:uid:7"], &[]),
            (
                &["unix:gid:5"],
                &[("spiffe://td/a", "other"), ("spiffe://td/d", "d")],
            ),
        ];
        for (selectors, want) in table {
            let got: Vec<(String, String)> = match_identities(&set(selectors), &p)
                .into_iter()
                .map(|i| (i.spiffe_id.to_string(), i.hint))
                .collect();
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            assert_eq!(got, want, "{selectors:?}");
        }
    }

    #[test]
    fn declared_ids_are_stable_and_distinct() {
        let a = entry("spiffe://td/a", &["unix:uid:1", "unix:gid:2"], "");
        let b = entry("spiffe://td/a", &["unix:gid:2", "unix:uid:1"], "");
        let c = entry("spiffe://td/a", &["unix:uid:1"], "");
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert!(a.id.as_str().starts_with("decl-"));
    }
}
