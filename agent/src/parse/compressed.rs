//! apt's compressed package lists, decoded as apt decodes them: `.lz4` (LZ4 frame), `.gz`,
//! `.xz` and `.zst`. Pure: bytes in, bytes or the reason out; every decoder checks its
//! format's own checksums where the format has them, so a damaged file is an error, not
//! garbage text.

use std::io::Read;

/// A compression apt can keep lists in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Lz4,
    Gzip,
    Xz,
    Zstd,
}

/// The compression of a lists file by its name's extension; `None` when the extension is
/// not one apt writes (the file is then not a package list).
pub fn by_name(name: &str) -> Option<Compression> {
    let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
    let c = match ext {
        "lz4" => Compression::Lz4,
        "gz" => Compression::Gzip,
        "xz" => Compression::Xz,
        "zst" => Compression::Zstd,
        _ if name.ends_with("_Packages") => return Some(Compression::None),
        _ => return None,
    };
    stem.ends_with("_Packages").then_some(c)
}

/// Decode `bytes`; the output is refused beyond `limit` bytes.
pub fn decode(c: Compression, bytes: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    let out = match c {
        Compression::None => bytes.to_vec(),
        Compression::Lz4 => read_all(lz4_flex::frame::FrameDecoder::new(bytes), limit)?,
        Compression::Gzip => gunzip(bytes, limit)?,
        Compression::Xz => {
            let mut out = Limited(Vec::new(), limit);
            lzma_rs::xz_decompress(&mut &bytes[..], &mut out).map_err(|e| format!("xz: {e}"))?;
            out.0
        }
        Compression::Zstd => {
            let d =
                ruzstd::decoding::StreamingDecoder::new(bytes).map_err(|e| format!("zstd: {e}"))?;
            read_all(d, limit)?
        }
    };
    if out.len() > limit {
        return Err(format!("larger than {limit} bytes when decoded"));
    }
    Ok(out)
}

/// A decoding reader over `input`: LZ4 frames and zstd are decoded as they stream; gzip and
/// xz are read whole (at most `limit` bytes decoded) and decoded with their checks first.
pub fn reader<'a>(
    c: Compression,
    mut input: impl Read + 'a,
    limit: usize,
) -> Result<Box<dyn Read + 'a>, String> {
    Ok(match c {
        Compression::None => Box::new(input),
        Compression::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(input)),
        Compression::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(input).map_err(|e| format!("zstd: {e}"))?,
        ),
        Compression::Gzip | Compression::Xz => {
            let mut bytes = Vec::new();
            input.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
            Box::new(std::io::Cursor::new(decode(c, &bytes, limit)?))
        }
    })
}

/// A writer that refuses to grow beyond its limit (a decompression bomb stops early).
struct Limited(Vec<u8>, usize);

impl std::io::Write for Limited {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len().saturating_add(buf.len()) > self.1 {
            return Err(std::io::Error::other("larger than the limit when decoded"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn read_all(r: impl Read, limit: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    r.take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// gzip (RFC 1952), one member: header, DEFLATE data, CRC-32 and size of the data.
fn gunzip(b: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    const FHCRC: u8 = 2;
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    let bad = || "gzip: truncated or not gzip data".to_string();
    if b.len() < 18 || b[0] != 0x1f || b[1] != 0x8b || b[2] != 8 {
        return Err(bad());
    }
    let flags = b[3];
    let mut pos = 10;
    if flags & FEXTRA != 0 {
        let n = usize::from(u16::from_le_bytes([
            *b.get(pos).ok_or_else(bad)?,
            *b.get(pos + 1).ok_or_else(bad)?,
        ]));
        pos += 2 + n;
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            let end = b.get(pos..).ok_or_else(bad)?.iter().position(|c| *c == 0);
            pos += end.ok_or_else(bad)? + 1;
        }
    }
    if flags & FHCRC != 0 {
        pos += 2;
    }
    let body = b.get(pos..b.len() - 8).ok_or_else(bad)?;
    let out = miniz_oxide::inflate::decompress_to_vec_with_limit(body, limit.saturating_add(1))
        .map_err(|e| format!("gzip: damaged DEFLATE data ({:?})", e.status))?;
    let trailer = &b[b.len() - 8..];
    let crc = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let size = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
    if crc32fast::hash(&out) != crc || out.len() as u32 != size {
        return Err("gzip: checksum mismatch (damaged file)".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const TEXT: &[u8] = b"Package: pve-manager\nVersion: 9.0.12\nArchitecture: amd64\n\n";

    /// A gzip member holding `data` in one stored (uncompressed) DEFLATE block.
    fn gzip_stored(data: &[u8]) -> Vec<u8> {
        let mut g = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
        let len = data.len() as u16;
        g.push(1);
        g.extend(len.to_le_bytes());
        g.extend((!len).to_le_bytes());
        g.extend(data);
        g.extend(crc32fast::hash(data).to_le_bytes());
        g.extend((data.len() as u32).to_le_bytes());
        g
    }

    fn lz4(data: &[u8]) -> Vec<u8> {
        let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn names() {
        assert_eq!(
            by_name("deb.debian.org_debian_dists_trixie_main_binary-amd64_Packages.lz4"),
            Some(Compression::Lz4)
        );
        assert_eq!(by_name("x_Packages"), Some(Compression::None));
        assert_eq!(by_name("x_Packages.zst"), Some(Compression::Zstd));
        assert_eq!(by_name("x_Packages.diff_Index"), None);
        assert_eq!(by_name("x_Release.gpg"), None);
        assert_eq!(by_name("x_Translation-en.lz4"), None);
    }

    #[test]
    fn decodes_and_refuses_damage() {
        assert_eq!(
            decode(Compression::Gzip, &gzip_stored(TEXT), 1 << 20).unwrap(),
            TEXT
        );
        let mut bad = gzip_stored(TEXT);
        bad[20] ^= 0x40;
        assert!(decode(Compression::Gzip, &bad, 1 << 20).is_err());
        assert_eq!(decode(Compression::Lz4, &lz4(TEXT), 1 << 20).unwrap(), TEXT);
        let cut = lz4(TEXT);
        assert!(decode(Compression::Lz4, &cut[..cut.len() - 6], 1 << 20).is_err());
        assert!(decode(Compression::Xz, b"not xz at all", 1 << 20).is_err());
        assert!(decode(Compression::Zstd, b"not zstd at all", 1 << 20).is_err());
        assert!(decode(Compression::Gzip, &gzip_stored(TEXT), 10).is_err());
        for (c, data) in [
            (Compression::Lz4, lz4(TEXT)),
            (Compression::Gzip, gzip_stored(TEXT)),
            (Compression::None, TEXT.to_vec()),
        ] {
            let mut out = Vec::new();
            reader(c, &data[..], 1 << 20)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, TEXT, "{c:?}");
        }
        let cut = lz4(TEXT);
        let mut out = Vec::new();
        let streamed = reader(Compression::Lz4, &cut[..cut.len() - 6], 1 << 20)
            .unwrap()
            .read_to_end(&mut out);
        assert!(streamed.is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            for c in [Compression::Lz4, Compression::Gzip, Compression::Xz, Compression::Zstd] {
                let _ = decode(c, &b, 1 << 16);
            }
        }

        #[test]
        fn round_trips(data in proptest::collection::vec(proptest::num::u8::ANY, 0..2000)) {
            proptest::prop_assert_eq!(decode(Compression::Lz4, &lz4(&data), 1 << 20).unwrap(), data.clone());
            proptest::prop_assert_eq!(decode(Compression::Gzip, &gzip_stored(&data), 1 << 20).unwrap(), data);
        }
    }
}
