//! Dead letters over RabbitMQ, process per service: what the orchestrator
//! cannot apply is parked by the gateway's keeper, listed with its reason,
//! and a replay, once the cause is gone, is applied; a letter that is not a
//! legato message can only be discarded.

use std::time::{Duration, Instant};

use legato_bus::OutgoingMessage;
use legato_contracts::{Envelope, EventName, InstanceId, RaiseEvent, Topic};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::chaos::{bus_of, dead_letters};
use crate::scenarios::approval_workflow;
use crate::support::{Legato, Service, services_env, temp_dir};

/// The listing once it holds `n` letters.
async fn listing(legato: &Legato, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, page) = legato.get_json("/api/v1/dead-letters").await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = page["items"].as_array().unwrap().clone();
        if items.len() == n {
            return items;
        }
        assert!(
            Instant::now() < deadline,
            "the listing never held {n} letters: {page:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_dead_letter_is_listed_and_replayed_once_its_cause_is_gone() {
    let dir = temp_dir();
    let env = services_env(dir.path());
    let _orchestrator = Service::start("orchestrator", dir.path(), &env);
    let gateway = Service::start("gateway", dir.path(), &env);
    let _echo = Service::start("agent-echo", dir.path(), &env);
    let legato = Legato::attach(gateway.base.clone(), dir.path());
    legato.register(approval_workflow(60_000)).await;
    let bus = bus_of(&env).await;

    // An approval for an instance that does not exist (yet), and bytes
    // that are no message at all.
    let raise = Envelope::new(
        "/test",
        InstanceId::parse("ghost-1").unwrap(),
        time::OffsetDateTime::now_utc(),
        RaiseEvent {
            name: EventName::parse("approval").unwrap(),
            data: json!({"approved": true}),
        },
    );
    bus.publish_envelope(&raise).await.unwrap();
    let junk = OutgoingMessage {
        id: "junk-1".into(),
        body: b"\xff not a message".to_vec().into(),
        headers: Default::default(),
    };
    bus.publish(Topic::Commands, "ghost-2", junk).await.unwrap();

    let items = listing(&legato, 2).await;
    let raised = items
        .iter()
        .find(|l| l["messageId"] == raise.id.as_str())
        .unwrap();
    assert_eq!(
        (&raised["topic"], &raised["group"], &raised["instanceId"]),
        (
            &json!("commands"),
            &json!("orchestrator"),
            &json!("ghost-1")
        )
    );
    assert!(
        raised["reason"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{raised}"
    );
    let junk = items.iter().find(|l| l["messageId"] == "junk-1").unwrap();
    assert!(junk["bodyBase64"].is_string(), "{junk}");
    assert!(
        dead_letters(&env, None).await.is_empty(),
        "nothing is left on the broker's dead-letter queues"
    );

    // Once the instance exists and waits, the replayed approval moves it on.
    legato
        .start_instance("approve", json!({"instanceId": "ghost-1"}))
        .await;
    legato.wait_step("ghost-1", "approve", "Waiting").await;
    let replay = format!(
        "/api/v1/dead-letters/{}/replay",
        raised["id"].as_str().unwrap()
    );
    let (status, body) = legato.post(&replay, json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let done = legato.wait_status("ghost-1", "Completed").await;
    assert_eq!(done["output"], json!({"approved": true}));
    let (status, _) = legato.post(&replay, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "replayed once");

    let junk_path = format!("/api/v1/dead-letters/{}", junk["id"].as_str().unwrap());
    let (status, _) = legato.post(&format!("{junk_path}/replay"), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let deleted = legato
        .client
        .delete(legato.url(&junk_path))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert!(listing(&legato, 0).await.is_empty());
}
