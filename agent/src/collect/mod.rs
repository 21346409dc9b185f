//! Collect: read files under a [`Root`] into [`Facts`]. Decides nothing; every judgement
//! lives in `rules`. A file that exists but cannot be read becomes an [`Unreadable`] fact.

mod apt;
mod boot;
mod dns;
mod node;
mod pve;

use crate::parse::control::{self, Installed};
use crate::root::{FileRead, Root};
use fleetward_proto::{Facts, Unreadable};

/// Reads files under the root and remembers which could not be read.
pub struct Reader<'a> {
    pub root: &'a Root,
    unreadable: Vec<Unreadable>,
}

impl<'a> Reader<'a> {
    pub fn new(root: &'a Root) -> Self {
        Reader {
            root,
            unreadable: Vec::new(),
        }
    }

    /// The text of a file; `None` when missing or unreadable (the latter is recorded).
    pub fn text(&mut self, path: &str) -> Option<String> {
        match self.root.read_text(path) {
            FileRead::Text(t) => Some(t),
            FileRead::Missing => None,
            FileRead::Unreadable(reason) => {
                self.unreadable(path, reason);
                None
            }
        }
    }

    /// The bytes of a file; `None` when missing or unreadable (the latter is recorded).
    pub fn bytes(&mut self, path: &str) -> Option<Vec<u8>> {
        match self.root.read_bytes(path) {
            Ok(b) => b,
            Err(reason) => {
                self.unreadable(path, reason);
                None
            }
        }
    }

    pub fn unreadable(&mut self, path: &str, reason: impl Into<String>) {
        self.unreadable.push(Unreadable {
            path: path.to_string(),
            line: None,
            reason: reason.into(),
        });
    }

    /// A line of a file that could not be parsed (the rest of the file was).
    pub fn unreadable_line(&mut self, path: &str, line: u32, reason: impl Into<String>) {
        self.unreadable.push(Unreadable {
            path: path.to_string(),
            line: Some(line),
            reason: reason.into(),
        });
    }
}

/// Read everything the agent knows about the node under `root`.
pub fn collect(root: &Root) -> Facts {
    let mut r = Reader::new(root);
    let packages: Vec<Installed> = r
        .text("/var/lib/dpkg/status")
        .map(|t| control::dpkg_installed(&t))
        .unwrap_or_default();
    let node = node::node(&mut r, &packages);
    let (boot, esps) = boot::boot(&mut r, &packages, node.running_kernel.as_deref());
    let apt = apt::apt(&mut r, &packages);
    let dns = dns::dns(&mut r, node.hostname.as_deref());
    let cluster = node::cluster(&mut r);
    let (guests, ceph, ha) = pve::pve(&mut r, &node, &dns, &cluster);
    let mut unreadable = r.unreadable;
    unreadable.sort();
    unreadable.dedup();
    Facts {
        node,
        boot,
        esps,
        apt,
        dns,
        cluster,
        guests,
        ceph,
        ha,
        unreadable,
    }
}
