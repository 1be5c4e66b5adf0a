//! The progress hub: late watchers replay without gap or repeat, and
//! redelivered messages are dropped.
#![allow(clippy::unwrap_used)]

use legato_contracts::{InstanceId, ProgressEvent, ProgressKind, RuntimeStatus};
use std::sync::Arc;

use legato_notifier::{ProgressHub, Relayed, Update};

/// The progress event a watcher was sent (not a piece of output).
fn progress(relayed: Relayed) -> Arc<Update> {
    match relayed {
        Relayed::Progress(update) => update,
        Relayed::Output(output) => panic!("output where progress was expected: {output:?}"),
    }
}

fn event(seq: u64, kind: ProgressKind) -> ProgressEvent {
    ProgressEvent {
        position: seq,
        seq,
        kind,
        status: RuntimeStatus::Running,
        step: None,
        item: None,
        iteration: None,
        attempt: None,
        message: None,
        data: None,
    }
}

#[test]
fn late_watchers_replay_then_continue_without_gap_or_repeat() {
    let hub = ProgressHub::default();
    let id = InstanceId::parse("i-1").unwrap();
    let other = InstanceId::parse("i-2").unwrap();
    hub.publish(
        id.clone(),
        event(1, ProgressKind::InstanceStarted),
        "m1".into(),
    );
    hub.publish(
        other.clone(),
        event(1, ProgressKind::InstanceStarted),
        "x1".into(),
    );
    hub.publish(id.clone(), event(2, ProgressKind::StepStarted), "m2".into());
    hub.publish(id.clone(), event(2, ProgressKind::StepStarted), "m2".into());
    let (replayed, mut live) = hub.watch(&id);
    assert_eq!(
        replayed.iter().map(|u| u.event.seq).collect::<Vec<_>>(),
        [1, 2]
    );
    hub.publish(
        id.clone(),
        event(3, ProgressKind::InstanceCompleted),
        "m3".into(),
    );
    let next = progress(live.try_recv().unwrap());
    assert_eq!((next.event.seq, next.is_final()), (3, true));
    assert!(next.n > replayed[1].n);
    assert_eq!(next.to_client_json()["instanceId"], "i-1");
    assert!(live.try_recv().is_err());
}

/// A decision's events arrive as one batch message; each reaches watchers
/// in order, and a redelivered batch adds nothing.
#[tokio::test]
async fn a_batch_reaches_watchers_event_by_event_and_a_copy_adds_nothing() {
    use legato_bus::{Bus, InProcessBus, OutgoingMessage};
    use legato_contracts::{Envelope, ProgressBatch, Topic};

    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
    let hub = ProgressHub::default();
    let shutdown = legato_service::Shutdown::new();
    let feed = tokio::spawn(
        legato_notifier::relay(bus.clone(), hub.clone(), shutdown.clone())
            .await
            .unwrap(),
    );
    let id = InstanceId::parse("i-batch").unwrap();
    let (_, mut live) = hub.watch(&id);
    let batch = ProgressBatch {
        events: vec![
            event(1, ProgressKind::InstanceStarted),
            event(2, ProgressKind::StepStarted),
            event(3, ProgressKind::InstanceCompleted),
        ],
    };
    let envelope = Envelope::new("/test", id.clone(), time::OffsetDateTime::UNIX_EPOCH, batch);
    let message = OutgoingMessage {
        id: envelope.id.clone(),
        body: envelope.encode().unwrap().into(),
        headers: Default::default(),
    };
    for _ in 0..2 {
        bus.publish(Topic::Progress, id.as_str(), message.clone())
            .await
            .unwrap();
    }
    let mut positions = Vec::new();
    for _ in 0..3 {
        let update = tokio::time::timeout(std::time::Duration::from_secs(5), live.recv())
            .await
            .unwrap()
            .unwrap();
        positions.push(progress(update).event.position);
    }
    assert_eq!(positions, [1, 2, 3]);
    // The copy is consumed (the feed is serial) once a later message is.
    bus.publish(Topic::Progress, id.as_str(), {
        let marker = Envelope::new(
            "/test",
            id.clone(),
            time::OffsetDateTime::UNIX_EPOCH,
            event(4, ProgressKind::CustomStatus),
        );
        OutgoingMessage {
            id: marker.id.clone(),
            body: marker.encode().unwrap().into(),
            headers: Default::default(),
        }
    })
    .await
    .unwrap();
    let next = tokio::time::timeout(std::time::Duration::from_secs(5), live.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        progress(next).event.position,
        4,
        "the copy was relayed again"
    );
    assert_eq!(hub.replay(&id).len(), 4);
    shutdown.trigger();
    feed.await.unwrap().unwrap();
}

/// A watcher is woken by its own instance's events only, two watchers of
/// one instance both get them, and an instance's channel goes with its
/// last watcher.
#[test]
fn watchers_hear_only_their_instance_and_channels_go_with_them() {
    let hub = ProgressHub::default();
    let id = InstanceId::parse("i-1").unwrap();
    let other = InstanceId::parse("i-2").unwrap();
    let (_, mut first) = hub.watch(&id);
    let (_, mut second) = hub.watch(&id);
    let (_, mut elsewhere) = hub.watch(&other);
    assert_eq!(hub.watched(), 2);
    hub.publish(
        id.clone(),
        event(1, ProgressKind::InstanceStarted),
        "m1".into(),
    );
    assert_eq!(progress(first.try_recv().unwrap()).event.position, 1);
    assert_eq!(progress(second.try_recv().unwrap()).event.position, 1);
    assert!(elsewhere.try_recv().is_err(), "woken by another instance");
    drop(first);
    assert_eq!(hub.watched(), 2, "the second watcher still listens");
    hub.publish(id.clone(), event(2, ProgressKind::StepStarted), "m2".into());
    assert_eq!(progress(second.try_recv().unwrap()).event.position, 2);
    drop(second);
    drop(elsewhere);
    assert_eq!(hub.watched(), 0);
    // Publishing with nobody watching keeps the replay buffer only.
    hub.publish(id.clone(), event(3, ProgressKind::StepStarted), "m3".into());
    assert_eq!(hub.watched(), 0);
    assert_eq!(hub.replay(&id).len(), 3);
}

/// Pieces of a model's output reach the instance's watchers in the order
/// they came, among its progress events, and are not kept for a watcher
/// who comes later.
#[tokio::test]
async fn output_pieces_reach_watchers_in_order_and_are_not_replayed() {
    use legato_bus::{Bus, InProcessBus, OutgoingMessage};
    use legato_contracts::{AgentOutput, Envelope, Payload, StepId, TaskKey, TaskRole, Topic};

    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
    let hub = ProgressHub::default();
    let shutdown = legato_service::Shutdown::new();
    let feed = tokio::spawn(
        legato_notifier::relay(bus.clone(), hub.clone(), shutdown.clone())
            .await
            .unwrap(),
    );
    let id = InstanceId::parse("i-output").unwrap();
    let (_, mut live) = hub.watch(&id);
    let piece = |seq: u64, text: &str| -> Payload {
        AgentOutput {
            key: TaskKey {
                run: 1,
                execution: 0,
                step: StepId::parse("write").unwrap(),
                item: Some(2),
                iteration: None,
                role: TaskRole::Action,
            },
            attempt: 1,
            call: "chat 1".into(),
            seq,
            text: text.into(),
        }
        .into()
    };
    let sent: Vec<Payload> = vec![
        event(1, ProgressKind::StepStarted).into(),
        piece(1, "Hel"),
        piece(2, "lo"),
        event(2, ProgressKind::StepCompleted).into(),
    ];
    for payload in sent {
        let envelope = Envelope::new(
            "/test",
            id.clone(),
            time::OffsetDateTime::UNIX_EPOCH,
            payload,
        );
        let message = OutgoingMessage {
            id: envelope.id.clone(),
            body: envelope.encode().unwrap().into(),
            headers: Default::default(),
        };
        bus.publish(Topic::Progress, id.as_str(), message)
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..4 {
        let relayed = tokio::time::timeout(std::time::Duration::from_secs(5), live.recv())
            .await
            .unwrap()
            .unwrap();
        seen.push(match relayed {
            Relayed::Progress(update) => format!("progress {}", update.event.position),
            Relayed::Output(output) => {
                let json = output.to_client_json();
                assert_eq!(
                    (
                        &json["instanceId"],
                        &json["step"],
                        &json["item"],
                        &json["call"]
                    ),
                    (
                        &"i-output".into(),
                        &"write".into(),
                        &2.into(),
                        &"chat 1".into()
                    )
                );
                format!("output {} {}", json["seq"], json["text"])
            }
        });
    }
    assert_eq!(
        seen,
        [
            "progress 1",
            "output 1 \"Hel\"",
            "output 2 \"lo\"",
            "progress 2"
        ]
    );
    assert_eq!(
        hub.replay(&id).len(),
        2,
        "pieces were kept for later watchers"
    );
    shutdown.trigger();
    feed.await.unwrap().unwrap();
}
