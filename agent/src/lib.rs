//! fleetward's node agent.
//!
//! Data flows one way: `collect` reads files under a [`root::Root`] into plain
//! [`fleetward_proto::Facts`]; `rules` turn facts into findings; `inspect` puts both into a
//! [`fleetward_proto::Report`]. Parsers in `parse` are pure (`&str` in, data out) and never
//! panic on any input. The one place that changes the node is `executor`: every
//! node-changing action is an `executor::Action` run by one `Executor` (real or simulated).
//!
//! Modules only import downwards (checked by the workspace's layering test): the leaves
//! `root`, `esp`, `runner` (starting a process) and `simformat` (the simulated node's files);
//! then `parse`; `collect`; `rules`; `probe`; `inspect`; `executor` and `simroot`; `render`;
//! `session`.
#![forbid(unsafe_code)]

pub mod collect;
pub mod esp;
pub mod executor;
pub mod inspect;
pub mod parse;
pub mod probe;
pub mod render;
pub mod root;
pub mod rules;
pub mod runner;
pub mod session;
pub mod simformat;
pub mod simroot;
