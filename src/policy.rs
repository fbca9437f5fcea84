//! Policy-as-code at request time: Cedar policies decide every issuance (`[policy]`).
//!
//! - principal `Workload::"<spiffe id>"` — the identity the caller's entry gives it — with the
//!   caller's attributes: `trust_domain`, `selectors` (every selector as text), and typed fields
//!   where attestation found them: `uid`, `gid`, `user`, `group`, `exe_path`, `exe_sha256`, `k8s_ns`,
//!   `k8s_sa`, `k8s_pod`, `k8s_pod_uid`, `k8s_labels` (`"key:value"`), `k8s_container`,
//!   `k8s_images`, `k8s_node`;
//! - action `Action::"FetchX509SVID"`, `"FetchJWTSVID"`, `"ValidateJWTSVID"` or `"SDS"`;
//! - resource `Identity::"<spiffe id>"` (attributes `trust_domain`, `path`, and `ns` for
//!   `/ns/<ns>/...` paths) for X.509 and SDS, `Audience::"<aud>"` for JWT;
//! - context: `now` (Unix seconds of the agent's clock), `hour` (0–23 UTC), `weekday` (0 = Monday),
//!   `ttl` (seconds requested), `node` (this node's name) and `env` (operator attributes from
//!   `[policy.environment]`).
//!
//! Policies (and an optional Cedar schema they are validated against) are read from files at start
//! and on every reload; an invalid set is refused with Cedar's messages and the running set stays.
//! With no `[policy]` nothing changes; with one, Cedar's default deny applies.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, Policy, PolicyId, PolicySet, PrincipalConstraint, Request, ResourceConstraint,
    RestrictedExpression, Schema, ValidationMode, Validator,
};

use crate::config::PolicyConfig;
use crate::recency::{insert_bounded, recency};
use crate::selector::{Selector, SelectorSet};
use crate::spiffe_id::SpiffeId;

/// What is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    FetchX509Svid,
    FetchJwtSvid,
    ValidateJwtSvid,
    Sds,
}

impl Action {
    /// Cedar's name of the action.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::FetchX509Svid => "FetchX509SVID",
            Action::FetchJwtSvid => "FetchJWTSVID",
            Action::ValidateJwtSvid => "ValidateJWTSVID",
            Action::Sds => "SDS",
        }
    }

    /// Parses Cedar's name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Action::FetchX509Svid,
            Action::FetchJwtSvid,
            Action::ValidateJwtSvid,
            Action::Sds,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }
}

/// The resource of a request.
#[derive(Debug, Clone, Copy)]
pub enum Resource<'a> {
    Identity(&'a SpiffeId),
    Audience(&'a str),
}

/// One request to decide.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub principal: &'a SpiffeId,
    pub selectors: &'a SelectorSet,
    pub action: Action,
    pub resource: Resource<'a>,
    pub ttl: Duration,
    pub now: SystemTime,
}

/// Cedar's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The policies that determined it (permits when allowed, forbids when denied; empty when
    /// nothing permitted).
    pub policies: Vec<String>,
    /// Policies that failed to evaluate (they do not apply).
    pub errors: Vec<String>,
}

impl Verdict {
    /// "no permit" or the deciding policies, for messages.
    pub fn reason(&self) -> String {
        if self.policies.is_empty() {
            "no policy permits it".into()
        } else {
            format!("decided by {}", self.policies.join(", "))
        }
    }
}

/// A loaded, validated policy set.
pub struct Engine {
    set: PolicySet,
    schema: Option<Schema>,
    environment: BTreeMap<String, String>,
    node: String,
    ids: Vec<String>,
    authorizer: Authorizer,
    /// The policies whose scope can match a (principal, action, resource), per triple: Cedar checks
    /// every policy of a set, so a request is decided against only these (same answer, and a large
    /// set of narrowly scoped policies costs what its relevant part costs).
    scoped: std::sync::Mutex<HashMap<(EntityUid, EntityUid, EntityUid), Scoped>>,
}

/// One cached scoped subset.
struct Scoped {
    set: std::sync::Arc<PolicySet>,
    /// When it was last computed or used, on the [`recency`] count.
    used: u64,
}

/// How many scoped subsets are kept. A full cache forgets the one used least recently
/// ([`insert_bounded`]): a caller asking for many audiences pushes out only what nobody used since.
const SCOPED_CACHE: usize = 4096;

/// Whether `policy`'s scope can match. Entities here have no parents, so `in` an entity is equality;
/// an action `in` a list or group is kept (action groups may come from a schema).
fn in_scope(
    policy: &Policy,
    principal: &EntityUid,
    action: &EntityUid,
    resource: &EntityUid,
) -> bool {
    let p = match policy.principal_constraint() {
        PrincipalConstraint::Any => true,
        PrincipalConstraint::Eq(u) | PrincipalConstraint::In(u) => &u == principal,
        PrincipalConstraint::Is(t) => &t == principal.type_name(),
        PrincipalConstraint::IsIn(t, u) => &t == principal.type_name() && &u == principal,
    };
    let a = match policy.action_constraint() {
        ActionConstraint::Eq(u) => &u == action,
        ActionConstraint::Any | ActionConstraint::In(_) => true,
    };
    let r = match policy.resource_constraint() {
        ResourceConstraint::Any => true,
        ResourceConstraint::Eq(u) | ResourceConstraint::In(u) => &u == resource,
        ResourceConstraint::Is(t) => &t == resource.type_name(),
        ResourceConstraint::IsIn(t, u) => &t == resource.type_name() && &u == resource,
    };
    p && a && r
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("policies", &self.ids)
            .finish()
    }
}

impl Engine {
    /// Reads and validates the policies of `config`; every problem is returned, with Cedar's own
    /// messages and the file it is in.
    pub fn load(config: &PolicyConfig, node: &str) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let mut files = Vec::new();
        for path in &config.paths {
            match std::fs::metadata(path) {
                Ok(m) if m.is_dir() => match std::fs::read_dir(path) {
                    Ok(entries) => {
                        let mut found: Vec<PathBuf> = entries
                            .filter_map(Result::ok)
                            .map(|e| e.path())
                            .filter(|p| p.extension().is_some_and(|e| e == "cedar"))
                            .collect();
                        found.sort();
                        files.extend(found);
                    }
                    Err(e) => errors.push(format!("{}: {e}", path.display())),
                },
                Ok(_) => files.push(path.clone()),
                Err(e) => errors.push(format!("{}: {e}", path.display())),
            }
        }
        let mut set = PolicySet::new();
        let mut ids = Vec::new();
        for file in &files {
            let text = match std::fs::read_to_string(file) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(format!("{}: {e}", file.display()));
                    continue;
                }
            };
            let parsed = match PolicySet::from_str(&text) {
                Ok(p) => p,
                Err(e) => {
                    errors.push(format!("{}: {}", file.display(), render(&e)));
                    continue;
                }
            };
            let stem = file
                .file_stem()
                .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
            for (i, policy) in parsed.policies().enumerate() {
                let id = policy
                    .annotation("id")
                    .map_or_else(|| format!("{stem}:{i}"), str::to_owned);
                if ids.contains(&id) {
                    errors.push(format!(
                        "{}: policy id {id:?} is used twice",
                        file.display()
                    ));
                    continue;
                }
                if let Err(e) = set.add(policy.new_id(PolicyId::new(&id))) {
                    errors.push(format!("{}: {e}", file.display()));
                    continue;
                }
                ids.push(id);
            }
        }
        if files.is_empty() && errors.is_empty() {
            errors.push(
                "no policy files found; a [policy] with no policies would deny everything (Cedar's default deny)"
                    .into(),
            );
        }
        let schema = match &config.schema_path {
            None => None,
            Some(path) => match std::fs::read_to_string(path) {
                Err(e) => {
                    errors.push(format!("{}: {e}", path.display()));
                    None
                }
                Ok(text) => match Schema::from_cedarschema_str(&text) {
                    Ok((schema, _warnings)) => Some(schema),
                    Err(e) => {
                        errors.push(format!("{}: {}", path.display(), render(&e)));
                        None
                    }
                },
            },
        };
        if let Some(schema) = &schema {
            let result = Validator::new(schema.clone()).validate(&set, ValidationMode::default());
            for e in result.validation_errors() {
                errors.push(format!("schema validation: {}", render(e)));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            set,
            schema,
            environment: config.environment.clone(),
            node: node.to_owned(),
            ids,
            authorizer: Authorizer::new(),
            scoped: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The policy IDs, in load order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// The policies that can apply to this triple (cached).
    fn scoped_set(
        &self,
        principal: &EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
    ) -> std::sync::Arc<PolicySet> {
        let key = (principal.clone(), action.clone(), resource.clone());
        if let Some(set) = self.scoped.lock().ok().and_then(|mut c| {
            c.get_mut(&key).map(|hit| {
                hit.used = recency();
                hit.set.clone()
            })
        }) {
            return set;
        }
        let mut set = PolicySet::new();
        for policy in self.set.policies() {
            if in_scope(policy, principal, action, resource) {
                // Every ID is unique in the full set, so adding cannot fail.
                let _ = set.add(policy.clone());
            }
        }
        let set = std::sync::Arc::new(set);
        if let Ok(mut cache) = self.scoped.lock() {
            let scoped = Scoped {
                set: set.clone(),
                used: recency(),
            };
            insert_bounded(&mut cache, SCOPED_CACHE, key, scoped, |s| s.used);
        }
        set
    }

    /// Decides one request.
    pub fn decide(&self, ask: &Ask<'_>) -> Verdict {
        match self.try_decide(ask) {
            Ok(v) => v,
            Err(why) => Verdict {
                allowed: false,
                policies: Vec::new(),
                errors: vec![why],
            },
        }
    }

    fn try_decide(&self, ask: &Ask<'_>) -> Result<Verdict, String> {
        let principal = uid("Workload", ask.principal.as_str())?;
        let action = uid("Action", ask.action.as_str())?;
        let mut entities = vec![principal_entity(&principal, ask)?];
        let resource = match ask.resource {
            Resource::Identity(id) => {
                let r = uid("Identity", id.as_str())?;
                entities.push(identity_entity(&r, id)?);
                r
            }
            Resource::Audience(aud) => uid("Audience", aud)?,
        };
        let secs = ask
            .now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let days = secs / 86_400;
        let env = RestrictedExpression::new_record(
            self.environment
                .iter()
                .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone()))),
        )
        .map_err(|e| e.to_string())?;
        let context = Context::from_pairs([
            ("now".to_owned(), long(secs)),
            ("hour".to_owned(), long((secs % 86_400) / 3600)),
            // 1970-01-01 was a Thursday (3 with Monday = 0).
            ("weekday".to_owned(), long((days + 3) % 7)),
            ("ttl".to_owned(), long(ask.ttl.as_secs())),
            (
                "node".to_owned(),
                RestrictedExpression::new_string(self.node.clone()),
            ),
            ("env".to_owned(), env),
        ])
        .map_err(|e| e.to_string())?;
        let (principal_key, action_key, resource_key) =
            (principal.clone(), action.clone(), resource.clone());
        let request = Request::new(principal, action, resource, context, self.schema.as_ref())
            .map_err(|e| format!("the request does not fit the schema: {}", render(&e)))?;
        let entities = Entities::from_entities(entities, self.schema.as_ref())
            .map_err(|e| format!("entities: {}", render(&e)))?;
        let set = self.scoped_set(&principal_key, &action_key, &resource_key);
        let response = self.authorizer.is_authorized(&request, &set, &entities);
        let mut policies: Vec<String> = response
            .diagnostics()
            .reason()
            .map(ToString::to_string)
            .collect();
        policies.sort();
        Ok(Verdict {
            allowed: response.decision() == Decision::Allow,
            policies,
            errors: response
                .diagnostics()
                .errors()
                .map(ToString::to_string)
                .collect(),
        })
    }
}

fn render(e: &dyn std::fmt::Display) -> String {
    e.to_string()
}

fn long(v: u64) -> RestrictedExpression {
    RestrictedExpression::new_long(i64::try_from(v).unwrap_or(i64::MAX))
}

fn uid(kind: &str, id: &str) -> Result<EntityUid, String> {
    Ok(EntityUid::from_type_name_and_id(
        EntityTypeName::from_str(kind).map_err(|e| e.to_string())?,
        EntityId::new(id),
    ))
}

/// The principal: the identity's trust domain and the caller's attributes.
fn principal_entity(uid: &EntityUid, ask: &Ask<'_>) -> Result<Entity, String> {
    let s = |v: &str| RestrictedExpression::new_string(v.to_owned());
    let mut attrs: HashMap<String, RestrictedExpression> = HashMap::new();
    attrs.insert("trust_domain".into(), s(ask.principal.trust_domain_str()));
    attrs.insert(
        "selectors".into(),
        RestrictedExpression::new_set(ask.selectors.iter().map(|sel| s(&sel.to_string()))),
    );
    let (mut labels, mut images) = (Vec::new(), Vec::new());
    for sel in ask.selectors.iter() {
        let (key, value) = match sel {
            Selector::UnixUid(u) => ("uid", long(u64::from(*u))),
            Selector::UnixGid(g) => ("gid", long(u64::from(*g))),
            Selector::UnixUser(u) => ("user", s(u)),
            Selector::UnixGroup(g) => ("group", s(g)),
            Selector::UnixPath(p) => ("exe_path", s(p)),
            Selector::UnixSha256(h) => ("exe_sha256", s(h)),
            Selector::K8sNs(v) => ("k8s_ns", s(v)),
            Selector::K8sSa(v) => ("k8s_sa", s(v)),
            Selector::K8sPodName(v) => ("k8s_pod", s(v)),
            Selector::K8sPodUid(v) => ("k8s_pod_uid", s(v)),
            Selector::K8sContainerName(v) => ("k8s_container", s(v)),
            Selector::K8sNodeName(v) => ("k8s_node", s(v)),
            Selector::K8sPodLabel(k, v) => {
                labels.push(s(&format!("{k}:{v}")));
                continue;
            }
            Selector::K8sContainerImage(v) => {
                images.push(s(v));
                continue;
            }
            Selector::UnixSupplementaryGid(_) | Selector::K8sPodOwner(..) => continue,
        };
        attrs.insert(key.into(), value);
    }
    if attrs.contains_key("k8s_ns") {
        attrs.insert("k8s_labels".into(), RestrictedExpression::new_set(labels));
        attrs.insert("k8s_images".into(), RestrictedExpression::new_set(images));
    }
    Entity::new(uid.clone(), attrs, HashSet::new()).map_err(|e| e.to_string())
}

/// An identity as a resource: trust domain, path, and the namespace of `/ns/<ns>/...` paths.
fn identity_entity(uid: &EntityUid, id: &SpiffeId) -> Result<Entity, String> {
    let s = |v: &str| RestrictedExpression::new_string(v.to_owned());
    let mut attrs = HashMap::new();
    attrs.insert("trust_domain".to_owned(), s(id.trust_domain_str()));
    attrs.insert("path".to_owned(), s(id.path()));
    if let Some(ns) = id
        .path()
        .strip_prefix("/ns/")
        .and_then(|rest| rest.split('/').next())
        .filter(|ns| !ns.is_empty())
    {
        attrs.insert("ns".to_owned(), s(ns));
    }
    Entity::new(uid.clone(), attrs, HashSet::new()).map_err(|e| e.to_string())
}

/// This node's name for `context.node`: the kernel's hostname.
pub fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Reads a principal for `lanyard policy check --principal-json`: `{"spiffe_id": "...",
/// "selectors": ["unix:uid:1000", ...]}`.
pub fn principal_from_json(path: &Path) -> Result<(SpiffeId, SelectorSet), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let id = v["spiffe_id"]
        .as_str()
        .ok_or_else(|| format!("{}: no \"spiffe_id\"", path.display()))?;
    let id =
        SpiffeId::parse(id).map_err(|e| format!("{}: spiffe_id {id:?}: {e}", path.display()))?;
    let mut selectors = SelectorSet::new();
    for s in v["selectors"].as_array().into_iter().flatten() {
        let text = s.as_str().unwrap_or_default();
        selectors.insert(
            Selector::parse(text)
                .map_err(|e| format!("{}: selector {text:?}: {e}", path.display()))?,
        );
    }
    Ok((id, selectors))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine over one policy file holding `text` (and the directory that holds it).
    fn engine_of(text: &str) -> (tempfile::TempDir, Engine) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.cedar"), text).unwrap();
        let engine = Engine::load(
            &PolicyConfig {
                paths: vec![dir.path().to_owned()],
                ..PolicyConfig::default()
            },
            "n",
        )
        .unwrap();
        (dir, engine)
    }

    /// A full scoped cache forgets the subset used least recently: a caller asking for thousands of
    /// audiences does not push out a subset in steady use.
    #[test]
    fn a_full_scoped_cache_keeps_what_is_in_use() {
        let (_dir, engine) = engine_of(r#"@id("base") permit (principal, action, resource);"#);
        let principal = uid("Workload", "spiffe://example.org/a").unwrap();
        let action = uid("Action", "FetchJWTSVID").unwrap();
        let audience = |i: usize| uid("Audience", &format!("aud-{i}")).unwrap();
        let steady = audience(0);
        for i in 1..=SCOPED_CACHE + 10 {
            engine.scoped_set(&principal, &action, &steady);
            engine.scoped_set(&principal, &action, &audience(i));
        }
        let cache = engine.scoped.lock().unwrap();
        assert_eq!(cache.len(), SCOPED_CACHE, "full, not started over");
        let key = |r: EntityUid| (principal.clone(), action.clone(), r);
        assert!(
            cache.contains_key(&key(steady)),
            "the subset in use is kept"
        );
        assert!(cache.contains_key(&key(audience(SCOPED_CACHE + 10))));
        assert!(
            !cache.contains_key(&key(audience(1))),
            "the oldest is forgotten"
        );
    }

    /// Deciding against the scoped subset gives the answer of the full set, for every kind of scope.
    #[test]
    fn scoped_subsets_decide_like_the_full_set() {
        let (_dir, engine) = engine_of(
            r#"
            @id("base") permit (principal, action, resource);
            @id("eq") forbid (principal == Workload::"spiffe://example.org/a", action, resource);
            @id("in") forbid (principal in Workload::"spiffe://example.org/b", action == Action::"FetchJWTSVID", resource);
            @id("is") forbid (principal is Workload, action, resource == Audience::"secret") when { principal has uid && principal.uid == 7 };
            @id("res") forbid (principal, action in [Action::"SDS"], resource == Identity::"spiffe://example.org/c");
            "#,
        );
        let mut sel = SelectorSet::new();
        sel.insert(Selector::UnixUid(7));
        let ids: Vec<SpiffeId> = ["a", "b", "c", "d"]
            .iter()
            .map(|p| SpiffeId::parse(&format!("spiffe://example.org/{p}")).unwrap())
            .collect();
        let actions = [
            Action::FetchX509Svid,
            Action::FetchJwtSvid,
            Action::ValidateJwtSvid,
            Action::Sds,
        ];
        for id in &ids {
            for action in actions {
                for aud in [None, Some("secret"), Some("open")] {
                    let resource = match (action, aud) {
                        (Action::FetchJwtSvid | Action::ValidateJwtSvid, Some(a)) => {
                            Resource::Audience(a)
                        }
                        _ => Resource::Identity(id),
                    };
                    let ask = Ask {
                        principal: id,
                        selectors: &sel,
                        action,
                        resource,
                        ttl: Duration::from_secs(60),
                        now: SystemTime::now(),
                    };
                    let scoped = engine.decide(&ask);
                    // The full set, without the scope filter.
                    let principal = uid("Workload", id.as_str()).unwrap();
                    let act = uid("Action", action.as_str()).unwrap();
                    let mut entities = vec![principal_entity(&principal, &ask).unwrap()];
                    let res = match resource {
                        Resource::Identity(i) => {
                            let r = uid("Identity", i.as_str()).unwrap();
                            entities.push(identity_entity(&r, i).unwrap());
                            r
                        }
                        Resource::Audience(a) => uid("Audience", a).unwrap(),
                    };
                    let ctx = Context::from_pairs([
                        ("now".to_owned(), long(0)),
                        ("hour".to_owned(), long(0)),
                        ("weekday".to_owned(), long(0)),
                        ("ttl".to_owned(), long(60)),
                        (
                            "node".to_owned(),
                            RestrictedExpression::new_string("n".into()),
                        ),
                        (
                            "env".to_owned(),
                            RestrictedExpression::new_record(Vec::new()).unwrap(),
                        ),
                    ])
                    .unwrap();
                    let req = Request::new(principal, act, res, ctx, None).unwrap();
                    let full = Authorizer::new().is_authorized(
                        &req,
                        &engine.set,
                        &Entities::from_entities(entities, None).unwrap(),
                    );
                    let mut reasons: Vec<String> = full
                        .diagnostics()
                        .reason()
                        .map(ToString::to_string)
                        .collect();
                    reasons.sort();
                    assert_eq!(
                        (scoped.allowed, scoped.policies.clone()),
                        (full.decision() == Decision::Allow, reasons),
                        "{id} {} {aud:?}",
                        action.as_str()
                    );
                }
            }
        }
    }
}
