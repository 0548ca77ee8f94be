//! Network endpoints that misbehave on purpose, for timeout and unreachability tests.

use crate::{Result, io_err};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;

/// Accepts TCP connections on `127.0.0.1:<random port>` and never sends a byte, holding each
/// connection open until dropped — a server that hangs mid-request.
pub struct SilentServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl SilentServer {
    pub fn start() -> Result<SilentServer> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("binding 127.0.0.1:0"))?;
        let addr = listener
            .local_addr()
            .map_err(io_err("reading local addr"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    accepted2.fetch_add(1, Ordering::SeqCst);
                    held.push(conn);
                }
            }
        });
        Ok(SilentServer {
            addr,
            stop,
            accepted,
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT/<repo_name>`.
    pub fn url(&self, repo_name: &str) -> String {
        format!("http://{}/{repo_name}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections were accepted so far (proves a client really got through).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // `accept` blocks; one last connection wakes it so it sees the stop flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A loopback port on which nothing listens (bound, then released), for "connection
/// refused" tests.
pub fn closed_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("binding 127.0.0.1:0"))?;
    let port = listener
        .local_addr()
        .map_err(io_err("reading local addr"))?
        .port();
    drop(listener);
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::Duration;

    #[test]
    fn silent_server_accepts_and_never_answers() {
        let server = SilentServer::start().unwrap();
        let mut conn = TcpStream::connect(server.addr()).unwrap();
        conn.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 1];
        let err = conn.read(&mut buf).unwrap_err();
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{err:?}"
        );
        assert_eq!(server.accepted(), 1);
    }

    #[test]
    fn closed_port_refuses() {
        let port = closed_port().unwrap();
        let err = TcpStream::connect(("127.0.0.1", port)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    }
}
