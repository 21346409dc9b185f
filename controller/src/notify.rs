//! The systemd notification protocol (`sd_notify`) for `serve` under `Type=notify`: one
//! datagram of `KEY=VALUE` lines to the socket `$NOTIFY_SOCKET` names (a path, or an
//! abstract address written with a leading `@`). The same protocol as the agent's
//! `session::notify`, written again here so the controller does not depend on the agent.
//! Without `$NOTIFY_SOCKET` (not started by systemd) it does nothing. A leaf: imports
//! nothing from the crate.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The address `$NOTIFY_SOCKET` names: a file system path, or `@name` for an abstract socket.
fn socket_addr(value: &str) -> io::Result<SocketAddr> {
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

/// Sends `state` (newline-separated `KEY=VALUE` pairs); a failure is logged, never fatal
/// (systemd then times the start out and says so).
pub fn notify(state: &str) {
    let Some(value) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = socket_addr(&value.to_string_lossy()).and_then(|addr| {
        UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
        Ok(())
    });
    match sent {
        Ok(()) => tracing::debug!(state, "notified systemd"),
        Err(e) => tracing::warn!(error = %e, state, "cannot notify systemd"),
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
        assert!(socket_addr("/run/systemd/notify").is_ok());
        assert!(socket_addr("relative").is_err());
    }
}
