//! The agent's configuration: a typed tree with embedded defaults, read from `lanyard.toml`, then
//! overridden by environment and flags. Every problem is reported at once, each naming the field
//! and the value.

mod audit;
mod authority;
mod federation;
mod kubernetes;
mod limits;
mod raw;
mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::ca::{AuthorityConfig, MIN_JWT_TTL, MIN_X509_TTL};
pub use crate::fields::{Errors, FieldError};
use crate::registry::Entry;
use crate::spiffe_id::TrustDomain;

pub use raw::{RawConfig, RawEntry, toml_error};

/// Trust domain when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "example.org";
/// Workload API socket when none is configured.
pub const DEFAULT_SOCKET_PATH: &str = "/run/lanyard/workload.sock";
/// Admin API socket when none is configured (never in the Workload API socket's directory).
pub const DEFAULT_ADMIN_SOCKET_PATH: &str = "/run/lanyard/admin/admin.sock";
/// Data directory (authority keys) when none is configured.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/lanyard";
/// X.509-SVID lifetime when neither the entry nor `[svid]` sets one.
pub const DEFAULT_X509_TTL: Duration = Duration::from_secs(3600);
/// Lifetime of a self-signed root.
pub const DEFAULT_CA_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Lifetime of the intermediate the agent mints under an upstream root.
pub const DEFAULT_INTERMEDIATE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Concurrent Workload API streams before new ones are refused with Unavailable (EP-5).
pub const DEFAULT_MAX_STREAMS: usize = 10_000;
/// Health endpoint address when none is configured: loopback only.
pub const DEFAULT_HEALTH_ADDR: &str = "127.0.0.1:8788";
/// Default age up to which a pod list is reused without asking the kubelet again.
pub const DEFAULT_SNAPSHOT_TTL: Duration = Duration::from_secs(2);
/// Default time a container missing from the pod list is waited for.
pub const DEFAULT_CONTAINER_WAIT: Duration = Duration::from_secs(5);
/// Default limit of one kubelet request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The kubelet cgroup roots recognised when none are configured: cgroupfs driver, systemd driver,
/// and kind's nested `cgroupRoot: /kubelet` under both.
pub const DEFAULT_CGROUP_ROOTS: &[&str] = &[
    "/kubepods",
    "/kubepods.slice",
    "/kubelet/kubepods",
    "/kubelet.slice/kubelet-kubepods.slice",
];
/// The cgroup namespace that cgroup paths are made absolute in, by default: that of PID 1 (the
/// host's, when the agent runs with `hostPID`).
pub const DEFAULT_HOST_CGROUP_NS: &str = "/proc/1/ns/cgroup";
/// JWT-SVID lifetime when neither the entry nor `[svid]` sets one.
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);
/// How long one JWT signing key signs before the next takes over.
pub const DEFAULT_JWT_KEY_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long inventory rows are kept.
pub const DEFAULT_INVENTORY_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Open connections, all uids together.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Open connections of one uid: 1,500 from one uid never starve another.
pub const DEFAULT_MAX_CONNECTIONS_PER_UID: usize = 512;
/// A connection that opens no stream within this is closed.
pub const DEFAULT_CONNECTION_IDLE: Duration = Duration::from_secs(10);
/// HTTP/2 `MAX_CONCURRENT_STREAMS` per connection.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: usize = 100;
/// Open streams of one uid.
pub const DEFAULT_MAX_STREAMS_PER_UID: usize = 1000;
/// New credentials per second and uid (first X.509 mints, JWT cache misses).
pub const DEFAULT_NEW_CREDENTIALS_PER_SECOND: f64 = 50.0;
/// New credentials one uid may get at once.
pub const DEFAULT_NEW_CREDENTIALS_BURST: usize = 200;
/// New connections per second and uid: a client that reuses its connection opens a handful.
pub const DEFAULT_NEW_CONNECTIONS_PER_SECOND: f64 = 500.0;
/// New connections one uid may open at once.
pub const DEFAULT_NEW_CONNECTIONS_BURST: usize = 1000;
/// Bytes the JWT-SVID cache may hold (tokens and audiences).
pub const DEFAULT_JWT_CACHE_BYTES: usize = 32 * 1024 * 1024;
/// Audit file size before it is rotated.
pub const DEFAULT_AUDIT_MAX_BYTES: usize = 100 * 1024 * 1024;
/// Rotated audit files kept.
pub const DEFAULT_AUDIT_KEEP: usize = 5;
/// Cached JWT-SVIDs (least recently used are dropped beyond this).
pub const DEFAULT_JWT_CACHE_SIZE: usize = 10_000;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub trust_domain: TrustDomain,
    pub socket_path: PathBuf,
    /// The admin API socket (mode 0600, root only).
    pub admin_socket_path: PathBuf,
    pub data_dir: PathBuf,
    pub authority: AuthorityConfig,
    /// How long inventory rows are kept.
    pub inventory_retention: Duration,
    /// Default X.509-SVID lifetime.
    pub x509_ttl: Duration,
    /// Default JWT-SVID lifetime.
    pub jwt_ttl: Duration,
    /// How long one JWT signing key signs.
    pub jwt_key_ttl: Duration,
    /// Bound of the JWT-SVID cache.
    pub jwt_cache_size: usize,
    /// Executables larger than this get no `unix:sha256` selector.
    pub hash_max_bytes: u64,
    /// Follow exec events from the kernel (process connector) to re-attest callers at once.
    pub exec_events: bool,
    /// Use the kernel's `SO_PEERPIDFD` to pin callers where it exists (Linux ≥ 6.5). `false` takes
    /// the path of older kernels everywhere: pidfd opened by PID, start-time and sock_diag checks.
    pub peer_pidfd: bool,
    /// Serve Envoy SDS v3 on the Workload API socket (`[sds] enabled`, default true).
    pub sds: bool,
    /// SDS validation contexts as plain `trusted_ca` instead of Envoy's SPIFFE validator.
    pub sds_disable_spiffe_validation: bool,
    /// ValidateJWTSVID refuses a token whose last holder exited or lost its entitlement
    /// (`[inventory] jwt_revocation`, default true).
    pub jwt_revocation: bool,
    /// The kind of JWT signing keys made from now on (`[authority] jwt_key_type`).
    pub jwt_key_type: crate::ca::jwt::JwtKeyType,
    /// Cedar policies deciding every issuance (`[policy]`); none = entries alone decide.
    pub policy: Option<PolicyConfig>,
    /// OpenID Connect discovery for JWT-SVIDs (`[oidc]`).
    pub oidc: Option<OidcConfig>,
    /// Fair shares and caps (`[limits]`).
    pub limits: crate::limits::LimitsConfig,
    /// Bound of the JWT-SVID cache in bytes (tokens and their audiences).
    pub jwt_cache_bytes: usize,
    /// Registration entries declared in the file, in file order.
    pub entries: Vec<Entry>,
    pub federation: Vec<Federation>,
    /// Identity templates, in file order.
    pub templates: Vec<crate::registry::Template>,
    /// Pod attestation through cgroups and the kubelet (`[kubernetes]`); `None` when off.
    pub kubernetes: Option<crate::attest::k8s::KubernetesConfig>,
    /// The audit stream (`[audit]`); `None` when off.
    pub audit: Option<crate::audit::AuditConfig>,
    /// SPIFFE IDs as metric labels, for at most this many distinct IDs (0: never).
    pub metrics_spiffe_id_labels: usize,
    /// Where `/live` and `/ready` are served (`[health] address`); `None` when off.
    pub health_addr: Option<std::net::SocketAddr>,
}

/// A federated trust domain and the files its bundles are read from (at least one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Federation {
    pub trust_domain: TrustDomain,
    /// X.509 CA certificates, PEM.
    pub bundle_path: Option<PathBuf>,
    /// JWT keys, a JWK Set (or SPIFFE bundle document) in JSON.
    pub jwks_path: Option<PathBuf>,
}

/// Values given on the command line or in the environment; they win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub trust_domain: Option<String>,
    pub socket_path: Option<PathBuf>,
    pub admin_socket_path: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub x509_ttl: Option<String>,
    pub health_addr: Option<String>,
}

/// `--dev`: unprivileged embedded defaults for one user.
#[derive(Debug, Clone)]
pub struct DevMode {
    /// Directory for the socket and data (created 0700).
    pub runtime_dir: PathBuf,
    pub uid: u32,
    pub user_name: String,
}

impl Config {
    /// Loads the configuration: embedded defaults, then the file (if any), then `overrides`, then
    /// `--dev` defaults for anything still unset.
    pub fn load(
        file: Option<&Path>,
        overrides: &Overrides,
        dev: Option<&DevMode>,
    ) -> Result<Self, Errors> {
        let raw = match file {
            Some(path) => RawConfig::read(path)?,
            None => RawConfig::default(),
        };
        validate::validate(raw, overrides, dev)
    }

    /// Parses configuration text (as in `lanyard.toml`) with no overrides.
    pub fn from_toml(text: &str) -> Result<Self, Errors> {
        let raw = RawConfig::parse(text, "lanyard.toml")?;
        validate::validate(raw, &Overrides::default(), None)
    }

    /// The `SPIFFE_ENDPOINT_SOCKET` value for this agent's socket (EP-1).
    pub fn endpoint_socket(&self) -> String {
        format!("unix://{}", self.socket_path.display())
    }
}

impl DevMode {
    /// Dev mode for the invoking user: `$XDG_RUNTIME_DIR/lanyard`, or `/tmp/lanyard-<uid>`.
    pub fn for_current_user() -> Self {
        let uid = crate::sys::euid();
        let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute() && p.is_dir())
            .map(|p| p.join("lanyard"))
            .unwrap_or_else(|| std::env::temp_dir().join(format!("lanyard-{uid}")));
        let user_name = crate::sys::users::user_name(uid).unwrap_or_else(|| format!("uid-{uid}"));
        Self {
            runtime_dir,
            uid,
            user_name,
        }
    }
}

/// `[oidc]`: where the discovery document and the JWKS are served, and the issuer they name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    pub address: std::net::SocketAddr,
    /// The `iss` of JWT-SVIDs and of the discovery document (an https URL, or http for a test or
    /// behind a TLS-terminating ingress).
    pub issuer: String,
    /// TLS certificate chain and key (PEM) to serve HTTPS directly; none = plain HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// `[policy]` as configured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyConfig {
    /// Policy files, or directories whose `*.cedar` files are read (sorted).
    pub paths: Vec<PathBuf>,
    /// A Cedar schema (`.cedarschema`) the policies are validated against, and requests too.
    pub schema_path: Option<PathBuf>,
    /// Operator attributes, `context.env.<name>`.
    pub environment: std::collections::BTreeMap<String, String>,
}
