//! The in-sandbox half of the egress path: listens on a loopback TCP port in the sandbox's
//! own network namespace and forwards each connection, byte for byte, to the egress
//! proxy's Unix socket (bound into the sandbox). Blocking std threads, no runtime: it runs
//! as a small program inside the sandbox, started by the sandbox's shell wrapper.

use std::convert::Infallible;
use std::ffi::OsString;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Connections forwarded at once; further ones are closed at once.
const MAX_CONNECTIONS: usize = 256;
const THREAD_STACK: usize = 128 * 1024;

/// What `run_net_bridge` expects after any prefix (e.g. a hidden subcommand's name).
pub const NET_BRIDGE_USAGE: &str = "--listen 127.0.0.1:PORT --connect /path/to/proxy.sock";

#[derive(Debug, thiserror::Error)]
pub enum NetBridgeError {
    #[error("net-bridge: {0} (usage: {NET_BRIDGE_USAGE})")]
    Usage(String),
    #[error("net-bridge: cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("net-bridge: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs the bridge; returns only on a startup error.
///
/// `args` are the arguments after the program name (and after any prefix the caller
/// consumed): `--listen ADDR --connect SOCKET`, in either order. Once it listens, it
/// writes `ready` and a newline to stdout and then points stdout at `/dev/null`, so a
/// shell's `$(bridge … &)` returns as soon as the port accepts connections. It serves
/// until killed (with the sandbox). Errors go to the caller; nothing is printed per
/// connection, so the command's output stays clean.
pub fn run_net_bridge<I, S>(args: I) -> Result<Infallible, NetBridgeError>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let (listen, socket) = parse_args(args)?;
    let listener = TcpListener::bind(listen).map_err(|source| NetBridgeError::Listen {
        addr: listen,
        source,
    })?;
    {
        let mut out = std::io::stdout().lock();
        out.write_all(b"ready\n")?;
        out.flush()?;
    }
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    // SAFETY: dup2 onto fd 1 only redirects this process's stdout; no memory is involved.
    if unsafe { libc::dup2(null.as_raw_fd(), 1) } < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    drop(null);
    let socket = Arc::new(socket);
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(_) => {
                // EMFILE and the like: back off rather than spin.
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let socket = socket.clone();
        let guard = ActiveGuard(active.clone());
        let spawned = std::thread::Builder::new()
            .stack_size(THREAD_STACK)
            .spawn(move || {
                let _guard = guard;
                forward(client, &socket);
            });
        // Out of threads (the pids limit): the connection is dropped with the closure.
        drop(spawned);
    }
}

struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Copies both ways until each side has finished, passing half-closes on.
fn forward(client: TcpStream, socket: &Path) {
    let Ok(proxy) = UnixStream::connect(socket) else {
        return;
    };
    let (Ok(client_r), Ok(proxy_w)) = (client.try_clone(), proxy.try_clone()) else {
        return;
    };
    let up = std::thread::Builder::new()
        .stack_size(THREAD_STACK)
        .spawn(move || {
            let (mut r, mut w) = (client_r, proxy_w);
            let _ = std::io::copy(&mut r, &mut w);
            let _ = w.shutdown(Shutdown::Write);
        });
    let Ok(up) = up else {
        return;
    };
    let (mut r, mut w) = (proxy, client);
    let _ = std::io::copy(&mut r, &mut w);
    let _ = w.shutdown(Shutdown::Write);
    // The proxy is done: the client may still be sending, but nobody will read it.
    let _ = r.shutdown(Shutdown::Both);
    let _ = w.shutdown(Shutdown::Both);
    let _ = up.join();
}

fn parse_args<I, S>(args: I) -> Result<(SocketAddr, PathBuf), NetBridgeError>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut listen = None;
    let mut socket = None;
    let mut it = args.into_iter().map(Into::into);
    while let Some(flag) = it.next() {
        let value = |it: &mut dyn Iterator<Item = OsString>| {
            it.next()
                .ok_or_else(|| NetBridgeError::Usage(format!("{} needs a value", flag.display())))
        };
        match flag.to_str() {
            Some("--listen") => {
                let v = value(&mut it)?;
                let addr = v
                    .to_str()
                    .and_then(|s| s.parse::<SocketAddr>().ok())
                    .ok_or_else(|| {
                        NetBridgeError::Usage(format!(
                            "--listen `{}` is not an address:port",
                            v.display()
                        ))
                    })?;
                listen = Some(addr);
            }
            Some("--connect") => socket = Some(PathBuf::from(value(&mut it)?)),
            _ => {
                return Err(NetBridgeError::Usage(format!(
                    "unknown argument `{}`",
                    flag.display()
                )));
            }
        }
    }
    match (listen, socket) {
        (Some(l), Some(s)) => Ok((l, s)),
        _ => Err(NetBridgeError::Usage(
            "both --listen and --connect are required".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_errors_are_usage_errors() {
        let ok = parse_args(["--connect", "/s", "--listen", "127.0.0.1:3128"]).unwrap();
        assert_eq!(ok, ("127.0.0.1:3128".parse().unwrap(), PathBuf::from("/s")));
        for bad in [
            &["--listen", "127.0.0.1:3128"][..],
            &["--listen", "nope", "--connect", "/s"],
            &["--listen"],
            &["--bogus"],
            &[],
        ] {
            assert!(
                matches!(
                    parse_args(bad.iter().copied()),
                    Err(NetBridgeError::Usage(_))
                ),
                "{bad:?}"
            );
        }
    }
}
