//! The Cedar gate: what the policies in force permit, asked at request time and before every push
//! (see `crate::policy`). Without `[policy]` (or without the `policy` feature) everything the
//! entries give passes.

use std::sync::Arc;

use super::{Context, Error};
use crate::registry::Identity;
use crate::selector::SelectorSet;

/// What the caller asks for, as the gate knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    X509,
    Jwt,
    Validate,
    #[cfg_attr(not(feature = "sds"), allow(dead_code))]
    Sds,
}

#[cfg(feature = "policy")]
pub(crate) type Engine = crate::policy::Engine;
/// Without the `policy` feature no engine can exist.
#[cfg(not(feature = "policy"))]
#[derive(Debug)]
pub(crate) enum Engine {}

/// The engine in force (`None`: no `[policy]`), replaced as a whole on reload.
pub(crate) type Cedar = tokio::sync::watch::Receiver<Option<Arc<Engine>>>;

/// Per SPIFFE ID, the Cedar policies that permitted it (ids, comma-separated), for the inventory;
/// empty without `[policy]`.
pub(super) type PermittedBy = std::collections::HashMap<String, String>;

/// The identities Cedar permits `act` on (the identity itself as the resource) and the policies
/// that permitted each; `PolicyDenied` with the first refusal's reason when it permits none.
pub(super) fn permitted(
    ctx: &Context,
    selectors: &SelectorSet,
    identities: Vec<Identity>,
    act: Act,
) -> Result<(Vec<Identity>, PermittedBy), Error> {
    let Some(engine) = ctx.cedar.borrow().clone() else {
        return Ok((identities, PermittedBy::new()));
    };
    let mut kept = Vec::with_capacity(identities.len());
    let mut by = PermittedBy::with_capacity(identities.len());
    let mut first = None;
    for identity in identities {
        match decide(&engine, ctx, selectors, &identity, act, None) {
            Ok(policies) => {
                by.insert(identity.spiffe_id.to_string(), policies.join(", "));
                kept.push(identity);
            }
            Err(why) => {
                first.get_or_insert(why);
            }
        }
    }
    match (kept.is_empty(), first) {
        (true, Some(why)) => Err(Error::PolicyDenied(why)),
        _ => Ok((kept, by)),
    }
}

/// Whether Cedar permits `act` for `identity` on every one of `audiences`: the policies that
/// permitted it (`None` without `[policy]`), or the refusal's reason.
pub(super) fn permits_audiences(
    ctx: &Context,
    selectors: &SelectorSet,
    identity: &Identity,
    audiences: &[String],
    act: Act,
) -> Result<Option<String>, String> {
    let Some(engine) = ctx.cedar.borrow().clone() else {
        return Ok(None);
    };
    let mut all = std::collections::BTreeSet::new();
    for aud in audiences {
        all.extend(decide(&engine, ctx, selectors, identity, act, Some(aud))?);
    }
    Ok(Some(all.into_iter().collect::<Vec<_>>().join(", ")))
}

#[cfg(feature = "policy")]
fn decide(
    engine: &Engine,
    ctx: &Context,
    selectors: &SelectorSet,
    identity: &Identity,
    act: Act,
    audience: Option<&str>,
) -> Result<Vec<String>, String> {
    use crate::policy::{Action, Ask, Resource};
    let action = match act {
        Act::X509 => Action::FetchX509Svid,
        Act::Jwt => Action::FetchJwtSvid,
        Act::Validate => Action::ValidateJwtSvid,
        Act::Sds => Action::Sds,
    };
    let resource = match audience {
        Some(aud) => Resource::Audience(aud),
        None => Resource::Identity(&identity.spiffe_id),
    };
    let ttl = match act {
        Act::Jwt | Act::Validate => identity.jwt_ttl,
        Act::X509 | Act::Sds => identity.x509_ttl,
    };
    let verdict = engine.decide(&Ask {
        principal: &identity.spiffe_id,
        selectors,
        action,
        resource,
        ttl,
        now: ctx.clock.now(),
    });
    for e in &verdict.errors {
        tracing::warn!(spiffe_id = %identity.spiffe_id, action = action.as_str(), error = %e, "policy evaluation error (the policy does not apply)");
    }
    if verdict.allowed {
        Ok(verdict.policies)
    } else {
        let on = audience.map_or_else(
            || identity.spiffe_id.to_string(),
            |a| format!("audience {a:?}"),
        );
        Err(format!(
            "{} of {} on {on} is denied by policy: {}",
            action.as_str(),
            identity.spiffe_id,
            verdict.reason()
        ))
    }
}

#[cfg(not(feature = "policy"))]
fn decide(
    engine: &Engine,
    _ctx: &Context,
    _selectors: &SelectorSet,
    _identity: &Identity,
    _act: Act,
    _audience: Option<&str>,
) -> Result<Vec<String>, String> {
    match *engine {}
}

/// The Cedar policies in force (published to streams) and the `[policy]` they come from; shared by
/// config reloads and the admin API.
#[derive(Clone)]
pub(crate) struct Policies {
    tx: Arc<tokio::sync::watch::Sender<Option<Arc<Engine>>>>,
    config: Arc<std::sync::Mutex<Option<crate::config::PolicyConfig>>>,
}

impl Policies {
    pub(crate) fn new(
        engine: Option<Arc<Engine>>,
        config: Option<crate::config::PolicyConfig>,
    ) -> Self {
        Self {
            tx: Arc::new(tokio::sync::watch::Sender::new(engine)),
            config: Arc::new(std::sync::Mutex::new(config)),
        }
    }

    /// A receiver of the engine in force and every change.
    pub(crate) fn subscribe(&self) -> Cedar {
        self.tx.subscribe()
    }

    /// Re-reads the policy files; on any error the running set stays.
    pub(crate) fn reload(&self) -> Result<(), Vec<String>> {
        let config = self
            .config
            .lock()
            .map_err(|_| vec!["lock".to_owned()])?
            .clone();
        let engine = engine_for(config.as_ref())?;
        self.tx.send_replace(engine);
        Ok(())
    }

    /// Replaces the configuration and the engine together (config reload).
    pub(crate) fn replace(
        &self,
        config: Option<crate::config::PolicyConfig>,
        engine: Option<Arc<Engine>>,
    ) {
        if let Ok(mut c) = self.config.lock() {
            *c = config;
        }
        self.tx.send_replace(engine);
    }

    /// What is in force, for the admin API.
    pub(crate) fn list(&self) -> crate::proto::admin::ListPoliciesResponse {
        let engine = self.tx.borrow().clone();
        crate::proto::admin::ListPoliciesResponse {
            enabled: engine.is_some(),
            ids: engine.map(|e| engine_ids(&e)).unwrap_or_default(),
        }
    }
}

#[cfg(feature = "policy")]
fn engine_ids(e: &Engine) -> Vec<String> {
    e.ids().to_vec()
}

#[cfg(not(feature = "policy"))]
fn engine_ids(e: &Engine) -> Vec<String> {
    match *e {}
}

/// The engine for a `[policy]` (none: `None`).
#[cfg(feature = "policy")]
pub(crate) fn engine_for(
    policy: Option<&crate::config::PolicyConfig>,
) -> Result<Option<Arc<Engine>>, Vec<String>> {
    let Some(policy) = policy else {
        return Ok(None);
    };
    // context.node: $NODE_NAME (the DaemonSet sets it from the downward API), else the hostname.
    let node = std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(crate::policy::node_name);
    match crate::policy::Engine::load(policy, &node) {
        Ok(engine) => {
            tracing::info!(policies = ?engine.ids(), "cedar policies in force");
            Ok(Some(Arc::new(engine)))
        }
        Err(errors) => Err(errors),
    }
}

/// Without the `policy` feature, `[policy]` is refused by validation: nothing to load.
#[cfg(not(feature = "policy"))]
pub(crate) fn engine_for(
    _policy: Option<&crate::config::PolicyConfig>,
) -> Result<Option<Arc<Engine>>, Vec<String>> {
    Ok(None)
}
