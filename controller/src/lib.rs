//! fleetward's controller.
//!
//! The agents on Proxmox VE nodes report to it over mTLS gRPC. `store` is the one place
//! that touches the database; `server` holds the API services behind one authorization
//! layer; `init` creates the CA and identities; `config` and `paths` describe the
//! configuration and the data directory. Fleet/drift rules and orchestration come with
//! later issues.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod demo;
pub mod events;
pub mod fleet;
pub mod init;
pub mod metrics;
pub mod orchestrate;
pub mod orchestrate_shutdown;
pub mod paths;
pub mod rollout;
pub mod serve;
pub mod server;
pub mod shutdown;
pub mod shutdown_api;
pub mod store;
pub mod webhook;
pub mod window;
