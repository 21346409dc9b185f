//! apt's simulation (`apt-get -s dist-upgrade`, `LC_ALL=C`): the exact transaction the next
//! upgrade performs, pins, holds and dependency resolution included.
//!
//! Followed from apt's own printer (`apt-pkg/algorithms.cc`, `pkgSimulate::Install`,
//! `::Remove`, `::Configure`, and `apt-private/private-output.cc`, `ShowKept`, `ShowDel`,
//! `ShowEssential`) and from real output of apt 2.6 on Debian 12 (the test fixtures under
//! `agent/tests/fixtures/apt-sim/`):
//!
//! ```text
//! The following packages have been kept back:
//!   bash tzdata
//! WARNING: The following essential packages will be removed.
//! This should NOT be done unless you know exactly what you are doing!
//!   e2fsprogs
//! Inst base-files [12.4+deb12u11] (12.4+deb12u14 Debian:12.14/oldstable [amd64])
//! Inst sl (5.02-1+b1 Debian:12.14/oldstable [amd64])
//! Conf base-files (12.4+deb12u14 Debian:12.14/oldstable [amd64])
//! Remv e2fsprogs [1.47.0-2]
//! ```
//!
//! `Inst PKG [OLD] (NEW …)` is an upgrade (or a downgrade), `Inst PKG (NEW …)` a new
//! package, `Remv`/`Purg PKG [OLD]` a removal; `Conf` lines repeat what `Inst` said. Pure:
//! the caller runs apt.

use super::version;
use fleetward_proto::{AptTransaction, BootFacts, Removal, Upgrade};
use std::collections::BTreeSet;

/// What apt's simulation says, before it is set against the node's boot facts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Simulation {
    pub upgrades: Vec<Upgrade>,
    pub new: Vec<Upgrade>,
    pub removed: Vec<Removal>,
    pub kept_back: Vec<String>,
}

/// The argv of the read-only simulation, without the program (`apt-get`): no lock is
/// taken (`Debug::NoLocking`), so it runs beside a running apt; run it with `LC_ALL=C`.
pub const SIMULATE_ARGS: &[&str] = &["-s", "-o", "Debug::NoLocking=1", "dist-upgrade"];

/// Packages a dist-upgrade must never remove on a Proxmox VE node (`upgrade.removes-protected`
/// in CHECKS.md; with the running kernel's package and every essential package).
pub const PROTECTED_PACKAGES: &[&str] = &[
    "proxmox-ve",
    "pve-manager",
    "pve-cluster",
    "pve-ha-manager",
    "proxmox-kernel-helper",
    "qemu-server",
    "pve-container",
];

const KEPT_BACK: &str = "The following packages have been kept back:";
const ESSENTIAL: &str = "WARNING: The following essential packages will be removed.";

/// Parses the output of `apt-get -s dist-upgrade` (C locale). Lines it does not know are
/// skipped (apt's progress and summary lines); never panics.
pub fn parse(text: &str) -> Simulation {
    let mut sim = Simulation::default();
    let mut essential = BTreeSet::new();
    // The indented name list that follows a header line.
    #[derive(PartialEq)]
    enum List {
        None,
        KeptBack,
        Essential,
    }
    let mut list = List::None;
    for line in text.lines() {
        if line.starts_with(' ') && list != List::None {
            let names = line.split_whitespace().map(str::to_owned);
            match list {
                List::KeptBack => sim.kept_back.extend(names),
                List::Essential => essential.extend(names),
                List::None => {}
            }
            continue;
        }
        list = List::None;
        let line = line.trim_end();
        if line == KEPT_BACK {
            list = List::KeptBack;
        } else if line == ESSENTIAL {
            list = List::Essential;
        } else if line.starts_with("This should NOT be done") {
            // Part of the essential warning; its names follow.
            list = List::Essential;
        } else if let Some(rest) = line.strip_prefix("Inst ") {
            if let Some((package, installed, candidate)) = inst(rest) {
                let u = Upgrade {
                    package,
                    installed: installed.unwrap_or_default(),
                    candidate,
                };
                if u.installed.is_empty() {
                    sim.new.push(u);
                } else {
                    sim.upgrades.push(u);
                }
            }
        } else if let Some(rest) = line
            .strip_prefix("Remv ")
            .or_else(|| line.strip_prefix("Purg "))
        {
            let mut words = rest.split_whitespace();
            let Some(package) = words.next() else {
                continue;
            };
            let version = words
                .next()
                .and_then(|w| w.strip_prefix('[')?.strip_suffix(']'))
                .map(str::to_owned);
            sim.removed.push(Removal {
                package: package.to_owned(),
                version,
                essential: false,
            });
        }
    }
    for r in &mut sim.removed {
        r.essential = essential.contains(&r.package);
    }
    sim
}

/// `PKG [OLD] (NEW REL [ARCH]) …` → `(PKG, OLD, NEW)`.
fn inst(rest: &str) -> Option<(String, Option<String>, String)> {
    let mut words = rest.split_whitespace();
    let package = words.next()?.to_owned();
    let mut next = words.next()?;
    let mut installed = None;
    if let Some(old) = next.strip_prefix('[') {
        installed = Some(old.strip_suffix(']')?.to_owned());
        next = words.next()?;
    }
    let candidate = next.strip_prefix('(')?;
    let candidate = candidate.strip_suffix(')').unwrap_or(candidate);
    if package.is_empty() || candidate.is_empty() {
        return None;
    }
    Some((
        package,
        installed.filter(|v| !v.is_empty()),
        candidate.to_owned(),
    ))
}

/// The kernel release a kernel image package installs: `proxmox-kernel-6.14.11-1-pve-signed`
/// → `6.14.11-1-pve`; also `proxmox-kernel-…` unsigned, `pve-kernel-…` and
/// `linux-image-…[-unsigned]`. Meta packages (`proxmox-kernel-6.14`,
/// `proxmox-default-kernel`, `linux-image-amd64`) and `proxmox-kernel-helper` are not
/// kernels: a release has a digit after the prefix and a `-` after its version numbers.
pub fn kernel_release(package: &str) -> Option<String> {
    let package = package.split(':').next().unwrap_or(package);
    let rest = ["proxmox-kernel-", "pve-kernel-", "linux-image-"]
        .iter()
        .find_map(|p| package.strip_prefix(p))?;
    let rest = rest
        .strip_suffix("-signed")
        .or_else(|| rest.strip_suffix("-unsigned"))
        .unwrap_or(rest);
    let starts_digit = rest.starts_with(|c: char| c.is_ascii_digit());
    // `6.14` (a series meta package) has no ABI part.
    let has_abi = rest.contains('-');
    (starts_digit && has_abi).then(|| rest.to_owned())
}

/// The kernel that boots after `sim`: `next-boot-pin`, else `proxmox-boot-pin`, while the
/// pinned kernel is still installed afterwards (proxmox-boot-tool boots a pin only if it
/// exists), else the newest kernel installed after the transaction (installed now, minus
/// removed kernel packages, plus new ones). `None` when nothing is known.
pub fn kernel_after(boot: &BootFacts, sim: &Simulation) -> Option<String> {
    let removed: BTreeSet<String> = sim
        .removed
        .iter()
        .filter_map(|r| kernel_release(&r.package))
        .collect();
    let mut kernels: Vec<String> = boot
        .installed_kernels
        .iter()
        .filter(|k| !removed.contains(*k))
        .cloned()
        .collect();
    for p in sim.new.iter().chain(&sim.upgrades) {
        if let Some(k) = kernel_release(&p.package) {
            if !kernels.contains(&k) {
                kernels.push(k);
            }
        }
    }
    kernels.sort_by(|a, b| version::compare(b, a));
    let pinned = [&boot.next_boot_pin, &boot.kernel_pin]
        .into_iter()
        .flatten()
        .find(|p| kernels.contains(p));
    pinned.cloned().or_else(|| kernels.first().cloned())
}

/// The transaction fact: `sim` with the kernel that boots after it.
pub fn transaction(boot: &BootFacts, sim: Simulation) -> AptTransaction {
    let kernel_after = kernel_after(boot, &sim);
    AptTransaction {
        upgrades: sim.upgrades,
        new: sim.new,
        removed: sim.removed,
        kept_back: sim.kept_back,
        kernel_after,
    }
}

/// The removals `upgrade.removes-protected` refuses: a [`PROTECTED_PACKAGES`] entry, an
/// essential package, or the package of the running kernel (`running_kernel`, a release
/// such as `6.14.8-2-pve`). Each with the reason.
pub fn protected_removals(removed: &[Removal], running_kernel: Option<&str>) -> Vec<String> {
    removed
        .iter()
        .filter_map(|r| {
            let name = r.package.split(':').next().unwrap_or(&r.package);
            let why = if PROTECTED_PACKAGES.contains(&name) {
                "a Proxmox VE core package"
            } else if r.essential {
                "an essential package"
            } else if running_kernel.is_some() && kernel_release(name).as_deref() == running_kernel
            {
                "the running kernel's package"
            } else {
                return None;
            };
            Some(format!("{} ({why})", r.package))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn up(p: &str, old: &str, new: &str) -> Upgrade {
        Upgrade {
            package: p.into(),
            installed: old.into(),
            candidate: new.into(),
        }
    }

    const MIXED: &str = "Reading package lists...\n\
Building dependency tree...\n\
The following packages have been kept back:\n  bash tzdata\n\
The following packages will be REMOVED:\n  proxmox-ve\n\
The following NEW packages will be installed:\n  proxmox-kernel-6.14.11-1-pve-signed\n\
1 upgraded, 1 newly installed, 1 to remove and 2 not upgraded.\n\
Remv proxmox-ve [9.0.0]\n\
Inst proxmox-kernel-6.14.11-1-pve-signed (6.14.11-1 Proxmox:9.0/stable [amd64])\n\
Inst proxmox-default-kernel [2.0.0] (2.0.1 Proxmox:9.0/stable [all]) []\n\
Conf proxmox-kernel-6.14.11-1-pve-signed (6.14.11-1 Proxmox:9.0/stable [amd64])\n\
Conf proxmox-default-kernel (2.0.1 Proxmox:9.0/stable [all])\n";

    #[test]
    fn apt_sim_parses_upgrades_new_removed_and_kept_back() {
        let s = parse(MIXED);
        assert_eq!(s.upgrades, [up("proxmox-default-kernel", "2.0.0", "2.0.1")]);
        assert_eq!(
            s.new,
            [up("proxmox-kernel-6.14.11-1-pve-signed", "", "6.14.11-1")]
        );
        assert_eq!(
            s.removed,
            [Removal {
                package: "proxmox-ve".into(),
                version: Some("9.0.0".into()),
                essential: false
            }]
        );
        assert_eq!(s.kept_back, ["bash", "tzdata"]);
        assert_eq!(
            protected_removals(&s.removed, None),
            ["proxmox-ve (a Proxmox VE core package)"]
        );
    }

    #[test]
    fn apt_sim_kernel_releases() {
        for (p, k) in [
            ("proxmox-kernel-6.14.11-1-pve-signed", Some("6.14.11-1-pve")),
            ("proxmox-kernel-6.14.11-1-pve", Some("6.14.11-1-pve")),
            ("pve-kernel-5.15.158-2-pve", Some("5.15.158-2-pve")),
            ("linux-image-6.1.0-28-amd64", Some("6.1.0-28-amd64")),
            (
                "linux-image-6.1.0-28-amd64-unsigned",
                Some("6.1.0-28-amd64"),
            ),
            ("proxmox-kernel-6.14", None),
            ("proxmox-kernel-helper", None),
            ("proxmox-default-kernel", None),
            ("linux-image-amd64", None),
        ] {
            assert_eq!(kernel_release(p).as_deref(), k, "{p}");
        }
    }

    #[test]
    fn apt_sim_kernel_after_respects_pins_and_new_kernels() {
        let boot = BootFacts {
            installed_kernels: vec!["6.14.8-2-pve".into(), "6.8.12-4-pve".into()],
            ..Default::default()
        };
        let s = parse(MIXED);
        assert_eq!(kernel_after(&boot, &s).as_deref(), Some("6.14.11-1-pve"));
        let pinned = BootFacts {
            kernel_pin: Some("6.8.12-4-pve".into()),
            ..boot.clone()
        };
        assert_eq!(kernel_after(&pinned, &s).as_deref(), Some("6.8.12-4-pve"));
        // A pin whose kernel the transaction removes does not hold.
        let gone = Simulation {
            removed: vec![Removal {
                package: "proxmox-kernel-6.8.12-4-pve-signed".into(),
                version: None,
                essential: false,
            }],
            ..Simulation::default()
        };
        assert_eq!(
            kernel_after(&pinned, &gone).as_deref(),
            Some("6.14.8-2-pve")
        );
        assert_eq!(
            protected_removals(&gone.removed, Some("6.8.12-4-pve")),
            ["proxmox-kernel-6.8.12-4-pve-signed (the running kernel's package)"]
        );
        assert_eq!(
            kernel_after(&BootFacts::default(), &Simulation::default()),
            None
        );
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z0-9][a-z0-9.+-]{0,20}"
    }
    fn ver() -> impl Strategy<Value = String> {
        "[0-9][a-z0-9.+~:-]{0,12}"
    }

    proptest! {
        #[test]
        fn apt_sim_parse_never_panics(text in any::<String>()) {
            let _ = parse(&text);
        }

        #[test]
        fn apt_sim_parse_never_panics_on_apt_like_lines(
            lines in proptest::collection::vec(
                prop_oneof![
                    Just("Inst ".to_string()), Just("Remv ".to_string()),
                    Just("Inst a [".to_string()), Just("Inst a [1] (".to_string()),
                    Just("  x y".to_string()), Just(KEPT_BACK.to_string()),
                    Just(ESSENTIAL.to_string()), "[ -~]{0,30}"
                ],
                0..20,
            )
        ) {
            let _ = parse(&lines.join("\n"));
        }

        /// What apt would print for a transaction parses back to that transaction.
        #[test]
        fn apt_sim_round_trips(
            ups in proptest::collection::vec((name(), ver(), ver()), 0..6),
            news in proptest::collection::vec((name(), ver()), 0..4),
            rms in proptest::collection::vec((name(), ver(), any::<bool>()), 0..4),
            kept in proptest::collection::vec(name(), 0..4),
        ) {
            let mut text = String::from("Reading package lists...\nCalculating upgrade...\n");
            if !kept.is_empty() {
                text += &format!("{KEPT_BACK}\n  {}\n", kept.join(" "));
            }
            let ess: Vec<&String> = rms.iter().filter(|r| r.2).map(|r| &r.0).collect();
            if !ess.is_empty() {
                text += &format!("{ESSENTIAL}\nThis should NOT be done unless you know exactly what you are doing!\n");
                for e in &ess {
                    text += &format!("  {e}\n");
                }
            }
            for (n, v, _) in &rms {
                text += &format!("Remv {n} [{v}]\n");
            }
            for (n, o, v) in &ups {
                text += &format!("Inst {n} [{o}] ({v} Debian:12.14/oldstable [amd64])\nConf {n} ({v} Debian:12.14/oldstable [amd64])\n");
            }
            for (n, v) in &news {
                text += &format!("Inst {n} ({v} Proxmox:9.0/stable [all]) []\n");
            }
            let s = parse(&text);
            let want_up: Vec<Upgrade> = ups.iter().map(|(n, o, v)| up(n, o, v)).collect();
            let want_new: Vec<Upgrade> = news.iter().map(|(n, v)| up(n, "", v)).collect();
            prop_assert_eq!(s.upgrades, want_up);
            prop_assert_eq!(s.new, want_new);
            prop_assert_eq!(s.kept_back, kept);
            prop_assert_eq!(s.removed.len(), rms.len());
            for (r, (n, v, _)) in s.removed.iter().zip(&rms) {
                prop_assert_eq!(&r.package, n);
                prop_assert_eq!(r.version.as_deref(), Some(v.as_str()));
                prop_assert_eq!(r.essential, ess.contains(&n));
            }
        }
    }
}

#[cfg(test)]
mod fixtures {
    use super::*;

    fn fixture(name: &str) -> String {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/apt-sim")
            .join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn apt_sim_real_outputs() {
        let s = parse(&fixture("dist-upgrade.txt"));
        assert_eq!(s.upgrades.len(), 80);
        assert!(s.new.is_empty() && s.removed.is_empty() && s.kept_back.is_empty());
        assert_eq!(
            s.upgrades[0],
            up_("base-files", "12.4+deb12u11", "12.4+deb12u14")
        );
        assert!(s.upgrades.contains(&up_(
            "login",
            "1:4.13+dfsg1-1+deb12u1",
            "1:4.13+dfsg1-1+deb12u2"
        )));

        let s = parse(&fixture("install-new.txt"));
        assert_eq!(s.new, [up_("sl", "", "5.02-1+b1")]);
        assert!(s.upgrades.is_empty());

        let s = parse(&fixture("remove-essential.txt"));
        assert_eq!(
            s.removed,
            [Removal {
                package: "e2fsprogs".into(),
                version: Some("1.47.0-2".into()),
                essential: true,
            }]
        );
        assert_eq!(
            protected_removals(&s.removed, None),
            ["e2fsprogs (an essential package)"]
        );

        let s = parse(&fixture("kept-back.txt"));
        assert_eq!(s.kept_back, ["bash", "tzdata"]);
        assert_eq!(s.upgrades.len(), 78);
    }

    fn up_(p: &str, old: &str, new: &str) -> Upgrade {
        Upgrade {
            package: p.into(),
            installed: old.into(),
            candidate: new.into(),
        }
    }
}
