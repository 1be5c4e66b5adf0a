#![allow(clippy::unwrap_used, clippy::expect_used)] // test-support code: a failed step is a failed test
//! The conformance suite every Bus adapter runs unchanged:
//! `legato_bus::bus_conformance_tests!(make_bus().await)` inside a test
//! module expands to one `#[tokio::test]` per case. Each case uses fresh
//! group names and routing keys, so it is safe against a shared broker and
//! in any order. Waits are bounded by [`WAIT`].

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use legato_contracts::Topic;

use crate::{Bus, DEAD_LETTER_REASON, Delivery, OutgoingMessage, Subscription, SubscriptionSpec};

/// Longest wait for a delivery that should arrive.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a delivery that must not arrive is waited for.
pub const QUIET: Duration = Duration::from_millis(300);

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn message(body: &str) -> OutgoingMessage {
    let mut headers = std::collections::BTreeMap::new();
    headers.insert("cloudEvents_type".to_owned(), "legato.test.v1".to_owned());
    OutgoingMessage {
        id: unique("msg"),
        body: Bytes::from(body.to_owned()),
        headers,
    }
}

async fn next(sub: &mut Box<dyn Subscription>) -> Delivery {
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => panic!("subscription failed: {e}"),
        Err(_) => panic!("no delivery within {WAIT:?}"),
    }
}

async fn nothing(sub: &mut Box<dyn Subscription>) {
    if let Ok(Ok(d)) = tokio::time::timeout(QUIET, sub.next()).await {
        panic!("unexpected delivery {d:?}");
    }
}

async fn body(d: Delivery) -> String {
    let text = String::from_utf8_lossy(&d.body).into_owned();
    d.ack().await.expect("ack");
    text
}

pub async fn publish_then_consume_keeps_id_body_and_headers(bus: &dyn Bus) {
    let key = unique("k");
    let mut sub = bus
        .subscribe(SubscriptionSpec::new(Topic::AgentTasks, unique("g")).bind(&key))
        .await
        .unwrap();
    let sent = message("hello");
    bus.publish(Topic::AgentTasks, &key, sent.clone())
        .await
        .unwrap();
    let got = next(&mut sub).await;
    assert_eq!(got.message_id, sent.id);
    assert_eq!(got.routing_key, key);
    assert_eq!(got.delivery_count, 1);
    assert_eq!(
        got.headers.get("cloudEvents_type").map(String::as_str),
        Some("legato.test.v1")
    );
    assert_eq!(body(got).await, "hello");
}

/// Messages published together each arrive once. Delivery order is not
/// part of the port: Service Bus hands a subscription's messages to
/// concurrent receives, so only the set is checked.
pub async fn messages_published_together_each_arrive_once(bus: &dyn Bus) {
    let key = unique("k");
    let mut sub = bus
        .subscribe(SubscriptionSpec::new(Topic::AgentTasks, unique("g")).bind(&key))
        .await
        .unwrap();
    let sent: Vec<OutgoingMessage> = (0..20).map(|i| message(&format!("m{i}"))).collect();
    let routed = sent
        .iter()
        .map(|m| crate::Routed {
            topic: Topic::AgentTasks,
            routing_key: key.clone(),
            message: m.clone(),
        })
        .collect();
    bus.publish_all(routed).await.unwrap();
    let mut expected: std::collections::BTreeMap<String, String> = sent
        .iter()
        .enumerate()
        .map(|(i, m)| (m.id.clone(), format!("m{i}")))
        .collect();
    for _ in 0..sent.len() {
        let got = next(&mut sub).await;
        let id = got.message_id.clone();
        let body_expected = expected
            .remove(&id)
            .unwrap_or_else(|| panic!("{id} arrived twice or was never sent"));
        assert_eq!(body(got).await, body_expected);
    }
}

pub async fn routing_keys_select_groups(bus: &dyn Bus) {
    let base = unique("r");
    let mut echo = bus
        .subscribe(
            SubscriptionSpec::new(Topic::AgentTasks, unique("echo")).bind(format!("{base}.echo")),
        )
        .await
        .unwrap();
    let mut all = bus
        .subscribe(
            SubscriptionSpec::new(Topic::AgentTasks, unique("all")).bind(format!("{base}.#")),
        )
        .await
        .unwrap();
    bus.publish(
        Topic::AgentTasks,
        &format!("{base}.coder"),
        message("for coder"),
    )
    .await
    .unwrap();
    bus.publish(
        Topic::AgentTasks,
        &format!("{base}.echo"),
        message("for echo"),
    )
    .await
    .unwrap();
    assert_eq!(body(next(&mut echo).await).await, "for echo");
    nothing(&mut echo).await;
    let mut both = BTreeSet::new();
    both.insert(body(next(&mut all).await).await);
    both.insert(body(next(&mut all).await).await);
    assert_eq!(
        both,
        BTreeSet::from(["for coder".to_owned(), "for echo".to_owned()])
    );
}

pub async fn topics_are_separate(bus: &dyn Bus) {
    let key = unique("t");
    let mut progress = bus
        .subscribe(SubscriptionSpec::new(Topic::Progress, unique("g")).bind(&key))
        .await
        .unwrap();
    let mut commands = bus
        .subscribe(SubscriptionSpec::new(Topic::Commands, unique("g")).bind(&key))
        .await
        .unwrap();
    bus.publish(Topic::Commands, &key, message("a command"))
        .await
        .unwrap();
    assert_eq!(body(next(&mut commands).await).await, "a command");
    nothing(&mut progress).await;
}

pub async fn every_group_gets_a_copy(bus: &dyn Bus) {
    let key = unique("c");
    let mut a = bus
        .subscribe(SubscriptionSpec::new(Topic::Progress, unique("a")).bind(&key))
        .await
        .unwrap();
    let mut b = bus
        .subscribe(SubscriptionSpec::new(Topic::Progress, unique("b")).bind(&key))
        .await
        .unwrap();
    bus.publish(Topic::Progress, &key, message("copy"))
        .await
        .unwrap();
    assert_eq!(body(next(&mut a).await).await, "copy");
    assert_eq!(body(next(&mut b).await).await, "copy");
}

pub async fn consumers_in_a_group_share_the_work(bus: &dyn Bus) {
    let key = unique("s");
    let group = unique("shared");
    let spec = SubscriptionSpec::new(Topic::AgentTasks, &group)
        .bind(&key)
        .prefetch(1);
    let mut first = bus.subscribe(spec.clone()).await.unwrap();
    let mut second = bus.subscribe(spec).await.unwrap();
    let n = 20;
    for i in 0..n {
        bus.publish(Topic::AgentTasks, &key, message(&i.to_string()))
            .await
            .unwrap();
    }
    let mut seen = BTreeSet::new();
    let mut from_second = 0;
    while seen.len() < n {
        tokio::select! {
            d = first.next() => { assert!(seen.insert(body(d.unwrap()).await), "duplicate delivery"); }
            d = second.next() => { from_second += 1; assert!(seen.insert(body(d.unwrap()).await), "duplicate delivery"); }
            _ = tokio::time::sleep(WAIT) => panic!("only {} of {n} delivered", seen.len()),
        }
    }
    assert!(
        from_second > 0 && from_second < n,
        "work was not shared: second consumer got {from_second} of {n}"
    );
    nothing(&mut first).await;
}

pub async fn nack_redelivers_with_a_higher_count(bus: &dyn Bus) {
    let key = unique("n");
    let mut sub = bus
        .subscribe(SubscriptionSpec::new(Topic::AgentResults, unique("g")).bind(&key))
        .await
        .unwrap();
    bus.publish(Topic::AgentResults, &key, message("again"))
        .await
        .unwrap();
    let first = next(&mut sub).await;
    let id = first.message_id.clone();
    first.nack().await.unwrap();
    let second = next(&mut sub).await;
    assert_eq!(
        (second.message_id.as_str(), second.delivery_count),
        (id.as_str(), 2)
    );
    second.ack().await.unwrap();
    nothing(&mut sub).await;
}

pub async fn an_unsettled_delivery_of_a_dropped_consumer_is_redelivered(bus: &dyn Bus) {
    let key = unique("d");
    let group = unique("g");
    let spec = SubscriptionSpec::new(Topic::AgentTasks, &group).bind(&key);
    let mut crashed = bus.subscribe(spec.clone()).await.unwrap();
    bus.publish(Topic::AgentTasks, &key, message("in flight"))
        .await
        .unwrap();
    let delivery = next(&mut crashed).await;
    drop(delivery);
    drop(crashed);
    let mut survivor = bus.subscribe(spec).await.unwrap();
    let again = next(&mut survivor).await;
    assert!(
        again.delivery_count >= 2,
        "delivery_count {}",
        again.delivery_count
    );
    assert_eq!(body(again).await, "in flight");
}

pub async fn dead_letter_keeps_the_reason_and_unblocks_the_queue(bus: &dyn Bus) {
    let key = unique("p");
    let group = unique("g");
    let mut sub = bus
        .subscribe(SubscriptionSpec::new(Topic::Commands, &group).bind(&key))
        .await
        .unwrap();
    bus.publish(Topic::Commands, &key, message("\u{0}poison"))
        .await
        .unwrap();
    bus.publish(Topic::Commands, &key, message("fine"))
        .await
        .unwrap();
    let poison = next(&mut sub).await;
    poison.dead_letter("undecodable body").await.unwrap();
    assert_eq!(body(next(&mut sub).await).await, "fine");
    let mut dead = bus.dead_letters(Topic::Commands, &group).await.unwrap();
    let d = next(&mut dead).await;
    assert_eq!(
        d.headers.get(DEAD_LETTER_REASON).map(String::as_str),
        Some("undecodable body")
    );
    assert_eq!(body(d).await, "\u{0}poison");
}

pub async fn a_message_that_keeps_failing_is_dead_lettered_after_max_deliveries(bus: &dyn Bus) {
    let key = unique("m");
    let group = unique("g");
    let spec = SubscriptionSpec::new(Topic::AgentResults, &group)
        .bind(&key)
        .max_deliveries(3);
    let mut sub = bus.subscribe(spec).await.unwrap();
    bus.publish(Topic::AgentResults, &key, message("always fails"))
        .await
        .unwrap();
    bus.publish(Topic::AgentResults, &key, message("next"))
        .await
        .unwrap();
    // A broker may hand out "next" before or between the redeliveries
    // (prefetch, requeue position); what counts is that the failing message
    // gets exactly max_deliveries tries and the queue keeps flowing.
    let mut attempts = 0;
    let mut saw_next = false;
    while !(saw_next && attempts == 3) {
        let d = next(&mut sub).await;
        if d.body.as_ref() == b"next" {
            assert!(!saw_next, "next delivered twice");
            saw_next = true;
            d.ack().await.unwrap();
            continue;
        }
        attempts += 1;
        assert!(attempts <= 3, "delivered more than max_deliveries");
        d.nack().await.unwrap();
    }
    let mut dead = bus.dead_letters(Topic::AgentResults, &group).await.unwrap();
    let d = next(&mut dead).await;
    assert!(
        d.headers
            .get(DEAD_LETTER_REASON)
            .is_some_and(|r| r.contains('3')),
        "{:?}",
        d.headers
    );
    assert_eq!(body(d).await, "always fails");
    nothing(&mut sub).await;
}

/// Crashed consumers are not the message's fault: a few unsettled
/// deliveries beyond `max_deliveries` still leave it deliverable.
pub async fn deliveries_lost_to_crashes_count_against_a_higher_limit(bus: &dyn Bus) {
    let key = unique("c");
    let group = unique("g");
    let spec = SubscriptionSpec::new(Topic::AgentTasks, &group)
        .bind(&key)
        .max_deliveries(2);
    bus.subscribe(spec.clone()).await.unwrap();
    bus.publish(Topic::AgentTasks, &key, message("survivor"))
        .await
        .unwrap();
    for _ in 0..3 {
        let mut crashing = bus.subscribe(spec.clone()).await.unwrap();
        drop(next(&mut crashing).await);
        drop(crashing);
    }
    let mut last = bus.subscribe(spec).await.unwrap();
    let d = next(&mut last).await;
    assert!(d.delivery_count >= 4, "delivery_count {}", d.delivery_count);
    assert_eq!(body(d).await, "survivor");
}

/// A work message nobody is bound for is refused, not lost; progress that
/// nobody watches may be dropped.
pub async fn a_work_message_no_group_takes_is_refused(bus: &dyn Bus) {
    let key = unique("nobody");
    for topic in [Topic::Commands, Topic::AgentTasks, Topic::AgentResults] {
        let refused = bus.publish(topic, &key, message("lost?")).await;
        assert!(
            matches!(refused, Err(crate::BusError::Unroutable(_))),
            "{topic:?}: {refused:?}"
        );
    }
    bus.publish(Topic::Progress, &key, message("nobody watches"))
        .await
        .unwrap();
}

pub async fn prefetch_bounds_unsettled_deliveries(bus: &dyn Bus) {
    let key = unique("f");
    let mut sub = bus
        .subscribe(
            SubscriptionSpec::new(Topic::AgentTasks, unique("g"))
                .bind(&key)
                .prefetch(2),
        )
        .await
        .unwrap();
    for i in 0..3 {
        bus.publish(Topic::AgentTasks, &key, message(&i.to_string()))
            .await
            .unwrap();
    }
    let a = next(&mut sub).await;
    let _b = next(&mut sub).await;
    nothing(&mut sub).await;
    a.ack().await.unwrap();
    let c = next(&mut sub).await;
    assert_eq!(body(c).await, "2");
}

pub async fn messages_wait_in_a_declared_group_without_consumers(bus: &dyn Bus) {
    let key = unique("w");
    let spec = SubscriptionSpec::new(Topic::AgentTasks, unique("g")).bind(&key);
    drop(bus.subscribe(spec.clone()).await.unwrap());
    bus.publish(Topic::AgentTasks, &key, message("kept"))
        .await
        .unwrap();
    let mut later = bus.subscribe(spec).await.unwrap();
    assert_eq!(body(next(&mut later).await).await, "kept");
}

/// What `waiting` says once it holds `settled` (brokers count
/// asynchronously), or after 5 s.
async fn waiting_settles(
    bus: &dyn Bus,
    spec: &SubscriptionSpec,
    settled: impl Fn(u64) -> bool,
) -> Option<u64> {
    let mut last = None;
    for _ in 0..100 {
        last = bus.waiting(spec.topic, &spec.group).await.unwrap();
        if last.is_none_or(&settled) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

pub async fn waiting_counts_the_messages_ready_in_a_group(bus: &dyn Bus) {
    let key = unique("c");
    let spec = SubscriptionSpec::new(Topic::AgentTasks, unique("g"))
        .bind(&key)
        .prefetch(1);
    drop(bus.subscribe(spec.clone()).await.unwrap());
    // An adapter that cannot tell says so for every group.
    if waiting_settles(bus, &spec, |n| n == 0).await.is_none() {
        return;
    }
    for n in 0..3 {
        bus.publish(Topic::AgentTasks, &key, message(&format!("m{n}")))
            .await
            .unwrap();
    }
    assert_eq!(waiting_settles(bus, &spec, |n| n == 3).await, Some(3));
    let mut consumer = bus.subscribe(spec.clone()).await.unwrap();
    next(&mut consumer).await.ack().await.unwrap();
    // One taken and acked; at most one more held by the consumer.
    let left = waiting_settles(bus, &spec, |n| n <= 2).await;
    assert!(left.is_some_and(|n| n <= 2), "{left:?}");
    let unknown = SubscriptionSpec::new(Topic::AgentTasks, unique("none"));
    assert_eq!(waiting_settles(bus, &unknown, |n| n == 0).await, Some(0));
}

/// Expands to one test per conformance case for the adapter built by `$make`
/// (an expression, evaluated inside each async test).
#[macro_export]
macro_rules! bus_conformance_tests {
    ($make:expr) => {
        $crate::bus_conformance_tests!(@cases $make;
            publish_then_consume_keeps_id_body_and_headers,
            messages_published_together_each_arrive_once,
            routing_keys_select_groups,
            topics_are_separate,
            every_group_gets_a_copy,
            consumers_in_a_group_share_the_work,
            nack_redelivers_with_a_higher_count,
            an_unsettled_delivery_of_a_dropped_consumer_is_redelivered,
            dead_letter_keeps_the_reason_and_unblocks_the_queue,
            a_message_that_keeps_failing_is_dead_lettered_after_max_deliveries,
            deliveries_lost_to_crashes_count_against_a_higher_limit,
            a_work_message_no_group_takes_is_refused,
            prefetch_bounds_unsettled_deliveries,
            messages_wait_in_a_declared_group_without_consumers,
            waiting_counts_the_messages_ready_in_a_group,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let bus = $make;
                $crate::conformance::$case(&bus).await;
            }
        )*
    };
}
