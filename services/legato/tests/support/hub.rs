//! A bare SignalR JSON-protocol client over a WebSocket, for tests that
//! speak to the local hub record by record.

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Ws;

use super::Legato;

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub const RS: char = '\u{1e}';

pub async fn open(
    legato: &Legato,
    query: &str,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    // The hub is the notifier's, wherever that runs.
    let url = format!(
        "{}/hubs/progress{query}",
        legato.stream_base.replace("http://", "ws://")
    );
    tokio_tungstenite::connect_async(url)
        .await
        .map(|(socket, _)| socket)
}

/// The next hub record that is not a ping.
pub async fn next(socket: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next())
            .await
            .expect("a frame within 10 s")
            .expect("the socket is open")
            .unwrap();
        let Ws::Text(text) = frame else {
            panic!("expected a text frame, got {frame:?}")
        };
        assert!(text.ends_with(RS), "every record ends with 0x1E: {text:?}");
        for record in text.split(RS).filter(|r| !r.is_empty()) {
            let value: Value = serde_json::from_str(record).unwrap();
            if value["type"] != 6 {
                return value;
            }
        }
    }
}

pub async fn send(socket: &mut Socket, value: Value) {
    socket.send(Ws::text(format!("{value}{RS}"))).await.unwrap();
}

pub async fn invoke(socket: &mut Socket, id: &str, target: &str, arguments: Value) -> Value {
    send(
        socket,
        json!({"type": 1, "invocationId": id, "target": target, "arguments": arguments}),
    )
    .await;
    loop {
        let message = next(socket).await;
        if message["type"] == 3 && message["invocationId"] == id {
            return message;
        }
    }
}

/// Opens the hub (after `query`, e.g. `?access_token=…`) and completes
/// the JSON protocol handshake.
pub async fn connect(legato: &Legato, query: &str) -> Socket {
    let mut socket = open(legato, query).await.unwrap();
    send(&mut socket, json!({"protocol": "json", "version": 1})).await;
    assert_eq!(next(&mut socket).await, json!({}), "handshake accepted");
    socket
}
