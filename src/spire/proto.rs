//! The SPIRE server API as lanyard's own `.proto` subset (proto/spire/), generated at build time.
#![allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]

pub(crate) mod spire {
    pub(crate) mod api {
        pub(crate) mod types {
            include!(concat!(env!("OUT_DIR"), "/spire.api.types.rs"));
        }
        pub(crate) mod server {
            pub(crate) mod agent {
                pub(crate) mod v1 {
                    include!(concat!(env!("OUT_DIR"), "/spire.api.server.agent.v1.rs"));
                }
            }
            pub(crate) mod entry {
                pub(crate) mod v1 {
                    include!(concat!(env!("OUT_DIR"), "/spire.api.server.entry.v1.rs"));
                }
            }
            pub(crate) mod svid {
                pub(crate) mod v1 {
                    include!(concat!(env!("OUT_DIR"), "/spire.api.server.svid.v1.rs"));
                }
            }
            pub(crate) mod bundle {
                pub(crate) mod v1 {
                    include!(concat!(env!("OUT_DIR"), "/spire.api.server.bundle.v1.rs"));
                }
            }
        }
    }
}

pub(crate) use spire::api::server::{
    agent::v1 as agent, bundle::v1 as bundle, entry::v1 as entry, svid::v1 as svid,
};
pub(crate) use spire::api::types;

impl std::fmt::Debug for types::AttestationData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttestationData")
            .field("type", &self.r#type)
            .field("payload", &"[redacted]")
            .finish()
    }
}

impl std::fmt::Debug for types::Jwtsvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JWTSVID")
            .field("id", &self.id)
            .field("expires_at", &self.expires_at)
            .field("token", &"[redacted]")
            .finish()
    }
}
