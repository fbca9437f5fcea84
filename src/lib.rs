//! lanyard: a per-node SPIFFE agent that gives every process a short-lived identity bound to the
//! exact process that asked. See `docs/ARCHITECTURE.md` for the map and `docs/SPEC.md` for the
//! SPIFFE rules (EP-2, X5-3, ...) the code cites.
//!
//! The public surface is what the binary, the integration tests and the benches use: starting the
//! agent (`app`, `config`, `clock`), talking to it (`client`, `proto`), and the building blocks whose
//! behaviour the tests pin down on their own (`attest`, `ca`, `encoding`, `registry`, `selector`,
//! `spiffe_id`, `sys`, `health`). Everything else is crate-private.

#![deny(unsafe_code)]

mod admin_api;
pub mod app;
mod atomic_file;
pub mod attest;
pub mod audit;
pub mod ca;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
mod db;
pub mod encoding;
mod fields;
pub mod health;
mod helper;
mod inventory;
mod issuer;
mod lifecycle;
pub mod limits;
pub mod metrics;
mod oidc;
#[cfg(feature = "policy")]
pub mod policy;
pub mod proto;
mod recency;
pub mod registry;
pub mod selector;
mod shutdown;
pub mod spiffe_id;
pub mod spire;
// The only module allowed `unsafe`: thin, checked wrappers over the kernel interfaces.
#[allow(unsafe_code)]
pub mod sys;
mod telemetry;
mod wake;
mod workload_api;

pub use fields::{Errors, FieldError};
