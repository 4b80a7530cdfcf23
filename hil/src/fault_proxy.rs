//! A TCP proxy that breaks the network between a target and what it talks to (the broker, an
//! RTSP camera, the update server), for the HIL rig (issue 14, "Network faults"). The target is
//! pointed at the proxy; the proxy forwards to the real service and applies the fault set now to
//! every chunk it forwards, in both directions:
//!
//! | fault | what the target sees |
//! |---|---|
//! | [`Fault::Pass`] | the service, as it is |
//! | [`Fault::Delay`] | each chunk later by the delay (one way) |
//! | [`Fault::Loss`] | a share of chunks stalled as TCP stalls on a lost segment (its retransmission time) |
//! | [`Fault::Bandwidth`] | at most this many bytes per second each way |
//! | [`Fault::Blackhole`] | connections stay open and carry nothing; what was sent arrives once the fault is lifted (TCP's retransmissions), unless a side gave up first |
//! | [`Fault::HalfOpen`] | the service's side of each connection is gone without a word: the target's socket stays open, its data is swallowed, nothing comes back, ever (connections made after the fault is lifted work) |
//! | [`Fault::Refuse`] | new connections are closed at once; open ones go on |
//!
//! What it does not model: real packet loss below TCP (it works on the byte stream, so a stall is
//! how loss shows), reordering, and link-down (no carrier; the rig does that with a network
//! namespace where the machine allows it). The pseudo-random choices of [`Fault::Loss`] come from
//! a fixed seed, so a scenario fails the same way twice.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to the traffic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    Pass,
    Delay(Duration),
    /// `rate` of chunks (0..=1) wait `stall` before they go on.
    Loss {
        rate: f64,
        stall: Duration,
    },
    /// Bytes per second, each way.
    Bandwidth(u64),
    Blackhole,
    HalfOpen,
    Refuse,
}

/// Chunks read and forwarded at a time.
const CHUNK: usize = 16 << 10;

/// The target's side of half-open connections, kept open (closing it would tell the target)
/// until the proxy is dropped.
type Parked = Arc<Mutex<Vec<OwnedWriteHalf>>>;

/// A running proxy; it stops (and drops every connection) when dropped.
pub struct FaultProxy {
    /// Where the target connects.
    pub addr: SocketAddr,
    fault: watch::Sender<Fault>,
    accepted: Arc<AtomicUsize>,
    parked: Parked,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy on a free loopback port forwarding to `upstream`, passing traffic as it is.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().expect("a socket address"), upstream).await
    }

    /// The same, listening on `listen` (a rig address the target can reach).
    pub async fn start_on(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (fault, faults) = watch::channel(Fault::Pass);
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        let seed = Arc::new(AtomicU64::new(0x9e37_79b9_7f4a_7c15));
        let parked = Parked::default();
        let parking = parked.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                if *faults.borrow() == Fault::Refuse {
                    drop(client);
                    continue;
                }
                let (faults, seed, parked) = (faults.clone(), seed.clone(), parking.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        connection(client, server, faults, seed, parked).await;
                    }
                });
            }
        });
        Ok(Self { addr, fault, accepted, parked, task })
    }

    /// Applies `fault` from now on, to open connections and new ones.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// Connections accepted so far (refused ones included).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.parked.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// One proxied connection: a pump each way. A half-open fault ends the service's side for good.
async fn connection(
    client: TcpStream,
    server: TcpStream,
    faults: watch::Receiver<Fault>,
    seed: Arc<AtomicU64>,
    parked: Parked,
) {
    let (client_rx, client_tx) = client.into_split();
    let (server_rx, server_tx) = server.into_split();
    // Set once the connection is half-open: both pumps then stop forwarding.
    let half_open = Arc::new(AtomicBool::new(false));
    let up = pump(client_rx, server_tx, faults.clone(), seed.clone(), half_open.clone(), None);
    let down = pump(server_rx, client_tx, faults, seed, half_open, Some(parked));
    tokio::join!(up, down);
}

/// Forwards `from` to `to` under the faults. Once the connection is half-open, the target →
/// service pump (`park`: `None`) swallows what the target sends and closes the service's side;
/// the service → target pump parks the target's side in `park`, open and silent.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut faults: watch::Receiver<Fault>,
    seed: Arc<AtomicU64>,
    half_open: Arc<AtomicBool>,
    park: Option<Parked>,
) {
    let towards_service = park.is_none();
    let park = |to: OwnedWriteHalf| {
        if let Some(parked) = &park {
            parked.lock().unwrap_or_else(|p| p.into_inner()).push(to);
        }
    };
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            // The service's side goes away the moment the connection turns half-open.
            _ = faults.wait_for(|f| *f == Fault::HalfOpen), if !towards_service => {
                half_open.store(true, Ordering::SeqCst);
                park(to);
                return;
            }
        };
        if *faults.borrow() == Fault::HalfOpen {
            half_open.store(true, Ordering::SeqCst);
        }
        if half_open.load(Ordering::SeqCst) {
            if towards_service {
                // The service is gone: the target's bytes go nowhere; the service's socket closes.
                let _ = to.shutdown().await;
                continue;
            }
            park(to);
            return;
        }
        // Held while the path is a blackhole, then delivered (as TCP retransmits).
        let _ = faults.wait_for(|f| *f != Fault::Blackhole).await;
        let fault = *faults.borrow();
        match fault {
            Fault::Delay(d) => tokio::time::sleep(d).await,
            Fault::Loss { rate, stall } if chance(&seed) < rate => tokio::time::sleep(stall).await,
            _ => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        if let Fault::Bandwidth(bytes_per_s) = fault {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / bytes_per_s.max(1) as f64)).await;
        }
    }
    let _ = to.shutdown().await;
}

/// A number in 0..1 from a shared xorshift state.
fn chance(seed: &AtomicU64) -> f64 {
    let mut x = seed.load(Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    seed.store(x, Ordering::Relaxed);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An echo server; counts the connections it saw closed by the other side.
    async fn echo() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let closed = Arc::new(AtomicUsize::new(0));
        let seen = closed.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; CHUNK];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => {
                                seen.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        (addr, closed)
    }

    /// A proxy in front of an echo server, a connection through it, and the echo server's count
    /// of connections closed on it.
    async fn proxied() -> (FaultProxy, TcpStream, Arc<AtomicUsize>) {
        let (upstream, closed) = echo().await;
        let proxy = FaultProxy::start(upstream).await.unwrap();
        let s = TcpStream::connect(proxy.addr).await.unwrap();
        (proxy, s, closed)
    }

    /// Sends `bytes` and reads as many back; `None` if they do not all come within `within`,
    /// `Some(Err)` on end of stream.
    async fn round_trip(s: &mut TcpStream, bytes: usize, within: Duration) -> Option<Result<Duration, ()>> {
        let started = Instant::now();
        s.write_all(&vec![7u8; bytes]).await.unwrap();
        let mut got = 0;
        let mut buf = vec![0u8; CHUNK];
        let read = async {
            while got < bytes {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return Err(()),
                    Ok(n) => got += n,
                }
            }
            Ok(started.elapsed())
        };
        tokio::time::timeout(within, read).await.ok()
    }

    const LONG: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn passes_delays_and_stalls_both_ways() {
        let (proxy, mut s, _) = proxied().await;
        assert!(round_trip(&mut s, 100, LONG).await.unwrap().is_ok());
        assert_eq!(proxy.accepted(), 1);
        proxy.set(Fault::Delay(Duration::from_millis(150)));
        let took = round_trip(&mut s, 100, LONG).await.unwrap().unwrap();
        assert!(took >= Duration::from_millis(300), "a delay each way: {took:?}");
        proxy.set(Fault::Loss { rate: 1.0, stall: Duration::from_millis(200) });
        let took = round_trip(&mut s, 100, LONG).await.unwrap().unwrap();
        assert!(took >= Duration::from_millis(400), "every chunk stalled, each way: {took:?}");
        proxy.set(Fault::Loss { rate: 0.0, stall: Duration::from_secs(5) });
        let took = round_trip(&mut s, 100, LONG).await.unwrap().unwrap();
        assert!(took < Duration::from_secs(5), "no chunk stalled: {took:?}");
    }

    #[tokio::test]
    async fn caps_the_bandwidth() {
        let (proxy, mut s, _) = proxied().await;
        proxy.set(Fault::Bandwidth(64 << 10));
        // 128 KiB at 64 KiB/s each way: at least 2 s of sending (the two ways overlap).
        let took = round_trip(&mut s, 128 << 10, LONG).await.unwrap().unwrap();
        assert!(took >= Duration::from_millis(1700), "{took:?}");
    }

    #[tokio::test]
    async fn a_blackhole_carries_nothing_keeps_connections_open_and_delivers_once_lifted() {
        let (proxy, mut s, closed) = proxied().await;
        assert!(round_trip(&mut s, 10, LONG).await.unwrap().is_ok());
        proxy.set(Fault::Blackhole);
        assert_eq!(round_trip(&mut s, 10, Duration::from_millis(500)).await, None, "nothing comes back, no EOF");
        assert_eq!(closed.load(Ordering::SeqCst), 0, "the service's side is still open");
        proxy.set(Fault::Pass);
        // The 10 bytes held in the blackhole arrive (echoed), then the connection goes on.
        let mut held = [0u8; 10];
        tokio::time::timeout(LONG, s.read_exact(&mut held)).await.expect("the held bytes").unwrap();
        assert_eq!(held, [7u8; 10]);
        assert!(round_trip(&mut s, 10, LONG).await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn half_open_closes_the_service_side_and_leaves_the_target_hanging() {
        let (proxy, mut s, closed) = proxied().await;
        assert!(round_trip(&mut s, 10, LONG).await.unwrap().is_ok());
        proxy.set(Fault::HalfOpen);
        assert_eq!(round_trip(&mut s, 10, Duration::from_millis(500)).await, None, "no reply and no EOF");
        let deadline = Instant::now() + LONG;
        while closed.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(closed.load(Ordering::SeqCst), 1, "the service saw its connection end");
        proxy.set(Fault::Pass);
        assert_eq!(round_trip(&mut s, 10, Duration::from_millis(500)).await, None, "half-open for good");
        let mut fresh = TcpStream::connect(proxy.addr).await.unwrap();
        assert!(round_trip(&mut fresh, 10, LONG).await.unwrap().is_ok(), "new connections work");
    }

    #[tokio::test]
    async fn refused_connections_close_at_once_while_open_ones_go_on() {
        let (proxy, mut open, _) = proxied().await;
        assert!(round_trip(&mut open, 10, LONG).await.unwrap().is_ok());
        proxy.set(Fault::Refuse);
        let mut refused = TcpStream::connect(proxy.addr).await.unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(LONG, refused.read(&mut buf)).await.unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "closed at once: {read:?}");
        assert!(round_trip(&mut open, 10, LONG).await.unwrap().is_ok(), "the open connection goes on");
        assert_eq!(proxy.accepted(), 2);
    }
}
