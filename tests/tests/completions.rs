//! The shell completions `generate-docs` writes complete node names by asking the real
//! controller (bash, zsh and fish, each where the shell is installed), and stay quiet when
//! the controller cannot be reached.

use fleetward_tests::{bin, Agent, Controller};
use std::path::Path;
use std::process::Command;

/// `script` in `shell` with the real `fleetward` first in PATH and `data_dir` as its
/// controller; `None` when the shell is not installed.
fn run(shell: &str, args: &[&str], script: &str, data_dir: &Path) -> Option<(String, String)> {
    if Command::new(shell)
        .arg("-c")
        .arg("exit 0")
        .output()
        .is_err()
    {
        eprintln!("skipped: {shell} is not installed here");
        return None;
    }
    let fleetward = bin("fleetward");
    let path = format!(
        "{}:{}",
        fleetward.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(shell)
        .args(args)
        .arg(script)
        .env("PATH", path)
        .env("FLEETWARD_DATA_DIR", data_dir)
        .env_remove("FLEETWARD_CONTROLLER")
        .env_remove("FLEETWARD_CONFIG")
        .output()
        .expect("shell");
    Some((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn words(out: &str) -> Vec<String> {
    let mut w: Vec<String> = out.split_whitespace().map(String::from).collect();
    w.sort();
    w.dedup();
    w
}

#[test]
fn completions_offer_the_controllers_node_names() {
    let c = Controller::start();
    let _one = Agent::enroll(&c, "pve-01");
    let _two = Agent::enroll(&c, "pve-02");
    let docs = tempfile::tempdir().expect("tempdir");
    let status = Command::new(bin("fleetward"))
        .args(["generate-docs", "--out"])
        .arg(docs.path())
        .status()
        .expect("generate-docs");
    assert!(status.success());
    let dir = docs.path().join("completions");
    let nodes = vec!["pve-01".to_string(), "pve-02".to_string()];
    let offline = tempfile::tempdir().expect("tempdir");

    let bash = format!(
        "source {}; COMP_WORDS=(fleetward node show ''); COMP_CWORD=3; \
         _fleetward_dynamic fleetward '' show; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        dir.join("fleetward.bash").display()
    );
    let zsh = format!(
        "compdef() {{ }}; compadd() {{ [[ $1 == -a ]] && print -l -- ${{(P)2}} }}; \
         _arguments() {{ }}; source {}; words=(fleetward node show ''); \
         CURRENT=4; _fleetward_dynamic",
        dir.join("_fleetward").display()
    );
    let fish = format!(
        "source {}; complete -C 'fleetward node show '",
        dir.join("fleetward.fish").display()
    );
    for (shell, args, script) in [
        ("bash", &["--norc", "-c"][..], bash.as_str()),
        ("zsh", &["-f", "-c"][..], zsh.as_str()),
        ("fish", &["--no-config", "-c"][..], fish.as_str()),
    ] {
        let Some((out, err)) = run(shell, args, script, c.dir.path()) else {
            continue;
        };
        assert_eq!(words(&out), nodes, "{shell}: stdout {out:?} stderr {err:?}");
        // Offline: no node names and no error text on the terminal.
        let (out, err) = run(shell, args, script, offline.path()).unwrap();
        assert!(!out.contains("pve-0"), "{shell} offline: {out:?}");
        assert!(err.trim().is_empty(), "{shell} offline printed: {err:?}");
    }
}
