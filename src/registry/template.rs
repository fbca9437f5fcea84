//! Identity templates: one `[[template]]` gives every matching caller an identity built from its own
//! selectors, with no entry per workload (`spiffe://{trust_domain}/ns/{k8s:ns}/sa/{k8s:sa}`).
//!
//! Placeholders are `{trust_domain}` and `{<selector type:key>}` for selectors a caller has exactly one
//! of: `{k8s:ns}`, `{k8s:sa}`, `{k8s:pod-name}`, `{k8s:pod-uid}`, `{k8s:container-name}`,
//! `{k8s:node-name}`, `{k8s:pod-label:<key>}`, `{unix:uid}`, `{unix:gid}`, `{unix:user}`,
//! `{unix:group}`. A caller without the selector a placeholder names does not match the template.

use std::time::Duration;

use super::EntryId;
use crate::selector::{Selector, SelectorSet};
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// Placeholders that name a single-valued selector.
const SIMPLE: &[&str] = &[
    "k8s:ns",
    "k8s:sa",
    "k8s:pod-name",
    "k8s:pod-uid",
    "k8s:container-name",
    "k8s:node-name",
    "unix:uid",
    "unix:gid",
    "unix:user",
    "unix:group",
];

/// One piece of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    TrustDomain,
    /// A selector's `type:key` (its value is substituted).
    Selector(&'static str),
    /// `k8s:pod-label:<key>`.
    PodLabel(String),
}

/// A parsed pattern such as `spiffe://{trust_domain}/ns/{k8s:ns}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    parts: Vec<Part>,
}

/// A validated template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Stable across restarts: derived from the pattern and required selectors.
    pub id: EntryId,
    pub spiffe_id: Pattern,
    /// All of these must be present (besides the placeholders' selectors).
    pub selectors: Vec<Selector>,
    pub x509_ttl: Option<Duration>,
    pub jwt_ttl: Option<Duration>,
    pub jwt_audiences: Vec<String>,
    pub hint: String,
    pub dns_names: Vec<Pattern>,
    pub federates_with: Vec<TrustDomain>,
}

/// Why a rendered identity was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderError {
    pub template: EntryId,
    /// The pod (or pid-free description) it happened for, for log deduplication.
    pub subject: String,
    pub message: String,
}

impl Pattern {
    /// Parses `{...}` placeholders; unknown ones are an error naming them.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("{text:?}: a '{{' is never closed"))?
                + open;
            let name = &rest[open + 1..close];
            parts.push(placeholder(name).ok_or_else(|| {
                format!(
                    "{text:?}: unknown placeholder {{{name}}}; use {{trust_domain}}, {{k8s:pod-label:<key>}} or one of {}",
                    SIMPLE.iter().map(|s| format!("{{{s}}}")).collect::<Vec<_>>().join(", ")
                )
            })?);
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("{text:?}: a '}}' has no '{{'"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self {
            text: text.to_owned(),
            parts,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Fills the placeholders; `None` when the caller lacks (or has several of) a named selector.
    pub fn render(&self, td: &TrustDomain, selectors: &SelectorSet) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::TrustDomain => out.push_str(td.as_str()),
                Part::Selector(kind) => out.push_str(&single(selectors, |s| {
                    (s.kind() == *kind).then(|| s.value())
                })?),
                Part::PodLabel(key) => out.push_str(&single(selectors, |s| match s {
                    Selector::K8sPodLabel(k, v) if k == key => Some(v.clone()),
                    _ => None,
                })?),
            }
        }
        Some(out)
    }

    /// Renders with sample values, to check at load time that the result can be a valid ID or name.
    pub fn sample(&self, td: &TrustDomain) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.clone(),
                Part::TrustDomain => td.as_str().to_owned(),
                _ => "sample".to_owned(),
            })
            .collect()
    }
}

fn placeholder(name: &str) -> Option<Part> {
    if name == "trust_domain" {
        return Some(Part::TrustDomain);
    }
    if let Some(key) = name.strip_prefix("k8s:pod-label:") {
        return (!key.is_empty()).then(|| Part::PodLabel(key.to_owned()));
    }
    SIMPLE
        .iter()
        .find(|s| **s == name)
        .map(|s| Part::Selector(s))
}

/// The one value `pick` finds, or `None` when there is none or more than one.
fn single(selectors: &SelectorSet, pick: impl Fn(&Selector) -> Option<String>) -> Option<String> {
    let mut values = selectors.iter().filter_map(pick);
    let first = values.next()?;
    values.next().is_none().then_some(first)
}

impl Template {
    /// The identity this template gives a caller with `selectors`: `None` when it does not apply,
    /// `Some(Err)` when it applies but renders an invalid SPIFFE ID or DNS name.
    pub fn apply(
        &self,
        td: &TrustDomain,
        selectors: &SelectorSet,
    ) -> Option<Result<(SpiffeId, Vec<String>), RenderError>> {
        if !selectors.contains_all(&self.selectors) {
            return None;
        }
        let rendered = self.spiffe_id.render(td, selectors)?;
        let dns: Option<Vec<String>> = self
            .dns_names
            .iter()
            .map(|p| p.render(td, selectors))
            .collect();
        let dns = dns?;
        let subject = selectors
            .iter()
            .find_map(|s| match s {
                Selector::K8sPodUid(uid) => Some(format!("pod {uid}")),
                _ => None,
            })
            .unwrap_or_else(|| rendered.clone());
        let fail = |message: String| {
            Some(Err(RenderError {
                template: self.id.clone(),
                subject: subject.clone(),
                message,
            }))
        };
        let id = match SpiffeId::parse(&rendered) {
            Ok(id) => id,
            Err(e) => {
                return fail(format!(
                    "template {:?} rendered {rendered:?}, which is not a valid SPIFFE ID: {e}",
                    self.spiffe_id.as_str()
                ));
            }
        };
        if id.trust_domain() != *td {
            return fail(format!(
                "template {:?} rendered {rendered:?}, outside trust domain {td}",
                self.spiffe_id.as_str()
            ));
        }
        if let Some(bad) = dns.iter().find(|n| !super::entry::valid_dns_name(n)) {
            return fail(format!(
                "template {:?} rendered DNS name {bad:?}, which is not a valid DNS name",
                self.spiffe_id.as_str()
            ));
        }
        Some(Ok((id, dns)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::parse("example.org").unwrap()
    }

    fn set(v: &[&str]) -> SelectorSet {
        v.iter().map(|s| Selector::parse(s).unwrap()).collect()
    }

    fn template(id: &str, dns: &[&str], required: &[&str]) -> Template {
        Template {
            id: EntryId::from_string("tmpl-test".into()),
            spiffe_id: Pattern::parse(id).unwrap(),
            selectors: required
                .iter()
                .map(|s| Selector::parse(s).unwrap())
                .collect(),
            x509_ttl: None,
            jwt_ttl: None,
            jwt_audiences: vec![],
            hint: String::new(),
            dns_names: dns.iter().map(|d| Pattern::parse(d).unwrap()).collect(),
            federates_with: vec![],
        }
    }

    #[test]
    fn renders_namespace_and_service_account() {
        let t = template(
            "spiffe://{trust_domain}/ns/{k8s:ns}/sa/{k8s:sa}",
            &["{k8s:pod-name}.{k8s:ns}.svc"],
            &[],
        );
        let pod = set(&[
            "k8s:ns:shop",
            "k8s:sa:cart",
            "k8s:pod-name:cart-1",
            "unix:uid:0",
        ]);
        let (id, dns) = t.apply(&td(), &pod).unwrap().unwrap();
        assert_eq!(id.as_str(), "spiffe://example.org/ns/shop/sa/cart");
        assert_eq!(dns, vec!["cart-1.shop.svc".to_owned()]);
    }

    #[test]
    fn missing_selector_or_required_selector_means_no_match() {
        let t = template(
            "spiffe://{trust_domain}/ns/{k8s:ns}/sa/{k8s:sa}",
            &[],
            &["k8s:ns:shop"],
        );
        assert!(t.apply(&td(), &set(&["unix:uid:0"])).is_none());
        assert!(
            t.apply(&td(), &set(&["k8s:ns:other", "k8s:sa:x"]))
                .is_none()
        );
        assert!(t.apply(&td(), &set(&["k8s:ns:shop", "k8s:sa:x"])).is_some());
    }

    #[test]
    fn labels_and_invalid_results() {
        let t = template("spiffe://{trust_domain}/app/{k8s:pod-label:app}", &[], &[]);
        let ok = t
            .apply(&td(), &set(&["k8s:pod-label:app:cart"]))
            .unwrap()
            .unwrap();
        assert_eq!(ok.0.as_str(), "spiffe://example.org/app/cart");
        // A label value that is not a valid path segment gives an error naming the result.
        let bad = t
            .apply(&td(), &set(&["k8s:pod-label:app:a%b", "k8s:pod-uid:u-1"]))
            .unwrap()
            .unwrap_err();
        assert!(bad.message.contains("a%b"), "{}", bad.message);
        assert_eq!(bad.subject, "pod u-1");
        // An empty label value renders an empty segment: invalid.
        assert!(
            t.apply(&td(), &set(&["k8s:pod-label:app:"]))
                .unwrap()
                .is_err()
        );
    }

    #[test]
    fn pattern_errors_name_the_placeholder() {
        let err = Pattern::parse("spiffe://{trust_domain}/ns/{namespace}").unwrap_err();
        assert!(err.contains("{namespace}"), "{err}");
        assert!(
            Pattern::parse("spiffe://x/{k8s:ns")
                .unwrap_err()
                .contains("never closed")
        );
        assert!(Pattern::parse("spiffe://x/}").is_err());
    }
}
