//! The one place where errors become gRPC status codes (SPEC.md §2). Detail goes to the log; the
//! caller gets a short, useful message.

use tonic::Status;

use super::Error;

/// Maps a Workload API error to the status the caller sees.
pub(crate) fn to_status(err: &Error) -> Status {
    match err {
        // EP-2, EP-6.
        Error::InvalidArgument(msg) => Status::invalid_argument(msg.clone()),
        // EP-4: no identity, never a guess.
        Error::NoPeer(why) => {
            tracing::info!(reason = %why, "denied: caller could not be identified");
            Status::permission_denied(
                "no identity: the agent could not identify the calling process",
            )
        }
        Error::Attestation {
            pid,
            source: crate::attest::Error::Kubernetes { message, retryable },
        } => {
            tracing::info!(pid, error = %message, "denied: kubernetes attestation failed");
            let msg = format!("no identity: {message}");
            if *retryable {
                Status::unavailable(msg)
            } else {
                Status::permission_denied(msg)
            }
        }
        Error::Attestation {
            pid,
            source: source @ crate::attest::Error::NameService { .. },
        } => {
            tracing::warn!(pid, error = %source, "denied: the name service did not answer");
            Status::unavailable(format!(
                "no identity: {source}; the agent keeps asking, retry later"
            ))
        }
        Error::Attestation {
            pid,
            source: source @ crate::attest::Error::Hashing { .. },
        } => {
            tracing::warn!(pid, error = %source, "denied: no turn to hash the executable");
            Status::unavailable(format!("no identity: {source}; retry later"))
        }
        Error::Attestation {
            pid,
            source: source @ crate::attest::Error::NameLookups { user, .. },
        } => {
            tracing::warn!(
                pid,
                user,
                error = %source,
                "denied: the user's name-service lookups are all under way"
            );
            Status::unavailable(format!(
                "no identity: {source}; retry once the name service answers"
            ))
        }
        Error::Attestation {
            pid,
            source: crate::attest::Error::Changed { what, .. },
        } => {
            tracing::warn!(
                pid,
                changed = what,
                "denied: the connection's process changed since it connected"
            );
            Status::permission_denied(format!(
                "no identity: the process that opened this connection changed its {what} since it connected; \
                 a process that changes must connect again to be attested as what it is now"
            ))
        }
        Error::Attestation { pid, source } => {
            tracing::info!(pid, error = %source, "denied: attestation failed");
            Status::permission_denied(
                "no identity: the calling process could not be attested (did it exit?)",
            )
        }
        Error::NoIdentity { pid, selectors } => {
            tracing::info!(pid, %selectors, "denied: no entry matches");
            Status::permission_denied(format!(
                "no identity issued: no registration entry matches this process ({selectors})"
            ))
        }
        Error::PolicyDenied(why) => {
            tracing::info!(reason = %why, "denied by policy");
            Status::permission_denied(why.clone())
        }
        Error::EntitlementLost => {
            Status::permission_denied("no identity: this process is no longer entitled to any SVID")
        }
        // EP-5: retryable.
        Error::Overloaded => {
            crate::metrics::metrics().refused("max_streams");
            Status::unavailable("the agent is at its stream limit; retry later")
        }
        // Over the caller's own share: its doing, named; over an agent-wide cap: EP-5.
        Error::Limit(r) if r.is_share() => Status::resource_exhausted(r.to_string()),
        Error::Limit(r) => Status::unavailable(r.to_string()),

        Error::ShuttingDown => Status::unavailable("the agent is shutting down; reconnect"),
        Error::Issuer(e) => {
            // The issuer logs the cause (once at WARN); each caller only hears it is retryable.
            tracing::debug!(error = %e, "svid not available");
            Status::unavailable("the agent could not issue an SVID right now; retry")
        }
        Error::NotEntitled(id) => {
            Status::permission_denied(format!("this process is not entitled to {id}"))
        }
        Error::AudienceForbidden {
            audience,
            spiffe_id,
        } => Status::permission_denied(format!(
            "audience {audience:?} is not allowed for {spiffe_id}; its entry lists the allowed audiences"
        )),
        Error::InvalidJwt(why) => Status::invalid_argument(format!("invalid JWT-SVID: {why}")),
        Error::Inventory(e) => {
            tracing::error!(error = %e, "delivery not recorded; nothing delivered");
            Status::unavailable(
                "the agent could not record the credential, so it was not delivered; retry",
            )
        }
        // EP-7.
        Error::Unimplemented(what) => {
            Status::unimplemented(format!("{what} is not supported by this agent"))
        }
    }
}
