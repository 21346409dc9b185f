//! apt's downloaded package indexes (`/var/lib/apt/lists/*_Packages`) and what they offer
//! the installed packages.
//!
//! Real indexes are tens of MB, and a node has a few hundred of the tens of thousands of
//! packages they list: [`parse`] looks at each stanza's `Package:` line first and only hands
//! the stanzas of wanted packages to [`control::stanzas`].

use super::control::{self, Installed};
use super::version;
use fleetward_proto::Upgrade;
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// One stanza of a Packages index, reduced to what upgrade planning needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Available {
    pub package: String,
    pub version: String,
    /// `Architecture:`; empty when the stanza has none.
    pub arch: String,
}

/// The stanzas of a Packages index whose package name `wanted` accepts. Stanzas without
/// `Package:` or `Version:` are skipped. The pre-filter matches the `Package:` key as apt
/// writes it (exact case), before any stanza is split into fields.
pub fn parse(text: &str, wanted: impl Fn(&str) -> bool) -> Vec<Available> {
    let mut out = Vec::new();
    for chunk in text.split("\n\n") {
        let any_wanted = chunk
            .lines()
            .filter_map(|l| l.strip_prefix("Package:"))
            .any(|name| wanted(name.trim()));
        if !any_wanted {
            continue;
        }
        // A chunk may still hold several stanzas (blank lines made of spaces separate them
        // too); the one stanza parser decides.
        for s in control::stanzas(chunk) {
            let (Some(package), Some(version)) =
                (control::field(&s, "Package"), control::field(&s, "Version"))
            else {
                continue;
            };
            if !wanted(package) {
                continue;
            }
            out.push(Available {
                package: package.to_string(),
                version: version.to_string(),
                arch: control::field(&s, "Architecture").unwrap_or("").to_string(),
            });
        }
    }
    out
}

/// Whether a candidate of architecture `candidate` can replace an installed package of
/// architecture `installed`: `all` always, otherwise the same architecture. An installed
/// package of unknown (empty) or `all` architecture accepts any candidate: the native
/// architecture is not known here.
fn arch_fits(installed: &str, candidate: &str) -> bool {
    candidate == "all" || installed.is_empty() || installed == "all" || installed == candidate
}

/// The installed packages for which `available` offers a higher version (Debian ordering),
/// each with the highest such version, sorted by package name. Packages not installed are
/// ignored. The same package installed for several architectures at the same version (multiarch)
/// is listed once.
pub fn upgradable(
    installed: &[Installed],
    available: impl IntoIterator<Item = Available>,
) -> Vec<Upgrade> {
    let mut by_name: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, p) in installed.iter().enumerate() {
        by_name.entry(p.name.as_str()).or_default().push(i);
    }
    // Highest fitting candidate per installed package (by index into `installed`).
    let mut best: BTreeMap<usize, String> = BTreeMap::new();
    for a in available {
        let Some(indices) = by_name.get(a.package.as_str()) else {
            continue;
        };
        for &i in indices {
            if !arch_fits(&installed[i].arch, &a.arch) {
                continue;
            }
            match best.get(&i) {
                Some(v) if version::compare(v, &a.version) != Ordering::Less => {}
                _ => {
                    best.insert(i, a.version.clone());
                }
            }
        }
    }
    let mut out: Vec<Upgrade> = best
        .into_iter()
        .filter_map(|(idx, candidate)| {
            let p = &installed[idx];
            (version::compare(&candidate, &p.version) == Ordering::Greater).then(|| Upgrade {
                package: p.name.clone(),
                installed: p.version.clone(),
                candidate,
            })
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The file-name prefix of the lists apt downloads for `uri` and `suite` under
/// `/var/lib/apt/lists` (apt's `URItoFileName`, `apt-pkg/contrib/strutl.cc`: the scheme and
/// credentials dropped, the characters `\|{}[]<>"^~_=!@#$%^&*`, spaces and non-ASCII quoted
/// as `%xx`, then `/` → `_`). `…/dists/SUITE/` for a suite, `URI/SUITE` for a flat repository
/// (a suite ending in `/`).
pub fn list_prefix(uri: &str, suite: &str) -> String {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let mut full = format!("{host}/{path}");
    if !full.ends_with('/') {
        full.push('/');
    }
    if suite.ends_with('/') {
        full.push_str(suite.trim_start_matches('/'));
    } else {
        full.push_str(&format!("dists/{suite}/"));
    }
    let mut out = String::new();
    for b in full.bytes() {
        if b <= 0x20 || b >= 0x7f || br#"\|{}[]<>"^~_=!@#$%&*"#.contains(&b) {
            out.push_str(&format!("%{b:02x}"));
        } else if b == b'/' {
            out.push('_');
        } else {
            out.push(b as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(name: &str, version: &str, arch: &str) -> Installed {
        Installed {
            name: name.into(),
            version: version.into(),
            arch: arch.into(),
        }
    }

    fn avail(package: &str, version: &str, arch: &str) -> Available {
        Available {
            package: package.into(),
            version: version.into(),
            arch: arch.into(),
        }
    }

    fn up(package: &str, installed: &str, candidate: &str) -> Upgrade {
        Upgrade {
            package: package.into(),
            installed: installed.into(),
            candidate: candidate.into(),
        }
    }

    const INDEX: &str = "Package: pve-manager\nArchitecture: amd64\nVersion: 9.0.12\nDepends: a,\n b\nDescription: The Proxmox VE\n Manager\n\nPackage: unrelated\nVersion: 1.0\nArchitecture: amd64\n\nPackage: proxmox-ve\nVersion: 9.0.1\nArchitecture: all\n\nPackage: noversion\nArchitecture: all\n";

    #[test]
    fn parse_keeps_wanted_fields() {
        let got = parse(INDEX, |n| n != "unrelated");
        assert_eq!(
            got,
            [
                avail("pve-manager", "9.0.12", "amd64"),
                avail("proxmox-ve", "9.0.1", "all"),
            ]
        );
        assert!(parse(INDEX, |_| false).is_empty());
    }

    #[test]
    fn parse_whitespace_separated_stanzas() {
        // A line of spaces also ends a stanza; both packages are found.
        let t = "Package: a\nVersion: 1\n  \nPackage: b\nVersion: 2\n";
        let got = parse(t, |n| n == "b");
        assert_eq!(got, [avail("b", "2", "")]);
    }

    #[test]
    fn epochs_and_tilde() {
        let installed = [inst("a", "1:1.0-1", "amd64"), inst("b", "2.0", "amd64")];
        let got = upgradable(
            &installed,
            [
                avail("a", "2.0-1", "amd64"),       // lower: epoch 0 < 1
                avail("b", "2.0~rc1", "amd64"),     // lower: ~ sorts before the release
                avail("b", "2.0+deb13u1", "amd64"), // higher
            ],
        );
        assert_eq!(got, [up("b", "2.0", "2.0+deb13u1")]);
        let got = upgradable(&installed, [avail("a", "1:1.0-1~bpo1", "amd64")]);
        assert!(got.is_empty());
        let got = upgradable(&installed, [avail("a", "2:0.1", "amd64")]);
        assert_eq!(got, [up("a", "1:1.0-1", "2:0.1")]);
    }

    #[test]
    fn highest_of_several_candidates_sorted() {
        let installed = [inst("zz", "1.0", "amd64"), inst("aa", "1.0", "all")];
        let got = upgradable(
            &installed,
            [
                avail("zz", "1.2", "amd64"),
                avail("zz", "1.10", "amd64"),
                avail("zz", "1.9", "amd64"),
                avail("aa", "1.0", "all"),
                avail("aa", "1.1", "all"),
            ],
        );
        assert_eq!(got, [up("aa", "1.0", "1.1"), up("zz", "1.0", "1.10")]);
    }

    #[test]
    fn arch_filtering() {
        let installed = [inst("p", "1.0", "amd64"), inst("q", "1.0", "")];
        let got = upgradable(
            &installed,
            [
                avail("p", "9.0", "arm64"),
                avail("p", "2.0", "all"),
                avail("p", "1.5", "amd64"),
                avail("q", "3.0", "i386"),
            ],
        );
        assert_eq!(got, [up("p", "1.0", "2.0"), up("q", "1.0", "3.0")]);
    }

    #[test]
    fn not_installed_ignored_and_multiarch_once() {
        let installed = [
            inst("libc6", "2.41-1", "amd64"),
            inst("libc6", "2.41-1", "i386"),
        ];
        let got = upgradable(
            &installed,
            [
                avail("proxmox-kernel-6.14.11-1-pve-signed", "6.14.11-1", "amd64"),
                avail("libc6", "2.41-2", "amd64"),
                avail("libc6", "2.41-2", "i386"),
            ],
        );
        assert_eq!(got, [up("libc6", "2.41-1", "2.41-2")]);
    }

    #[test]
    fn reboot_packages() {
        use fleetward_proto::upgrade_needs_reboot as r;
        assert!(r("proxmox-kernel-6.14.11-1-pve-signed"));
        assert!(r("pve-kernel-6.8"));
        assert!(r("linux-image-6.12.41+deb13-amd64"));
        assert!(r("proxmox-default-kernel"));
        assert!(r("proxmox-ve"));
        assert!(r("systemd"));
        assert!(!r("proxmox-kernel-helper"));
        assert!(!r("pve-manager"));
        assert!(!r("systemd-boot"));
    }

    proptest::proptest! {
        #[test]
        fn never_panic(s in "\\PC{0,300}") {
            let got = parse(&s, |_| true);
            let installed = [inst("a", "1", "amd64")];
            let _ = upgradable(&installed, got);
        }
    }
}

#[cfg(test)]
mod list_prefix_tests {
    use super::list_prefix;

    #[test]
    fn list_prefixes_follow_apt_uri_to_file_name() {
        assert_eq!(
            list_prefix("http://deb.debian.org/debian/", "bookworm"),
            "deb.debian.org_debian_dists_bookworm_"
        );
        assert_eq!(
            list_prefix("https://deb.nodesource.com/node_20.x", "nodistro"),
            "deb.nodesource.com_node%5f20.x_dists_nodistro_"
        );
        assert_eq!(
            list_prefix("https://user:pw@example.org:8443/pve", "trixie"),
            "example.org:8443_pve_dists_trixie_"
        );
        assert_eq!(
            list_prefix("http://example.org/flat", "./"),
            "example.org_flat_._"
        );
    }
}
