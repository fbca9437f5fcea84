//! SPIFFE IDs and trust domains (SPEC.md §4), parsed once at the edge.
//!
//! A [`SpiffeId`] or [`TrustDomain`] that exists is valid: every rule of SPEC.md §4 is checked when the
//! value is made, and the error names the rule that was broken.

use std::fmt;
use std::str::FromStr;

/// The longest SPIFFE ID accepted (ID-4).
pub const MAX_ID_LEN: usize = 2048;
/// The longest trust domain name accepted (ID-2).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME: &str = "spiffe://";

/// Why a string is not a SPIFFE ID or trust domain; each message names the rule of SPEC.md §4.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("does not start with \"spiffe://\" (ID-1)")]
    MissingScheme,
    #[error("the trust domain is empty (ID-2)")]
    EmptyTrustDomain,
    #[error("the trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes (ID-2)")]
    TrustDomainTooLong,
    #[error("a port is not allowed (ID-1)")]
    Port,
    #[error("userinfo (\"user@\") is not allowed (ID-1)")]
    UserInfo,
    #[error("a query (\"?\") is not allowed (ID-1)")]
    Query,
    #[error("a fragment (\"#\") is not allowed (ID-1)")]
    Fragment,
    #[error("percent-encoding is not allowed (ID-1)")]
    PercentEncoding,
    #[error(
        "the trust domain has the character {0:?}; only lowercase letters, digits, '.', '-' and '_' are allowed (ID-2)"
    )]
    TrustDomainChar(char),
    #[error("empty path segment (ID-3)")]
    EmptySegment,
    #[error("path segment \".\" or \"..\" (ID-3)")]
    DotSegment,
    #[error("trailing \"/\" (ID-3)")]
    TrailingSlash,
    #[error(
        "the path has the character {0:?}; only letters, digits, '.', '-' and '_' are allowed (ID-3)"
    )]
    PathChar(char),
    #[error("longer than {MAX_ID_LEN} bytes (ID-4)")]
    TooLong,
}

/// A trust domain name, such as `example.org` (ID-2).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain(String);

/// A SPIFFE ID, such as `spiffe://example.org/billing` (ID-1..4).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    id: String,
    /// Byte length of the trust domain part, which starts right after the scheme.
    td_len: usize,
}

impl TrustDomain {
    /// Parses a bare trust domain name (`example.org`) or a trust domain ID (`spiffe://example.org`).
    pub fn parse(s: &str) -> Result<Self, Error> {
        let name = s.strip_prefix(SCHEME).unwrap_or(s);
        check_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The bare name, `example.org`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own ID, `spiffe://example.org`: the key of bundle maps (JW-6) and the URI SAN
    /// of signing certificates (X5-9).
    pub fn id_string(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }

    /// A SPIFFE ID in this trust domain with the given path (which must start with `/`).
    pub fn id_with_path(&self, path: &str) -> Result<SpiffeId, Error> {
        SpiffeId::parse(&format!("{SCHEME}{}{path}", self.0))
    }
}

impl SpiffeId {
    /// Parses and checks a SPIFFE ID against SPEC.md §4.
    pub fn parse(s: &str) -> Result<Self, Error> {
        if s.len() > MAX_ID_LEN {
            return Err(Error::TooLong);
        }
        let rest = s.strip_prefix(SCHEME).ok_or(Error::MissingScheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        check_trust_domain(td)?;
        check_path(path)?;
        Ok(Self {
            id: s.to_owned(),
            td_len: td.len(),
        })
    }

    /// The whole ID as text.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The trust domain this ID belongs to.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_str().to_owned())
    }

    /// The trust domain name, borrowed.
    pub fn trust_domain_str(&self) -> &str {
        &self.id[SCHEME.len()..SCHEME.len() + self.td_len]
    }

    /// The path, `/billing`; empty for a trust domain ID.
    pub fn path(&self) -> &str {
        &self.id[SCHEME.len() + self.td_len..]
    }
}

fn check_trust_domain(td: &str) -> Result<(), Error> {
    // The order of checks makes the message name the most specific rule: `td:8080` is a port, not a
    // bad character.
    if td.contains('?') {
        return Err(Error::Query);
    }
    if td.contains('#') {
        return Err(Error::Fragment);
    }
    if td.contains('@') {
        return Err(Error::UserInfo);
    }
    if td.contains(':') {
        return Err(Error::Port);
    }
    if td.contains('%') {
        return Err(Error::PercentEncoding);
    }
    if td.is_empty() {
        return Err(Error::EmptyTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(Error::TrustDomainTooLong);
    }
    if let Some(c) = td
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        return Err(Error::TrustDomainChar(c));
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), Error> {
    if path.is_empty() {
        return Ok(());
    }
    if path.contains('?') {
        return Err(Error::Query);
    }
    if path.contains('#') {
        return Err(Error::Fragment);
    }
    if path.contains('%') {
        return Err(Error::PercentEncoding);
    }
    if path.ends_with('/') {
        return Err(Error::TrailingSlash);
    }
    // `path` starts with '/', so the first split element is the empty string before it.
    for segment in path.split('/').skip(1) {
        match segment {
            "" => return Err(Error::EmptySegment),
            "." | ".." => return Err(Error::DotSegment),
            _ => {}
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(Error::PathChar(c));
        }
    }
    Ok(())
}

impl FromStr for SpiffeId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

impl FromStr for TrustDomain {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.id)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        for s in [
            "spiffe://example.org",
            "spiffe://example.org/billing",
            "spiffe://example.org/ns/Shop/sa/cart-1_a.b",
            "spiffe://a-b_c.9/x",
        ] {
            let id = SpiffeId::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(id.as_str(), s);
        }
        let id = SpiffeId::parse("spiffe://example.org/a/b").unwrap();
        assert_eq!(id.trust_domain_str(), "example.org");
        assert_eq!(id.path(), "/a/b");
    }

    /// ID-5: every negative case of SPEC.md §4, each with the rule it breaks.
    #[test]
    fn id5_rejects_invalid_ids_naming_the_rule() {
        let cases: &[(&str, Error)] = &[
            ("spiffe:///a", Error::EmptyTrustDomain),
            ("spiffe://td:8080/a", Error::Port),
            ("spiffe://u@td/a", Error::UserInfo),
            ("spiffe://td/a?x=1", Error::Query),
            ("spiffe://td/a#f", Error::Fragment),
            ("spiffe://td/%41", Error::PercentEncoding),
            ("spiffe://td/a//b", Error::EmptySegment),
            ("spiffe://td/a/./b", Error::DotSegment),
            ("spiffe://td/a/../b", Error::DotSegment),
            ("spiffe://td/a/", Error::TrailingSlash),
            ("spiffe://td/a!b", Error::PathChar('!')),
            ("spiffe://t$d/a", Error::TrustDomainChar('$')),
            ("spiffe://TD/a", Error::TrustDomainChar('T')),
            ("http://td/a", Error::MissingScheme),
            ("", Error::MissingScheme),
        ];
        for (s, want) in cases {
            assert_eq!(SpiffeId::parse(s).as_ref(), Err(want), "{s}");
        }
    }

    #[test]
    fn id4_length_limit() {
        let path = "/a".repeat(1000);
        let ok = format!("spiffe://td{path}");
        assert!(ok.len() <= MAX_ID_LEN);
        assert!(SpiffeId::parse(&ok).is_ok());
        let too_long = format!("spiffe://td{path}/abcdefghijklmnopqrstuvwxyz0123456789xyz");
        assert!(too_long.len() > MAX_ID_LEN);
        assert_eq!(SpiffeId::parse(&too_long), Err(Error::TooLong));
        assert_eq!(
            TrustDomain::parse(&"a".repeat(256)),
            Err(Error::TrustDomainTooLong)
        );
    }

    #[test]
    fn trust_domain_forms() {
        assert_eq!(
            TrustDomain::parse("example.org").unwrap().as_str(),
            "example.org"
        );
        let td = TrustDomain::parse("spiffe://example.org").unwrap();
        assert_eq!(td.id_string(), "spiffe://example.org");
        assert_eq!(
            td.id_with_path("/x").unwrap().as_str(),
            "spiffe://example.org/x"
        );
        assert!(TrustDomain::parse("Example.org").is_err());
    }
}
