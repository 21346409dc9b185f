//! Append-only segment files holding the store's report journal
//! (`<data dir>/db/fleetward-journal/`), used only by the journal (`store::journal`).
//!
//! sled rewrites whole leaf pages as keys change, which cost ~8 KiB of disk writes and
//! most of the ingestion CPU per report. Here a batch of records is one `write(2)` at the
//! end of the current segment and one `fdatasync`.
//!
//! Record: `len (u32 LE) ‖ crc32 (u32 LE) ‖ payload`. A [`BlobRef`] names segment, offset
//! and length; reading checks both, so a damaged record is an error, never a wrong report.
//! [`BlobLog::replay`] walks every record at open; a torn tail of the newest segment (a
//! crash mid-write: never acknowledged, since acknowledgement follows the sync) is cut off.
//!
//! Segments roll at [`SEGMENT_MAX`]; the owner counts live references (and their bytes)
//! per segment and a sealed segment without any is deleted; a sealed segment less than half
//! live is compacted by the owner (its live records re-appended, the index swapped, then
//! the file deleted), so the disk holds at most about twice the live records plus the
//! current segment.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A segment is sealed once it grows past this.
pub const SEGMENT_MAX: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Damaged(String),
}

type Result<T> = std::result::Result<T, BlobError>;

/// Where one body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRef {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
}

/// Live references into one segment and the bytes they occupy.
#[derive(Debug, Clone, Copy, Default)]
struct Live {
    count: u64,
    bytes: u64,
}

struct Current {
    id: u64,
    file: File,
    len: u64,
}

pub struct BlobLog {
    dir: PathBuf,
    /// [`SEGMENT_MAX`], smaller in tests.
    segment_max: u64,
    current: Mutex<Current>,
    /// Live references per segment (kept by the store).
    live: Mutex<BTreeMap<u64, Live>>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn segment_name(id: u64) -> String {
    format!("{id:016x}.seg")
}

/// The segments in `dir`, ascending.
fn segments(dir: &Path) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    for e in fs::read_dir(dir).map_err(io(dir))? {
        let e = e.map_err(io(dir))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = name
            .strip_suffix(".seg")
            .and_then(|h| u64::from_str_radix(h, 16).ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

impl BlobLog {
    /// Opens `dir` (created if missing) and appends to its newest segment.
    #[cfg(test)]
    pub fn open(dir: impl Into<PathBuf>) -> Result<BlobLog> {
        Self::open_with(dir, SEGMENT_MAX)
    }

    /// Like [`BlobLog::open`], sealing segments at `segment_max` bytes.
    pub fn open_with(dir: impl Into<PathBuf>, segment_max: u64) -> Result<BlobLog> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let id = segments(&dir)?.last().copied().unwrap_or(1);
        let current = Self::open_segment(&dir, id)?;
        Ok(BlobLog {
            dir,
            segment_max,
            current: Mutex::new(current),
            live: Mutex::new(BTreeMap::new()),
        })
    }

    fn open_segment(dir: &Path, id: u64) -> Result<Current> {
        let path = dir.join(segment_name(id));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(io(&path))?;
        let len = file.metadata().map_err(io(&path))?.len();
        // A new file's name must survive a power loss too: sync the directory once.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        Ok(Current { id, file, len })
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(segment_name(id))
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `bodies` with one write; returns where each is, already counted as live (so
    /// no sweep can delete a segment between the write and the caller's indexing): the
    /// caller releases what it does not keep.
    pub fn append(&self, bodies: &[&[u8]]) -> Result<Vec<BlobRef>> {
        let mut cur = self.lock_current();
        if cur.len >= self.segment_max {
            cur.file.sync_data().map_err(io(&self.path(cur.id)))?;
            let next = cur.id + 1;
            *cur = Self::open_segment(&self.dir, next)?;
        }
        let mut buf = Vec::with_capacity(bodies.iter().map(|b| b.len() + 8).sum());
        let mut refs = Vec::with_capacity(bodies.len());
        for body in bodies {
            let len = u32::try_from(body.len())
                .map_err(|_| BlobError::Damaged("a report body over 4 GiB".into()))?;
            refs.push(BlobRef {
                segment: cur.id,
                offset: cur.len + buf.len() as u64,
                len,
            });
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
            buf.extend_from_slice(body);
        }
        let path = self.path(cur.id);
        if let Err(e) = cur.file.write_all(&buf) {
            // A short write (e.g. a full disk) must not shift the offsets of later records.
            let _ = cur.file.set_len(cur.len);
            return Err(io(&path)(e));
        }
        cur.len += buf.len() as u64;
        for r in &refs {
            self.retain(*r);
        }
        Ok(refs)
    }

    /// Makes everything appended so far durable (`fdatasync` of the current segment; a
    /// segment is synced before the next one is started, see [`BlobLog::append`]).
    pub fn sync(&self) -> Result<()> {
        let cur = self.lock_current();
        cur.file.sync_data().map_err(io(&self.path(cur.id)))
    }

    /// Free bytes available to an unprivileged writer on the segments' file system
    /// (`statvfs`: available blocks times the fragment size).
    pub fn free_bytes(&self) -> Result<u64> {
        let st = nix::sys::statvfs::statvfs(&self.dir).map_err(|e| BlobError::Io {
            path: self.dir.clone(),
            source: std::io::Error::from(e),
        })?;
        Ok(st.blocks_available().saturating_mul(st.fragment_size()))
    }

    /// Calls `f` with every record of every segment, oldest segment first, in file order.
    /// A record that fails its checksum is reported through `damaged` (file and offset) and
    /// skipped. A record that does not frame (its length runs past the end of the file), or
    /// a last record that fails its checksum, is a torn tail: in the newest segment the file
    /// is cut there; in a sealed one it is reported as damage.
    pub fn replay(
        &self,
        mut f: impl FnMut(BlobRef, &[u8]),
        mut damaged: impl FnMut(String),
    ) -> Result<()> {
        let mut cur = self.lock_current();
        for id in segments(&self.dir)? {
            let path = self.path(id);
            let bytes = fs::read(&path).map_err(io(&path))?;
            let mut at = 0usize;
            while at < bytes.len() {
                let frame = bytes.get(at..at + 8).and_then(|head| {
                    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
                    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
                    Some((len, crc, bytes.get(at + 8..at + 8 + len as usize)?))
                });
                let Some((len, crc, payload)) = frame else {
                    break;
                };
                let end = at + 8 + len as usize;
                if crc32fast::hash(payload) != crc {
                    if end == bytes.len() {
                        break; // the last record: a torn tail
                    }
                    damaged(format!(
                        "{}: the record at offset {at} fails its checksum; skipped",
                        path.display()
                    ));
                } else {
                    let r = BlobRef {
                        segment: id,
                        offset: at as u64,
                        len,
                    };
                    f(r, payload);
                }
                at = end;
            }
            if at < bytes.len() {
                if id == cur.id {
                    cur.file.set_len(at as u64).map_err(io(&path))?;
                    cur.len = at as u64;
                    damaged(format!(
                        "{}: cut a torn tail of {} bytes at offset {at} (a write a crash interrupted; never acknowledged)",
                        path.display(),
                        bytes.len() - at
                    ));
                } else {
                    damaged(format!(
                        "{}: damaged record at offset {at}; the {} bytes after it are skipped",
                        path.display(),
                        bytes.len() - at
                    ));
                }
            }
        }
        Ok(())
    }

    /// Reads one body back, checking its length and checksum.
    pub fn read(&self, r: BlobRef) -> Result<Vec<u8>> {
        let path = self.path(r.segment);
        let file = File::open(&path).map_err(io(&path))?;
        let mut head = [0u8; 8];
        file.read_exact_at(&mut head, r.offset).map_err(io(&path))?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len != r.len {
            return Err(BlobError::Damaged(format!(
                "{}: record at {} has length {len}, the index says {}",
                path.display(),
                r.offset,
                r.len
            )));
        }
        let mut body = vec![0u8; len as usize];
        file.read_exact_at(&mut body, r.offset + 8)
            .map_err(io(&path))?;
        if crc32fast::hash(&body) != crc {
            return Err(BlobError::Damaged(format!(
                "{}: record at {} fails its checksum",
                path.display(),
                r.offset
            )));
        }
        Ok(body)
    }

    /// Counts a reference as live.
    pub fn retain(&self, r: BlobRef) {
        let mut live = self.lock_live();
        let l = live.entry(r.segment).or_default();
        l.count += 1;
        l.bytes += u64::from(r.len) + 8;
    }

    /// Drops a reference. Files are deleted only by [`BlobLog::sweep`], so a reader that
    /// looked a reference up can still read it until the owner sweeps.
    pub fn release(&self, r: BlobRef) {
        let mut live = self.lock_live();
        let l = live.entry(r.segment).or_default();
        l.count = l.count.saturating_sub(1);
        l.bytes = l.bytes.saturating_sub(u64::from(r.len) + 8);
        if l.count == 0 {
            live.remove(&r.segment);
        }
    }

    /// Every sealed segment (all but the current one) with its live references, oldest first.
    fn sealed(&self) -> Result<Vec<(u64, Live)>> {
        let current = self.lock_current().id;
        let live = self.lock_live().clone();
        Ok(segments(&self.dir)?
            .into_iter()
            .filter(|id| *id != current)
            .map(|id| (id, live.get(&id).copied().unwrap_or_default()))
            .collect())
    }

    /// Sealed segments whose live bodies fill less than half of the file: worth compacting.
    pub fn sparse(&self) -> Result<Vec<u64>> {
        Ok(self
            .sealed()?
            .into_iter()
            .filter(|(id, l)| {
                let size = fs::metadata(self.path(*id)).map_or(0, |m| m.len());
                l.bytes * 2 < size
            })
            .map(|(id, _)| id)
            .collect())
    }

    fn delete(&self, id: u64) -> Result<()> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Sealed segments with no live reference (after the store counted them at open):
    /// deleted. Returns the ids of sealed segments still holding bodies, oldest first.
    pub fn sweep(&self) -> Result<Vec<u64>> {
        let mut kept = Vec::new();
        for (id, l) in self.sealed()? {
            if l.count == 0 {
                self.delete(id)?;
            } else {
                kept.push(id);
            }
        }
        Ok(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_read_release_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let log = BlobLog::open(dir.path()).unwrap();
        let refs = log.append(&[b"one", b"", b"three"]).unwrap();
        assert_eq!(log.read(refs[0]).unwrap(), b"one");
        assert_eq!(log.read(refs[1]).unwrap(), b"");
        assert_eq!(log.read(refs[2]).unwrap(), b"three");
        // Reopen: appends continue after what is there.
        drop(log);
        let log = BlobLog::open(dir.path()).unwrap();
        let more = log.append(&[b"four"]).unwrap();
        assert!(more[0].offset > refs[2].offset);
        assert_eq!(log.read(refs[0]).unwrap(), b"one");
        // A wrong length or a flipped byte is an error.
        let bad = BlobRef { len: 4, ..refs[0] };
        assert!(log.read(bad).is_err());
        let path = dir.path().join(segment_name(refs[0].segment));
        let mut bytes = fs::read(&path).unwrap();
        bytes[9] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        assert!(matches!(log.read(refs[0]), Err(BlobError::Damaged(_))));
    }

    #[test]
    fn sealed_segments_go_at_the_sweep_after_their_last_body() {
        let dir = tempfile::tempdir().unwrap();
        let log = BlobLog::open(dir.path()).unwrap();
        let big = vec![7u8; (SEGMENT_MAX / 2 + 1) as usize];
        let a = log.append(&[&big, &big]).unwrap(); // fills segment 1
        let b = log.append(&[b"x"]).unwrap(); // rolls to segment 2
        assert_eq!((a[0].segment, b[0].segment), (1, 2));
        log.release(a[0]);
        assert_eq!(log.sweep().unwrap(), vec![1]);
        assert!(dir.path().join(segment_name(1)).exists());
        log.release(a[1]);
        assert_eq!(log.sweep().unwrap(), Vec::<u64>::new());
        assert!(
            !dir.path().join(segment_name(1)).exists(),
            "sealed and empty"
        );
        log.release(b[0]);
        assert!(
            dir.path().join(segment_name(2)).exists(),
            "the current one stays"
        );
        assert_eq!(log.sweep().unwrap(), Vec::<u64>::new());
    }

    #[test]
    fn appended_records_count_as_live_before_anyone_indexes_them() {
        // A sweep between a write and its indexing (the compaction thread beside the
        // writer) must not delete the sealed segment that holds the new records.
        let dir = tempfile::tempdir().unwrap();
        let log = BlobLog::open_with(dir.path(), 1).unwrap();
        let a = log.append(&[b"acknowledged soon"]).unwrap();
        let b = log.append(&[b"rolls the segment"]).unwrap();
        assert_eq!((a[0].segment, b[0].segment), (1, 2));
        assert_eq!(log.sweep().unwrap(), vec![1]);
        assert_eq!(log.read(a[0]).unwrap(), b"acknowledged soon");
        log.release(a[0]);
        assert_eq!(log.sweep().unwrap(), Vec::<u64>::new());
        assert!(log.read(a[0]).is_err());
    }
}
