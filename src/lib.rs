//! lanyard: a per-node SPIFFE agent that gives every process a short-lived identity bound to the
//! exact process that asked. See `docs/ARCHITECTURE.md` for the map and `docs/SPEC.md` for the
//! SPIFFE rules (EP-2, X5-3, ...) the code cites.

pub mod admin_api;
pub mod app;
pub mod atomic_file;
pub mod attest;
pub mod ca;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod health;
pub mod helper;
pub mod inventory;
pub mod issuer;
pub mod proto;
pub mod registry;
pub mod selector;
pub mod shutdown;
pub mod spiffe_id;
pub mod sys;
pub mod telemetry;
pub mod workload_api;
