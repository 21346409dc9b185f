//! pmxcfs's `/etc/pve/.members` (JSON) and `corosync.conf` (votes, QDevice).

use serde_json::Value;

/// What `.members` says.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Members {
    pub nodename: Option<String>,
    /// `None` when the file has no `cluster` object: a standalone node.
    pub cluster_name: Option<String>,
    pub quorate: Option<bool>,
    pub nodes: Vec<Member>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub id: Option<u32>,
    pub online: bool,
    pub ip: Option<String>,
}

pub fn members(text: &str) -> Result<Members, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    let flag = |v: Option<&Value>| v.and_then(Value::as_u64).map(|n| n != 0);
    let mut m = Members {
        nodename: obj
            .get("nodename")
            .and_then(Value::as_str)
            .map(String::from),
        ..Members::default()
    };
    if let Some(cluster) = obj.get("cluster").and_then(Value::as_object) {
        m.cluster_name = Some(
            cluster
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        );
        m.quorate = flag(cluster.get("quorate"));
    }
    if let Some(list) = obj.get("nodelist").and_then(Value::as_object) {
        for (name, n) in list {
            m.nodes.push(Member {
                name: name.clone(),
                id: n
                    .get("id")
                    .and_then(Value::as_u64)
                    .and_then(|i| u32::try_from(i).ok()),
                online: flag(n.get("online")).unwrap_or(false),
                ip: n.get("ip").and_then(Value::as_str).map(String::from),
            });
        }
    }
    m.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(m)
}

/// Votes per node name and whether a QDevice is configured, from `corosync.conf`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Corosync {
    pub votes: Vec<(String, u32)>,
    pub qdevice: bool,
}

/// A tolerant reader of corosync's brace syntax: it tracks the section path and picks
/// `nodelist.node.{name,quorum_votes}` and `quorum.device`.
pub fn corosync(text: &str) -> Corosync {
    let mut out = Corosync::default();
    let mut path: Vec<String> = Vec::new();
    let mut node: (Option<String>, u32) = (None, 1);
    for raw in text.lines() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if let Some(section) = line.strip_suffix('{') {
            let section = section.trim().to_string();
            if path.len() == 1 && path[0] == "quorum" && section == "device" {
                out.qdevice = true;
            }
            if section == "node" {
                node = (None, 1);
            }
            path.push(section);
        } else if line == "}" {
            if path.last().map(String::as_str) == Some("node") {
                if let Some(name) = node.0.take() {
                    out.votes.push((name, node.1));
                }
            }
            path.pop();
        } else if let Some((k, v)) = line.split_once(':') {
            if path.last().map(String::as_str) == Some("node") {
                match k.trim() {
                    "name" => node.0 = Some(v.trim().to_string()),
                    "quorum_votes" => node.1 = v.trim().parse().unwrap_or(1),
                    _ => {}
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_file_as_pmxcfs_prints_it() {
        let t = "{\n\"nodename\": \"pve1\",\n\"version\": 4,\n\"cluster\": { \"name\": \"hzero\", \"version\": 3, \"nodes\": 3, \"quorate\": 1 },\n\"nodelist\": {\n  \"pve1\": { \"id\": 1, \"online\": 1, \"ip\": \"10.0.0.1\"},\n  \"pve2\": { \"id\": 2, \"online\": 1, \"ip\": \"10.0.0.2\"},\n  \"pve3\": { \"id\": 3, \"online\": 0}\n  }\n}\n";
        let m = members(t).unwrap();
        assert_eq!(m.cluster_name.as_deref(), Some("hzero"));
        assert_eq!(m.quorate, Some(true));
        assert_eq!(m.nodes.len(), 3);
        assert!(!m.nodes[2].online);
        assert_eq!(m.nodes[2].ip, None);
        let standalone = members("{\n\"nodename\": \"pve1\",\n\"version\": 2\n}\n").unwrap();
        assert_eq!(standalone.cluster_name, None);
        assert!(members("{\"nodename\":").is_err());
    }

    #[test]
    fn corosync_votes_and_qdevice() {
        let t = "nodelist {\n  node {\n    name: pve-01\n    nodeid: 1\n    quorum_votes: 1\n    ring0_addr: 192.168.1.26\n  }\n  node {\n    name: pve-02\n    quorum_votes: 2\n  }\n}\nquorum {\n  provider: corosync_votequorum\n  device {\n    model: net\n  }\n}\n";
        let c = corosync(t);
        assert_eq!(
            c.votes,
            [("pve-01".to_string(), 1), ("pve-02".to_string(), 2)]
        );
        assert!(c.qdevice);
    }

    proptest::proptest! {
        #[test]
        fn never_panic(s in "\\PC{0,300}") {
            let _ = (members(&s), corosync(&s));
        }
    }
}
