//! The progress hub: late watchers replay without gap or repeat, and
//! redelivered messages are dropped.
#![allow(clippy::unwrap_used)]

use legato_contracts::{InstanceId, ProgressEvent, ProgressKind, RuntimeStatus};
use legato_notifier::ProgressHub;

fn event(seq: u64, kind: ProgressKind) -> ProgressEvent {
    ProgressEvent {
        position: seq,
        seq,
        kind,
        status: RuntimeStatus::Running,
        step: None,
        item: None,
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
    let next = live.try_recv().unwrap();
    assert_eq!((next.event.seq, next.is_final()), (3, true));
    assert!(next.n > replayed[1].n);
    assert_eq!(next.to_client_json()["instanceId"], "i-1");
    assert!(live.try_recv().is_err());
}
