//! The inspected root: every path the agent reads is resolved under it.
//!
//! Symbolic links are followed *inside* the root, as `chroot` would: an absolute link
//! target starts again at the root, and `..` never climbs above it. So a fixture tree with
//! `/etc/resolv.conf -> /run/systemd/resolve/stub-resolv.conf` reads the fixture's file,
//! never the build machine's. With root `/` this is ordinary path resolution.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Files larger than this are not read whole (no config file the agent reads is near it).
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;
const MAX_LINK_HOPS: usize = 40;

/// What reading one file gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileRead {
    Missing,
    Text(String),
    /// The file exists but is not readable as text; the reason says why.
    Unreadable(String),
}

/// A directory tree standing in for `/`.
#[derive(Debug, Clone)]
pub struct Root {
    base: PathBuf,
    /// With [`Root::with_lookup_cache`]: what each real path looked at was, so that the
    /// directories many files share (`/etc`, `/etc/pve`) are looked at once per inspection.
    seen: Option<Arc<Mutex<HashMap<OsString, Seen>>>>,
}

/// What `lstat` said about one real path.
#[derive(Debug, Clone)]
enum Seen {
    /// A symbolic link, with its target (`None`: the target could not be read).
    Link(Option<String>),
    Meta(fs::Metadata),
    /// The OS error (`lstat` failed).
    Failed(Option<i32>),
}

impl Root {
    pub fn new(base: impl Into<PathBuf>) -> Self {
        Root {
            base: base.into(),
            seen: None,
        }
    }

    /// The live host.
    pub fn host() -> Self {
        Root::new("/")
    }

    /// The same root, remembering what each path it looks at is (link, directory, file,
    /// missing) for as long as this value and its clones live: for one inspection, which
    /// reads the tree as it is at one moment. A `Root` without it looks at every path anew.
    pub fn with_lookup_cache(&self) -> Self {
        Root {
            base: self.base.clone(),
            seen: Some(Arc::default()),
        }
    }

    pub fn is_host(&self) -> bool {
        self.base == Path::new("/")
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Resolve an absolute node path (`/etc/hosts`) to a real path under the root,
    /// following symlinks within the root. A link loop is an error: the path is then never
    /// handed to the OS, which would follow the link outside the root.
    pub fn resolve(&self, node_path: &str) -> Result<PathBuf, String> {
        self.resolve_last(node_path).map(|(path, _)| path)
    }

    /// [`Root::resolve`], and what `lstat` said about the last component when it was looked
    /// at and is no link (then it is what `stat` of the resolved path says).
    fn resolve_last(&self, node_path: &str) -> Result<(PathBuf, Option<Seen>), String> {
        let mut hops = 0;
        let mut path = PathBuf::with_capacity(self.base.as_os_str().len() + node_path.len() + 1);
        path.push(&self.base);
        let mut depth = 0; // components of `path` below the base
                           // From this depth on, `path` is under something that holds nothing (missing, not a
                           // directory, not searchable): every deeper `lstat` fails too, so none is made.
        let mut dead: Option<usize> = None;
        let mut last = None;
        let mut todo: Vec<Cow<'_, str>> = components(node_path).rev().collect();
        while let Some(part) = todo.pop() {
            last = None;
            if part == ".." {
                if depth > 0 {
                    path.pop();
                    depth -= 1;
                }
                if dead.is_some_and(|d| depth < d) {
                    dead = None;
                }
                continue;
            }
            path.push(&*part);
            depth += 1;
            if dead.is_some() {
                continue;
            }
            match self.lstat(&path) {
                Seen::Link(target) => {
                    hops += 1;
                    if hops > MAX_LINK_HOPS {
                        return Err("too many levels of symbolic links".into());
                    }
                    let Some(target) = target else {
                        continue; // kept as a plain component
                    };
                    path.pop();
                    depth -= 1;
                    if target.starts_with('/') {
                        path.clear();
                        path.push(&self.base);
                        depth = 0;
                    }
                    let at = todo.len();
                    todo.extend(components(&target).map(|c| Cow::Owned(c.into_owned())));
                    todo[at..].reverse();
                }
                seen => {
                    if !matches!(&seen, Seen::Meta(m) if m.is_dir()) {
                        dead = Some(depth);
                    }
                    last = Some(seen);
                }
            }
        }
        Ok((path, last))
    }

    /// `lstat` of a real path (and the link's target), remembered with a lookup cache.
    fn lstat(&self, path: &Path) -> Seen {
        let cached = |seen: &Mutex<HashMap<OsString, Seen>>| {
            seen.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(path.as_os_str())
                .cloned()
        };
        if let Some(hit) = self.seen.as_deref().and_then(cached) {
            return hit;
        }
        let seen = match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => Seen::Link(
                fs::read_link(path)
                    .ok()
                    .map(|t| t.to_string_lossy().into_owned()),
            ),
            Ok(meta) => Seen::Meta(meta),
            Err(e) => Seen::Failed(e.raw_os_error()),
        };
        if let Some(cache) = &self.seen {
            cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(path.as_os_str().to_owned(), seen.clone());
        }
        seen
    }

    /// The resolved path and `stat` of it (from the resolution's own `lstat` when it made
    /// one of the last component).
    fn resolve_stat(&self, node_path: &str) -> Result<(PathBuf, io::Result<fs::Metadata>), String> {
        let (real, last) = self.resolve_last(node_path)?;
        let meta = match last {
            Some(Seen::Meta(m)) => Ok(m),
            Some(Seen::Failed(Some(errno))) => Err(io::Error::from_raw_os_error(errno)),
            _ => fs::metadata(&real),
        };
        Ok((real, meta))
    }

    /// The target of a symlink at `node_path` (the link itself, not followed).
    pub fn read_link(&self, node_path: &str) -> Option<String> {
        let (parent, name) = split_parent(node_path);
        let real = self.resolve(parent).ok()?.join(name);
        fs::read_link(real)
            .ok()
            .map(|t| t.to_string_lossy().into_owned())
    }

    pub fn exists(&self, node_path: &str) -> bool {
        self.resolve_stat(node_path).is_ok_and(|(_, m)| m.is_ok())
    }

    pub fn is_dir(&self, node_path: &str) -> bool {
        self.resolve_stat(node_path)
            .is_ok_and(|(_, m)| m.is_ok_and(|m| m.is_dir()))
    }

    /// Read a file as bytes, refusing directories and oversized files.
    pub fn read_bytes(&self, node_path: &str) -> Result<Option<Vec<u8>>, String> {
        let (real, meta) = self.resolve_stat(node_path)?;
        // Never open a FIFO, socket or character device: reading one could block forever.
        let size = match meta {
            Ok(m) if m.is_dir() => return Err("is a directory".into()),
            Ok(m) if !m.is_file() => return Err("not a regular file".into()),
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let file = match fs::File::open(&real) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        // Room for the whole file and one byte more: read in one call, then one that says
        // end of file (growing from nothing took a call per doubling).
        let mut buf = Vec::with_capacity(size.min(MAX_FILE_BYTES) as usize + 1);
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(|e| e.to_string())?;
        if buf.len() as u64 > MAX_FILE_BYTES {
            return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
        }
        Ok(Some(buf))
    }

    /// Read a text file. Invalid UTF-8 or NUL bytes make it `Unreadable`.
    pub fn read_text(&self, node_path: &str) -> FileRead {
        match self.read_bytes(node_path) {
            Ok(None) => FileRead::Missing,
            Err(reason) => FileRead::Unreadable(reason),
            Ok(Some(bytes)) => text_from_bytes(bytes),
        }
    }

    /// Names in a directory, sorted; empty when it does not exist.
    pub fn list_dir(&self, node_path: &str) -> Vec<String> {
        let Ok(rd) = self
            .resolve(node_path)
            .and_then(|p| fs::read_dir(p).map_err(|e| e.to_string()))
        else {
            return Vec::new();
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Size in bytes of a file, following links within the root.
    pub fn file_size(&self, node_path: &str) -> Option<u64> {
        let (_, meta) = self.resolve_stat(node_path).ok()?;
        meta.ok().map(|m| m.len())
    }
}

/// Decode file bytes as text the way the agent's parsers expect.
pub fn text_from_bytes(bytes: Vec<u8>) -> FileRead {
    if bytes.contains(&0) {
        return FileRead::Unreadable("contains NUL bytes (binary data)".into());
    }
    match String::from_utf8(bytes) {
        Ok(s) => FileRead::Text(s),
        Err(e) => FileRead::Unreadable(format!(
            "not valid UTF-8 text (at byte {})",
            e.utf8_error().valid_up_to()
        )),
    }
}

fn components(path: &str) -> impl DoubleEndedIterator<Item = Cow<'_, str>> {
    Path::new(path).components().filter_map(|c| match c {
        Component::Normal(s) => Some(s.to_string_lossy()),
        Component::ParentDir => Some(Cow::Borrowed("..")),
        _ => None,
    })
}

fn split_parent(node_path: &str) -> (&str, &str) {
    let trimmed = node_path.trim_end_matches('/');
    match trimmed.rfind('/') {
        Some(0) => ("/", &trimmed[1..]),
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => ("/", trimmed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_links_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        fs::create_dir_all(dir.path().join("run/systemd/resolve")).unwrap();
        fs::write(
            dir.path().join("run/systemd/resolve/stub-resolv.conf"),
            "nameserver 127.0.0.53\n",
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "/run/systemd/resolve/stub-resolv.conf",
            dir.path().join("etc/resolv.conf"),
        )
        .unwrap();
        assert_eq!(
            root.read_text("/etc/resolv.conf"),
            FileRead::Text("nameserver 127.0.0.53\n".into())
        );
        assert_eq!(
            root.read_link("/etc/resolv.conf").as_deref(),
            Some("/run/systemd/resolve/stub-resolv.conf")
        );
    }

    #[test]
    fn dotdot_never_climbs_above_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        assert_eq!(
            root.resolve("/../../etc/passwd"),
            Ok(dir.path().join("etc/passwd"))
        );
    }

    #[test]
    fn link_loops_end() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/b", dir.path().join("a")).unwrap();
        std::os::unix::fs::symlink("/a", dir.path().join("b")).unwrap();
        let root = Root::new(dir.path());
        assert!(matches!(root.read_text("/a"), FileRead::Unreadable(_)));
    }

    #[test]
    fn fifos_are_not_opened() {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mkfifo")
            .arg(dir.path().join("hosts"))
            .status()
            .unwrap();
        assert!(status.success());
        let root = Root::new(dir.path());
        assert_eq!(
            root.read_text("/hosts"),
            FileRead::Unreadable("not a regular file".into())
        );
    }

    #[test]
    fn binary_is_unreadable_not_an_error() {
        assert!(matches!(
            text_from_bytes(vec![0xff, 0xfe, 0x00]),
            FileRead::Unreadable(_)
        ));
    }

    /// Every kind of path, through a root with and without the lookup cache: the same
    /// answers (the cache and the shortcuts under a missing or non-directory component
    /// change how many `lstat`s are made, never what is found).
    #[test]
    fn the_lookup_cache_changes_no_answer() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["etc/pve/nodes/n1", "run/real", "usr/lib"] {
            fs::create_dir_all(d.join(sub)).unwrap();
        }
        fs::write(d.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
        fs::write(d.join("etc/pve/nodes/n1/a.conf"), "a\n").unwrap();
        fs::write(d.join("run/real/file"), "real\n").unwrap();
        fs::write(d.join("etc/binary"), [0xff, 0x00]).unwrap();
        symlink("/run/real", d.join("etc/abs")).unwrap();
        symlink("../run/real/file", d.join("etc/rel")).unwrap();
        symlink("nodes/n1", d.join("etc/pve/local")).unwrap();
        symlink("/../../run/./real/", d.join("etc/up")).unwrap();
        symlink("/loop2", d.join("loop1")).unwrap();
        symlink("/loop1", d.join("loop2")).unwrap();
        symlink("/nowhere/at/all", d.join("etc/dangling")).unwrap();
        let paths = [
            "/",
            "/etc",
            "/etc/hosts",
            "/etc/hosts/x",
            "/etc/hosts/../hosts",
            "/etc/missing/../hosts",
            "/etc/missing/deeper/../../hosts",
            "/etc/abs/file",
            "/etc/abs/../abs/file",
            "/etc/rel",
            "/etc/pve/local/a.conf",
            "/etc/pve/local/../n1",
            "/etc/up/file",
            "/loop1",
            "/loop1/x",
            "/etc/dangling",
            "/etc/dangling/x",
            "/etc/binary",
            "/../../etc/hosts",
            "/usr/lib",
            "/usr/lib/none",
            "/etc/pve/nodes",
        ];
        let plain = Root::new(d);
        let cached = plain.with_lookup_cache();
        for _ in 0..2 {
            for p in paths {
                assert_eq!(plain.resolve(p), cached.resolve(p), "{p}");
                assert_eq!(plain.read_text(p), cached.read_text(p), "{p}");
                assert_eq!(plain.exists(p), cached.exists(p), "{p}");
                assert_eq!(plain.is_dir(p), cached.is_dir(p), "{p}");
                assert_eq!(plain.file_size(p), cached.file_size(p), "{p}");
                assert_eq!(plain.list_dir(p), cached.list_dir(p), "{p}");
                assert_eq!(plain.read_link(p), cached.read_link(p), "{p}");
            }
        }
        assert_eq!(plain.read_text("/etc/rel"), FileRead::Text("real\n".into()));
        assert_eq!(
            plain.read_text("/etc/up/file"),
            FileRead::Text("real\n".into())
        );
        assert!(
            matches!(plain.read_text("/etc/hosts/x"), FileRead::Unreadable(r) if r.contains("Not a directory"))
        );
        assert_eq!(
            plain.read_text("/etc/missing/../hosts"),
            plain.read_text("/etc/hosts")
        );
    }
}
