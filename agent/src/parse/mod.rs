//! Pure parsers: text in, data (and located errors) out. No I/O, and no input makes
//! any of them panic (each has a property test saying so).

pub mod apt;
pub mod apt_sim;
pub mod boot_tool;
pub mod ceph;
pub mod cluster;
pub mod compressed;
pub mod control;
pub mod efivar;
pub mod ha;
pub mod interfaces;
pub mod kv;
pub mod lines;
pub mod net;
pub mod packages;
pub mod pve;
pub mod running;
pub mod version;
