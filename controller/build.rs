//! Builds the seed fixtures of `fleetward demo` into the binary, so that an installed
//! `fleetward` runs the demo without a source checkout.
//!
//! Writes `$OUT_DIR/seed_fixtures.rs`: one `(path, mode, contents)` entry per file of
//! `agent/tests/fixtures/seed/<node>/`, path relative to the seed directory, contents by
//! `include_bytes!`. Only what `fleetward-agent sim-root` reads from a fixture is taken:
//! `root/`, `esp/` (with `*.size-kib`), `base` and `remove`; the tests' `expected.json`
//! stays out. A symlink in the seed is an error (the embedded form has no place for one).

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What a fixture directory may hold that `sim-root` reads.
const FIXTURE_PARTS: [&str; 4] = ["root", "esp", "base", "remove"];

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let seed = manifest.join("../agent/tests/fixtures/seed");
    println!("cargo:rerun-if-changed={}", seed.display());

    let mut files = Vec::new();
    let mut nodes: Vec<PathBuf> = fs::read_dir(&seed)
        .map_err(|e| format!("{}: {e}", seed.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    nodes.sort();
    for node in nodes.iter().filter(|n| n.is_dir()) {
        for part in FIXTURE_PARTS {
            let p = node.join(part);
            if p.symlink_metadata().is_ok() {
                collect(&p, &mut files)?;
            }
        }
    }

    let mut out = String::from(
        "/// The demo's seed fixtures: (path relative to the seed directory, Unix mode, contents).\n\
         pub(crate) static SEED: &[(&str, u32, &[u8])] = &[\n",
    );
    for path in &files {
        let rel = path
            .strip_prefix(&seed)?
            .to_str()
            .ok_or_else(|| format!("{}: not UTF-8", path.display()))?;
        let mode = fs::metadata(path)?.permissions().mode() & 0o777;
        let abs = fs::canonicalize(path)?;
        let abs = abs
            .to_str()
            .ok_or_else(|| format!("{}: not UTF-8", abs.display()))?;
        writeln!(out, "    ({rel:?}, 0o{mode:o}, include_bytes!({abs:?})),")?;
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR")?).join("seed_fixtures.rs");
    fs::write(dest, out)?;
    Ok(())
}

/// Every regular file under `p` (or `p` itself), sorted.
fn collect(p: &Path, files: &mut Vec<PathBuf>) -> Result<(), Error> {
    let meta = p.symlink_metadata()?;
    if meta.file_type().is_symlink() {
        return Err(format!("{}: symlinks cannot be embedded", p.display()).into());
    }
    if meta.is_file() {
        files.push(p.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(p)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for e in entries {
        collect(&e, files)?;
    }
    Ok(())
}
