//! Fixture trees: one directory per scenario, built into a private root for a test.
//!
//! A fixture directory holds:
//! - `root/`: files laid out as on the node (`root/etc/hosts`, `root/proc/cmdline`, ...);
//! - `esp/<XXXX-XXXX>/`: the contents of an ESP, built into a real FAT image with
//!   `mkfs.vfat` + `mtools` at `root/dev/disk/by-uuid/<XXXX-XXXX>` (size in KiB from
//!   `esp/<XXXX-XXXX>.size-kib`, default 64 MiB) unless `root/` already has that file;
//! - `base` (optional): another fixture (path relative to the fixtures directory) this one
//!   starts from; its `root/` and `esp/` are overlaid by this one's;
//! - `remove` (optional): node paths deleted after overlaying, one per line;
//! - `expected.json`: what `inspect` must report (full report for seeds, findings for scenarios).
#![allow(dead_code)]

pub mod fat;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

pub fn fixtures_dir() -> PathBuf {
    // This module is also included by the workspace's end-to-end tests (`tests/`).
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let own = here.join("tests/fixtures");
    if own.is_dir() {
        own
    } else {
        here.join("../agent/tests/fixtures")
    }
}

/// Every fixture directory under `fixtures/<group>/`, sorted.
pub fn fixtures(group: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(fixtures_dir().join(group))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Build the fixture at `dir` into a fresh temporary root.
pub fn build(dir: &Path) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut chain = Vec::new();
    let mut cur = Some(dir.to_path_buf());
    while let Some(d) = cur {
        cur = fs::read_to_string(d.join("base"))
            .ok()
            .map(|b| fixtures_dir().join(b.trim()));
        chain.push(d);
        assert!(
            chain.len() < 10,
            "fixture base chain too long at {}",
            dir.display()
        );
    }
    chain.reverse();
    let mut esps: BTreeMap<String, PathBuf> = BTreeMap::new();
    for d in &chain {
        if d.join("root").is_dir() {
            copy_tree(&d.join("root"), tmp.path());
        }
        for e in fs::read_dir(d.join("esp")).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                esps.insert(e.file_name().to_string_lossy().into_owned(), e.path());
            }
        }
    }
    let by_uuid = tmp.path().join("dev/disk/by-uuid");
    fs::create_dir_all(&by_uuid).expect("mkdir by-uuid");
    for (id, src) in &esps {
        if by_uuid.join(id).exists() {
            continue; // the fixture supplies the device file itself (e.g. garbage bytes)
        }
        let size = fs::read_to_string(src.with_file_name(format!("{id}.size-kib")))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(64 * 1024);
        fat::build_fat_image(src, id, size, &by_uuid.join(id)).expect("building a FAT image");
    }
    for d in &chain {
        for line in fs::read_to_string(d.join("remove"))
            .unwrap_or_default()
            .lines()
        {
            let p = tmp.path().join(line.trim().trim_start_matches('/'));
            if p.is_dir() {
                fs::remove_dir_all(&p).ok();
            } else {
                fs::remove_file(&p).ok();
            }
        }
    }
    tmp
}

fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).expect("mkdir");
    for e in fs::read_dir(src).expect("read fixture dir").flatten() {
        let (from, to) = (e.path(), dst.join(e.file_name()));
        let ft = e.file_type().expect("file type");
        if ft.is_symlink() {
            fs::remove_file(&to).ok();
            std::os::unix::fs::symlink(fs::read_link(&from).expect("readlink"), &to)
                .expect("symlink");
        } else if ft.is_dir() {
            copy_tree(&from, &to);
        } else {
            fs::copy(&from, &to).expect("copy fixture file");
        }
    }
}
