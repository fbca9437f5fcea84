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
        "invalid selector {text:?}: unknown type {kind:?}; known: unix (uid, gid, user, group, supplementary_gid, path, sha256)"
    )]
    UnknownType { text: String, kind: String },
    #[error(
        "invalid selector {text:?}: unknown unix key {key:?}; known: uid, gid, user, group, supplementary_gid, path, sha256"
    )]
    UnknownKey { text: String, key: String },
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
        if kind != "unix" {
            return Err(Error::UnknownType {
                text: text.into(),
                kind: kind.into(),
            });
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
