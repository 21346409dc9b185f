//! Read an EFI system partition's FAT file system directly, read-only, without mounting.
//!
//! The image or block device is opened read-only and handed to `fatfs` behind a wrapper
//! whose `Write` always fails, so no byte can be written: `fatfs` would otherwise rewrite
//! the FAT32 FSInfo sector on drop after it had to recount free clusters (volumes with the
//! dirty bit set, as on any ESP currently mounted by Linux). Hostile images are bounded:
//! directory depth, entries visited, bytes hashed and read calls are capped, and panics
//! inside `fatfs` are caught.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use fatfs::{Dir, DirEntry, FileSystem, FsOptions};
use fleetward_proto::Loader;
use sha2::{Digest, Sha256};

const MAX_DEPTH: usize = 8;
const MAX_ENTRIES: usize = 10_000;
const MAX_HASHED_BYTES: u64 = 1 << 30;
/// `fatfs` loops internally over deleted directory entries, so a cyclic cluster chain of
/// deleted entries would never return; a budget of read calls on the device ends that.
/// A real 1 GiB ESP needs well under a million.
const MAX_READ_CALLS: u64 = 8_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspContent {
    pub loader: Loader,
    /// Kernel versions held, sorted ascending (lexicographically).
    pub kernels: Vec<String>,
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// Largest `vmlinuz` + `initrd.img` pair of one kernel version.
    pub largest_kernel_pair_bytes: Option<u64>,
    /// Hex SHA-256 over (path, size, content) of every kernel and initrd file, sorted by
    /// lower-cased path: equal digests mean equal kernel files.
    pub content_digest: String,
    /// Boot-sector volume id, `XXXX-XXXX`.
    pub volume_id: String,
    /// `EFI/BOOT/BOOTX64.EFI` exists.
    pub has_removable_loader: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EspError {
    #[error("cannot open: {0}")]
    Open(#[source] io::Error),
    #[error("not a FAT file system: {0}")]
    NotFat(String),
    #[error("corrupt FAT file system: {0}")]
    Corrupt(String),
}

fn corrupt(e: io::Error) -> EspError {
    EspError::Corrupt(e.to_string())
}

/// Bytes per cached block of the device, and how many blocks are kept.
const BLOCK: usize = 4096;
const CACHED_BLOCKS: usize = 16;

/// The device as `fatfs` sees it: reads (within a budget) and seeks, never writes.
///
/// `fatfs` reads a few bytes at a time (each field of the boot sector, each 32-byte
/// directory entry, each 4-byte FAT entry) and seeks between them, so the device is read in
/// aligned 4 KiB blocks that are kept (16 of them, replaced oldest first): the blocks of the
/// FAT and of the directory being walked stay cached while `fatfs` alternates between them.
/// Seeks only move the position. Without this a FAT32 free-cluster recount (any volume
/// mounted by Linux has its dirty bit set) cost two system calls per cluster.
struct ReadOnly {
    file: File,
    reads_left: u64,
    pos: u64,
    /// `(block number, bytes read from it)`: fewer than `BLOCK` only at the device's end.
    blocks: Vec<(u64, Vec<u8>)>,
    /// The slot that is replaced next.
    next_slot: usize,
}

impl ReadOnly {
    fn new(file: File) -> Self {
        ReadOnly {
            file,
            reads_left: MAX_READ_CALLS,
            pos: 0,
            blocks: Vec::with_capacity(CACHED_BLOCKS),
            next_slot: 0,
        }
    }

    /// The cached block `number`, read from the device if it is not cached.
    fn block(&mut self, number: u64) -> io::Result<&[u8]> {
        if let Some(i) = self.blocks.iter().position(|(n, _)| *n == number) {
            return Ok(&self.blocks[i].1);
        }
        let mut data = vec![0; BLOCK];
        let mut len = 0;
        while len < BLOCK {
            match self
                .file
                .read_at(&mut data[len..], number * BLOCK as u64 + len as u64)
            {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        data.truncate(len);
        let slot = if self.blocks.len() < CACHED_BLOCKS {
            self.blocks.push((number, data));
            self.blocks.len() - 1
        } else {
            let slot = self.next_slot;
            self.next_slot = (slot + 1) % CACHED_BLOCKS;
            self.blocks[slot] = (number, data);
            slot
        };
        Ok(&self.blocks[slot].1)
    }
}

impl Read for ReadOnly {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.reads_left == 0 {
            return Err(io::Error::other(
                "read budget exhausted (looping metadata?)",
            ));
        }
        self.reads_left -= 1;
        if buf.is_empty() {
            return Ok(0);
        }
        let (number, offset) = (self.pos / BLOCK as u64, (self.pos % BLOCK as u64) as usize);
        let n = if buf.len() >= BLOCK && !self.blocks.iter().any(|(n, _)| *n == number) {
            // A file's content, a cluster at a time: read straight into the caller's buffer.
            loop {
                match self.file.read_at(buf, self.pos) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    read => break read?,
                }
            }
        } else {
            let block = self.block(number)?;
            let n = block.len().saturating_sub(offset).min(buf.len());
            buf[..n].copy_from_slice(&block[offset..offset + n]);
            n
        };
        // fatfs maps end-of-file inside a directory to "end of directory", so a truncated
        // image would look empty; a valid volume never reads past the end of its device.
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "read past the end of the device (truncated image?)",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ReadOnly {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let (base, delta) = match pos {
            SeekFrom::Start(p) => {
                self.pos = p;
                return Ok(p);
            }
            SeekFrom::Current(d) => (self.pos, d),
            // The device's size (a block device's metadata says 0).
            SeekFrom::End(d) => (self.file.seek(SeekFrom::End(0))?, d),
        };
        self.pos = base.checked_add_signed(delta).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the device's start",
            )
        })?;
        Ok(self.pos)
    }
}

impl Write for ReadOnly {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "read-only"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(()) // nothing is ever buffered; fatfs flushes on every file drop
    }
}

/// Read the ESP in the image file or block device at `path`.
pub fn read_esp(path: &Path) -> Result<EspContent, EspError> {
    let mut disk = ReadOnly::new(File::open(path).map_err(EspError::Open)?);
    check_geometry(&mut disk)?;
    // fatfs 0.3.6 does unchecked arithmetic on on-disk values, which panics in debug builds
    // (and wraps in release builds): e.g. a directory entry naming cluster 1 underflows
    // `cluster - 2` (see the `hostile_images_are_errors` test). Such a panic means corrupt.
    catch_unwind(AssertUnwindSafe(|| read_fs(disk))).unwrap_or_else(|_| {
        Err(EspError::Corrupt(
            "malformed metadata (FAT reader panicked)".into(),
        ))
    })
}

/// Reject boot sectors whose geometry overflows fatfs's u32 arithmetic while it validates
/// them (`fats * sectors_per_fat` with sectors_per_fat_32 = 0x8000_0001 panics in debug
/// builds and wraps to a bogus layout in release builds).
fn check_geometry(disk: &mut ReadOnly) -> Result<(), EspError> {
    let mut b = [0u8; 512];
    disk.read_exact(&mut b)
        .map_err(|e| EspError::NotFat(e.to_string()))?;
    disk.rewind().map_err(EspError::Open)?;
    let le16 = |o: usize| u64::from(u16::from_le_bytes([b[o], b[o + 1]]));
    let le32 = |o: usize| u64::from(u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]));
    let pick = |small: u64, large: u64| if small != 0 { small } else { large };
    let (bps, spf, total) = (
        le16(0x0B).max(1),
        pick(le16(0x16), le32(0x24)),
        pick(le16(0x13), le32(0x20)),
    );
    let first_data = le16(0x0E) + u64::from(b[0x10]) * spf + (le16(0x11) * 32).div_ceil(bps);
    if first_data >= total || spf * bps * 8 > u64::from(u32::MAX) {
        return Err(EspError::NotFat("implausible FAT geometry".into()));
    }
    Ok(())
}

/// `vmlinuz-*` / `initrd.img-*` in the root or in `efi/proxmox/<kver>/` (lower-cased path).
fn is_kernel_file(path: &str) -> bool {
    let v: Vec<&str> = path.split('/').collect();
    let name = v[v.len() - 1];
    (v.len() == 1 || (v.len() == 4 && v[..2] == ["efi", "proxmox"]))
        && (name.starts_with("vmlinuz-") || name.starts_with("initrd.img-"))
}

fn read_fs(disk: ReadOnly) -> Result<EspContent, EspError> {
    let fs =
        FileSystem::new(disk, FsOptions::new()).map_err(|e| EspError::NotFat(e.to_string()))?;
    let id = fs.volume_id();
    let stats = fs.stats().map_err(corrupt)?;
    let cluster = u64::from(stats.cluster_size());
    let total_bytes = u64::from(stats.total_clusters()) * cluster;

    let mut nodes = BTreeMap::new();
    walk(fs.root_dir(), "", 0, &mut nodes, &mut 0)?;
    let is_file = |p: &str| nodes.get(p).is_some_and(|e| e.is_file());
    let systemd_boot = is_file("loader/loader.conf");
    let grub_dir = nodes.get("grub").is_some_and(|e| e.is_dir());
    let grub_efi = nodes.iter().any(|(p, e)| {
        let v: Vec<&str> = p.split('/').collect();
        e.is_file()
            && v.len() == 3
            && v[0] == "efi"
            && v[2].starts_with("grub")
            && v[2].ends_with(".efi")
    });
    let loader = match (systemd_boot, grub_dir) {
        (true, true) => Loader::Both,
        (true, false) => Loader::SystemdBoot,
        _ if grub_dir || grub_efi => Loader::Grub,
        _ => Loader::Unknown,
    };

    let mut kernels = BTreeSet::new();
    for (p, e) in &nodes {
        let v: Vec<&str> = p.split('/').collect();
        if e.is_dir() && v.len() == 3 && v[..2] == ["efi", "proxmox"] {
            kernels.insert(e.file_name());
        } else if e.is_file() && v.len() == 1 && p.starts_with("vmlinuz-") {
            kernels.insert(e.file_name()["vmlinuz-".len()..].to_string());
        }
    }
    let size = |p: String| nodes.get(&p).filter(|e| e.is_file()).map(|e| e.len());
    let pair = |dir: &str, k: &str| {
        let (v, i) = (
            size(format!("{dir}vmlinuz-{k}")),
            size(format!("{dir}initrd.img-{k}")),
        );
        v.or(i).map(|_| v.unwrap_or(0) + i.unwrap_or(0))
    };
    let largest_kernel_pair_bytes = (kernels.iter().map(|k| k.to_lowercase()))
        .flat_map(|k| [pair(&format!("efi/proxmox/{k}/"), &k), pair("", &k)])
        .flatten()
        .max();

    let (mut digest, mut budget) = (Sha256::new(), MAX_HASHED_BYTES.min(total_bytes));
    for (p, e) in nodes
        .iter()
        .filter(|(p, e)| e.is_file() && is_kernel_file(p))
    {
        let hex = hash_file(e, &mut budget)?;
        digest.update(format!("{p}\0{}\0{hex}\n", e.len()));
    }
    Ok(EspContent {
        loader,
        kernels: kernels.into_iter().collect(),
        total_bytes,
        free_bytes: u64::from(stats.free_clusters()) * cluster,
        largest_kernel_pair_bytes,
        content_digest: format!("{:x}", digest.finalize()),
        volume_id: format!("{:04X}-{:04X}", id >> 16, id & 0xFFFF),
        has_removable_loader: is_file("efi/boot/bootx64.efi"),
    })
}

/// Collect every entry under `dir`, keyed by lower-cased path relative to the ESP root.
fn walk<'a>(
    dir: Dir<'a, ReadOnly>,
    prefix: &str,
    depth: usize,
    out: &mut BTreeMap<String, DirEntry<'a, ReadOnly>>,
    seen: &mut usize,
) -> Result<(), EspError> {
    for entry in dir.iter() {
        let entry = entry.map_err(corrupt)?;
        let name = entry.file_name();
        if name == "." || name == ".." {
            continue;
        }
        *seen += 1;
        if *seen > MAX_ENTRIES {
            return Err(EspError::Corrupt(format!("over {MAX_ENTRIES} entries")));
        }
        let path = format!("{prefix}{}", name.to_lowercase());
        if entry.is_dir() && depth + 1 < MAX_DEPTH {
            walk(entry.to_dir(), &format!("{path}/"), depth + 1, out, seen)?;
        }
        out.insert(path, entry);
    }
    Ok(())
}

/// Hex SHA-256 of one file, charging its bytes to `budget`.
fn hash_file(entry: &DirEntry<'_, ReadOnly>, budget: &mut u64) -> Result<String, EspError> {
    let (mut file, mut hasher, mut buf, mut read) =
        (entry.to_file(), Sha256::new(), vec![0; 1 << 16], 0);
    loop {
        let n = file.read(&mut buf).map_err(corrupt)?;
        if n == 0 {
            break;
        }
        let over = || {
            EspError::Corrupt(format!(
                "kernel files exceed {MAX_HASHED_BYTES} bytes or the volume"
            ))
        };
        *budget = budget.checked_sub(n as u64).ok_or_else(over)?;
        hasher.update(&buf[..n]);
        read += n as u64;
    }
    if read != entry.len() {
        let msg = format!(
            "{}: read {read} of {} bytes",
            entry.file_name(),
            entry.len()
        );
        return Err(EspError::Corrupt(msg));
    }
    Ok(format!("{:x}", hasher.finalize()))
}

#[cfg(test)]
#[path = "../tests/support/fat.rs"]
mod test_fat;

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Build an image from `(path, content)` pairs (`*.zeros` content is a byte count).
    fn image<P: AsRef<str>, C: AsRef<str>>(
        files: &[(P, C)],
        volid: &str,
        kib: u64,
    ) -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let p = tmp.path().join("src").join(path.as_ref());
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content.as_ref()).unwrap();
        }
        let img = tmp.path().join("esp.img");
        test_fat::build_fat_image(&tmp.path().join("src"), volid, kib, &img).unwrap();
        (tmp, img)
    }

    const K1: &str = "6.5.13-6-pve";
    const K2: &str = "6.8.12-4-pve";

    fn systemd_boot(initrd2: &str) -> Vec<(String, String)> {
        [
            ("loader/loader.conf".into(), "timeout 3\n"),
            (format!("loader/entries/proxmox-{K2}.conf"), "title PVE\n"),
            (format!("EFI/proxmox/{K1}/vmlinuz-{K1}.zeros"), "200000"),
            (format!("EFI/proxmox/{K1}/initrd.img-{K1}.zeros"), "500000"),
            (format!("EFI/proxmox/{K2}/vmlinuz-{K2}.zeros"), "300000"),
            (format!("EFI/proxmox/{K2}/initrd.img-{K2}"), initrd2),
        ]
        .map(|(p, c)| (p, c.to_string()))
        .to_vec()
    }

    #[test]
    fn systemd_boot_two_kernels() {
        let (_t, img) = image(&systemd_boot("initrd A"), "0BAD-F00D", 8192);
        let esp = read_esp(&img).unwrap();
        assert_eq!(esp.loader, Loader::SystemdBoot);
        assert_eq!(esp.kernels, [K1, K2]);
        assert_eq!(esp.largest_kernel_pair_bytes, Some(700_000));
        assert_eq!(esp.volume_id, "0BAD-F00D");
        assert!(esp.total_bytes > 7_000_000 && esp.free_bytes < esp.total_bytes - 1_000_000);
        assert!(!esp.has_removable_loader);
    }

    #[test]
    fn grub_on_esp_fat32() {
        let files = [
            ("grub/grub.cfg", "set timeout=5\n"),
            ("EFI/proxmox/grubx64.efi", "grub"),
            ("vmlinuz-6.8.12-4-pve.zeros", "100000"),
            ("initrd.img-6.8.12-4-pve.zeros", "250000"),
            ("vmlinuz-6.5.13-6-pve", "k"),
        ];
        let (_t, img) = image(&files, "00C0-FFEE", 40 * 1024);
        let esp = read_esp(&img).unwrap();
        assert_eq!(
            (esp.loader, esp.kernels),
            (Loader::Grub, vec![K1.into(), K2.into()])
        );
        assert_eq!(esp.largest_kernel_pair_bytes, Some(350_000));
        assert_eq!(esp.volume_id, "00C0-FFEE");
        assert!(esp.total_bytes > 38 << 20 && esp.free_bytes <= esp.total_bytes);
    }

    #[test]
    fn plain_boot_efi_both_and_unknown() {
        let plain = [
            ("EFI/debian/grubx64.efi", "g"),
            ("EFI/debian/shimx64.efi", "s"),
            ("EFI/Boot/bootx64.efi", "b"),
        ];
        let esp = read_esp(&image(&plain, "AAAA-0001", 2048).1).unwrap();
        assert_eq!((esp.loader, esp.kernels.len()), (Loader::Grub, 0));
        assert!(esp.has_removable_loader && esp.largest_kernel_pair_bytes.is_none());
        let both = [("loader/loader.conf", "x"), ("grub/grub.cfg", "y")];
        assert_eq!(
            read_esp(&image(&both, "AAAA-0002", 2048).1).unwrap().loader,
            Loader::Both
        );
        let windows = [("EFI/Microsoft/Boot/bootmgfw.efi", "w")];
        assert_eq!(
            read_esp(&image(&windows, "AAAA-0003", 2048).1)
                .unwrap()
                .loader,
            Loader::Unknown
        );
    }

    #[test]
    fn digests_compare_kernel_content() {
        let digest = |initrd: &str, volid: &str| {
            let (_t, img) = image(&systemd_boot(initrd), volid, 8192);
            read_esp(&img).unwrap().content_digest
        };
        let a = digest("initrd A", "1111-1111");
        assert_eq!(a, digest("initrd A", "2222-2222"));
        assert_ne!(a, digest("initrd B", "1111-1111"));
        assert_ne!(a, digest("initrd AB", "1111-1111"));
    }

    #[test]
    fn garbage_truncated_and_hostile_images_are_errors() {
        let (t, img) = image(&systemd_boot("i"), "1234-5678", 40 * 1024);
        let (bytes, bad) = (std::fs::read(&img).unwrap(), t.path().join("bad.img"));
        let read = |content: &[u8]| {
            std::fs::write(&bad, content).unwrap();
            read_esp(&bad)
        };
        assert!(matches!(read(&bytes[..4096]), Err(EspError::Corrupt(_))));
        let garbage: Vec<u8> = (0..65536u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert!(matches!(read(&garbage), Err(EspError::NotFat(_))));
        // sectors_per_fat_32 so large that `fats * it` overflows u32 inside fatfs.
        let mut hostile = bytes.clone();
        hostile[0x24..0x28].copy_from_slice(&0x8000_0001u32.to_le_bytes());
        assert!(matches!(read(&hostile), Err(EspError::NotFat(_))));
        // The root entry `LOADER` pointing at cluster 1: `cluster - 2` underflows in fatfs,
        // a caught panic in debug builds; release builds wrap and read an empty directory.
        let mut hostile = bytes.clone();
        let at = hostile
            .windows(11)
            .position(|w| w == b"LOADER     ")
            .unwrap();
        hostile[at + 20..at + 22].fill(0);
        hostile[at + 26..at + 28].copy_from_slice(&1u16.to_le_bytes());
        match read(&hostile) {
            Err(EspError::Corrupt(_)) => {}
            Ok(esp) if !cfg!(debug_assertions) => assert_eq!(esp.loader, Loader::Unknown),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            read_esp(&t.path().join("missing")),
            Err(EspError::Open(_))
        ));
    }

    /// The block cache returns the device's bytes for any mix of seeks and read sizes
    /// (within a block, across blocks, larger than a block), and an error past the end.
    #[test]
    fn cached_reads_are_the_device_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("dev");
        let bytes: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let mut disk = ReadOnly::new(File::open(&path).unwrap());
        let mut pos = 0u64;
        for (i, len) in [3usize, 11, 4096, 1, 8191, 32, 20_000, 5, 4095, 2]
            .iter()
            .cycle()
            .take(60)
            .enumerate()
        {
            pos = match i % 4 {
                0 => disk
                    .seek(SeekFrom::Start((i as u64 * 7919) % 49_000))
                    .unwrap(),
                1 => disk.seek(SeekFrom::Current(-3)).unwrap(),
                2 => disk
                    .seek(SeekFrom::End(-(*len as i64).min(40_000)))
                    .unwrap(),
                _ if pos < 49_000 => pos,
                _ => disk.seek(SeekFrom::Start(100)).unwrap(),
            };
            let mut buf = vec![0; *len];
            let n = disk.read(&mut buf).unwrap();
            assert!(n > 0 && n <= *len);
            assert_eq!(buf[..n], bytes[pos as usize..pos as usize + n], "at {pos}");
            pos += n as u64;
        }
        disk.seek(SeekFrom::Start(49_990)).unwrap();
        let mut buf = [0; 64];
        disk.read_exact(&mut buf[..10]).unwrap();
        assert_eq!(buf[..10], bytes[49_990..]);
        assert!(disk.read(&mut buf).is_err(), "past the end");
        assert!(disk.seek(SeekFrom::Current(-60_000)).is_err());
    }

    #[test]
    fn reading_never_writes_even_a_dirty_fat32() {
        let (_t, img) = image(&systemd_boot("i"), "1234-5678", 40 * 1024);
        let mut bytes = std::fs::read(&img).unwrap();
        bytes[0x41] |= 1; // dirty: fatfs recounts free clusters and tries to rewrite FSInfo
        std::fs::write(&img, &bytes).unwrap();
        assert_eq!(read_esp(&img).unwrap().kernels.len(), 2);
        assert_eq!(std::fs::read(&img).unwrap(), bytes);
    }
}
