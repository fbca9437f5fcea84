//! Prometheus metrics (`/metrics` on the health listener, OpenMetrics text).
//!
//! One registry per process (`metrics()`), written to by the modules that see the events and
//! encoded on each scrape. Label values are bounded sets (methods, gRPC codes, outcomes, limits);
//! no PID, audience or path is ever a label. SPIFFE IDs become labels only when the operator opts in
//! (`[metrics] spiffe_id_labels = N`), for at most N distinct IDs (the rest count as `other`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Rpc {
    pub method: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Method {
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Mint {
    pub kind: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Limit {
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Event {
    pub event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Id {
    pub spiffe_id: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// A gRPC code as its name (`Ok`, `InvalidArgument`, ...), without allocating.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "Ok",
        Cancelled => "Cancelled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// Latencies from 25 µs to about 1.6 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_025, 2.0, 17))
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<Rpc, Counter>,
    pub request_seconds: Histograms<Method>,
    pub connections_open: Gauge,
    pub streams_open: Gauge,
    pub svid_mints: Family<Mint, Counter>,
    pub attestations: Family<Outcome, Counter>,
    /// Re-attestations before a push: afresh, or shared with another stream of the connection.
    pub reattestations: Family<Outcome, Counter>,
    /// SDS responses Envoy rejected (NACK).
    pub sds_nacks: Family<Outcome, Counter>,
    pub kubelet_requests: Family<Outcome, Counter>,
    pub kubelet_seconds: Histogram,
    pub inventory_writes: Family<Outcome, Counter>,
    pub inventory_commit_seconds: Histogram,
    pub inventory_rows: Gauge,
    pub limit_refusals: Family<Limit, Counter>,
    pub audit_events: Family<Event, Counter>,
    pub svids_by_id: Family<Id, Counter>,
    id_cap: AtomicUsize,
    ids_seen: Mutex<HashSet<String>>,
    /// The series of successful calls of each [`HOT_METHODS`] method and of successful
    /// attestations, looked up once: a family lookup hashes its labels on every call.
    hot_rpc: [OnceLock<(Counter, Histogram)>; HOT_METHODS.len()],
    hot_attested: OnceLock<Counter>,
    hot_reattested: [OnceLock<Counter>; 2],
}

/// The Workload API methods whose successful calls are counted through kept handles.
const HOT_METHODS: [&str; 5] = [
    "FetchX509SVID",
    "FetchJWTSVID",
    "FetchX509Bundles",
    "FetchJWTBundles",
    "ValidateJWTSVID",
];

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency),
            connections_open: Gauge::default(),
            streams_open: Gauge::default(),
            svid_mints: Family::default(),
            attestations: Family::default(),
            reattestations: Family::default(),
            sds_nacks: Family::default(),
            kubelet_requests: Family::default(),
            kubelet_seconds: latency(),
            inventory_writes: Family::default(),
            inventory_commit_seconds: latency(),
            inventory_rows: Gauge::default(),
            limit_refusals: Family::default(),
            audit_events: Family::default(),
            svids_by_id: Family::default(),
            id_cap: AtomicUsize::new(0),
            ids_seen: Mutex::new(HashSet::new()),
            hot_rpc: Default::default(),
            hot_attested: OnceLock::new(),
            hot_reattested: Default::default(),
            registry: Registry::default(),
        };
        registry.register(
            "lanyard_build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register(
            "lanyard_workload_api_requests",
            "Workload API calls by method and gRPC status code (streams: at open)",
            m.requests.clone(),
        );
        registry.register(
            "lanyard_workload_api_request_duration_seconds",
            "Time to the answer (streams: to the first message), by method",
            m.request_seconds.clone(),
        );
        registry.register(
            "lanyard_connections_open",
            "Open Workload API connections",
            m.connections_open.clone(),
        );
        registry.register(
            "lanyard_streams_open",
            "Open Workload API streams",
            m.streams_open.clone(),
        );
        registry.register(
            "lanyard_svid_mints",
            "SVIDs signed, by kind (x509, jwt) and outcome (first, rotation, failed)",
            m.svid_mints.clone(),
        );
        registry.register(
            "lanyard_attestations",
            "Caller attestations by outcome (ok, or why no identity)",
            m.attestations.clone(),
        );
        registry.register(
            "lanyard_stream_reattestations",
            "Callers attested again before a push, by outcome: afresh (from the kernel) or shared \
             (another stream of the same connection attested the process after the change both push)",
            m.reattestations.clone(),
        );
        registry.register(
            "lanyard_sds_rejections",
            "SDS responses an Envoy rejected (NACK with error_detail or an older version)",
            m.sds_nacks.clone(),
        );
        registry.register(
            "lanyard_kubelet_requests",
            "Pod list requests to the kubelet by outcome",
            m.kubelet_requests.clone(),
        );
        registry.register(
            "lanyard_kubelet_request_duration_seconds",
            "Kubelet pod list request latency",
            m.kubelet_seconds.clone(),
        );
        registry.register(
            "lanyard_inventory_writes",
            "Inventory commits by outcome",
            m.inventory_writes.clone(),
        );
        registry.register(
            "lanyard_inventory_commit_duration_seconds",
            "Inventory commit latency (write and fsync)",
            m.inventory_commit_seconds.clone(),
        );
        registry.register(
            "lanyard_inventory_rows",
            "Rows in the inventory",
            m.inventory_rows.clone(),
        );
        registry.register(
            "lanyard_limit_refusals",
            "Requests and connections refused by a limit, by limit",
            m.limit_refusals.clone(),
        );
        registry.register(
            "lanyard_audit_events",
            "Audit events written, by event",
            m.audit_events.clone(),
        );
        registry.register(
            "lanyard_svids_by_spiffe_id",
            "Credentials delivered per SPIFFE ID (only with [metrics] spiffe_id_labels)",
            m.svids_by_id.clone(),
        );
        // Known series start at zero, so dashboards and rate() see them before the first event.
        for method in [
            "FetchX509SVID",
            "FetchX509Bundles",
            "FetchJWTSVID",
            "FetchJWTBundles",
            "ValidateJWTSVID",
        ] {
            let _ = m.requests.get_or_create(&Rpc { method, code: "Ok" });
            let _ = m.request_seconds.get_or_create(&Method { method });
        }
        for kind in ["x509", "jwt"] {
            for outcome in ["first", "rotation", "failed"] {
                let _ = m.svid_mints.get_or_create(&Mint { kind, outcome });
            }
        }
        let zero = |family: &Family<Outcome, Counter>, outcomes: &[&'static str]| {
            for &outcome in outcomes {
                let _ = family.get_or_create(&Outcome { outcome });
            }
        };
        zero(
            &m.attestations,
            &[
                "ok",
                "no_peer",
                "exited",
                "changed",
                "kubernetes",
                "over_limit",
                "error",
            ],
        );
        zero(&m.reattestations, &["afresh", "shared"]);
        zero(&m.kubelet_requests, &["ok", "error"]);
        zero(&m.sds_nacks, &["nack"]);
        zero(&m.inventory_writes, &["ok", "error"]);
        for limit in [
            "max_connections",
            "max_connections_per_uid",
            "max_streams",
            "max_streams_per_uid",
            "new_credentials_per_second",
            "new_connections_per_second",
        ] {
            let _ = m.limit_refusals.get_or_create(&Limit { limit });
        }
        for event in ["issued", "rotated", "withdrawn"] {
            let _ = m.audit_events.get_or_create(&Event { event });
        }
        Self { registry, ..m }
    }

    /// The metrics in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// One Workload API call.
    pub fn rpc(&self, method: &'static str, code: tonic::Code, took: Duration) {
        if code == tonic::Code::Ok
            && let Some(i) = HOT_METHODS.iter().position(|m| *m == method)
        {
            let (calls, seconds) = self.hot_rpc[i].get_or_init(|| {
                (
                    self.requests
                        .get_or_create(&Rpc {
                            method,
                            code: code_name(code),
                        })
                        .clone(),
                    self.request_seconds
                        .get_or_create(&Method { method })
                        .clone(),
                )
            });
            calls.inc();
            seconds.observe(took.as_secs_f64());
            return;
        }
        self.requests
            .get_or_create(&Rpc {
                method,
                code: code_name(code),
            })
            .inc();
        self.request_seconds
            .get_or_create(&Method { method })
            .observe(took.as_secs_f64());
    }

    /// One attestation and its outcome.
    pub fn attestation(&self, outcome: &'static str) {
        if outcome == "ok" {
            self.hot_attested
                .get_or_init(|| {
                    self.attestations
                        .get_or_create(&Outcome { outcome })
                        .clone()
                })
                .inc();
            return;
        }
        self.count(&self.attestations, outcome);
    }

    /// One re-attestation before a push, shared with another stream of the connection or not.
    pub fn reattestation(&self, shared: bool) {
        let outcome = if shared { "shared" } else { "afresh" };
        self.hot_reattested[usize::from(shared)]
            .get_or_init(|| {
                self.reattestations
                    .get_or_create(&Outcome { outcome })
                    .clone()
            })
            .inc();
    }

    pub fn count(&self, family: &Family<Outcome, Counter>, outcome: &'static str) {
        family.get_or_create(&Outcome { outcome }).inc();
    }

    pub fn mint(&self, kind: &'static str, outcome: &'static str) {
        self.svid_mints.get_or_create(&Mint { kind, outcome }).inc();
    }

    pub fn refused(&self, limit: &'static str) {
        self.limit_refusals.get_or_create(&Limit { limit }).inc();
    }

    /// Opts in to SPIFFE IDs as labels, for at most `cap` distinct IDs (0: off).
    pub fn set_spiffe_id_labels(&self, cap: usize) {
        self.id_cap.store(cap, Ordering::Relaxed);
    }

    /// One credential delivered for `spiffe_id` (counted only when opted in).
    pub fn delivered(&self, spiffe_id: &str) {
        let cap = self.id_cap.load(Ordering::Relaxed);
        if cap == 0 {
            return;
        }
        let label = match self.ids_seen.lock() {
            Ok(seen) if seen.contains(spiffe_id) => spiffe_id.to_owned(),
            Ok(mut seen) if seen.len() < cap => {
                seen.insert(spiffe_id.to_owned());
                spiffe_id.to_owned()
            }
            _ => "other".to_owned(),
        };
        self.svids_by_id
            .get_or_create(&Id { spiffe_id: label })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_handles_count_into_the_same_series_as_the_families() {
        let m = Metrics::new();
        for _ in 0..3 {
            m.rpc("FetchJWTSVID", tonic::Code::Ok, Duration::from_micros(90));
            m.attestation("ok");
        }
        m.rpc(
            "FetchJWTSVID",
            tonic::Code::PermissionDenied,
            Duration::from_micros(90),
        );
        m.rpc("NotAMethod", tonic::Code::Ok, Duration::from_micros(90));
        m.attestation("changed");
        let text = m.render();
        for series in [
            r#"lanyard_workload_api_requests_total{method="FetchJWTSVID",code="Ok"} 3"#,
            r#"lanyard_workload_api_requests_total{method="FetchJWTSVID",code="PermissionDenied"} 1"#,
            r#"lanyard_workload_api_requests_total{method="NotAMethod",code="Ok"} 1"#,
            r#"lanyard_workload_api_request_duration_seconds_count{method="FetchJWTSVID"} 4"#,
            r#"outcome="ok"} 3"#,
            r#"outcome="changed"} 1"#,
        ] {
            assert!(text.contains(series), "{series} in {text}");
        }
    }

    #[test]
    fn renders_openmetrics_with_bounded_labels() {
        let m = Metrics::new();
        m.rpc("FetchX509SVID", tonic::Code::Ok, Duration::from_micros(120));
        m.mint("x509", "first");
        m.set_spiffe_id_labels(2);
        for id in [
            "spiffe://td/a",
            "spiffe://td/b",
            "spiffe://td/c",
            "spiffe://td/a",
        ] {
            m.delivered(id);
        }
        let text = m.render();
        assert!(text.contains("lanyard_build_info{version="), "{text}");
        assert!(
            text.contains(
                r#"lanyard_workload_api_requests_total{method="FetchX509SVID",code="Ok"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("lanyard_workload_api_request_duration_seconds_bucket"));
        assert!(
            text.contains(r#"lanyard_svids_by_spiffe_id_total{spiffe_id="other"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"lanyard_svids_by_spiffe_id_total{spiffe_id="spiffe://td/a"} 2"#));
        assert!(text.ends_with("# EOF\n"));
    }
}
