//! The consumer groups legato's services read from, in one place: the
//! services build their subscriptions from these functions, and
//! `legato topology` prints the broker entities they need (for
//! infrastructure templates and for namespaces whose entities are created
//! ahead of time, where the services have no right to create them).

use legato_contracts::{CANCEL_ROUTING_PREFIX, Topic};

use crate::SubscriptionSpec;

/// The orchestrator's replicas share one group on each of its topics.
pub const ORCHESTRATOR_GROUP: &str = "orchestrator";

/// Start, raise-event, terminate, … commands for the orchestrator.
pub fn orchestrator_commands() -> SubscriptionSpec {
    SubscriptionSpec::new(Topic::Commands, ORCHESTRATOR_GROUP).bind("#")
}

/// Results of agent tasks for the orchestrator.
pub fn orchestrator_results() -> SubscriptionSpec {
    SubscriptionSpec::new(Topic::AgentResults, ORCHESTRATOR_GROUP).bind("#")
}

/// The tasks of one agent, shared by its replicas.
pub fn agent_tasks(agent: &str) -> SubscriptionSpec {
    SubscriptionSpec::new(Topic::AgentTasks, format!("agent-{agent}")).bind(agent)
}

/// One agent replica's cancellations: every replica hears every one, as
/// only the replica running a task can stop it.
pub fn agent_cancellations(agent: &str, replica: &str) -> SubscriptionSpec {
    SubscriptionSpec::new(Topic::AgentTasks, format!("agent-{agent}-cancel-{replica}"))
        .bind(format!("{CANCEL_ROUTING_PREFIX}#"))
        .ephemeral()
}

/// One notifier replica's copy of every progress event.
pub fn notifier_progress(replica: &str) -> SubscriptionSpec {
    SubscriptionSpec::new(Topic::Progress, format!("notifier-{replica}"))
        .bind("#")
        .ephemeral()
}

/// Every durable group of a deployment with these agents: what must exist
/// before the services start when they may not create entities.
pub fn durable_groups(agents: &[&str]) -> Vec<SubscriptionSpec> {
    let mut groups = vec![orchestrator_commands(), orchestrator_results()];
    groups.extend(agents.iter().map(|a| agent_tasks(a)));
    groups
}

/// The ephemeral groups, with `<replica>` standing for the id each replica
/// makes up: created and deleted by the replicas themselves.
pub fn ephemeral_groups(agents: &[&str]) -> Vec<SubscriptionSpec> {
    let mut groups = vec![notifier_progress("<replica>")];
    groups.extend(agents.iter().map(|a| agent_cancellations(a, "<replica>")));
    groups
}
