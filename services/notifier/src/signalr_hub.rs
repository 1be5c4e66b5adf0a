//! The local SignalR hub at `/hubs/progress`, enough of ASP.NET Core
//! SignalR for the stock `@microsoft/signalr` client: negotiate (versions
//! 0 and 1, WebSockets only), the JSON hub protocol over WebSocket text
//! frames, pings both ways, and close.
//!
//! Client methods: `Subscribe(instanceId)` answers `{instanceId,
//! runtimeStatus, seq, position}`, then the current run's progress (its
//! last 1,024 events at most), then every new event, each as a `progress` invocation
//! whose argument is the progress event with `instanceId`;
//! `Subscribe(instanceId, after)` sends exactly the events after position
//! `after` instead (from the history where the notifier no longer holds
//! them), so a client that reconnects misses and repeats nothing;
//! `Unsubscribe(instanceId)` stops them. Positions run without a gap (see
//! [`crate::cursor`]). Between them come `output` invocations: a piece of
//! what a model is writing inside one of the instance's tasks, as it
//! arrives, sent to whoever watches then and to nobody later.
//! Negotiate and connect are authenticated like the API (the client sends
//! its token as `Authorization` on negotiate and `?access_token=` on the
//! WebSocket); a connection watches only its caller's tenant's instances,
//! and each tenant holds a bounded number of connections.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use legato_contracts::InstanceId;
use legato_service::auth::{Caller, Principal};
use legato_service::problem::Problem;
use legato_service::records::state_of;
use legato_signalr::protocol::{HandshakeRequest, Message, handshake_response, records};
use legato_signalr::{OUTPUT_TARGET, PROGRESS_TARGET};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use crate::cursor::Cursor;
use crate::{InstanceUpdates, NotifierState, Output, Relayed, Update};

/// The client pings every 15 s and gives up after 30 s of silence; the
/// server does the same.
const PING_INTERVAL: Duration = Duration::from_secs(15);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a negotiated connection token may wait for its WebSocket.
const TOKEN_TTL: Duration = Duration::from_secs(120);
/// Most negotiated connection tokens waiting at once: negotiating without
/// connecting cannot grow the table without bound.
const MAX_WAITING_TOKENS: usize = 10_000;

pub(crate) async fn negotiate(
    State(state): State<NotifierState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let version = query
        .get("negotiateVersion")
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0)
        .min(1);
    let connection_id = uuid::Uuid::new_v4().simple().to_string();
    let token = uuid::Uuid::new_v4().simple().to_string();
    // Version 0 clients connect with the connection id, version 1 with the token.
    let key = if version >= 1 {
        token.clone()
    } else {
        connection_id.clone()
    };
    if !state.remember_token(key) {
        return Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many negotiations",
            "too many negotiated connections have not connected yet; connect or retry later",
        )
        .retry_after(Duration::from_secs(5))
        .into_response();
    }
    let mut body = json!({
        "negotiateVersion": version,
        "connectionId": connection_id,
        "availableTransports": [{"transport": "WebSockets", "transferFormats": ["Text"]}],
    });
    if version >= 1 {
        body["connectionToken"] = json!(token);
    }
    Json(body).into_response()
}

pub(crate) async fn connect(
    State(state): State<NotifierState>,
    Caller(caller): Caller,
    Query(query): Query<HashMap<String, String>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => {
            return Problem::new(StatusCode::BAD_REQUEST, "WebSocket required", e.body_text())
                .into_response();
        }
    };
    // Clients that skip negotiation connect without an id; a given id must
    // be one this hub handed out.
    if let Some(id) = query.get("id")
        && !state.take_token(id)
    {
        return Problem::not_found("No Connection with that ID").into_response();
    }
    let slot = match state.connection_slot(caller.tenant.as_ref()) {
        Ok(slot) => slot,
        Err(problem) => return problem.into_response(),
    };
    upgrade.on_upgrade(move |socket| async move {
        session(socket, state, caller).await;
        drop(slot);
    })
}

impl NotifierState {
    /// False when too many tokens are waiting.
    fn remember_token(&self, token: String) -> bool {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if tokens.len() >= MAX_WAITING_TOKENS {
            tokens.retain(|_, at| at.elapsed() < TOKEN_TTL);
            if tokens.len() >= MAX_WAITING_TOKENS {
                return false;
            }
        }
        tokens.insert(token, Instant::now());
        true
    }

    fn take_token(&self, token: &str) -> bool {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens
            .remove(token)
            .is_some_and(|at| at.elapsed() < TOKEN_TTL)
    }
}

/// Why a session ends.
enum End {
    /// The client closed or the socket failed; nothing more to send.
    Gone,
    /// Tell the client, then close.
    Close {
        error: Option<String>,
        allow_reconnect: bool,
    },
}

async fn session(mut socket: WebSocket, state: NotifierState, caller: Arc<Principal>) {
    let pending = match handshake(&mut socket).await {
        Ok(rest) => rest,
        Err(reason) => {
            tracing::debug!("signalr handshake refused: {reason}");
            let _ = socket
                .send(WsMessage::Text(handshake_response(Some(&reason)).into()))
                .await;
            return;
        }
    };
    if socket
        .send(WsMessage::Text(handshake_response(None).into()))
        .await
        .is_err()
    {
        return;
    }
    let (feed, fed) = mpsc::channel(FEED_CAPACITY);
    let mut conn = Connection {
        socket,
        caller,
        state: state.clone(),
        watching: HashMap::new(),
        feed,
        fed,
    };
    let end = conn.run(pending).await;
    if let End::Close {
        error,
        allow_reconnect,
    } = end
    {
        let _ = conn
            .send(&Message::Close {
                error,
                allow_reconnect,
            })
            .await;
        let _ = conn.socket.send(WsMessage::Close(None)).await;
    }
}

/// Reads the handshake request; returns records that came in the same frame.
async fn handshake(socket: &mut WebSocket) -> Result<Vec<String>, String> {
    let frame = match tokio::time::timeout(HANDSHAKE_TIMEOUT, socket.recv()).await {
        Ok(Some(Ok(WsMessage::Text(text)))) => text.to_string(),
        Ok(Some(Ok(_))) => return Err("the handshake must be a text frame".into()),
        Ok(_) => return Err("the connection closed before the handshake".into()),
        Err(_) => return Err("no handshake within 15 s".into()),
    };
    let parts = records(&frame).map_err(|e| e.to_string())?;
    let first = parts.first().ok_or("empty handshake")?;
    let request: HandshakeRequest =
        serde_json::from_str(first).map_err(|e| format!("not a handshake request: {e}"))?;
    if request.protocol != "json" || request.version != 1 {
        return Err(format!(
            "Requested protocol '{}' version {} is not available; this hub speaks json version 1.",
            request.protocol, request.version
        ));
    }
    Ok(parts[1..].iter().map(|s| (*s).to_owned()).collect())
}

struct Connection {
    socket: WebSocket,
    /// Who connected: only its tenant's instances can be watched.
    caller: Arc<Principal>,
    state: NotifierState,
    /// Instances watched, each with where its watcher is.
    watching: HashMap<InstanceId, Watched>,
    /// Where each watched instance's forwarder sends its updates.
    feed: mpsc::Sender<Feed>,
    fed: mpsc::Receiver<Feed>,
}

/// A watched instance: where the connection is in its progress, and the
/// task that moves its updates from the hub to the connection (stopped
/// when the watch ends).
struct Watched {
    cursor: Cursor,
    _forwarder: AbortOnDropHandle<()>,
}

/// What a forwarder passes on.
enum Feed {
    Update(Arc<Update>),
    Output(Arc<Output>),
    /// The forwarder fell behind its instance's channel: the connection
    /// reads what it missed from the history.
    Lagged(InstanceId),
}

/// Updates waiting for the connection, of all instances it watches; a
/// full feed holds the forwarders back until their channels lag.
const FEED_CAPACITY: usize = 256;

/// Moves one instance's updates into the connection's feed until the
/// channel or the connection goes.
async fn forward_instance(
    mut updates: InstanceUpdates,
    instance: InstanceId,
    feed: mpsc::Sender<Feed>,
) {
    loop {
        let item = match updates.recv().await {
            Ok(Relayed::Progress(update)) => Feed::Update(update),
            Ok(Relayed::Output(output)) => Feed::Output(output),
            Err(RecvError::Lagged(_)) => Feed::Lagged(instance.clone()),
            Err(RecvError::Closed) => return,
        };
        if feed.send(item).await.is_err() {
            return;
        }
    }
}

impl Connection {
    async fn send(&mut self, message: &Message) -> Result<(), End> {
        self.socket
            .send(WsMessage::Text(message.encode().into()))
            .await
            .map_err(|_| End::Gone)
    }

    async fn run(&mut self, pending: Vec<String>) -> End {
        for record in pending {
            if let Err(end) = self.on_record(&record).await {
                return end;
            }
        }
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
        let mut last_heard = Instant::now();
        let shutdown = self.state.shutdown.clone();
        loop {
            let step = tokio::select! {
                _ = shutdown.wait() => Err(End::Close { error: Some("server shutting down".into()), allow_reconnect: true }),
                frame = self.socket.recv() => {
                    last_heard = Instant::now();
                    self.on_frame(frame).await
                }
                // Never closed: the connection holds a sender itself.
                Some(fed) = self.fed.recv() => match fed {
                    Feed::Update(update) => self.forward(update).await,
                    Feed::Output(output) => self.send_output(&output).await,
                    // What it missed is in the history by now.
                    Feed::Lagged(instance) => self.catch_up(&instance).await,
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() > CLIENT_TIMEOUT * 2 {
                        Err(End::Close { error: Some("no message from the client in 60 s".into()), allow_reconnect: true })
                    } else {
                        self.send(&Message::Ping).await
                    }
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    async fn on_frame(&mut self, frame: Option<Result<WsMessage, axum::Error>>) -> Result<(), End> {
        match frame {
            Some(Ok(WsMessage::Text(text))) => {
                let parts = records(&text).map_err(|e| End::Close {
                    error: Some(e.to_string()),
                    allow_reconnect: false,
                })?;
                for record in parts {
                    self.on_record(record).await?;
                }
                Ok(())
            }
            Some(Ok(WsMessage::Binary(_))) => Err(End::Close {
                error: Some("binary frames are not supported; use the json protocol".into()),
                allow_reconnect: false,
            }),
            Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => Err(End::Gone),
            Some(Ok(_)) => Ok(()),
        }
    }

    async fn on_record(&mut self, record: &str) -> Result<(), End> {
        let message = Message::parse(record).map_err(|e| End::Close {
            error: Some(e.to_string()),
            allow_reconnect: false,
        })?;
        match message {
            Message::Invocation {
                invocation_id,
                target,
                arguments,
            } => {
                let outcome = match target.to_ascii_lowercase().as_str() {
                    "subscribe" => self.subscribe(&arguments).await,
                    "unsubscribe" => self.unsubscribe(&arguments),
                    _ => Err(format!("Unknown hub method '{target}'")),
                };
                let (result, error, replay) = match outcome {
                    Ok((result, replay)) => (Some(result), None, replay),
                    Err(error) => (None, Some(error), Vec::new()),
                };
                if let Some(invocation_id) = invocation_id {
                    self.send(&Message::Completion {
                        invocation_id,
                        result,
                        error,
                    })
                    .await?;
                }
                for update in replay {
                    self.send_update(&update).await?;
                }
                Ok(())
            }
            Message::Close { .. } => Err(End::Gone),
            Message::Ping | Message::Completion { .. } | Message::Other(_) => Ok(()),
        }
    }

    async fn subscribe(
        &mut self,
        arguments: &[Value],
    ) -> Result<(Value, Vec<Arc<Update>>), String> {
        let id = instance_argument(&self.caller, arguments)?;
        let after = match arguments.get(1) {
            None | Some(Value::Null) => None,
            Some(after) => Some(after.as_u64().ok_or(
                "the second argument, after, must be a progress position (a whole number)",
            )?),
        };
        let store = self.state.store.clone();
        // Another tenant's instance cannot be named, so it is not found.
        let stored = store
            .load(&id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("instance {} not found", id.local()))?;
        let state = state_of(&stored.record).map_err(|e| e.to_string())?;
        let (held, updates) = self.state.hub.watch(&id);
        let mut cursor = match after {
            Some(after) => Cursor::after(id.clone(), after),
            None => Cursor::new_watcher(id.clone(), state.run_position, state.position),
        };
        let mut replay = Vec::new();
        for update in held {
            replay.extend(cursor.admit(&*store, update).await);
        }
        replay.extend(
            cursor
                .catch_up(&*store, Some(state.position.saturating_add(1)))
                .await,
        );
        let forwarder = tokio::spawn(forward_instance(updates, id.clone(), self.feed.clone()));
        self.watching.insert(
            id.clone(),
            Watched {
                cursor,
                _forwarder: AbortOnDropHandle::new(forwarder),
            },
        );
        let result = json!({
            "instanceId": id.local(),
            "runtimeStatus": state.status.as_str(),
            "seq": state.sequence,
            "position": state.position,
        });
        Ok((result, replay))
    }

    fn unsubscribe(&mut self, arguments: &[Value]) -> Result<(Value, Vec<Arc<Update>>), String> {
        let id = instance_argument(&self.caller, arguments)?;
        self.watching.remove(&id);
        Ok((Value::Null, Vec::new()))
    }

    async fn forward(&mut self, update: Arc<Update>) -> Result<(), End> {
        let Some(watched) = self.watching.get_mut(&update.instance) else {
            return Ok(());
        };
        let store = self.state.store.clone();
        for update in watched.cursor.admit(&*store, update).await {
            self.send_update(&update).await?;
        }
        Ok(())
    }

    /// After falling behind an instance's channel: its missed events.
    async fn catch_up(&mut self, instance: &InstanceId) -> Result<(), End> {
        let Some(watched) = self.watching.get_mut(instance) else {
            return Ok(());
        };
        let store = self.state.store.clone();
        let missed = watched.cursor.catch_up(&*store, None).await;
        for update in missed {
            self.send_update(&update).await?;
        }
        Ok(())
    }

    async fn send_output(&mut self, output: &Output) -> Result<(), End> {
        if !self.watching.contains_key(&output.instance) {
            return Ok(());
        }
        self.send(&Message::Invocation {
            invocation_id: None,
            target: OUTPUT_TARGET.into(),
            arguments: vec![output.to_client_json()],
        })
        .await
    }

    async fn send_update(&mut self, update: &Update) -> Result<(), End> {
        self.send(&Message::Invocation {
            invocation_id: None,
            target: PROGRESS_TARGET.into(),
            arguments: vec![update.to_client_json()],
        })
        .await
    }
}

fn instance_argument(caller: &Principal, arguments: &[Value]) -> Result<InstanceId, String> {
    let raw = arguments
        .first()
        .and_then(Value::as_str)
        .ok_or("expected one argument: the instance id")?;
    InstanceId::scoped(caller.tenant.as_ref(), raw).map_err(|e| e.to_string())
}
