//! Selectors: typed facts about a caller, learned by attestation and required by entries.
//!
//! Inside the agent a selector is a [`Selector`] value; the text form `type:key:value`
//! (`unix:uid:1000`) exists only at the edges (config, CLI, logs).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// Why a selector's text form was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("invalid selector {text:?}: expected \"type:key:value\", such as \"unix:uid:1000\"")]
    Shape { text: String },
    #[error(
        "invalid selector {text:?}: unknown type {kind:?}; known: unix (uid, gid, user, group, supplementary_gid, path, sha256), k8s (ns, sa, pod-uid, pod-name, pod-label, pod-owner, container-name, container-image, node-name)"
    )]
    UnknownType { text: String, kind: String },
    #[error(
        "invalid selector {text:?}: unknown unix key {key:?}; known: uid, gid, user, group, supplementary_gid, path, sha256"
    )]
    UnknownKey { text: String, key: String },
    #[error(
        "invalid selector {text:?}: unknown k8s key {key:?}; known: ns, sa, pod-uid, pod-name, pod-label, pod-owner, container-name, container-image, node-name"
    )]
    UnknownK8sKey { text: String, key: String },
    #[error("invalid selector {text:?}: {why}")]
    Value { text: String, why: &'static str },
}

/// One fact about a caller.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Selector {
    /// Effective user ID of the process.
    UnixUid(u32),
    /// Effective group ID of the process.
    UnixGid(u32),
    /// Name of the effective user.
    UnixUser(String),
    /// Name of the effective group.
    UnixGroup(String),
    /// One supplementary group ID of the process.
    UnixSupplementaryGid(u32),
    /// Absolute path of the process's executable.
    UnixPath(String),
    /// SHA-256 of the process's executable, lowercase hex.
    UnixSha256(String),
    /// Namespace of the caller's pod.
    K8sNs(String),
    /// Service account of the caller's pod.
    K8sSa(String),
    /// UID of the caller's pod.
    K8sPodUid(String),
    /// Name of the caller's pod.
    K8sPodName(String),
    /// One label of the caller's pod: (key, value).
    K8sPodLabel(String, String),
    /// One owner reference of the caller's pod: (kind, name).
    K8sPodOwner(String, String),
    /// Name of the caller's container in the pod spec.
    K8sContainerName(String),
    /// The container's image: as in the pod spec, as the kubelet reports it, and as the image ID
    /// digest (`repo@sha256:...`); one selector each.
    K8sContainerImage(String),
    /// The node the pod runs on.
    K8sNodeName(String),
}

/// The selectors of one caller, ordered and without duplicates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SelectorSet(BTreeSet<Selector>);

impl Selector {
    /// Parses the text form `type:key:value`.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let mut parts = text.splitn(3, ':');
        let (Some(kind), Some(key), Some(value)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::Shape { text: text.into() });
        };
        let bad = |why| Error::Value {
            text: text.into(),
            why,
        };
        match kind {
            "unix" => {}
            "k8s" => return parse_k8s(text, key, value),
            _ => {
                return Err(Error::UnknownType {
                    text: text.into(),
                    kind: kind.into(),
                });
            }
        }
        let id = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| bad("expected a number from 0 to 4294967295"))
        };
        Ok(match key {
            "uid" => Selector::UnixUid(id(value)?),
            "gid" => Selector::UnixGid(id(value)?),
            "supplementary_gid" => Selector::UnixSupplementaryGid(id(value)?),
            "user" | "group" => {
                if value.is_empty() {
                    return Err(bad("the name is empty"));
                }
                if key == "user" {
                    Selector::UnixUser(value.into())
                } else {
                    Selector::UnixGroup(value.into())
                }
            }
            "path" => {
                if !value.starts_with('/') {
                    return Err(bad("the path must be absolute"));
                }
                Selector::UnixPath(value.into())
            }
            "sha256" => {
                if value.len() != 64
                    || !value
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    return Err(bad(
                        "expected 64 lowercase hex digits (as sha256sum prints)",
                    ));
                }
                Selector::UnixSha256(value.into())
            }
            _ => {
                return Err(Error::UnknownKey {
                    text: text.into(),
                    key: key.into(),
                });
            }
        })
    }
}

/// `k8s:<key>:<value>`; `pod-label` and `pod-owner` values are `<key>:<value>` / `<Kind>:<name>`.
fn parse_k8s(text: &str, key: &str, value: &str) -> Result<Selector, Error> {
    let bad = |why| Error::Value {
        text: text.into(),
        why,
    };
    if value.is_empty() {
        return Err(bad("the value is empty"));
    }
    let pair = |why| {
        value
            .split_once(':')
            .filter(|(k, _)| !k.is_empty())
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .ok_or_else(|| bad(why))
    };
    Ok(match key {
        "ns" => Selector::K8sNs(value.into()),
        "sa" => Selector::K8sSa(value.into()),
        "pod-uid" => Selector::K8sPodUid(value.into()),
        "pod-name" => Selector::K8sPodName(value.into()),
        "pod-label" => {
            let (k, v) =
                pair("expected k8s:pod-label:<key>:<value>, such as k8s:pod-label:app:cart")?;
            Selector::K8sPodLabel(k, v)
        }
        "pod-owner" => {
            let (k, v) = pair(
                "expected k8s:pod-owner:<Kind>:<name>, such as k8s:pod-owner:ReplicaSet:cart-5d9",
            )?;
            Selector::K8sPodOwner(k, v)
        }
        "container-name" => Selector::K8sContainerName(value.into()),
        "container-image" => Selector::K8sContainerImage(value.into()),
        "node-name" => Selector::K8sNodeName(value.into()),
        _ => {
            return Err(Error::UnknownK8sKey {
                text: text.into(),
                key: key.into(),
            });
        }
    })
}

impl Selector {
    /// The `type:key` part of the text form (`unix:uid`, `k8s:pod-label`).
    pub fn kind(&self) -> &'static str {
        match self {
            Selector::UnixUid(_) => "unix:uid",
            Selector::UnixGid(_) => "unix:gid",
            Selector::UnixUser(_) => "unix:user",
            Selector::UnixGroup(_) => "unix:group",
            Selector::UnixSupplementaryGid(_) => "unix:supplementary_gid",
            Selector::UnixPath(_) => "unix:path",
            Selector::UnixSha256(_) => "unix:sha256",
            Selector::K8sNs(_) => "k8s:ns",
            Selector::K8sSa(_) => "k8s:sa",
            Selector::K8sPodUid(_) => "k8s:pod-uid",
            Selector::K8sPodName(_) => "k8s:pod-name",
            Selector::K8sPodLabel(..) => "k8s:pod-label",
            Selector::K8sPodOwner(..) => "k8s:pod-owner",
            Selector::K8sContainerName(_) => "k8s:container-name",
            Selector::K8sContainerImage(_) => "k8s:container-image",
            Selector::K8sNodeName(_) => "k8s:node-name",
        }
    }

    /// The value part of the text form (`1000`, `app:cart` for a pod label).
    pub fn value(&self) -> String {
        let text = self.to_string();
        text[self.kind().len() + 1..].to_owned()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::UnixUid(v) => write!(f, "unix:uid:{v}"),
            Selector::UnixGid(v) => write!(f, "unix:gid:{v}"),
            Selector::UnixUser(v) => write!(f, "unix:user:{v}"),
            Selector::UnixGroup(v) => write!(f, "unix:group:{v}"),
            Selector::UnixSupplementaryGid(v) => write!(f, "unix:supplementary_gid:{v}"),
            Selector::UnixPath(v) => write!(f, "unix:path:{v}"),
            Selector::UnixSha256(v) => write!(f, "unix:sha256:{v}"),
            Selector::K8sNs(v) => write!(f, "k8s:ns:{v}"),
            Selector::K8sSa(v) => write!(f, "k8s:sa:{v}"),
            Selector::K8sPodUid(v) => write!(f, "k8s:pod-uid:{v}"),
            Selector::K8sPodName(v) => write!(f, "k8s:pod-name:{v}"),
            Selector::K8sPodLabel(k, v) => write!(f, "k8s:pod-label:{k}:{v}"),
            Selector::K8sPodOwner(k, v) => write!(f, "k8s:pod-owner:{k}:{v}"),
            Selector::K8sContainerName(v) => write!(f, "k8s:container-name:{v}"),
            Selector::K8sContainerImage(v) => write!(f, "k8s:container-image:{v}"),
            Selector::K8sNodeName(v) => write!(f, "k8s:node-name:{v}"),
        }
    }
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Selector {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

impl SelectorSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one selector.
    pub fn insert(&mut self, selector: Selector) {
        self.0.insert(selector);
    }

    /// True when every selector of `required` is in this set (an entry's subset match).
    pub fn contains_all<'a>(&self, required: impl IntoIterator<Item = &'a Selector>) -> bool {
        required.into_iter().all(|s| self.0.contains(s))
    }

    /// The selectors, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Selector> {
        self.0.iter()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The number of selectors.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl FromIterator<Selector> for SelectorSet {
    fn from_iter<I: IntoIterator<Item = Selector>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl Extend<Selector> for SelectorSet {
    fn extend<I: IntoIterator<Item = Selector>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

impl fmt::Display for SelectorSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for s in &self.0 {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_text_form() {
        for s in [
            "unix:uid:1000",
            "unix:gid:0",
            "unix:user:alice",
            "unix:group:staff",
            "unix:supplementary_gid:27",
            "unix:path:/usr/bin/app",
            "unix:path:/opt/a:b",
            "unix:sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "k8s:ns:shop",
            "k8s:sa:cart",
            "k8s:pod-uid:a2830d0d-b0f0-4ff0-81b5-0ee4e299cf80",
            "k8s:pod-name:cart-5d9-abcde",
            "k8s:pod-label:app:cart",
            "k8s:pod-label:app.kubernetes.io/name:cart",
            "k8s:pod-label:empty:",
            "k8s:pod-owner:ReplicaSet:cart-5d9",
            "k8s:container-name:server",
            "k8s:container-image:nginx:1.25",
            "k8s:container-image:docker.io/library/nginx@sha256:0123",
            "k8s:node-name:node-1",
        ] {
            assert_eq!(Selector::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn rejects_bad_selectors_with_the_value_named() {
        let cases = [
            ("unix", "expected \"type:key:value\""),
            ("unix:uid", "expected \"type:key:value\""),
            ("k9s:uid:1", "unknown type \"k9s\""),
            ("unix:pid:1", "unknown unix key \"pid\""),
            ("unix:uid:-1", "expected a number"),
            ("unix:uid:4294967296", "expected a number"),
            ("unix:path:bin/app", "absolute"),
            ("unix:sha256:ABC", "64 lowercase hex"),
            ("unix:user:", "empty"),
            ("k8s:namespace:shop", "unknown k8s key \"namespace\""),
            ("k8s:ns:", "empty"),
            ("k8s:pod-label:app", "k8s:pod-label:<key>:<value>"),
            ("k8s:pod-owner::x", "k8s:pod-owner:<Kind>:<name>"),
        ];
        for (text, want) in cases {
            let err = Selector::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
            assert!(err.contains(&format!("{text:?}")), "{text}: {err}");
        }
    }

    #[test]
    fn subset_match() {
        let set: SelectorSet = ["unix:uid:1000", "unix:gid:1000", "unix:path:/bin/x"]
            .iter()
            .map(|s| Selector::parse(s).unwrap())
            .collect();
        let need = |v: &[&str]| {
            v.iter()
                .map(|s| Selector::parse(s).unwrap())
                .collect::<Vec<_>>()
        };
        assert!(set.contains_all(&need(&["unix:uid:1000"])));
        assert!(set.contains_all(&need(&["unix:uid:1000", "unix:path:/bin/x"])));
        assert!(!set.contains_all(&need(&["unix:uid:1000", "unix:path:/bin/y"])));
        assert!(set.contains_all(&need(&[])));
    }
}
