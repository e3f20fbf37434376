//! A small TCP proxy for fault injection: listens on a free loopback port and
//! forwards every connection to a target port on 127.0.0.1. [`Proxy::cut`]
//! resets every live connection and refuses new ones (the listening socket is
//! closed, so a connect gets "connection refused"), [`Proxy::restore`] listens
//! again on the same port, [`Proxy::delay`] holds every chunk of data for a
//! while before forwarding it. It runs on its own thread and runtime, so a
//! test that blocks its own runtime does not stall the traffic.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

/// What the proxy should be doing; changed by the test, watched by the tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mode {
    /// Bumped on every cut: connections of an older generation end.
    generation: u64,
    /// Refusing connections (listener closed).
    cut: bool,
}

/// A TCP proxy 127.0.0.1:`port` → 127.0.0.1:`target`. Stops on drop.
pub struct Proxy {
    pub port: u16,
    pub target: u16,
    mode: watch::Sender<Mode>,
    delay: Arc<Mutex<Duration>>,
    connections: Arc<Mutex<u64>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn listen(port: u16) -> std::io::Result<TcpListener> {
    let s = TcpSocket::new_v4()?;
    // The same port again right after a cut, while old sockets linger.
    s.set_reuseaddr(true)?;
    s.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    s.listen(1024)
}

impl Proxy {
    /// Starts a proxy to 127.0.0.1:`target` on a free port.
    pub fn start(target: u16) -> Proxy {
        Self::start_on(super::free_port(), target)
    }

    /// Starts a proxy to 127.0.0.1:`target` on 127.0.0.1:`port`.
    pub fn start_on(port: u16, target: u16) -> Proxy {
        let (mode, mode_rx) = watch::channel(Mode {
            generation: 0,
            cut: false,
        });
        let delay = Arc::new(Mutex::new(Duration::ZERO));
        let connections = Arc::new(Mutex::new(0u64));
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let (d, c) = (delay.clone(), connections.clone());
        let thread = std::thread::Builder::new()
            .name(format!("proxy-{port}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                rt.block_on(async move {
                    tokio::select! {
                        _ = shutdown_rx => {}
                        _ = serve(port, target, mode_rx, d, c, ready_tx) => {}
                    }
                });
                rt.shutdown_timeout(Duration::from_millis(100));
            })
            .expect("proxy thread");
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("proxy started")
            .expect("proxy listens");
        Proxy {
            port,
            target,
            mode,
            delay,
            connections,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Resets every live connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.mode.send_modify(|m| {
            m.generation += 1;
            m.cut = true;
        });
        // Give the tasks a moment to close their sockets and the listener.
        std::thread::sleep(Duration::from_millis(50));
    }

    /// Accepts connections again (on the same port).
    pub fn restore(&self) {
        self.mode.send_modify(|m| m.cut = false);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "proxy did not listen again on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Holds every chunk of data this long before forwarding it (`ZERO` = off).
    pub fn delay(&self, d: Duration) {
        *self.delay.lock().unwrap_or_else(|e| e.into_inner()) = d;
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        *self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    port: u16,
    target: u16,
    mut mode: watch::Receiver<Mode>,
    delay: Arc<Mutex<Duration>>,
    connections: Arc<Mutex<u64>>,
    ready: std::sync::mpsc::Sender<std::io::Result<()>>,
) {
    let mut listener = match listen(port) {
        Ok(l) => {
            let _ = ready.send(Ok(()));
            Some(l)
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    loop {
        let m = *mode.borrow_and_update();
        if m.cut {
            listener = None;
        } else if listener.is_none() {
            // Rebinding can fail for a moment while the old socket closes.
            match listen(port) {
                Ok(l) => listener = Some(l),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(l) = &listener else {
            if mode.changed().await.is_err() {
                return;
            }
            continue;
        };
        tokio::select! {
            changed = mode.changed() => if changed.is_err() { return },
            accepted = l.accept() => {
                let Ok((client, _)) = accepted else { continue };
                *connections.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                tokio::spawn(forward(client, target, mode.clone(), m.generation, delay.clone()));
            }
        }
    }
}

/// True once the connection's generation was cut.
async fn cut_since(mut mode: watch::Receiver<Mode>, generation: u64) {
    loop {
        if mode.borrow_and_update().generation != generation {
            return;
        }
        if mode.changed().await.is_err() {
            return;
        }
    }
}

async fn forward(
    client: TcpStream,
    target: u16,
    mode: watch::Receiver<Mode>,
    generation: u64,
    delay: Arc<Mutex<Duration>>,
) {
    let upstream = match TcpStream::connect(("127.0.0.1", target)).await {
        Ok(u) => u,
        // Target down: the client's connection just ends.
        Err(_) => return,
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let d1 = delay.clone();
    let up = async move { pump(&mut cr, &mut uw, &d1).await };
    let down = async move { pump(&mut ur, &mut cw, &delay).await };
    tokio::select! {
        _ = cut_since(mode, generation) => {
            // Dropping both halves closes the sockets; the peers see the
            // connection end mid-stream, as when a network path fails.
        }
        _ = async { tokio::join!(up, down) } => {}
    }
}

async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    delay: &Mutex<Duration>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let d = *delay.lock().unwrap_or_else(|e| e.into_inner());
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
