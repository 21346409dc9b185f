//! Build a simulated node's root tree from a fixture directory (`fleetward-agent sim-root`),
//! for `run --simulate` and `fleetward demo`: no Proxmox node and no system tools needed.
//!
//! The fixture format is the one of the agent's tests (`agent/tests/support/mod.rs`):
//! - `root/`: files laid out as on the node, copied as they are (symlinks stay symlinks);
//! - `esp/<XXXX-XXXX>/`: the contents of an ESP, written into a FAT image at
//!   `dev/disk/by-uuid/<XXXX-XXXX>` under the root with that volume id (size in KiB from
//!   `esp/<XXXX-XXXX>.size-kib`, default 64 MiB, FAT32 from 34 MiB up), unless `root/`
//!   already has that file; a file `NAME.zeros` whose content is a decimal byte count
//!   becomes `NAME` of that many patterned bytes (large kernels, cheaply);
//! - `base` (optional): another fixture, relative to the fixtures directory (by default
//!   the fixture's grandparent, as in `fixtures/<group>/<name>`), overlaid by this one;
//! - `remove` (optional): node paths deleted after overlaying, one per line.
//!
//! FAT images are written in pure Rust with `fatfs` (sparse files), unlike the tests'
//! `mkfs.vfat` + `mtools` images, so a demo needs neither dosfstools nor mtools. This is
//! test and demo tooling: it writes only below the output directory, which must be new or
//! empty.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use fatfs::{FatType, FileSystem, FormatVolumeOptions, FsOptions};

/// Default ESP image size, as in the tests' fixtures.
pub const DEFAULT_ESP_KIB: u64 = 64 * 1024;
/// Longest `base` chain followed.
const MAX_CHAIN: usize = 10;
/// FAT32 from this size up (as the tests' `mkfs.vfat -F 32`).
const FAT32_FROM_KIB: u64 = 34 * 1024;
/// Largest ESP image accepted (the image is sparse, but a typo should not make a huge file).
const MAX_ESP_KIB: u64 = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SimRootError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("fixture {fixture}: {message}")]
    Fixture { fixture: PathBuf, message: String },
    #[error("{0} must be a new or empty directory (sim-root writes a whole node tree into it)")]
    OutNotEmpty(PathBuf),
    #[error("ESP image {path}: {source}")]
    Fat { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SimRootError + '_ {
    move |source| SimRootError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What [`build`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The fixture directories applied, base first.
    pub chain: Vec<PathBuf>,
    /// The ESP images written (volume ids), sorted.
    pub esps: Vec<String>,
}

/// `XXXX-XXXX` (hex) → the volume id.
pub fn parse_volume_id(s: &str) -> Option<u32> {
    let (hi, lo) = s.split_once('-')?;
    let hex = |p: &str| p.len() == 4 && p.chars().all(|c| c.is_ascii_hexdigit());
    if !hex(hi) || !hex(lo) {
        return None;
    }
    u32::from_str_radix(&format!("{hi}{lo}"), 16).ok()
}

/// Build the fixture at `fixture` into `out` (created if missing; must be empty). `base`
/// files are resolved against `fixtures_root` (default: `fixture/../..`).
pub fn build(
    fixture: &Path,
    fixtures_root: Option<&Path>,
    out: &Path,
) -> Result<Built, SimRootError> {
    let bad = |message: String| SimRootError::Fixture {
        fixture: fixture.to_path_buf(),
        message,
    };
    if !fixture.is_dir() {
        return Err(bad("not a directory".into()));
    }
    let default_root;
    let fixtures_root = match fixtures_root {
        Some(r) => r,
        None => {
            default_root = fixture.join("../..");
            &default_root
        }
    };
    let mut chain = Vec::new();
    let mut cur = Some(fixture.to_path_buf());
    while let Some(d) = cur {
        if chain.len() == MAX_CHAIN {
            return Err(bad(format!("`base` chain longer than {MAX_CHAIN}")));
        }
        if !d.is_dir() {
            return Err(bad(format!("base {} is not a directory", d.display())));
        }
        cur = match fs::read_to_string(d.join("base")) {
            Ok(b) => Some(fixtures_root.join(b.trim())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&d.join("base"))(e)),
        };
        chain.push(d);
    }
    chain.reverse();
    if !chain.iter().any(|d| d.join("root").is_dir()) {
        return Err(bad("has no root/ directory (not a fixture?)".into()));
    }

    prepare_out(out)?;
    let mut esps: BTreeMap<String, PathBuf> = BTreeMap::new();
    for d in &chain {
        if d.join("root").is_dir() {
            copy_tree(&d.join("root"), out)?;
        }
        let esp_dir = d.join("esp");
        if !esp_dir.is_dir() {
            continue;
        }
        for e in fs::read_dir(&esp_dir).map_err(io_err(&esp_dir))? {
            let e = e.map_err(io_err(&esp_dir))?;
            if e.path().is_dir() {
                let id = e.file_name().to_string_lossy().into_owned();
                if parse_volume_id(&id).is_none() {
                    return Err(bad(format!("esp/{id}: not a volume id XXXX-XXXX")));
                }
                esps.insert(id, e.path());
            }
        }
    }
    let by_uuid = out.join("dev/disk/by-uuid");
    fs::create_dir_all(&by_uuid).map_err(io_err(&by_uuid))?;
    let mut written = Vec::new();
    for (id, src) in &esps {
        let image = by_uuid.join(id);
        if image.symlink_metadata().is_ok() {
            continue; // the fixture supplies the device file itself (e.g. garbage bytes)
        }
        let size_file = src.with_file_name(format!("{id}.size-kib"));
        let size_kib = match fs::read_to_string(&size_file) {
            Ok(s) => s
                .trim()
                .parse()
                .map_err(|e| bad(format!("{}: {e}", size_file.display())))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => DEFAULT_ESP_KIB,
            Err(e) => return Err(io_err(&size_file)(e)),
        };
        build_fat_image(src, id, size_kib, &image)?;
        written.push(id.clone());
    }
    for d in &chain {
        let list = d.join("remove");
        let text = match fs::read_to_string(&list) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&list)(e)),
        };
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let rel = Path::new(line.trim_start_matches('/'));
            if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
                return Err(bad(format!("remove: {line:?} is not a plain node path")));
            }
            let p = out.join(rel);
            let r = match p.symlink_metadata() {
                Ok(m) if m.is_dir() => fs::remove_dir_all(&p),
                Ok(_) => fs::remove_file(&p),
                Err(_) => Ok(()),
            };
            r.map_err(io_err(&p))?;
        }
    }
    Ok(Built {
        chain,
        esps: written,
    })
}

/// `out` must not exist, or be an empty directory.
fn prepare_out(out: &Path) -> Result<(), SimRootError> {
    match fs::read_dir(out) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(SimRootError::OutNotEmpty(out.to_path_buf()));
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(out).map_err(io_err(out))
        }
        Err(e) => Err(io_err(out)(e)),
    }
}

fn copy_tree(src: &Path, dst: &Path) -> Result<(), SimRootError> {
    fs::create_dir_all(dst).map_err(io_err(dst))?;
    for e in fs::read_dir(src).map_err(io_err(src))? {
        let e = e.map_err(io_err(src))?;
        let (from, to) = (e.path(), dst.join(e.file_name()));
        let ft = e.file_type().map_err(io_err(&from))?;
        if ft.is_symlink() {
            let target = fs::read_link(&from).map_err(io_err(&from))?;
            if to.symlink_metadata().is_ok() {
                fs::remove_file(&to).map_err(io_err(&to))?;
            }
            std::os::unix::fs::symlink(target, &to).map_err(io_err(&to))?;
        } else if ft.is_dir() {
            copy_tree(&from, &to)?;
        } else {
            fs::copy(&from, &to).map_err(io_err(&from))?;
        }
    }
    Ok(())
}

/// Write a FAT image at `image` (replaced if it exists) holding the tree `src`, with volume
/// id `volume_id` (`XXXX-XXXX`), label `ESP` and `size_kib` KiB (FAT32 from 34 MiB up).
pub fn build_fat_image(
    src: &Path,
    volume_id: &str,
    size_kib: u64,
    image: &Path,
) -> Result<(), SimRootError> {
    let fat = |source: io::Error| SimRootError::Fat {
        path: image.to_path_buf(),
        source,
    };
    let invalid = |m: String| fat(io::Error::new(io::ErrorKind::InvalidInput, m));
    let id = parse_volume_id(volume_id)
        .ok_or_else(|| invalid(format!("bad volume id {volume_id:?}, want XXXX-XXXX")))?;
    if !(64..=MAX_ESP_KIB).contains(&size_kib) {
        return Err(invalid(format!(
            "size {size_kib} KiB: want 64 to {MAX_ESP_KIB}"
        )));
    }
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(image)
        .map_err(fat)?;
    file.set_len(size_kib * 1024).map_err(fat)?;
    let mut opts = FormatVolumeOptions::new()
        .volume_id(id)
        .volume_label(*b"ESP        ");
    if size_kib >= FAT32_FROM_KIB {
        opts = opts.fat_type(FatType::Fat32);
    }
    fatfs::format_volume(&mut file, opts).map_err(fat)?;
    io::Seek::rewind(&mut file).map_err(fat)?;
    let fs = FileSystem::new(&mut file, FsOptions::new()).map_err(fat)?;
    copy_into_fat(src, &fs.root_dir())?;
    fs.unmount().map_err(fat)?;
    file.sync_all().map_err(fat)
}

fn copy_into_fat<T: fatfs::ReadWriteSeek>(
    src: &Path,
    dir: &fatfs::Dir<'_, T>,
) -> Result<(), SimRootError> {
    let mut entries: Vec<fs::DirEntry> = fs::read_dir(src)
        .map_err(io_err(src))?
        .collect::<Result<_, _>>()
        .map_err(io_err(src))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            return Err(io_err(&path)(io::Error::new(
                io::ErrorKind::InvalidData,
                "file name is not UTF-8",
            )));
        };
        let in_fat = |source: io::Error| SimRootError::Fat {
            path: path.clone(),
            source,
        };
        if path.is_dir() {
            let sub = dir.create_dir(&name).map_err(in_fat)?;
            copy_into_fat(&path, &sub)?;
            continue;
        }
        match name.strip_suffix(".zeros") {
            Some(stem) => {
                let text = fs::read_to_string(&path).map_err(io_err(&path))?;
                let len: u64 = text.trim().parse().map_err(|e| {
                    in_fat(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("a .zeros file holds a byte count: {e}"),
                    ))
                })?;
                let mut f = dir.create_file(stem).map_err(in_fat)?;
                f.truncate().map_err(in_fat)?;
                write_pattern(&mut f, len).map_err(in_fat)?;
                f.flush().map_err(in_fat)?;
            }
            None => {
                let bytes = fs::read(&path).map_err(io_err(&path))?;
                let mut f = dir.create_file(&name).map_err(in_fat)?;
                f.truncate().map_err(in_fat)?;
                f.write_all(&bytes).map_err(in_fat)?;
                f.flush().map_err(in_fat)?;
            }
        }
    }
    Ok(())
}

/// `len` bytes of `i % 251` (the tests' `*.zeros` pattern), in chunks.
fn write_pattern(w: &mut impl Write, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 251]; // a multiple of 251: every chunk starts at pattern 0
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::esp::read_esp;
    use fleetward_proto::Loader;

    const K: &str = "6.8.12-4-pve";

    fn write(p: &Path, text: &str) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    #[test]
    fn volume_ids() {
        assert_eq!(parse_volume_id("3F2A-91C4"), Some(0x3F2A_91C4));
        assert_eq!(parse_volume_id("0bad-f00d"), Some(0x0BAD_F00D));
        for bad in [
            "",
            "3F2A91C4",
            "3F2A-91C",
            "3F2A-91C45",
            "XF2A-91C4",
            "+F2A-91C4",
        ] {
            assert_eq!(parse_volume_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_esp_reader_reads_back_what_was_written() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        write(&src.join("EFI/BOOT/BOOTX64.EFI"), "shim");
        write(&src.join("loader/loader.conf"), "timeout 3\n");
        let kdir = src.join(format!("EFI/proxmox/{K}"));
        write(&kdir.join(format!("vmlinuz-{K}.zeros")), "300000\n");
        write(&kdir.join(format!("initrd.img-{K}")), "initrd bytes");
        let img = t.path().join("esp.img");
        build_fat_image(&src, "0BAD-F00D", 8192, &img).unwrap();
        let esp = read_esp(&img).unwrap();
        assert_eq!(esp.volume_id, "0BAD-F00D");
        assert_eq!(esp.kernels, [K]);
        assert_eq!(esp.loader, Loader::SystemdBoot);
        assert!(esp.has_removable_loader);
        assert_eq!(esp.largest_kernel_pair_bytes, Some(300_000 + 12));
        assert!(esp.total_bytes > 7_000_000 && esp.free_bytes < esp.total_bytes - 300_000);

        // Byte for byte, through fatfs: the pattern and the plain file.
        let file = fs::File::open(&img).unwrap();
        let fs = FileSystem::new(file, FsOptions::new()).unwrap();
        let read = |p: &str| {
            let mut v = Vec::new();
            io::Read::read_to_end(&mut fs.root_dir().open_file(p).unwrap(), &mut v).unwrap();
            v
        };
        let kernel = read(&format!("EFI/proxmox/{K}/vmlinuz-{K}"));
        assert_eq!(kernel.len(), 300_000);
        assert!(kernel
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i % 251) as u8));
        assert_eq!(read("EFI/BOOT/BOOTX64.EFI"), b"shim");
        assert_eq!(fs.volume_label().trim_end(), "ESP");
    }

    #[test]
    fn a_64_mib_image_is_fat32_and_sparse() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        write(&src.join("EFI/proxmox/grubx64.efi"), "grub");
        let img = t.path().join("esp.img");
        build_fat_image(&src, "3F2A-91C4", DEFAULT_ESP_KIB, &img).unwrap();
        let fs = FileSystem::new(fs::File::open(&img).unwrap(), FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), FatType::Fat32);
        let meta = fs::metadata(&img).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 < 8 << 20, "mostly holes");
        assert_eq!(read_esp(&img).unwrap().loader, Loader::Grub);
    }

    #[test]
    fn base_chain_overlay_remove_and_esp_images() {
        let t = tempfile::tempdir().unwrap();
        let fx = t.path().join("fixtures");
        let base = fx.join("seed/a");
        write(&base.join("root/etc/hostname"), "a\n");
        write(&base.join("root/etc/gone"), "x");
        write(&base.join("esp/1111-2222/EFI/BOOT/BOOTX64.EFI"), "x");
        write(&base.join("esp/1111-2222.size-kib"), "4096\n");
        let top = fx.join("scenarios/b");
        write(&top.join("base"), "seed/a\n");
        write(&top.join("root/etc/hostname"), "b\n");
        write(&top.join("remove"), "/etc/gone\n");
        write(&top.join("root/dev/disk/by-uuid/DEAD-BEEF"), "garbage");
        write(&top.join("esp/DEAD-BEEF/x"), "not built: root/ supplies it");
        std::os::unix::fs::symlink("/etc/hostname", t.path().join("link")).unwrap();
        fs::rename(t.path().join("link"), top.join("root/etc/link")).unwrap();

        let out = t.path().join("out");
        let built = build(&top, None, &out).unwrap();
        assert_eq!(built.chain.len(), 2);
        assert_eq!(built.esps, ["1111-2222"]);
        assert_eq!(fs::read_to_string(out.join("etc/hostname")).unwrap(), "b\n");
        assert!(!out.join("etc/gone").exists());
        assert_eq!(
            fs::read_link(out.join("etc/link")).unwrap(),
            Path::new("/etc/hostname")
        );
        let esp = read_esp(&out.join("dev/disk/by-uuid/1111-2222")).unwrap();
        assert_eq!(
            (esp.volume_id.as_str(), esp.has_removable_loader),
            ("1111-2222", true)
        );
        assert_eq!(
            fs::read(out.join("dev/disk/by-uuid/DEAD-BEEF")).unwrap(),
            b"garbage"
        );

        // A second build into the same directory refuses; so do bad fixtures.
        assert!(matches!(
            build(&top, None, &out),
            Err(SimRootError::OutNotEmpty(_))
        ));
        write(&fx.join("bad/c/root/etc/hostname"), "c");
        write(&fx.join("bad/c/remove"), "../../etc/passwd\n");
        let e = build(&fx.join("bad/c"), None, &t.path().join("o2")).unwrap_err();
        assert!(e.to_string().contains("not a plain node path"), "{e}");
        write(&fx.join("bad/d/base"), "bad/d");
        write(&fx.join("bad/d/root/x"), "");
        let e = build(&fx.join("bad/d"), None, &t.path().join("o3")).unwrap_err();
        assert!(e.to_string().contains("chain"), "{e}");
        let e = build(&t.path().join("nope"), None, &t.path().join("o4")).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        write(&fx.join("bad/e/root/x"), "");
        write(&fx.join("bad/e/esp/NOT-AVOL/x"), "");
        let e = build(&fx.join("bad/e"), None, &t.path().join("o5")).unwrap_err();
        assert!(e.to_string().contains("volume id"), "{e}");
    }

    /// A seed node built here inspects exactly like the tests' mkfs.vfat-built fixture,
    /// except for the ESP's size and free space (the two formatters lay FAT32 out
    /// differently).
    #[test]
    fn seed_node_inspects_like_its_expected_report() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for node in ["pve-01", "pve-02", "pve-03"] {
            let t = tempfile::tempdir().unwrap();
            let out = t.path().join("root");
            build(&fixtures.join("seed").join(node), None, &out).unwrap();
            let report = crate::inspect::inspect(&crate::root::Root::new(out));
            let mut got: serde_json::Value =
                serde_json::from_str(&fleetward_proto::report_to_json(&report)).unwrap();
            let text =
                fs::read_to_string(fixtures.join("seed").join(node).join("expected.json")).unwrap();
            let mut want: serde_json::Value = serde_json::from_str(&text).unwrap();
            for v in [&mut got, &mut want] {
                for esp in v["facts"]["esps"].as_array_mut().unwrap() {
                    esp["total_bytes"] = serde_json::Value::Null;
                    esp["free_bytes"] = serde_json::Value::Null;
                }
            }
            assert_eq!(got, want, "{node}");
        }
    }
}
