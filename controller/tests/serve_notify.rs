//! The real `fleetward serve` under a fake systemd: `$NOTIFY_SOCKET` is a unix datagram
//! socket of this test. `serve --listen` on a port other than the configuration's says
//! `READY=1` once it listens (and `listen.addr` names that port, so `fleetward --data-dir
//! D nodes` reaches it), and `STOPPING=1` when SIGTERM starts the drain; it exits 0 and
//! removes `listen.addr`. Before it starts, `server-cert renew` replaces the server
//! certificate (`ca status` shows the new one) and the CLI, pinning the CA, still connects.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_fleetward");

/// Kills `serve` if the test fails before it stops it.
struct Serve(Option<std::process::Child>);

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `fleetward ARGS --data-dir DATA`, which must succeed; its output.
fn run(args: &[&str], data: &std::path::Path) -> std::process::Output {
    let out = Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fleetward {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The next datagram, within 20 s.
fn next(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("a notification within 20 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn serve_notifies_ready_and_stopping_and_the_cli_finds_its_port() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    run(&["init", "--name", "notify"], &data);
    let configured = std::fs::read_to_string(data.join("controller.toml")).unwrap();

    // The server certificate renewed before the start: `ca status` shows the new one, and
    // the CLI (which pins the CA) reaches the serve that uses it.
    let status = || {
        let out = run(&["ca", "status", "--output", "json"], &data);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let before = status();
    let renew = run(&["server-cert", "renew"], &data);
    let after = status();
    assert_eq!(after[0], before[0], "the CA is unchanged");
    assert_ne!(after[1]["sha256"], before[1]["sha256"]);
    assert_eq!(after[1]["names"], before[1]["names"]);
    let sha = after[1]["sha256"].as_str().unwrap();
    assert!(String::from_utf8_lossy(&renew.stdout).contains(sha));

    // A free port, not the configured one.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    assert!(!configured.contains(&listen));

    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut serve = Serve(Some(
        Command::new(BIN)
            .args(["serve", "--listen", &listen, "--data-dir"])
            .arg(&data)
            .env("NOTIFY_SOCKET", &sock_path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));

    let ready = next(&sock);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    // Ready means listening, with the address recorded for `--data-dir` clients.
    assert_eq!(
        std::fs::read_to_string(data.join("listen.addr"))
            .unwrap()
            .trim(),
        listen
    );
    // `nodes --data-dir` reaches the `--listen` override.
    run(&["nodes", "--output", "json"], &data);

    let pid = nix::unistd::Pid::from_raw(serve.0.as_ref().unwrap().id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let stopping = next(&sock);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let out = serve.0.take().unwrap().wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "serve after SIGTERM: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!data.join("listen.addr").exists());
}
