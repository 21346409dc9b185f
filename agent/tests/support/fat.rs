//! Build real FAT images for tests with `mkfs.vfat` (dosfstools) and `mtools`.
//!
//! Self-contained (std only) so it can be included with `#[path = "support/fat.rs"] mod fat;`.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const MISSING: &str = "install the Debian packages `dosfstools` and `mtools`";

/// Find mkfs.vfat on PATH, in /sbin or in /usr/sbin.
pub fn mkfs_vfat() -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/sbin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("mkfs.vfat"))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("mkfs.vfat not found: {MISSING}"))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .map_err(|e| format!("{cmd:?}: {e} ({MISSING})"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(format!(
        "{cmd:?} failed ({}): {}",
        out.status,
        stderr.trim()
    ))
}

/// Build a FAT image at `image` holding the tree `src`, with volume id `XXXX-XXXX` and
/// `size_kib` KiB (FAT32 from 34 MiB up, else whatever mkfs.vfat picks). A file named
/// `NAME.zeros` whose content is a decimal byte count becomes `NAME` of that many
/// (deterministic, patterned) bytes, so fixtures can hold large kernels cheaply.
pub fn build_fat_image(
    src: &Path,
    volume_id: &str,
    size_kib: u64,
    image: &Path,
) -> Result<(), String> {
    let mkfs = mkfs_vfat()?;
    let volid: String = volume_id.chars().filter(|c| *c != '-').collect();
    if volid.len() != 8 || u32::from_str_radix(&volid, 16).is_err() {
        return Err(format!("bad volume id {volume_id:?}, want XXXX-XXXX"));
    }
    let _ = fs::remove_file(image);
    let help = Command::new(&mkfs).arg("--help").output();
    let invariant = help.is_ok_and(|o| {
        let text = [o.stdout, o.stderr].concat();
        String::from_utf8_lossy(&text).contains("--invariant")
    });
    let mut cmd = Command::new(&mkfs);
    if invariant {
        cmd.arg("--invariant"); // before -i: it sets volume id 1234-ABCD itself
    }
    cmd.args(["-C", "-n", "ESP", "-i", &volid]);
    if size_kib >= 34 * 1024 {
        cmd.args(["-F", "32"]);
    }
    run(cmd.arg(image).arg(size_kib.to_string()))?;
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    copy_tree(src, "", image, scratch.path())
}

fn copy_tree(dir: &Path, rel: &str, image: &Path, scratch: &Path) -> Result<(), String> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if path.is_dir() {
            let target = format!("{rel}/{name}");
            run(Command::new("mmd")
                .arg("-i")
                .arg(image)
                .arg(format!("::{target}")))?;
            copy_tree(&path, &target, image, scratch)?;
            continue;
        }
        let (source, name) = match name.strip_suffix(".zeros") {
            Some(stem) => {
                let text =
                    fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let len: usize = text
                    .trim()
                    .parse()
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                let made = scratch.join(stem);
                fs::write(&made, bytes).map_err(|e| e.to_string())?;
                (made, stem.to_string())
            }
            None => (path, name),
        };
        let target = format!("::{rel}/{name}");
        run(Command::new("mcopy")
            .arg("-i")
            .arg(image)
            .arg(&source)
            .arg(target))?;
    }
    Ok(())
}
