//! The controller's listener: the accept loop and the TLS handshake, with the limits that
//! keep connections without a certificate from holding the controller (`[connections]` in
//! `controller.toml`, [`crate::config::ConnectionLimits`]).
//!
//! - At most `max_connections` connections are open at once (accepted, handshaking or
//!   serving); at the cap the loop stops accepting until one closes (the kernel's backlog
//!   holds the rest).
//! - Each source address may have at most `max_unverified_per_ip` connections that have
//!   not completed a TLS handshake with a client certificate from our CA; a connection
//!   beyond that is closed at once. A handshake that presented a verified certificate
//!   stops counting against its address.
//! - The TLS handshake must finish within `tls_handshake_timeout_ms`; a connection that
//!   completed it without a client certificate (enrollment, health checks) is closed
//!   `unverified_lifetime_ms` after it was accepted.
//! - TCP keepalive on every accepted socket (HTTP/2 keepalive is set on the server).
//! - `accept` failing for lack of file descriptors or memory (EMFILE, ENFILE, ENOBUFS,
//!   ENOMEM) backs off (10 ms doubling to 1 s) instead of retrying at once, and says so
//!   once per burst, with the count when it recovers.
//!
//! The handshake is done here (tokio-rustls) rather than by tonic, which has no handshake
//! timeout and retries a failed `accept` at once; tonic serves the finished TLS streams and
//! still sees the peer's certificates (`TlsConnectInfo`, through tonic's `Connected`
//! implementation for `tokio_rustls::server::TlsStream`).

use crate::config::ConnectionLimits;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// A served connection: TLS over [`Conn`].
pub type ServerConn = TlsStream<Conn>;

/// One accepted TCP connection with what it holds of the limits: its place under
/// `max_connections`, its place under its address's unverified cap (until a verified
/// handshake), and, without a client certificate, the end of its lifetime.
pub struct Conn {
    tcp: TcpStream,
    _slot: OwnedSemaphorePermit,
    unverified: Option<Unverified>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Conn {
    fn check_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if let Some(d) = &mut self.deadline {
            if d.as_mut().poll(cx).is_ready() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection without a client certificate reached unverified_lifetime_ms",
                ));
            }
        }
        Ok(())
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check_deadline(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo {
            local_addr: self.tcp.local_addr().ok(),
            remote_addr: self.tcp.peer_addr().ok(),
        }
    }
}

/// Counts of connections per source address that have not completed a verified handshake.
#[derive(Clone, Default)]
struct PerIp(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One connection's place under its address's cap; released when dropped.
struct Unverified {
    ip: IpAddr,
    counts: PerIp,
}

impl PerIp {
    fn claim(&self, ip: IpAddr, cap: usize) -> Option<Unverified> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_default();
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(Unverified {
            ip,
            counts: self.clone(),
        })
    }
}

impl Drop for Unverified {
    fn drop(&mut self) {
        let mut m = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// `accept` failed for lack of a resource that closing connections gives back.
fn out_of_resources(e: &io::Error) -> bool {
    use nix::errno::Errno;
    e.raw_os_error().is_some_and(|c| {
        let c = Errno::from_raw(c);
        matches!(
            c,
            Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM
        )
    })
}

/// The accept loop's backoff while out of resources: 10 ms doubling to 1 s, one warning
/// per burst and one line when it ends.
#[derive(Default)]
struct Backoff {
    failures: u64,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn delay(&mut self, e: &io::Error) -> Duration {
        if self.failures == 0 {
            tracing::warn!(error = %e, "cannot accept connections (out of file descriptors or memory); backing off until connections close");
        }
        self.failures += 1;
        let shift = u32::try_from(self.failures - 1).unwrap_or(u32::MAX).min(7);
        (Self::FIRST * 2u32.pow(shift)).min(Self::MAX)
    }

    fn recovered(&mut self) {
        if self.failures > 0 {
            tracing::info!(
                failed_accepts = self.failures,
                "accepting connections again"
            );
            self.failures = 0;
        }
    }
}

/// Accepts on `listener` under `limits`, handshakes with `tls`, and yields the finished
/// TLS connections for tonic to serve. The loop ends when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: ConnectionLimits,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<ServerConn>> {
    let (tx, rx) = mpsc::channel::<io::Result<ServerConn>>(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(accept_loop(listener, acceptor, limits, tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    limits: ConnectionLimits,
    tx: mpsc::Sender<io::Result<ServerConn>>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_ip = PerIp::default();
    let mut backoff = Backoff::default();
    let mut at_cap = false;
    let handshake = Duration::from_millis(limits.tls_handshake_timeout_ms);
    let lifetime = Duration::from_millis(limits.unverified_lifetime_ms);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_millis(limits.tcp_keepalive_ms.max(1000)))
        .with_interval(Duration::from_secs(10));
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(s) => {
                at_cap = false;
                s
            }
            Err(_) => {
                if !at_cap {
                    at_cap = true;
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "at max_connections: not accepting until a connection closes"
                    );
                }
                tokio::select! {
                    s = slots.clone().acquire_owned() => match s {
                        Ok(s) => s,
                        Err(_) => return,
                    },
                    () = tx.closed() => return,
                }
            }
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = tx.closed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => {
                backoff.recovered();
                a
            }
            Err(e) if out_of_resources(&e) => {
                drop(slot);
                let wait = backoff.delay(&e);
                tokio::select! {
                    () = tokio::time::sleep(wait) => continue,
                    () = tx.closed() => return,
                }
            }
            // ECONNABORTED and the like: that connection is gone, the next may be fine.
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                continue;
            }
        };
        let Some(unverified) = per_ip.claim(peer.ip(), limits.max_unverified_per_ip) else {
            tracing::debug!(%peer, "closed: too many connections without a verified certificate from this address");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        if let Err(e) = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive) {
            tracing::debug!(%peer, error = %e, "cannot set TCP keepalive");
        }
        let conn = Conn {
            tcp,
            _slot: slot,
            unverified: Some(unverified),
            deadline: None,
        };
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            let mut tls = match tokio::time::timeout(handshake, acceptor.accept(conn)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out; closed");
                    return;
                }
            };
            let (conn, session) = tls.get_mut();
            // rustls verified any certificate the client presented (chain to our CA).
            if session.peer_certificates().is_some_and(|c| !c.is_empty()) {
                conn.unverified = None;
            } else {
                conn.deadline = Some(Box::pin(tokio::time::sleep(lifetime)));
            }
            let _ = tx.send(Ok(tls)).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_cap_counts_and_releases() {
        let p = PerIp::default();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let one = p.claim(a, 2).unwrap();
        let two = p.claim(a, 2).unwrap();
        assert!(p.claim(a, 2).is_none(), "third from the same address");
        let other = p.claim(b, 2).unwrap();
        drop(one);
        let three = p.claim(a, 2).unwrap();
        drop((two, three, other));
        assert!(p.0.lock().unwrap().is_empty(), "nothing left counted");
    }

    #[test]
    fn backoff_grows_to_a_bound_and_resets() {
        let e = io::Error::from_raw_os_error(nix::errno::Errno::EMFILE as i32);
        assert!(out_of_resources(&e));
        assert!(!out_of_resources(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
        let mut b = Backoff::default();
        let waits: Vec<_> = (0..12).map(|_| b.delay(&e)).collect();
        assert_eq!(waits[0], Duration::from_millis(10));
        assert_eq!(waits[1], Duration::from_millis(20));
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*waits.last().unwrap(), Backoff::MAX);
        b.recovered();
        assert_eq!(b.delay(&e), Duration::from_millis(10));
    }
}
