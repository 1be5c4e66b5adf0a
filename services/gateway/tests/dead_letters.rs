//! Dead letters over the in-process bus (`legato up`'s): a message the
//! orchestrator's group gives up on is parked by the keeper, listed by the
//! API with its reason, sent back to the group by a replay, and a letter
//! that is not a legato message can only be discarded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use legato_bus::{Bus, InProcessBus, OutgoingMessage, Subscription, topology};
use legato_contracts::{Envelope, EventName, InstanceId, RaiseEvent, Topic};
use legato_gateway::{GatewaySettings, GatewayState, router};
use legato_store::SqliteStore;
use serde_json::{Value, json};
use tower::ServiceExt;

async fn call(app: &axum::Router, method: &str, path: &str) -> (StatusCode, Value) {
    let response = app
        .clone()
        .oneshot(
            Request::builder()
                .method(method)
                .uri(path)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Takes the next delivery of the orchestrator's commands and gives up on
/// it, as the orchestrator does with what it cannot apply.
async fn give_up(commands: &mut Box<dyn Subscription>, reason: &str) -> String {
    let delivery = tokio::time::timeout(Duration::from_secs(5), commands.next())
        .await
        .unwrap()
        .unwrap();
    let id = delivery.message_id.clone();
    delivery.dead_letter(reason).await.unwrap();
    id
}

/// The listing, once it holds `n` letters (the keeper parks them shortly).
async fn listing(app: &axum::Router, n: usize) -> Vec<Value> {
    for _ in 0..100 {
        let (status, page) = call(app, "GET", "/api/v1/dead-letters").await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = page["items"].as_array().unwrap().clone();
        if items.len() == n {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the listing never held {n} dead letters");
}

#[tokio::test]
async fn dead_letters_are_parked_listed_replayed_and_discarded() {
    let bus = Arc::new(InProcessBus::default());
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let mut commands = bus
        .subscribe(topology::orchestrator_commands())
        .await
        .unwrap();
    let shutdown = legato_service::Shutdown::new();
    let settings = GatewaySettings::default();
    tokio::spawn(legato_gateway::dead_letters::keep(
        bus.clone(),
        store.clone(),
        legato_gateway::dead_letters::kept_groups(&settings.agents),
        shutdown.clone(),
    ));
    let app = router(GatewayState::new(store, bus.clone(), settings));

    let instance = InstanceId::parse("ghost-1").unwrap();
    let raise = Envelope::new(
        "/test",
        instance,
        time::OffsetDateTime::now_utc(),
        RaiseEvent {
            name: EventName::parse("approval").unwrap(),
            data: json!({"approved": true}),
        },
    );
    bus.publish_envelope(&raise).await.unwrap();
    give_up(&mut commands, "instance ghost-1 does not exist").await;
    let junk = OutgoingMessage {
        id: "junk-1".into(),
        body: b"not json at all".to_vec().into(),
        headers: Default::default(),
    };
    bus.publish(Topic::Commands, "ghost-2", junk).await.unwrap();
    give_up(&mut commands, "not a CloudEvent").await;

    let items = listing(&app, 2).await;
    let raised = items
        .iter()
        .find(|l| l["messageId"] == raise.id.as_str())
        .expect("the raise is listed");
    assert_eq!(raised["topic"], "commands");
    assert_eq!(raised["group"], "orchestrator");
    assert_eq!(raised["reason"], "instance ghost-1 does not exist");
    assert_eq!(raised["instanceId"], "ghost-1");
    assert_eq!(raised["type"], "legato.instance.raise-event.v1");
    assert_eq!(raised["deliveryCount"], 1);
    assert_eq!(raised["message"]["data"]["name"], "approval");
    let junk = items
        .iter()
        .find(|l| l["messageId"] == "junk-1")
        .expect("the junk is listed");
    assert_eq!(junk["bodyBase64"], "bm90IGpzb24gYXQgYWxs");
    assert!(junk.get("instanceId").is_none());

    let (status, filtered) = call(&app, "GET", "/api/v1/dead-letters?topic=agent-tasks").await;
    assert_eq!(
        (status, filtered["items"].as_array().unwrap().len()),
        (StatusCode::OK, 0)
    );
    let (status, problem) = call(&app, "GET", "/api/v1/dead-letters?topic=nope").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["errors"][0]["field"], "topic");

    // A replay sends the message back to the group, with its id.
    let path = format!(
        "/api/v1/dead-letters/{}/replay",
        raised["id"].as_str().unwrap()
    );
    let (status, replayed) = call(&app, "POST", &path).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{replayed}");
    let again = tokio::time::timeout(Duration::from_secs(5), commands.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.message_id, raise.id);
    assert_eq!(again.decode().unwrap(), raise);
    again.ack().await.unwrap();
    let (status, _) = call(&app, "POST", &path).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "replayed once");

    let junk_path = format!("/api/v1/dead-letters/{}", junk["id"].as_str().unwrap());
    let (status, problem) = call(&app, "POST", &format!("{junk_path}/replay")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    let (status, _) = call(&app, "DELETE", &junk_path).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(&app, "DELETE", &junk_path).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(listing(&app, 0).await.is_empty());
    shutdown.trigger();
}

#[tokio::test]
async fn a_registered_agents_dead_letters_are_parked_too() {
    let bus = Arc::new(InProcessBus::default());
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let shutdown = legato_service::Shutdown::new();
    let name = legato_contracts::AgentName::parse("reviewer").unwrap();
    let doc = legato_gateway::registry::AgentSpec::default()
        .doc(&Default::default())
        .unwrap();
    legato_gateway::registry::register(&*store, &*bus, &name, None, doc)
        .await
        .unwrap();
    tokio::spawn(legato_gateway::dead_letters::keep_registered(
        bus.clone(),
        store.clone(),
        Vec::new(),
        shutdown.clone(),
    ));
    let app = router(GatewayState::new(
        store,
        bus.clone(),
        GatewaySettings::default(),
    ));

    let junk = OutgoingMessage {
        id: "junk-for-reviewer".into(),
        body: b"not a task".to_vec().into(),
        headers: Default::default(),
    };
    bus.publish(Topic::AgentTasks, "reviewer", junk)
        .await
        .unwrap();
    let mut queue = bus
        .subscribe(topology::agent_tasks("reviewer"))
        .await
        .unwrap();
    give_up(&mut queue, "not a CloudEvent").await;
    let items = listing(&app, 1).await;
    assert_eq!(items[0]["group"], "agent-reviewer");
    assert_eq!(items[0]["reason"], "not a CloudEvent");
    shutdown.trigger();
}
