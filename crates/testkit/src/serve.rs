//! A loopback HTTP(S) server on a thread of its own, for the test servers of this crate:
//! tests may be sync or async, so each server brings its own runtime.

use crate::tls::{TestCa, TlsListener};
use crate::{Result, io_err};
use axum::Router;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use tokio::sync::oneshot;

/// A listener on a free port of 127.0.0.1, bound before the server's state is made so that
/// the state can know its own address.
pub(crate) struct Bound {
    runtime: tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    pub addr: SocketAddr,
}

/// A running server; dropping it stops the server and waits for its thread.
pub(crate) struct ServerThread {
    pub addr: SocketAddr,
    /// `http` or `https`.
    pub scheme: &'static str,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

pub(crate) fn bind_loopback() -> Result<Bound> {
    let std_listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(io_err("binding 127.0.0.1:0"))?;
    std_listener
        .set_nonblocking(true)
        .map_err(io_err("making the listener non-blocking"))?;
    let addr = std_listener
        .local_addr()
        .map_err(io_err("reading local addr"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err("building the server runtime"))?;
    let listener = {
        let _guard = runtime.enter();
        tokio::net::TcpListener::from_std(std_listener)
            .map_err(io_err("registering the listener"))?
    };
    Ok(Bound {
        runtime,
        listener,
        addr,
    })
}

impl Bound {
    /// The scheme the server will answer in.
    pub fn scheme(tls: Option<&TestCa>) -> &'static str {
        if tls.is_some() { "https" } else { "http" }
    }

    /// Serves `app` (over TLS with a certificate of `tls` when given) on a thread named
    /// `name`.
    pub fn serve(self, name: String, app: Router, tls: Option<&TestCa>) -> Result<ServerThread> {
        let Bound {
            runtime,
            listener,
            addr,
        } = self;
        let scheme = Bound::scheme(tls);
        let acceptor = tls.map(TestCa::acceptor);
        let (tx, rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                runtime.block_on(async move {
                    match acceptor {
                        Some(acceptor) => {
                            let listener = TlsListener::with_acceptor(listener, acceptor);
                            tokio::select! {
                                _ = axum::serve(listener, app) => {}
                                _ = rx => {}
                            }
                        }
                        None => {
                            tokio::select! {
                                _ = axum::serve(listener, app) => {}
                                _ = rx => {}
                            }
                        }
                    }
                });
                // Dropping the runtime drops in-flight handlers, whose children are
                // kill_on_drop, so nothing a handler started outlives the server.
                drop(runtime);
            })
            .map_err(io_err("spawning the server thread"))?;
        Ok(ServerThread {
            addr,
            scheme,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
