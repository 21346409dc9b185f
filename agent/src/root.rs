//! The inspected root: every path the agent reads is resolved under it.
//!
//! Symbolic links are followed *inside* the root, as `chroot` would: an absolute link
//! target starts again at the root, and `..` never climbs above it. So a fixture tree with
//! `/etc/resolv.conf -> /run/systemd/resolve/stub-resolv.conf` reads the fixture's file,
//! never the build machine's. With root `/` this is ordinary path resolution.

use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

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
}

impl Root {
    pub fn new(base: impl Into<PathBuf>) -> Self {
        Root { base: base.into() }
    }

    /// The live host.
    pub fn host() -> Self {
        Root::new("/")
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
        let mut hops = 0;
        let mut done: Vec<String> = Vec::new();
        let mut todo: Vec<String> = components(node_path).into_iter().rev().collect();
        while let Some(part) = todo.pop() {
            if part == ".." {
                done.pop();
                continue;
            }
            let candidate = self.join(&done, &part);
            match fs::symlink_metadata(&candidate) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_LINK_HOPS {
                        return Err("too many levels of symbolic links".into());
                    }
                    let Ok(target) = fs::read_link(&candidate) else {
                        done.push(part);
                        continue;
                    };
                    let target = target.to_string_lossy().into_owned();
                    if target.starts_with('/') {
                        done.clear();
                    }
                    for c in components(&target).into_iter().rev() {
                        todo.push(c);
                    }
                }
                _ => done.push(part),
            }
        }
        let mut path = self.base.clone();
        for part in done {
            path.push(part);
        }
        Ok(path)
    }

    fn join(&self, done: &[String], part: &str) -> PathBuf {
        let mut p = self.base.clone();
        for d in done {
            p.push(d);
        }
        p.push(part);
        p
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
        self.resolve(node_path).is_ok_and(|p| p.exists())
    }

    pub fn is_dir(&self, node_path: &str) -> bool {
        self.resolve(node_path).is_ok_and(|p| p.is_dir())
    }

    /// Read a file as bytes, refusing directories and oversized files.
    pub fn read_bytes(&self, node_path: &str) -> Result<Option<Vec<u8>>, String> {
        let real = self.resolve(node_path)?;
        // Never open a FIFO, socket or character device: reading one could block forever.
        match fs::metadata(&real) {
            Ok(m) if m.is_dir() => return Err("is a directory".into()),
            Ok(m) if !m.is_file() => return Err("not a regular file".into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        }
        let file = match fs::File::open(&real) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let mut buf = Vec::new();
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
        let real = self.resolve(node_path).ok()?;
        fs::metadata(real).ok().map(|m| m.len())
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

fn components(path: &str) -> Vec<String> {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
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
}
