//! Generated gRPC code for the SPIFFE Workload API (`proto/workload.proto`), plus redacting `Debug`
//! for the messages that carry private keys or bearer tokens.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

use std::fmt;

include!(concat!(env!("OUT_DIR"), "/_.rs"));

impl fmt::Debug for X509svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("x509_svid_len", &self.x509_svid.len())
            .field("x509_svid_key", &"[redacted]")
            .field("bundle_len", &self.bundle.len())
            .field("hint", &self.hint)
            .finish()
    }
}

impl fmt::Debug for Jwtsvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwtsvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("svid", &"[redacted]")
            .field("hint", &self.hint)
            .finish()
    }
}

impl fmt::Debug for Witsvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Witsvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("wit_svid", &"[redacted]")
            .field("wit_svid_key", &"[redacted]")
            .field("hint", &self.hint)
            .finish()
    }
}

/// lanyard's own admin API (`proto/lanyard/admin/v1/admin.proto`).
pub mod admin {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    include!(concat!(env!("OUT_DIR"), "/lanyard.admin.v1.rs"));
}
