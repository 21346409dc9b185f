//! fleetward's controller.
//!
//! The agents on Proxmox VE nodes report to it over mTLS gRPC. `store` is the one place
//! that touches the database; `state` is the shared controller state (per-node sessions and
//! latest reports, the one authorization decision); `ingest` stores reports; `api` holds
//! the gRPC services behind one authorization layer; `init` creates the CA and identities;
//! `config` and `paths` describe the configuration and the data directory; `fleet`,
//! `rollout` and `shutdown` are pure rules and state machines that the `orchestrate*`
//! drivers run.
#![forbid(unsafe_code)]

pub mod api;
pub mod certs;
#[cfg(test)]
mod chaos;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod events;
pub mod fleet;
#[cfg(test)]
mod golden;
pub mod host;
pub mod ingest;
pub mod init;
pub mod listen;
pub mod metrics;
pub mod notify;
pub mod operation;
pub mod operators;
pub mod orchestrate;
pub mod paths;
pub mod refresh;
pub mod rollout;
pub mod serve;
pub mod shutdown;
pub mod state;
pub mod store;
pub mod webhook;
pub mod window;
pub mod wire;
