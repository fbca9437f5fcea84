//! `[limits]`: fair shares per uid and agent-wide caps (see `limits.rs`).

use super::raw::RawLimits;
use super::{
    DEFAULT_CONNECTION_IDLE, DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_UID, DEFAULT_MAX_STREAMS, DEFAULT_MAX_STREAMS_PER_UID,
    DEFAULT_NEW_CONNECTIONS_BURST, DEFAULT_NEW_CONNECTIONS_PER_SECOND,
    DEFAULT_NEW_CREDENTIALS_BURST, DEFAULT_NEW_CREDENTIALS_PER_SECOND,
};
use crate::fields::{Collector, count, duration};
use crate::limits::LimitsConfig;

pub(super) fn limits(errs: &mut Collector, raw: &RawLimits) -> LimitsConfig {
    let mut counted = |field: &str, value: Option<usize>, default: usize, zero_means: &str| {
        let v = value.unwrap_or(default);
        count(errs, field, v, zero_means);
        v
    };
    let max_streams = counted(
        "limits.max_streams",
        raw.max_streams,
        DEFAULT_MAX_STREAMS,
        "refuse every workload",
    );
    let max_streams_per_uid = counted(
        "limits.max_streams_per_uid",
        raw.max_streams_per_uid,
        DEFAULT_MAX_STREAMS_PER_UID.min(max_streams),
        "refuse every workload",
    );
    let max_connections = counted(
        "limits.max_connections",
        raw.max_connections,
        DEFAULT_MAX_CONNECTIONS,
        "refuse every connection",
    );
    let max_connections_per_uid = counted(
        "limits.max_connections_per_uid",
        raw.max_connections_per_uid,
        DEFAULT_MAX_CONNECTIONS_PER_UID.min(max_connections),
        "refuse every connection",
    );
    let max_concurrent_streams = counted(
        "limits.max_concurrent_streams",
        raw.max_concurrent_streams,
        DEFAULT_MAX_CONCURRENT_STREAMS,
        "refuse every request",
    );
    let burst = counted(
        "limits.new_credentials_burst",
        raw.new_credentials_burst,
        DEFAULT_NEW_CREDENTIALS_BURST,
        "refuse every new credential",
    );
    let connections_burst = counted(
        "limits.new_connections_burst",
        raw.new_connections_burst,
        DEFAULT_NEW_CONNECTIONS_BURST,
        "refuse every connection",
    );
    let rate = per_second(
        errs,
        "limits.new_credentials_per_second",
        raw.new_credentials_per_second,
        DEFAULT_NEW_CREDENTIALS_PER_SECOND,
    );
    let connections_rate = per_second(
        errs,
        "limits.new_connections_per_second",
        raw.new_connections_per_second,
        DEFAULT_NEW_CONNECTIONS_PER_SECOND,
    );
    for (field, per_uid, total) in [
        (
            "limits.max_streams_per_uid",
            max_streams_per_uid,
            max_streams,
        ),
        (
            "limits.max_connections_per_uid",
            max_connections_per_uid,
            max_connections,
        ),
    ] {
        if per_uid > total {
            errs.push(
                field,
                format!("{per_uid} is more than the agent-wide cap {total}; a share is part of it"),
            );
        }
    }
    let connection_idle = duration(
        errs,
        "limits.connection_idle",
        raw.connection_idle.as_deref(),
        DEFAULT_CONNECTION_IDLE,
    );
    if connection_idle.is_zero() {
        errs.push(
            "limits.connection_idle",
            "0 would close every connection before its first request; such as \"10s\"",
        );
    }
    LimitsConfig {
        max_connections,
        max_connections_per_uid,
        connection_idle,
        max_concurrent_streams: u32::try_from(max_concurrent_streams).unwrap_or(u32::MAX),
        max_streams,
        max_streams_per_uid,
        new_credentials_per_second: rate,
        new_credentials_burst: u32::try_from(burst).unwrap_or(u32::MAX),
        new_connections_per_second: connections_rate,
        new_connections_burst: u32::try_from(connections_burst).unwrap_or(u32::MAX),
    }
}

/// A token bucket's refill rate: `value` (else `default`), which must be above 0 and at most a
/// million a second.
fn per_second(errs: &mut Collector, field: &str, value: Option<f64>, default: f64) -> f64 {
    let rate = value.unwrap_or(default);
    if !(rate.is_finite() && rate > 0.0 && rate <= 1_000_000.0) {
        errs.push(
            field,
            format!("{rate} is not a rate between 0 (exclusive) and 1000000; such as {default}"),
        );
    }
    rate
}
