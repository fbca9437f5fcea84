//! From what the file and flags say to a [`Config`], collecting every problem.

use std::collections::HashSet;
use std::time::Duration;

use super::audit::{audit, metrics};
use super::authority::authority;
use super::federation::federation;
use super::limits::limits;
use super::raw::RawConfig;
use super::*;
use crate::fields::{Collector, count, duration};
use crate::registry::entry::{check_jwt_ttl, check_svid_ttl, entry};

use crate::registry::{Entry, EntryId};
use crate::selector::Selector;
use crate::spiffe_id::TrustDomain;

pub(super) fn validate(
    mut raw: RawConfig,
    overrides: &Overrides,
    dev: Option<&DevMode>,
) -> Result<Config, Errors> {
    let mut errs = Collector(Vec::new());

    // Overrides win over the file; remember which name to blame.
    let td_field = if overrides.trust_domain.is_some() {
        "--trust-domain"
    } else {
        "trust_domain"
    };
    if let Some(v) = &overrides.trust_domain {
        raw.trust_domain = Some(v.clone());
    }
    if let Some(v) = &overrides.socket_path {
        raw.socket_path = Some(v.clone());
    }
    if let Some(v) = &overrides.data_dir {
        raw.data_dir = Some(v.clone());
    }
    if let Some(v) = &overrides.admin_socket_path {
        raw.admin_socket_path = Some(v.clone());
    }
    let ttl_field = if overrides.x509_ttl.is_some() {
        "--x509-ttl"
    } else {
        "svid.x509_ttl"
    };
    if let Some(v) = &overrides.x509_ttl {
        raw.svid.x509_ttl = Some(v.clone());
    }
    let health_field = if overrides.health_addr.is_some() {
        "--health-addr"
    } else {
        "health.address"
    };
    if let Some(v) = &overrides.health_addr {
        raw.health.address = Some(v.clone());
    }

    let td_text = raw
        .trust_domain
        .clone()
        .unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.into());
    let trust_domain = match TrustDomain::parse(&td_text) {
        Ok(td) => Some(td),
        Err(e) => {
            errs.push(td_field, format!("invalid trust domain {td_text:?}: {e}"));
            None
        }
    };

    let default_socket = dev
        .map(|d| d.runtime_dir.join("workload.sock"))
        .unwrap_or_else(|| DEFAULT_SOCKET_PATH.into());
    let socket_path = raw.socket_path.clone().unwrap_or(default_socket);
    absolute(&mut errs, "socket_path", &socket_path);
    let default_admin = dev
        .map(|d| d.runtime_dir.join("admin").join("admin.sock"))
        .unwrap_or_else(|| DEFAULT_ADMIN_SOCKET_PATH.into());
    let admin_socket_path = raw.admin_socket_path.clone().unwrap_or(default_admin);
    absolute(&mut errs, "admin_socket_path", &admin_socket_path);
    if admin_socket_path.parent() == socket_path.parent() {
        errs.push(
            "admin_socket_path",
            format!(
                "{:?} is in the Workload API socket's directory, which every workload can reach; put it in a directory of its own, such as {DEFAULT_ADMIN_SOCKET_PATH}",
                admin_socket_path.display().to_string()
            ),
        );
    }
    let inventory_retention = duration(
        &mut errs,
        "inventory.retention",
        raw.inventory.retention.as_deref(),
        DEFAULT_INVENTORY_RETENTION,
    );
    let default_data = dev
        .map(|d| d.runtime_dir.join("data"))
        .unwrap_or_else(|| DEFAULT_DATA_DIR.into());
    let data_dir = raw.data_dir.clone().unwrap_or(default_data);
    absolute(&mut errs, "data_dir", &data_dir);

    let x509_ttl = duration(
        &mut errs,
        ttl_field,
        raw.svid.x509_ttl.as_deref(),
        DEFAULT_X509_TTL,
    );
    check_svid_ttl(&mut errs, ttl_field, x509_ttl);

    let jwt_ttl = duration(
        &mut errs,
        "svid.jwt_ttl",
        raw.svid.jwt_ttl.as_deref(),
        DEFAULT_JWT_TTL,
    );
    check_jwt_ttl(&mut errs, "svid.jwt_ttl", jwt_ttl);
    let jwt_key_ttl = duration(
        &mut errs,
        "authority.jwt_key_ttl",
        raw.authority.jwt_key_ttl.as_deref(),
        DEFAULT_JWT_KEY_TTL,
    );
    let min_key_ttl = 4 * crate::ca::jwt::MAX_JWT_TTL;
    if jwt_key_ttl < min_key_ttl {
        errs.push(
            "authority.jwt_key_ttl",
            format!(
                "{} is too short: keys are published {} before they sign (JW-7); use at least {}",
                humantime::format_duration(jwt_key_ttl),
                humantime::format_duration(2 * crate::ca::jwt::MAX_JWT_TTL),
                humantime::format_duration(min_key_ttl)
            ),
        );
    }
    let jwt_cache_size = raw.limits.jwt_cache_size.unwrap_or(DEFAULT_JWT_CACHE_SIZE);
    count(
        &mut errs,
        "limits.jwt_cache_size",
        jwt_cache_size,
        "disable the cache",
    );

    let authority = authority(&mut errs, &raw, trust_domain.as_ref());
    let signer_ttl = match &authority {
        Some(AuthorityConfig::SelfSigned { ca_ttl }) => Some(*ca_ttl / 4),
        Some(AuthorityConfig::Upstream {
            intermediate_ttl, ..
        }) => Some(*intermediate_ttl / 2),
        // The server caps lifetimes itself (its ca_ttl and default_x509_svid_ttl).
        Some(AuthorityConfig::Spire(_)) | None => None,
    };
    let check_against_ca = |errs: &mut Collector, field: &str, ttl: Duration| {
        if let Some(limit) = signer_ttl
            && ttl > limit
        {
            errs.push(
                field,
                format!(
                    "{} is longer than the signing CA allows ({}: a quarter of ca_ttl, or half of intermediate_ttl); shorten the SVID lifetime or lengthen the CA's",
                    humantime::format_duration(ttl),
                    humantime::format_duration(limit)
                ),
            );
        }
    };
    check_against_ca(&mut errs, ttl_field, x509_ttl);

    let hash_max_bytes = raw
        .attestation
        .hash_max_bytes
        .unwrap_or(crate::attest::unix::DEFAULT_HASH_MAX_BYTES);
    let limits = limits(&mut errs, &raw.limits);
    let jwt_cache_bytes = raw
        .limits
        .jwt_cache_bytes
        .unwrap_or(DEFAULT_JWT_CACHE_BYTES);
    if jwt_cache_bytes < 64 * 1024 {
        errs.push(
            "limits.jwt_cache_bytes",
            format!("{jwt_cache_bytes} is too small to cache anything useful; use at least 65536"),
        );
    }

    // Federation first: entries may only federate with trust domains that have a bundle.
    let (federation, fed_names) = federation(&mut errs, &raw.federation, trust_domain.as_ref());

    let mut entries = Vec::new();
    let mut seen = HashSet::new();
    for (i, e) in raw.entries.iter().enumerate() {
        if let Some(entry) = entry(
            &mut errs,
            &format!("entry[{i}]"),
            e,
            trust_domain.as_ref(),
            &fed_names,
        ) {
            if let Some(ttl) = entry.x509_ttl {
                check_against_ca(&mut errs, &format!("entry[{i}].x509_ttl"), ttl);
            }
            if !seen.insert(entry.id.clone()) {
                errs.push(
                    format!("entry[{i}]"),
                    format!(
                        "duplicates an earlier entry ({} with the same selectors); remove one",
                        entry.spiffe_id
                    ),
                );
                continue;
            }
            entries.push(entry);
        }
    }

    let templates =
        super::kubernetes::templates(&mut errs, &raw.templates, trust_domain.as_ref(), &fed_names);
    let kubernetes = super::kubernetes::kubernetes(&mut errs, raw.kubernetes.as_ref());
    // `--dev` runs beside a system agent on the same machine: no health port unless asked for.
    let health_addr = if dev.is_some() && raw.health.address.is_none() {
        None
    } else {
        super::kubernetes::health(&mut errs, &raw.health, health_field)
    };

    if let (Some(dev), Some(td)) = (dev, trust_domain.as_ref()) {
        let name: String = dev
            .user_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        match td.id_with_path(&format!("/user/{name}")) {
            Ok(spiffe_id) => {
                let selectors = vec![Selector::UnixUid(dev.uid)];
                entries.push(Entry {
                    id: EntryId::declared(&spiffe_id, &selectors),
                    spiffe_id,
                    selectors,
                    x509_ttl: None,
                    jwt_ttl: None,
                    jwt_audiences: vec![],
                    hint: "dev".into(),
                    dns_names: vec![],
                    federates_with: vec![],
                    origin: crate::registry::Origin::Declared,
                });
            }
            Err(e) => errs.push(
                "--dev",
                format!("cannot build the dev identity for {name:?}: {e}"),
            ),
        }
    }

    let audit = audit(&mut errs, raw.audit.as_ref());
    let metrics_spiffe_id_labels = metrics(&mut errs, &raw.metrics);
    let oidc = oidc(&mut errs, raw.oidc.as_ref(), authority.as_ref());
    let jwt_key_type = match raw.authority.jwt_key_type.as_deref() {
        None | Some("ec-p256") => crate::ca::jwt::JwtKeyType::EcP256,
        Some("rsa-2048") => crate::ca::jwt::JwtKeyType::Rsa2048,
        Some(other) => {
            errs.push(
                "authority.jwt_key_type",
                format!(
                    "unknown key type {other:?}; use \"ec-p256\" (ES256) or \"rsa-2048\" (RS256)"
                ),
            );
            crate::ca::jwt::JwtKeyType::EcP256
        }
    };
    if raw.authority.jwt_key_type.is_some() && matches!(authority, Some(AuthorityConfig::Spire(_)))
    {
        errs.push(
            "authority.jwt_key_type",
            "not used with mode = \"spire\": the SPIRE server's keys sign (its jwt_key_type)",
        );
    }
    let policy = raw.policy.as_ref().map(|p| {
        if p.paths.is_empty() {
            errs.push(
                "policy.paths",
                "empty; list Cedar policy files or directories (a [policy] with no policies would deny everything)",
            );
        }
        if !cfg!(feature = "policy") {
            errs.push(
                "policy",
                "this lanyard was built without the \"policy\" feature (Cedar); rebuild with it or remove [policy]",
            );
        }
        PolicyConfig {
            paths: p.paths.clone(),
            schema_path: p.schema_path.clone(),
            environment: p.environment.clone(),
        }
    });
    if !errs.0.is_empty() {
        return Err(Errors(errs.0));
    }
    // Every `None` above pushed an error, so these are present.
    let (Some(trust_domain), Some(authority)) = (trust_domain, authority) else {
        return Err(Errors(vec![FieldError {
            field: "config".into(),
            message: "internal: validation lost an error".into(),
        }]));
    };
    Ok(Config {
        trust_domain,
        socket_path,
        admin_socket_path,
        data_dir,
        authority,
        inventory_retention,
        x509_ttl,
        jwt_ttl,
        jwt_key_ttl,
        jwt_cache_size,
        hash_max_bytes,
        exec_events: raw.attestation.exec_events.unwrap_or(true),
        peer_pidfd: raw.attestation.peer_pidfd.unwrap_or(true),
        oidc,
        jwt_key_type,
        policy,
        jwt_revocation: raw.inventory.jwt_revocation.unwrap_or(true),
        sds: raw.sds.enabled.unwrap_or(true),
        sds_disable_spiffe_validation: raw.sds.disable_spiffe_cert_validation.unwrap_or(false),
        limits,
        jwt_cache_bytes,
        audit,
        metrics_spiffe_id_labels,
        entries,
        federation,
        templates,
        kubernetes,
        health_addr,
    })
}

pub(super) fn absolute(errs: &mut Collector, field: &str, path: &std::path::Path) {
    if !path.is_absolute() {
        errs.push(
            field,
            format!("{:?} is not an absolute path", path.display().to_string()),
        );
    }
}

/// `[oidc]`: an address, an issuer URL (the `iss` of JWT-SVIDs), optional TLS files.
fn oidc(
    errs: &mut Collector,
    raw: Option<&super::raw::RawOidc>,
    authority: Option<&AuthorityConfig>,
) -> Option<OidcConfig> {
    let raw = raw?;
    if let Some(AuthorityConfig::Spire(_)) = authority {
        errs.push(
            "oidc",
            "in mode \"spire\" the SPIRE server signs JWT-SVIDs; serve discovery with SPIRE's oidc-discovery-provider instead, and remove [oidc]",
        );
        return None;
    }
    let address = match raw.address.as_deref() {
        None => {
            errs.push(
                "oidc.address",
                "missing; set host:port to serve discovery on (e.g. \"0.0.0.0:8443\")",
            );
            None
        }
        Some(a) => match a.parse::<std::net::SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(e) => {
                errs.push("oidc.address", format!("{a:?} is not ip:port: {e}"));
                None
            }
        },
    };
    let issuer = match raw.issuer.as_deref() {
        None => {
            errs.push(
                "oidc.issuer",
                "missing; set the public URL the discovery document is reached at, such as \"https://oidc.example.org\"",
            );
            None
        }
        Some(i) => {
            let rest = i
                .strip_prefix("https://")
                .or_else(|| i.strip_prefix("http://"));
            match rest {
                Some(host)
                    if !host.is_empty() && !host.contains(['?', '#', ' ']) && !i.ends_with('/') =>
                {
                    Some(i.to_owned())
                }
                _ => {
                    errs.push(
                        "oidc.issuer",
                        format!("{i:?} is not an issuer URL: use https://host[/path] with no trailing slash, query or fragment"),
                    );
                    None
                }
            }
        }
    };
    let tls = match (&raw.cert_path, &raw.key_path) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => None,
        _ => {
            errs.push(
                "oidc.cert_path",
                "set cert_path and key_path together (or neither, for plain HTTP behind a TLS ingress)",
            );
            None
        }
    };
    Some(OidcConfig {
        address: address?,
        issuer: issuer?,
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn embedded_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.trust_domain.as_str(), DEFAULT_TRUST_DOMAIN);
        assert_eq!(c.socket_path, PathBuf::from(DEFAULT_SOCKET_PATH));
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.x509_ttl, DEFAULT_X509_TTL);
        assert_eq!(
            c.authority,
            AuthorityConfig::SelfSigned {
                ca_ttl: DEFAULT_CA_TTL
            }
        );
        assert!(c.entries.is_empty());
    }

    #[test]
    fn full_example_parses() {
        let c = Config::from_toml(
            r#"
            trust_domain = "example.org"
            socket_path = "/run/lanyard/workload.sock"
            data_dir = "/var/lib/lanyard"
            [authority]
            mode = "self-signed"
            [svid]
            x509_ttl = "1h"
            [[entry]]
            spiffe_id = "spiffe://example.org/billing"
            selectors = ["unix:uid:1000", "unix:path:/usr/bin/billing"]
            x509_ttl = "10m"
            hint = "billing"
            dns_names = ["billing.internal"]
            federates_with = ["partner.org"]
            [[federation]]
            trust_domain = "partner.org"
            bundle_path = "/etc/lanyard/partner.pem"
            "#,
        )
        .unwrap();
        assert_eq!(c.entries.len(), 1);
        let e = &c.entries[0];
        assert_eq!(e.x509_ttl, Some(Duration::from_secs(600)));
        assert_eq!(e.federates_with[0].as_str(), "partner.org");
        assert_eq!(c.federation[0].trust_domain.as_str(), "partner.org");
    }

    /// Every error at once, each naming the field and the value (ID-5 for the ID).
    /// Values that once panicked or wrapped: every one is refused, by field, with the bound.
    #[test]
    fn durations_and_counts_are_bounded() {
        let text = "[authority]\nca_ttl = \"8000y\"\njwt_key_ttl = \"500000000000y\"\n\
                    [inventory]\nretention = \"300000000000y\"\n\
                    [limits]\nmax_streams = 9223372036854775807\njwt_cache_size = 2000000\n";
        let errs = Config::from_toml(text).expect_err("bounded").to_string();
        for field in [
            "authority.ca_ttl",
            "authority.jwt_key_ttl",
            "inventory.retention",
            "limits.max_streams",
            "limits.jwt_cache_size",
        ] {
            assert!(errs.contains(field), "{field} not named in:\n{errs}");
        }
        assert!(
            errs.contains("the most any lanyard duration may be"),
            "{errs}"
        );
        assert!(errs.contains("1000000"), "{errs}");
    }

    /// Both token buckets: defaults when unset, and a rate that is not one is refused naming its
    /// field and the value, with an example.
    #[test]
    fn rates_of_new_connections_and_credentials() {
        let c = Config::from_toml("").unwrap().limits;
        assert_eq!(c.new_connections_per_second, 500.0);
        assert_eq!(c.new_connections_burst, 1000);
        assert_eq!(c.new_credentials_per_second, 50.0);
        let text = "[limits]\nnew_connections_per_second = 0.0\nnew_connections_burst = 0\n\
                    new_credentials_per_second = inf\n";
        let errs = Config::from_toml(text).expect_err("refused").to_string();
        for wanted in [
            "limits.new_connections_per_second: 0 is not a rate",
            "such as 500",
            "limits.new_connections_burst",
            "limits.new_credentials_per_second: inf is not a rate",
        ] {
            assert!(errs.contains(wanted), "{wanted} not in:\n{errs}");
        }
    }

    #[test]
    fn reports_every_error_at_once() {
        let err = Config::from_toml(
            r#"
            trust_domain = "Example.org"
            socket_path = "relative.sock"
            [svid]
            x509_ttl = "30s"
            [authority]
            mode = "magic"
            [[entry]]
            spiffe_id = "spiffe://example.org/a//b"
            selectors = ["unix:uid:abc", "nope"]
            dns_names = ["bad_name"]
            federates_with = ["partner.org"]
            [[entry]]
            selectors = []
            "#,
        )
        .unwrap_err();
        let text = err.to_string();
        for want in [
            "trust_domain: invalid trust domain \"Example.org\"",
            "socket_path: \"relative.sock\" is not an absolute path",
            "svid.x509_ttl: 30s is shorter than the minimum",
            "authority.mode: unknown mode \"magic\"",
            "entry[0].spiffe_id: invalid SPIFFE ID \"spiffe://example.org/a//b\": empty path segment (ID-3)",
            "entry[0].selectors[0]: invalid selector \"unix:uid:abc\"",
            "entry[0].selectors[1]: invalid selector \"nope\"",
            "entry[0].dns_names[0]: \"bad_name\" is not a valid DNS name",
            "entry[0].federates_with[0]: \"partner.org\" has no [[federation]] block",
            "entry[1].spiffe_id: missing",
            "entry[1].selectors: empty",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        assert_eq!(err.0.len(), 11, "{text}");
    }

    #[test]
    fn unknown_fields_and_syntax_errors_name_the_line() {
        let err = Config::from_toml("trust_domain = \"a\"\nsocket = \"/x\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `socket`"), "{err}");
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = Config::from_toml("trust_domain = \n").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn entries_outside_the_trust_domain_or_without_path_are_refused() {
        let err = Config::from_toml(
            "[[entry]]\nspiffe_id = \"spiffe://other.org/a\"\nselectors = [\"unix:uid:1\"]\n[[entry]]\nspiffe_id = \"spiffe://example.org\"\nselectors = [\"unix:uid:1\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not in this agent's trust domain"), "{err}");
        assert!(err.contains("needs a path"), "{err}");
    }

    #[test]
    fn ttl_longer_than_the_ca_allows_is_refused() {
        let err = Config::from_toml("[authority]\nca_ttl = \"8h\"\n[svid]\nx509_ttl = \"3h\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("longer than the signing CA allows"), "{err}");
    }

    #[test]
    fn upstream_mode_needs_both_files() {
        let err = Config::from_toml("[authority]\nmode = \"upstream\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("authority.cert_path: missing"), "{err}");
        assert!(err.contains("authority.key_path: missing"), "{err}");
    }

    #[test]
    fn dev_mode_adds_the_user_entry() {
        let dev = DevMode {
            runtime_dir: "/tmp/lanyard-test".into(),
            uid: 1234,
            user_name: "al ice".into(),
        };
        let raw = RawConfig::parse("", "x").unwrap();
        let c = validate(raw, &Overrides::default(), Some(&dev)).unwrap();
        assert_eq!(
            c.socket_path,
            PathBuf::from("/tmp/lanyard-test/workload.sock")
        );
        assert_eq!(
            c.entries[0].spiffe_id.as_str(),
            "spiffe://example.org/user/al_ice"
        );
        assert_eq!(c.entries[0].selectors, vec![Selector::UnixUid(1234)]);
    }

    #[test]
    fn admin_socket_never_beside_the_workload_socket() {
        let err = Config::from_toml(
            "socket_path = \"/run/x/w.sock\"\nadmin_socket_path = \"/run/x/a.sock\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(
                "admin_socket_path: \"/run/x/a.sock\" is in the Workload API socket's directory"
            ),
            "{err}"
        );
        let c = Config::from_toml("").unwrap();
        assert_eq!(
            c.admin_socket_path,
            PathBuf::from(DEFAULT_ADMIN_SOCKET_PATH)
        );
    }
}
