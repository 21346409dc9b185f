//! Collect: read files under a [`Root`] into [`Facts`]. Decides nothing; every judgement
//! lives in `rules`. A file that exists but cannot be read becomes an [`Unreadable`] fact.

mod apt;
mod boot;
mod dns;
mod node;
mod pve;
mod system;

use crate::parse::control::{self, Installed};
use crate::parse::lines::{self, Lines};
use crate::root::{FileRead, Root};
use fleetward_proto::{Facts, SystemFacts, Unreadable};

/// What reading one input gave: it is missing, it exists but could not be read (recorded as
/// an unreadable fact: unknown, never absent), or its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<T> {
    Missing,
    Unreadable,
    Read(T),
}

impl<T> Input<T> {
    pub fn read(self) -> Option<T> {
        match self {
            Input::Read(t) => Some(t),
            _ => None,
        }
    }

    pub fn is_unreadable(&self) -> bool {
        matches!(self, Input::Unreadable)
    }
}

/// Reads files under the root and remembers which could not be read, and which were read.
pub struct Reader<'a> {
    pub root: &'a Root,
    unreadable: Vec<Unreadable>,
    inputs: Vec<String>,
}

impl<'a> Reader<'a> {
    pub fn new(root: &'a Root) -> Self {
        Reader {
            root,
            unreadable: Vec::new(),
            inputs: Vec::new(),
        }
    }

    /// The text of a file; `None` when missing or unreadable (the latter is recorded).
    pub fn text(&mut self, path: &str) -> Option<String> {
        self.input(path).read()
    }

    /// The text of a file, saying whether it is missing or unreadable (the latter recorded).
    pub fn input(&mut self, path: &str) -> Input<String> {
        self.inputs.push(path.to_string());
        match self.root.read_text(path) {
            FileRead::Text(t) => Input::Read(t),
            FileRead::Missing => Input::Missing,
            FileRead::Unreadable(reason) => {
                self.unreadable(path, reason);
                Input::Unreadable
            }
        }
    }

    /// The bytes of a file; `None` when missing or unreadable (the latter is recorded).
    pub fn bytes(&mut self, path: &str) -> Option<Vec<u8>> {
        self.bytes_input(path).read()
    }

    /// The bytes of a file, saying whether it is missing or unreadable (the latter recorded).
    pub fn bytes_input(&mut self, path: &str) -> Input<Vec<u8>> {
        self.inputs.push(path.to_string());
        match self.root.read_bytes(path) {
            Ok(Some(b)) => Input::Read(b),
            Ok(None) => Input::Missing,
            Err(reason) => {
                self.unreadable(path, reason);
                Input::Unreadable
            }
        }
    }

    /// A line-oriented file decoded line by line: each line that is not text is an
    /// unreadable line, and the others still count.
    pub fn lines(&mut self, path: &str) -> Input<Lines> {
        match self.bytes_input(path) {
            Input::Read(b) => {
                let l = lines::split(&b);
                let bad: Vec<u32> = l.bad_lines().collect();
                for line in bad {
                    self.unreadable_line(path, line, "not UTF-8 text");
                }
                Input::Read(l)
            }
            Input::Missing => Input::Missing,
            Input::Unreadable => Input::Unreadable,
        }
    }

    /// Names in a directory, sorted; a directory that exists but cannot be listed is
    /// recorded as unreadable.
    pub fn list_dir(&mut self, path: &str) -> Input<Vec<String>> {
        let Ok(real) = self.root.resolve(path) else {
            self.unreadable(path, "too many levels of symbolic links");
            return Input::Unreadable;
        };
        match std::fs::read_dir(&real) {
            Ok(rd) => {
                let mut names: Vec<String> = rd
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                Input::Read(names)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Input::Missing,
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Input::Missing,
            Err(e) => {
                self.unreadable(path, format!("cannot list the directory: {e}"));
                Input::Unreadable
            }
        }
    }

    /// Remember that `path` was read by other means than this reader (an ESP image, a
    /// package list), so it counts among the inputs.
    pub fn note_input(&mut self, path: &str) {
        self.inputs.push(path.to_string());
    }

    /// Whether a file (or a line of it) was recorded as unreadable.
    pub fn was_unreadable(&self, path: &str) -> bool {
        self.unreadable.iter().any(|u| u.path == path)
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
    collect_with_inputs(root).0
}

/// [`collect`], and every file path it tried to read (in order, each once): the inputs.
pub fn collect_with_inputs(root: &Root) -> (Facts, Vec<String>) {
    // Each directory on the way to a file (`/etc`, `/etc/pve`) is looked at once.
    let root = &root.with_lookup_cache();
    let mut r = Reader::new(root);
    let status = r.input("/var/lib/dpkg/status");
    let packages_unknown = status.is_unreadable();
    let packages: Vec<Installed> = status
        .read()
        .map(|t| control::dpkg_installed(&t))
        .unwrap_or_default();
    let node = node::node(&mut r, &packages);
    let (boot, esps) = boot::boot(&mut r, &packages, node.running_kernel.as_deref());
    let apt = apt::apt(&mut r, &packages);
    let dns = dns::dns(&mut r, node.hostname.as_deref());
    let cluster = node::cluster(&mut r);
    let (guests, ceph, ha) = pve::pve(&mut r, &node, &dns, &cluster);
    let system = SystemFacts {
        packages_unknown,
        installed_packages: u32::try_from(packages.len()).unwrap_or(u32::MAX),
        ..system::system(&mut r, &packages)
    };
    let mut unreadable = r.unreadable;
    unreadable.sort();
    unreadable.dedup();
    let mut inputs = Vec::new();
    for p in r.inputs {
        if !inputs.contains(&p) {
            inputs.push(p);
        }
    }
    let facts = Facts {
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
        system,
        agent: Default::default(),
    };
    (facts, inputs)
}
