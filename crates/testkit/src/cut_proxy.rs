//! A loopback TCP proxy that can be cut and restored: what a client sees when the server
//! behind it goes down (listener closed, every live connection dropped) and comes back on
//! the same address.

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

pub struct CutProxy {
    addr: SocketAddr,
    target: SocketAddr,
    /// Bumped on every cut; connections opened before it are dropped.
    generation: watch::Sender<u64>,
    accept: Option<tokio::task::JoinHandle<()>>,
}

impl CutProxy {
    /// Listens on a free loopback port and forwards to `target`. Needs a tokio runtime.
    pub fn start(target: SocketAddr) -> std::io::Result<CutProxy> {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener.local_addr()?;
        let generation = watch::Sender::new(0);
        let accept = tokio::spawn(accept_loop(listener, target, generation.clone()));
        Ok(CutProxy {
            addr,
            target,
            generation,
            accept: Some(accept),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Closes the listener and drops every live connection.
    pub fn cut(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        self.generation.send_modify(|g| *g += 1);
    }

    /// Listens on the same address again.
    pub fn restore(&mut self) -> std::io::Result<()> {
        let listener = bind(self.addr)?;
        self.accept = Some(tokio::spawn(accept_loop(
            listener,
            self.target,
            self.generation.clone(),
        )));
        Ok(())
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    // The port is bound again right after a cut, while closed connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(64)
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, generation: watch::Sender<u64>) {
    while let Ok((mut client, _)) = listener.accept().await {
        let mut cut = generation.subscribe();
        cut.borrow_and_update();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(target).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = cut.changed() => {}
            }
        });
    }
}
