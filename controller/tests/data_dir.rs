//! The data directory as `fleetward init` makes it and `fleetward serve` accepts it, run
//! as the real binary (the umask is per process).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn fleetward(args: &[&str], data_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetward"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("run fleetward")
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn init_under_umask_000_keeps_private_dirs_and_keys_private() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"umask 000 && exec "$0" init --name lab --data-dir "$1""#)
        .arg(env!("CARGO_BIN_EXE_fleetward"))
        .arg(&d)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for dir in ["", "ca", "operators"] {
        assert_eq!(mode(&d.join(dir)), 0o700, "{dir}/");
    }
    for key in ["ca/ca.key", "server.key", "operators/admin.key"] {
        assert_eq!(mode(&d.join(key)), 0o600, "{key}");
    }
}

#[test]
fn init_refuses_a_bad_san_or_listen_before_writing_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    for (args, what) in [
        (
            &["init", "--name", "lab", "--san", "not a host!"][..],
            "--san",
        ),
        (
            &["init", "--name", "lab", "--listen", "foo"][..],
            "--listen",
        ),
    ] {
        let out = fleetward(args, &d);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(what), "{err}");
        assert!(!d.exists(), "{what}: init wrote {}", d.display());
    }
}

#[test]
fn serve_records_the_address_it_listens_on_for_data_dir_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    let out = fleetward(&["init", "--name", "lab"], &d);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // controller.toml says 0.0.0.0:7443; the override binds a free port instead.
    let mut serve = Command::new(env!("CARGO_BIN_EXE_fleetward"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&d)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let record = d.join("listen.addr");
    let start = std::time::Instant::now();
    while !record.exists() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "serve did not record its address"
        );
        if let Some(status) = serve.try_wait().unwrap() {
            panic!("serve exited: {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let addr = std::fs::read_to_string(&record).unwrap();
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.contains(":0\n"),
        "{addr}"
    );
    let out = fleetward(&["nodes", "--output", "json"], &d);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let term = Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(serve.wait().unwrap().success());
    assert!(!record.exists(), "listen.addr outlived serve");
}
