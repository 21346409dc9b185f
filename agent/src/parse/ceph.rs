//! Ceph's OSD map as `ceph osd dump --format json` prints it (ceph `src/osd/OSDMap.cc`,
//! `OSDMap::dump`): the cluster flags — `flags` (comma separated), and from Quincy on also
//! `flags_set` (a list) — and one `osds[]` entry per existing OSD with `up` and `in` as 0/1.
//! Read-only: the agent runs it in `run` on the live system (`probe`) and after its own
//! `ceph osd set/unset noout` (the real executor), never in `inspect`.

use fleetward_proto::OsdCounts;
use serde::{Deserialize, Serialize};

/// The read-only command's arguments (`ceph` is the program).
pub const OSD_DUMP_ARGS: &[&str] = &["osd", "dump", "--format", "json"];

/// What the OSD map says about `noout` and the OSDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsdMap {
    /// The cluster-wide `noout` flag is set.
    pub noout: bool,
    pub osds: OsdCounts,
}

fn set(v: &serde_json::Value) -> Option<bool> {
    match v {
        serde_json::Value::Bool(b) => Some(*b),
        serde_json::Value::Number(n) => n.as_f64().map(|x| x != 0.0),
        _ => None,
    }
}

/// Parses `ceph osd dump --format json`. Never panics; anything that is not an OSD map
/// (no `flags`/`flags_set`, no `osds` list, an OSD without `up`/`in`) is an error: the
/// caller then knows nothing, rather than "no OSDs".
pub fn parse_osd_dump(json: &str) -> Result<OsdMap, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("ceph osd dump output is not JSON: {e}"))?;
    let noout = match (v.get("flags_set"), v.get("flags")) {
        (Some(serde_json::Value::Array(set)), _) => set.iter().any(|f| f.as_str() == Some("noout")),
        (_, Some(serde_json::Value::String(flags))) => {
            flags.split(',').any(|f| f.trim() == "noout")
        }
        _ => return Err("ceph osd dump output has no flags".into()),
    };
    let list = v
        .get("osds")
        .and_then(|o| o.as_array())
        .ok_or("ceph osd dump output has no osds list")?;
    let mut osds = OsdCounts::default();
    for (i, o) in list.iter().enumerate() {
        let up = o.get("up").and_then(set);
        let inside = o.get("in").and_then(set);
        let (Some(up), Some(inside)) = (up, inside) else {
            return Err(format!("ceph osd dump: osds[{i}] has no up/in"));
        };
        osds.total = osds.total.saturating_add(1);
        osds.up = osds.up.saturating_add(u32::from(up));
        osds.inside = osds.inside.saturating_add(u32::from(inside));
    }
    Ok(OsdMap { noout, osds })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fixture() -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ceph/osd-dump-noout.json");
        std::fs::read_to_string(path).expect("fixture")
    }

    #[test]
    fn osd_dump_gives_noout_and_the_osds_up_and_in() {
        let m = parse_osd_dump(&fixture()).unwrap();
        assert!(m.noout);
        assert_eq!(
            m.osds,
            OsdCounts {
                total: 6,
                up: 5,
                inside: 6
            }
        );
        assert!(!m.osds.all_up_in());
        // Before Quincy: only the string.
        let old = r#"{"flags":"sortbitwise,recovery_deletes","osds":[{"osd":0,"up":1,"in":1}]}"#;
        let m = parse_osd_dump(old).unwrap();
        assert!(!m.noout && m.osds.all_up_in());
        // `nooutx` is not `noout`; an empty map has no OSDs, all of them up.
        let m = parse_osd_dump(r#"{"flags":"nooutx","osds":[]}"#).unwrap();
        assert!(!m.noout && m.osds.total == 0 && m.osds.all_up_in());
        for bad in [
            "",
            "garbage",
            "{}",
            r#"{"flags":"noout"}"#,
            r#"{"flags":"noout","osds":[{"osd":0,"up":1}]}"#,
            r#"{"flags":7,"osds":[]}"#,
        ] {
            assert!(parse_osd_dump(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn osd_dump_never_panics(s in ".{0,200}") {
            let _ = parse_osd_dump(&s);
        }
    }
}
