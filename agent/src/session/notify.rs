//! The systemd notification protocol (`sd_notify`), without libsystemd: one datagram of
//! `KEY=VALUE` lines to the socket named by `$NOTIFY_SOCKET` (a path, or an abstract
//! address written with a leading `@`). Without `$NOTIFY_SOCKET` (not started by systemd,
//! or not `Type=notify`) every call does nothing.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};

static READY_SENT: AtomicBool = AtomicBool::new(false);

/// The address `$NOTIFY_SOCKET` names: a file system path, or `@name` for an abstract socket.
pub fn socket_addr(value: &str) -> io::Result<SocketAddr> {
    match value.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())
        }
        None if value.starts_with('/') => SocketAddr::from_pathname(value),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET={value:?} is neither a path nor an abstract address"),
        )),
    }
}

/// Sends `state` (newline-separated `KEY=VALUE` pairs). `Ok(false)`: no `$NOTIFY_SOCKET`.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(value) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    send(&value.to_string_lossy(), state)?;
    Ok(true)
}

/// Sends `state` to the socket `notify_socket` names (the value of `$NOTIFY_SOCKET`).
pub fn send(notify_socket: &str, state: &str) -> io::Result<()> {
    let addr = socket_addr(notify_socket)?;
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

/// `READY=1` with a status line, once per process (later calls do nothing).
pub fn ready(status: &str) {
    if READY_SENT.swap(true, Ordering::SeqCst) {
        return;
    }
    match notify(&format!("READY=1\nSTATUS={status}")) {
        Ok(true) => tracing::debug!("readiness reported to systemd"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "cannot report readiness to systemd"),
    }
}

/// A `STATUS=` line for `systemctl status`; failures are only logged at debug level.
pub fn status(status: &str) {
    if let Err(e) = notify(&format!("STATUS={status}")) {
        tracing::debug!(error = %e, "cannot send a status to systemd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        use std::os::linux::net::SocketAddrExt;
        let a = socket_addr("@fleetward/test").unwrap();
        assert_eq!(a.as_abstract_name(), Some(&b"fleetward/test"[..]));
        let p = socket_addr("/run/systemd/notify").unwrap();
        assert_eq!(
            p.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        assert!(socket_addr("relative").is_err());
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        send(path.to_str().unwrap(), "READY=1\nSTATUS=x").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=x");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("fleetward-notify-test-{}", std::process::id());
        let server =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        send(&format!("@{name}"), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
