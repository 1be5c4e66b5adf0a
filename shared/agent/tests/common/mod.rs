//! What the agent runtime's tests share.

use std::time::Duration;

use legato_bus::Subscription;
use legato_contracts::Payload;

/// The next message on agent-results that is not a heartbeat.
pub async fn next_result(results: &mut Box<dyn Subscription>) -> Payload {
    loop {
        let delivery = tokio::time::timeout(Duration::from_secs(10), results.next())
            .await
            .expect("a result within 10 s")
            .unwrap();
        let envelope = delivery.decode().unwrap();
        delivery.ack().await.unwrap();
        if !matches!(envelope.payload, Payload::TaskHeartbeat(_)) {
            return envelope.payload;
        }
    }
}
