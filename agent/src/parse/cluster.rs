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

/// What the agent needs from `corosync.conf`: the nodelist with votes, the QDevice and the
/// quorum section's overrides.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Corosync {
    pub nodes: Vec<CorosyncNode>,
    pub qdevice: bool,
    /// `quorum.device.votes` as written; corosync-qdevice's default is 1.
    pub qdevice_votes: Option<u32>,
    /// `quorum.expected_votes`.
    pub expected_votes: Option<u32>,
    /// `quorum.two_node` is set to a non-zero value.
    pub two_node: bool,
    /// Line of the first `expected_votes` or `two_node` key of the quorum section.
    pub quorum_line: Option<u32>,
}

/// One `nodelist.node` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorosyncNode {
    /// `name`, else `ring0_addr`.
    pub name: String,
    /// `quorum_votes`, default 1.
    pub votes: u32,
    /// Line of `node {`.
    pub line: u32,
}

/// A tolerant reader of corosync's brace syntax: it tracks the section path and picks
/// `nodelist.node.{name,ring0_addr,quorum_votes}`, `quorum.{expected_votes,two_node}` and
/// `quorum.device.votes`. A value that is not a number keeps the default.
pub fn corosync(text: &str) -> Corosync {
    let mut out = Corosync::default();
    let mut path: Vec<String> = Vec::new();
    // name, ring0_addr, votes, line
    let mut node: (Option<String>, Option<String>, u32, u32) = (None, None, 1, 0);
    for (i, raw) in text.lines().enumerate() {
        let lineno = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let line = raw.split('#').next().unwrap_or("").trim();
        let in_ = |p: &[String], want: &[&str]| {
            p.len() == want.len() && p.iter().zip(want).all(|(a, b)| a == b)
        };
        if let Some(section) = line.strip_suffix('{') {
            let section = section.trim().to_string();
            if in_(&path, &["quorum"]) && section == "device" {
                out.qdevice = true;
            }
            if section == "node" && in_(&path, &["nodelist"]) {
                node = (None, None, 1, lineno);
            }
            path.push(section);
        } else if line == "}" {
            if in_(&path, &["nodelist", "node"]) {
                if let Some(name) = node.0.take().or(node.1.take()) {
                    out.nodes.push(CorosyncNode {
                        name,
                        votes: node.2,
                        line: node.3,
                    });
                }
            }
            path.pop();
        } else if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim(), v.trim());
            if in_(&path, &["nodelist", "node"]) {
                match k {
                    "name" => node.0 = Some(v.to_string()),
                    "ring0_addr" => node.1 = Some(v.to_string()),
                    "quorum_votes" => node.2 = v.parse().unwrap_or(1),
                    _ => {}
                }
            } else if in_(&path, &["quorum"]) {
                match k {
                    "expected_votes" => {
                        out.expected_votes = v.parse().ok();
                        out.quorum_line.get_or_insert(lineno);
                    }
                    "two_node" => {
                        out.two_node = v.parse::<u32>().is_ok_and(|n| n != 0);
                        if out.two_node {
                            out.quorum_line.get_or_insert(lineno);
                        }
                    }
                    _ => {}
                }
            } else if in_(&path, &["quorum", "device"]) && k == "votes" {
                out.qdevice_votes = v.parse().ok();
            }
        }
    }
    out
}

impl Corosync {
    /// The QDevice's votes: configured, else corosync-qdevice's default of 1; 0 without one.
    pub fn qdevice_votes(&self) -> u32 {
        if self.qdevice {
            self.qdevice_votes.unwrap_or(1)
        } else {
            0
        }
    }

    /// Expected votes as votequorum computes them: `quorum.expected_votes` when set, else
    /// the nodes' votes plus the QDevice's.
    pub fn expected_votes(&self) -> u32 {
        self.expected_votes.unwrap_or_else(|| {
            self.nodes
                .iter()
                .fold(0u32, |a, n| a.saturating_add(n.votes))
                .saturating_add(self.qdevice_votes())
        })
    }
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
        let votes: Vec<(&str, u32, u32)> = c
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.votes, n.line))
            .collect();
        assert_eq!(votes, [("pve-01", 1, 2), ("pve-02", 2, 8)]);
        assert!(c.qdevice);
        assert_eq!(c.qdevice_votes(), 1);
        assert_eq!(c.expected_votes(), 4);
        assert!(!c.two_node);
    }

    #[test]
    fn corosync_quorum_overrides() {
        let t = "nodelist {\n  node {\n    ring0_addr: 10.0.0.1\n  }\n  node {\n    name: b\n  }\n}\nquorum {\n  provider: corosync_votequorum\n  two_node: 1\n  expected_votes: 2\n  device {\n    votes: 3\n    model: net\n  }\n}\n";
        let c = corosync(t);
        let names: Vec<&str> = c.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["10.0.0.1", "b"]);
        assert!(c.two_node);
        assert_eq!(c.expected_votes, Some(2));
        assert_eq!(c.quorum_line, Some(11));
        assert_eq!(c.qdevice_votes(), 3);
        assert_eq!(c.expected_votes(), 2);
    }

    proptest::proptest! {
        #[test]
        fn never_panic(s in "\\PC{0,300}") {
            let _ = members(&s);
            let c = corosync(&s);
            let _ = (c.expected_votes(), c.qdevice_votes());
        }

        #[test]
        fn corosync_nodes_are_the_named_entries(
            names in proptest::collection::vec("[a-z][a-z0-9-]{0,8}", 0..6),
            votes in proptest::collection::vec(0u32..5, 6),
        ) {
            let mut t = String::from("nodelist {\n");
            for (n, v) in names.iter().zip(&votes) {
                t.push_str(&format!("  node {{\n    name: {n}\n    quorum_votes: {v}\n  }}\n"));
            }
            t.push_str("}\n");
            let c = corosync(&t);
            let got: Vec<(String, u32)> = c.nodes.iter().map(|n| (n.name.clone(), n.votes)).collect();
            let want: Vec<(String, u32)> = names.iter().cloned().zip(votes.iter().copied()).collect();
            proptest::prop_assert_eq!(got, want);
            proptest::prop_assert_eq!(c.expected_votes(), votes[..names.len()].iter().sum::<u32>());
        }
    }
}
