use std::sync::Arc;
use std::time::Duration;

use legato_bus::{Bus, InProcessBus};
use legato_contracts::{
    AgentName, Envelope, InstanceId, StepId, TaskDispatched, TaskKey, TaskRole, WorkflowName,
};
use legato_service::Shutdown;
use serde_json::json;
use time::OffsetDateTime;

use super::PullHub;

fn agent(name: &str) -> AgentName {
    AgentName::parse(name).unwrap()
}

fn task(agent_name: &str, item: u32) -> Envelope {
    Envelope::new(
        "/test",
        InstanceId::parse("i-1").unwrap(),
        OffsetDateTime::now_utc(),
        TaskDispatched {
            key: TaskKey {
                run: 1,
                execution: 0,
                step: StepId::parse("s").unwrap(),
                item: Some(item),
                iteration: None,
                role: TaskRole::Action,
            },
            attempt: 1,
            agent: agent(agent_name),
            workflow: WorkflowName::parse("w").unwrap(),
            input: json!(item),
            deadline: None,
            heartbeat_timeout_ms: None,
            resent: false,
            answers: Default::default(),
        },
    )
}

async fn hub(agents: &[&str]) -> (Arc<InProcessBus>, PullHub) {
    let bus = Arc::new(InProcessBus::default());
    for name in agents {
        crate::registry::provision(&*bus, &agent(name))
            .await
            .unwrap();
    }
    let hub = PullHub::new(bus.clone(), Shutdown::new());
    (bus, hub)
}

fn items(deliveries: &[legato_bus::Delivery]) -> Vec<serde_json::Value> {
    deliveries
        .iter()
        .map(|d| match d.decode().unwrap().payload {
            legato_contracts::Payload::TaskDispatched(t) => t.input,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn a_poll_waits_for_a_task_and_takes_what_is_ready_up_to_its_limit() {
    let (bus, hub) = hub(&["reviewer"]).await;
    let reviewer = [agent("reviewer")];
    let later = {
        let bus = bus.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            bus.publish_envelope(&task("reviewer", 0)).await.unwrap();
        })
    };
    let first = hub.poll(&reviewer, 4, Duration::from_secs(10)).await;
    later.await.unwrap();
    assert_eq!(items(&first), vec![json!(0)]);
    for d in first {
        d.ack().await.unwrap();
    }

    for item in 1..=5 {
        bus.publish_envelope(&task("reviewer", item)).await.unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..5 {
        let got = hub.poll(&reviewer, 3, Duration::from_secs(10)).await;
        assert!(!got.is_empty() && got.len() <= 3, "{}", got.len());
        seen.extend(items(&got));
        for d in got {
            d.ack().await.unwrap();
        }
        if seen.len() == 5 {
            break;
        }
    }
    seen.sort_by_key(|v| v.as_u64());
    assert_eq!(seen, (1..=5).map(|i| json!(i)).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_poll_that_ends_empty_loses_nothing_sent_after_it() {
    let (bus, hub) = hub(&["reviewer"]).await;
    let reviewer = [agent("reviewer")];
    assert!(
        hub.poll(&reviewer, 1, Duration::from_millis(50))
            .await
            .is_empty()
    );
    bus.publish_envelope(&task("reviewer", 7)).await.unwrap();
    let got = hub.poll(&reviewer, 1, Duration::from_secs(10)).await;
    assert_eq!(items(&got), vec![json!(7)]);
}

#[tokio::test]
async fn a_poll_for_several_agents_takes_from_any() {
    let (bus, hub) = hub(&["reviewer", "writer"]).await;
    let both = [agent("reviewer"), agent("writer")];
    bus.publish_envelope(&task("writer", 1)).await.unwrap();
    let got = hub.poll(&both, 2, Duration::from_secs(10)).await;
    assert_eq!(items(&got), vec![json!(1)]);
    bus.publish_envelope(&task("reviewer", 2)).await.unwrap();
    let got = hub.poll(&both, 2, Duration::from_secs(10)).await;
    assert_eq!(items(&got), vec![json!(2)]);
}

#[tokio::test]
async fn a_delivery_dropped_unsettled_comes_back_to_the_next_poll() {
    let (bus, hub) = hub(&["reviewer"]).await;
    let reviewer = [agent("reviewer")];
    bus.publish_envelope(&task("reviewer", 3)).await.unwrap();
    let got = hub.poll(&reviewer, 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].delivery_count, 1);
    drop(got);
    let again = hub.poll(&reviewer, 1, Duration::from_secs(10)).await;
    assert_eq!(items(&again), vec![json!(3)]);
    assert_eq!(again[0].delivery_count, 2);
}

#[tokio::test]
async fn concurrent_polls_share_the_tasks_each_once() {
    let (bus, hub) = hub(&["reviewer"]).await;
    let hub = Arc::new(hub);
    let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let polls: Vec<_> = (0..8)
        .map(|_| {
            let hub = hub.clone();
            let taken = taken.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for _ in 0..200 {
                    let got = hub
                        .poll(&[agent("reviewer")], 2, Duration::from_millis(100))
                        .await;
                    taken.fetch_add(got.len(), std::sync::atomic::Ordering::SeqCst);
                    mine.extend(items(&got));
                    for d in got {
                        d.ack().await.unwrap();
                    }
                    if taken.load(std::sync::atomic::Ordering::SeqCst) >= 100 {
                        break;
                    }
                }
                mine
            })
        })
        .collect();
    for item in 0..100 {
        bus.publish_envelope(&task("reviewer", item)).await.unwrap();
    }
    let mut all = Vec::new();
    for poll in polls {
        all.extend(poll.await.unwrap());
    }
    all.sort_by_key(|v| v.as_u64());
    assert_eq!(all, (0..100).map(|i| json!(i)).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_poll_abandoned_by_its_caller_leaves_its_tasks_to_the_next() {
    let (bus, hub) = hub(&["reviewer"]).await;
    let hub = Arc::new(hub);
    let reviewer = [agent("reviewer")];
    let gone = {
        let hub = hub.clone();
        tokio::spawn(async move {
            hub.poll(&[agent("reviewer")], 1, Duration::from_secs(60))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    gone.abort();
    let _ = gone.await;
    bus.publish_envelope(&task("reviewer", 9)).await.unwrap();
    let got = hub.poll(&reviewer, 1, Duration::from_secs(10)).await;
    assert_eq!(items(&got), vec![json!(9)]);
    assert_eq!(
        got[0].delivery_count, 1,
        "never handed to the poll that left"
    );
}
