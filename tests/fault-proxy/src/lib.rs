//! A TCP proxy that makes the network misbehave on purpose. Tests (and
//! `legato chaos`) point a service at [`FaultProxy::addr`] instead of its
//! broker or store and then, while it runs, add latency with jitter, hang
//! the link (connections stay open and nothing gets through, the failure
//! that waits forever unless someone set a deadline), partition it
//! (connections closed, new ones refused) or drop every connection once.
//!
//! Each direction of a connection is a reader and a writer joined by a
//! queue of chunks stamped with when they may leave, so added latency
//! delays bytes without serialising the stream, and chunks leave in the
//! order they came (a later chunk with less jitter waits for the earlier).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Chunks in flight per direction before the reader waits for the writer.
const IN_FLIGHT: usize = 256;
const CHUNK: usize = 16 * 1024;

/// What gets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Link {
    #[default]
    Up,
    /// Cut off: open connections are closed and new ones accepted and
    /// closed at once, as a failing peer or a resetting firewall does.
    Partitioned,
    /// Nothing gets through either way, but nothing is closed: open
    /// connections stop answering and new ones are accepted and never
    /// answered (a peer that hangs rather than fails). Bytes sent meanwhile
    /// are held and delivered when the link is up again.
    Hung,
}

/// The faults in force; the default passes everything at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Faults {
    pub link: Link,
    /// Added to every chunk, each way.
    pub latency: Duration,
    /// Each chunk's latency is `latency` plus or minus up to this much.
    pub jitter: Duration,
    /// At most this many bytes a second each way per connection (a thin
    /// or congested link); unlimited when `None`.
    pub bandwidth: Option<u64>,
}

pub struct FaultProxy {
    addr: SocketAddr,
    faults: watch::Sender<Faults>,
    /// Bumped to close every open connection once.
    drops: watch::Sender<u64>,
    /// Connections numbered below this are silent for good.
    forgotten: watch::Sender<u64>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    accept: JoinHandle<()>,
}

/// What each connection watches.
#[derive(Clone)]
struct Watches {
    faults: watch::Receiver<Faults>,
    drops: watch::Receiver<u64>,
    forgotten: watch::Receiver<u64>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (faults, _) = watch::channel(Faults::default());
        let (drops, _) = watch::channel(0u64);
        let (forgotten, _) = watch::channel(0u64);
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let watches = Watches {
            faults: faults.subscribe(),
            drops: drops.subscribe(),
            forgotten: forgotten.subscribe(),
        };
        let accept = tokio::spawn(accept_loop(listener, upstream, watches, accepted.clone()));
        Ok(Self {
            addr,
            faults,
            drops,
            forgotten,
            accepted,
            accept,
        })
    }

    /// Where services connect instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn faults(&self) -> Faults {
        *self.faults.borrow()
    }

    pub fn set(&self, faults: Faults) {
        self.faults.send_replace(faults);
    }

    pub fn set_link(&self, link: Link) {
        self.faults.send_modify(|f| f.link = link);
    }

    /// At most `bytes_per_second` each way per connection; `None` lifts it.
    pub fn set_bandwidth(&self, bytes_per_second: Option<u64>) {
        self.faults.send_modify(|f| f.bandwidth = bytes_per_second);
    }

    pub fn set_latency(&self, latency: Duration, jitter: Duration) {
        self.faults.send_modify(|f| {
            f.latency = latency;
            f.jitter = jitter;
        });
    }

    /// Everything passes again, at once.
    pub fn heal(&self) {
        self.set(Faults::default());
    }

    /// Closes every open connection once (a NAT or load balancer
    /// forgetting them); new ones go through as before.
    pub fn drop_connections(&self) {
        self.drops.send_modify(|n| *n += 1);
    }

    /// Every open connection goes silent for good without being closed (a
    /// NAT or load balancer forgetting its flows, a peer's host gone):
    /// only a deadline notices. New connections go through as before.
    pub fn forget_connections(&self) {
        let accepted = self.accepted.load(std::sync::atomic::Ordering::SeqCst);
        self.forgotten.send_replace(accepted);
    }

    /// Connections accepted so far: how many a client opened.
    pub fn connections(&self) -> u64 {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Open connections end with it.
        self.set_link(Link::Partitioned);
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    watches: Watches,
    accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let serial = accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        seed = seed.wrapping_add(0x6a09_e667_f3bc_c909);
        tokio::spawn(serve(client, upstream, watches.clone(), serial, seed));
    }
}

/// Waits until the link is up for connection `serial`; `false` if it is
/// partitioned (or the proxy is gone) instead. A forgotten connection
/// waits for ever (until it is cut).
async fn link_up(watches: &mut Watches, serial: u64) -> bool {
    loop {
        let forgotten = serial < *watches.forgotten.borrow_and_update();
        match watches.faults.borrow_and_update().link {
            Link::Up if !forgotten => return true,
            Link::Partitioned => return false,
            Link::Up | Link::Hung => {}
        }
        tokio::select! {
            changed = watches.faults.changed() => if changed.is_err() { return false },
            changed = watches.forgotten.changed() => if changed.is_err() { return false },
        }
    }
}

/// Resolves once the link is partitioned or the connections are dropped.
async fn cut(mut faults: watch::Receiver<Faults>, mut drops: watch::Receiver<u64>) {
    let generation = *drops.borrow_and_update();
    loop {
        if faults.borrow_and_update().link == Link::Partitioned {
            return;
        }
        tokio::select! {
            changed = faults.changed() => if changed.is_err() { return },
            changed = drops.changed() => {
                if changed.is_err() || *drops.borrow_and_update() != generation {
                    return;
                }
            }
        }
    }
}

async fn serve(client: TcpStream, upstream: SocketAddr, watches: Watches, serial: u64, seed: u64) {
    let mut waiting = watches.clone();
    let connect = async move {
        // A hung link answers nothing, the connection's opening included.
        if !link_up(&mut waiting, serial).await {
            return None;
        }
        TcpStream::connect(upstream).await.ok()
    };
    let server = tokio::select! {
        server = connect => server,
        _ = cut(watches.faults.clone(), watches.drops.clone()) => None,
    };
    let Some(server) = server else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let both = both_ways(
        direction(client_read, server_write, watches.clone(), serial, seed),
        direction(
            server_read,
            client_write,
            watches.clone(),
            serial,
            seed ^ 0xff51_afd7_ed55_8ccd,
        ),
    );
    // Dropping the halves closes both sockets.
    tokio::select! {
        _ = both => {}
        _ = cut(watches.faults, watches.drops) => {}
    }
}

/// Both ways of a connection, until each has ended.
async fn both_ways(a: impl Future<Output = ()>, b: impl Future<Output = ()>) {
    tokio::join!(a, b);
}

/// One way of a connection: what is read leaves `latency ± jitter` later,
/// in order, while the link is up.
async fn direction(
    from: OwnedReadHalf,
    to: OwnedWriteHalf,
    watches: Watches,
    serial: u64,
    seed: u64,
) {
    let (queue, chunks) = mpsc::channel(IN_FLIGHT);
    tokio::join!(
        read_side(from, queue, watches.faults.clone(), seed),
        write_side(chunks, to, watches, serial)
    );
}

async fn read_side(
    mut from: OwnedReadHalf,
    queue: mpsc::Sender<(Instant, Vec<u8>)>,
    faults: watch::Receiver<Faults>,
    mut rng: u64,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let f = *faults.borrow();
        let due = Instant::now() + delay(f, &mut rng);
        if queue.send((due, buf[..n].to_vec())).await.is_err() {
            return;
        }
    }
}

async fn write_side(
    mut chunks: mpsc::Receiver<(Instant, Vec<u8>)>,
    mut to: OwnedWriteHalf,
    mut watches: Watches,
    serial: u64,
) {
    // Under a bandwidth limit a chunk arrives once its last byte would
    // have crossed the link, after the chunks before it.
    let mut free_at = Instant::now();
    while let Some((due, chunk)) = chunks.recv().await {
        let bandwidth = watches.faults.borrow().bandwidth;
        let crossing = bandwidth.map_or(Duration::ZERO, |b| transfer(chunk.len(), b));
        free_at = due.max(free_at) + crossing;
        tokio::time::sleep_until(free_at).await;
        if !link_up(&mut watches, serial).await || to.write_all(&chunk).await.is_err() {
            return;
        }
    }
    // The reader saw the end: pass the half-close on.
    let _ = to.shutdown().await;
}

/// How long `bytes` take at `bytes_per_second`.
fn transfer(bytes: usize, bytes_per_second: u64) -> Duration {
    Duration::from_secs_f64(bytes as f64 / bytes_per_second.max(1) as f64)
}

/// `latency` plus a uniform draw from `-jitter..=jitter`, never negative.
fn delay(faults: Faults, rng: &mut u64) -> Duration {
    let jitter = u64::try_from(faults.jitter.as_micros()).unwrap_or(u64::MAX);
    if jitter == 0 {
        return faults.latency;
    }
    // xorshift64: enough spread for jitter, no dependency.
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let offset = *rng % (2 * jitter + 1);
    let latency = u64::try_from(faults.latency.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros((latency + offset).saturating_sub(jitter))
}

#[cfg(test)]
mod tests;
