#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

/// An upstream that echoes what it reads.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1024];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 || socket.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

async fn round_trip(socket: &mut TcpStream, text: &[u8], limit: Duration) -> Option<Vec<u8>> {
    socket.write_all(text).await.ok()?;
    let mut got = vec![0u8; text.len()];
    tokio::time::timeout(limit, socket.read_exact(&mut got))
        .await
        .ok()?
        .ok()?;
    Some(got)
}

const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(5);

#[tokio::test]
async fn bytes_pass_both_ways_late_by_the_latency_and_in_order() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut socket = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(
        round_trip(&mut socket, b"hello", LONG).await.unwrap(),
        b"hello"
    );
    proxy.set_latency(Duration::from_millis(100), Duration::from_millis(50));
    let began = std::time::Instant::now();
    // Many small writes with jitter still come back in order.
    let mut sent = Vec::new();
    for i in 0..50u8 {
        socket.write_all(&[i]).await.unwrap();
        sent.push(i);
    }
    let mut got = vec![0u8; sent.len()];
    tokio::time::timeout(LONG, socket.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, sent);
    // Two ways, at least 50 ms each.
    assert!(
        began.elapsed() >= Duration::from_millis(100),
        "{:?}",
        began.elapsed()
    );
}

#[tokio::test]
async fn a_hung_link_answers_nothing_until_it_heals() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(round_trip(&mut open, b"before", LONG).await.is_some());
    proxy.set_link(Link::Hung);
    assert_eq!(round_trip(&mut open, b"during", SHORT).await, None);
    // A new connection is accepted, and never answered.
    let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut fresh, b"new", SHORT).await, None);
    proxy.heal();
    // What was held arrives, in order, on both.
    let mut held = vec![0u8; b"duringduring".len()];
    open.write_all(b"during").await.unwrap();
    tokio::time::timeout(LONG, open.read_exact(&mut held))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(held, b"duringduring");
    let mut late = vec![0u8; 3];
    tokio::time::timeout(LONG, fresh.read_exact(&mut late))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(late, b"new");
}

/// Reads until the peer closes; `true` if it did within `limit`.
async fn closed(socket: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn a_partition_closes_connections_and_refuses_new_ones_until_it_heals() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(round_trip(&mut open, b"x", LONG).await.is_some());
    proxy.set_link(Link::Partitioned);
    assert!(
        closed(&mut open, LONG).await,
        "the open connection was kept"
    );
    let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(
        closed(&mut refused, LONG).await,
        "a new connection was served"
    );
    proxy.heal();
    let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(round_trip(&mut again, b"back", LONG).await.is_some());
}

#[tokio::test]
async fn dropped_connections_close_once_and_new_ones_go_through() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(round_trip(&mut open, b"x", LONG).await.is_some());
    proxy.drop_connections();
    assert!(closed(&mut open, LONG).await);
    let mut next = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(round_trip(&mut next, b"y", LONG).await.is_some());
}

#[tokio::test]
async fn forgotten_connections_go_silent_for_good_while_new_ones_go_through() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(round_trip(&mut open, b"x", LONG).await.is_some());
    proxy.forget_connections();
    assert_eq!(round_trip(&mut open, b"y", SHORT).await, None);
    let mut next = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(round_trip(&mut next, b"z", LONG).await.is_some());
    assert_eq!(proxy.connections(), 2);
    // Healing the link does not bring a forgotten connection back.
    proxy.heal();
    assert!(!closed(&mut open, SHORT).await);
    let mut rest = [0u8; 1];
    assert!(
        tokio::time::timeout(SHORT, open.read(&mut rest))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_bandwidth_limit_paces_what_passes_and_lifting_it_frees_the_link() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut socket = TcpStream::connect(proxy.addr()).await.unwrap();
    // 8 KiB a second each way: 12 KiB there and back takes over a second
    // (the echo's own 1 KiB reads make the chunks small, so pacing shows).
    proxy.set_bandwidth(Some(8 * 1024));
    let payload = vec![7u8; 12 * 1024];
    let began = std::time::Instant::now();
    assert_eq!(
        round_trip(&mut socket, &payload, LONG).await.unwrap(),
        payload
    );
    assert!(
        began.elapsed() >= Duration::from_secs(1),
        "{:?}",
        began.elapsed()
    );
    proxy.set_bandwidth(None);
    assert_eq!(
        round_trip(&mut socket, b"free", LONG).await.unwrap(),
        b"free"
    );
}
