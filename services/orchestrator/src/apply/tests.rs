#![allow(clippy::unwrap_used)]
use super::*;
use legato_bus::InProcessBus;
use legato_contracts::WorkflowName;
use legato_store::{Commit, SqliteStore};
use limited_store::LimitedStore;
use std::sync::atomic::Ordering;

mod limited_store;
mod locks;

async fn applier_on_memory() -> (Arc<dyn Store>, Arc<Applier>) {
    applier_on(Arc::new(SqliteStore::in_memory().unwrap())).await
}

/// Registers `name` in the store's agent registry (for `tenant`, or
/// shared), as the gateway does.
async fn register_agent(store: &dyn Store, name: &str, tenant: Option<&str>) {
    store
        .put_agent(
            &legato_store::AgentRecord {
                name: legato_contracts::AgentName::parse(name).unwrap(),
                tenant: tenant.map(str::to_owned),
                body: serde_json::json!({"kind": "builtin", "leaseMs": 60000}),
                updated_at: OffsetDateTime::now_utc(),
            },
            &Expected::New,
        )
        .await
        .unwrap();
}

/// An applier on `store`, whose registry knows the `echo` agent.
async fn applier_on(store: Arc<dyn Store>) -> (Arc<dyn Store>, Arc<Applier>) {
    register_agent(&*store, "echo", None).await;
    let relay = Arc::new(OutboxRelay::new(
        Arc::new(InProcessBus::default()),
        store.clone(),
    ));
    let applier = Applier::new(store.clone(), relay, OrchestratorSettings::default());
    (store, Arc::new(applier))
}

/// A start that arrives after its instance was purged (redelivered, or
/// late from a replica that crashed holding it) is refused, not
/// obeyed: it would bring the purged instance back and occupy its id.
#[tokio::test]
async fn a_start_without_its_record_does_not_create_the_instance() {
    let (store, applier) = applier_on_memory().await;
    let id = InstanceId::parse("purged-1").unwrap();
    let start = Input::Start {
        at: OffsetDateTime::now_utc(),
        start: StartInstance {
            workflow: WorkflowName::parse("anything").unwrap(),
            version: 1,
            input: serde_json::json!({}),
            tenant: None,
            parent: None,
            budget: None,
            entity_operation: None,
        },
    };
    let refused = applier.apply(&id, &start, None).await;
    assert!(
        matches!(&refused, Err(ApplyError::Rejected(why)) if why.contains("purged")),
        "{refused:?}"
    );
    assert!(store.load(&id).await.unwrap().is_none());
}

/// Commits the Pending record the gateway writes before a start.
async fn pending(
    store: &Arc<dyn Store>,
    id: &InstanceId,
    workflow: &WorkflowName,
    tenant: Option<&str>,
    now: OffsetDateTime,
) {
    let record = legato_service::records::pending(
        id.clone(),
        workflow.clone(),
        1,
        serde_json::json!({}),
        tenant.map(str::to_owned),
        now,
    )
    .unwrap();
    store
        .commit(Commit::new(record, Expected::New))
        .await
        .unwrap();
}

fn start_of(workflow: WorkflowName, tenant: Option<&str>, now: OffsetDateTime) -> Input {
    Input::Start {
        at: now,
        start: StartInstance {
            workflow,
            version: 1,
            input: serde_json::json!({}),
            tenant: tenant.map(str::to_owned),
            parent: None,
            budget: None,
            entity_operation: None,
        },
    }
}

#[tokio::test]
async fn a_start_naming_another_tenant_is_refused() {
    let (store, applier) = applier_on_memory().await;
    let id = InstanceId::parse("acme~order-1").unwrap();
    let now = OffsetDateTime::now_utc();
    let workflow = WorkflowName::parse("beta~private").unwrap();
    pending(&store, &id, &workflow, Some("acme"), now).await;
    for (tenant, workflow) in [
        (Some("acme"), workflow),
        (None, WorkflowName::parse("shared").unwrap()),
    ] {
        let start = start_of(workflow, tenant, now);
        let refused = applier.apply(&id, &start, None).await;
        assert!(
            matches!(&refused, Err(ApplyError::Rejected(why)) if why.contains("tenant")),
            "{refused:?}"
        );
    }
}

/// A pending instance of a workflow of three parallel echo steps,
/// started: its tasks are dispatched.
async fn started_fan_out(store: &Arc<dyn Store>, applier: &Arc<Applier>) -> InstanceState {
    let id = InstanceId::parse("batch-1").unwrap();
    let workflow = WorkflowName::parse("three").unwrap();
    let now = OffsetDateTime::now_utc();
    let leaf = |id: &str| serde_json::json!({"id": id, "agent": "echo", "input": {}});
    store
        .put_definition(&legato_store::DefinitionRecord {
            name: workflow.clone(),
            version: 1,
            hash: "h".into(),
            body: serde_json::json!({"name": "three", "version": 1,
                "steps": [leaf("a"), leaf("b"), leaf("c")]}),
            registered_at: now,
        })
        .await
        .unwrap();
    pending(store, &id, &workflow, None, now).await;
    let start = start_of(workflow, None, now);
    assert_eq!(
        applier.apply(&id, &start, None).await.unwrap(),
        Applied::Accepted
    );
    state_of(&store.load(&id).await.unwrap().unwrap().record).unwrap()
}

fn completed(state: &InstanceState, step: &str) -> Input {
    Input::Event(Event::TaskCompleted {
        at: OffsetDateTime::now_utc(),
        key: legato_contracts::TaskKey {
            run: state.run,
            execution: state.execution,
            step: legato_contracts::StepId::parse(step).unwrap(),
            item: None,
            iteration: None,
            role: Default::default(),
        },
        attempt: 1,
        output: serde_json::json!({"step": step}),
        custom_status: None,
        usage: None,
    })
}

async fn version_of(store: &Arc<dyn Store>, id: &InstanceId) -> String {
    store.load(id).await.unwrap().unwrap().version.0
}

/// Applies the results of a, b, a again and c, arriving together, to the
/// started fan-out: each is answered (the copy as ignored), each accepted
/// one is a history row in order, and the instance completes. Returns how
/// many commits that took.
async fn three_results_and_a_copy(
    store: &Arc<dyn Store>,
    applier: &Arc<Applier>,
    state: &InstanceState,
) -> u64 {
    let id = &state.id;
    let version_before: u64 = version_of(store, id).await.parse().unwrap();
    let inputs = [
        completed(state, "a"),
        completed(state, "b"),
        completed(state, "a"),
        completed(state, "c"),
    ];
    // Queued in the same poll: the first starts the runner, which
    // finds the rest waiting when it runs.
    let answers =
        futures::future::join_all(inputs.iter().map(|input| applier.apply(id, input, None))).await;
    let answers: Vec<Applied> = answers.into_iter().map(Result::unwrap).collect();
    assert_eq!(answers[0], Applied::Accepted);
    assert_eq!(answers[1], Applied::Accepted);
    assert!(matches!(answers[2], Applied::Ignored(_)), "{answers:?}");
    assert_eq!(answers[3], Applied::Accepted);
    let stored = state_of(&store.load(id).await.unwrap().unwrap().record).unwrap();
    assert_eq!(stored.status, RuntimeStatus::Completed);
    let history = store
        .history(id, legato_store::HistoryFrom::default(), 100)
        .await
        .unwrap();
    // Started, then one row per accepted result, numbered in order.
    let seqs: Vec<u64> = history.iter().map(|row| row.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    let version_after: u64 = version_of(store, id).await.parse().unwrap();
    version_after - version_before
}

/// Results that arrive while the instance is being worked on wait and
/// go in one commit: each is answered, each is a history row, the
/// record moves one version, and a copy among them is ignored.
#[tokio::test]
async fn messages_arriving_together_are_committed_together() {
    let (store, applier) = applier_on_memory().await;
    let state = started_fan_out(&store, &applier).await;
    let commits = three_results_and_a_copy(&store, &applier, &state).await;
    assert_eq!(commits, 1, "one commit for the batch");
}

/// Messages whose changes together are more than the store takes in one
/// commit are applied one by one, each still once; a message that alone is
/// more than the store takes is refused (to be dead-lettered) and changes
/// nothing, so it applies once the store would take it.
#[tokio::test]
async fn a_batch_too_large_for_one_commit_is_applied_message_by_message() {
    let limited = Arc::new(LimitedStore::new(1));
    let (store, applier) = applier_on(limited.clone()).await;
    let state = started_fan_out(&store, &applier).await;
    let id = state.id.clone();
    let version_before = version_of(&store, &id).await;

    limited.set_limit(0);
    let refused = applier.apply(&id, &completed(&state, "a"), None).await;
    assert!(
        matches!(&refused, Err(ApplyError::Rejected(why)) if why.contains("more than the store takes")),
        "{refused:?}"
    );
    assert_eq!(version_of(&store, &id).await, version_before);

    limited.set_limit(1);
    let refused_before = limited.refused.load(Ordering::SeqCst);
    let commits = three_results_and_a_copy(&store, &applier, &state).await;
    assert_eq!(commits, 3, "one commit per result");
    assert!(
        limited.refused.load(Ordering::SeqCst) > refused_before,
        "the batch was tried together first"
    );
}

/// One message of a batch that can never apply is refused alone.
#[tokio::test]
async fn a_refused_message_in_a_batch_does_not_hold_back_the_others() {
    let (store, applier) = applier_on_memory().await;
    let state = started_fan_out(&store, &applier).await;
    let id = state.id.clone();
    let redrive_onto_missing = Input::RedriveOnto {
        at: OffsetDateTime::now_utc(),
        id: "redrive-1".into(),
        version: 9,
    };
    let inputs = [
        completed(&state, "a"),
        redrive_onto_missing,
        completed(&state, "b"),
    ];
    let answers =
        futures::future::join_all(inputs.iter().map(|input| applier.apply(&id, input, None))).await;
    assert!(matches!(answers[0], Ok(Applied::Accepted)), "{answers:?}");
    assert!(
        matches!(answers[1], Err(ApplyError::Rejected(_))),
        "{answers:?}"
    );
    assert!(matches!(answers[2], Ok(Applied::Accepted)), "{answers:?}");
    let stored = state_of(&store.load(&id).await.unwrap().unwrap().record).unwrap();
    let done = |step: &str| {
        stored.steps[&legato_contracts::StepId::parse(step).unwrap()].status
            == legato_engine::StepStatus::Completed
    };
    assert!(done("a") && done("b") && !done("c"));
}

fn control(id: &str, suspend: bool) -> Input {
    let (at, id) = (OffsetDateTime::now_utc(), id.to_owned());
    Input::Event(if suspend {
        Event::SuspendRequested {
            at,
            id,
            reason: None,
        }
    } else {
        Event::ResumeRequested {
            at,
            id,
            reason: None,
            budget: None,
        }
    })
}

fn raised(id: &str) -> Input {
    Input::Event(Event::EventRaised {
        at: OffsetDateTime::now_utc(),
        id: id.to_owned(),
        name: legato_contracts::EventName::parse("go").unwrap(),
        data: serde_json::json!({"from": id}),
    })
}

/// Control messages and external events count once per message id,
/// however late the copy: the store holds their claims, the row does
/// not. A copy claimed by an earlier commit is answered as ignored and
/// the rest of its batch still lands in one commit; a copy within the
/// batch is ignored before any commit.
#[tokio::test]
async fn message_ids_count_once_and_are_kept_beside_the_row() {
    let (store, applier) = applier_on_memory().await;
    let state = started_fan_out(&store, &applier).await;
    let id = state.id.clone();
    for input in [control("s1", true), control("r1", false)] {
        let answer = applier.apply(&id, &input, None).await.unwrap();
        assert_eq!(answer, Applied::Accepted);
    }
    let version_before: u64 = version_of(&store, &id).await.parse().unwrap();
    let inputs = [
        control("s1", true),
        completed(&state, "a"),
        raised("e1"),
        raised("e1"),
    ];
    let answers =
        futures::future::join_all(inputs.iter().map(|input| applier.apply(&id, input, None))).await;
    let answers: Vec<Applied> = answers.into_iter().map(Result::unwrap).collect();
    assert!(
        matches!(&answers[0], Applied::Ignored(why) if why.contains("s1")),
        "{answers:?}"
    );
    assert_eq!(answers[1], Applied::Accepted);
    assert_eq!(answers[2], Applied::Accepted);
    assert!(matches!(&answers[3], Applied::Ignored(why) if why.contains("e1")));
    let version_after: u64 = version_of(&store, &id).await.parse().unwrap();
    assert_eq!(version_after, version_before + 1);

    // Another replica, knowing nothing of this one's commits.
    let relay = Arc::new(OutboxRelay::new(
        Arc::new(InProcessBus::default()),
        store.clone(),
    ));
    let replica = Arc::new(Applier::new(
        store.clone(),
        relay,
        OrchestratorSettings::default(),
    ));
    for late in [control("r1", false), raised("e1")] {
        let answer = replica.apply(&id, &late, None).await.unwrap();
        assert!(matches!(answer, Applied::Ignored(_)), "{answer:?}");
    }
    let record = store.load(&id).await.unwrap().unwrap().record;
    assert!(!record.state.as_str().contains("seen_message_ids"));
    let stored = state_of(&record).unwrap();
    assert_eq!(stored.status, RuntimeStatus::Running);
    assert_eq!(stored.pending_events.len(), 1);
}

/// Starts `acme~<id>` on a two-step workflow: `first` on `echo`, then
/// `second` on `agent` (compensated by `echo`); returns its state.
async fn started_with(
    store: &Arc<dyn Store>,
    applier: &Arc<Applier>,
    id: &str,
    agent: &str,
) -> InstanceState {
    let id = InstanceId::parse(format!("acme~{id}")).unwrap();
    let workflow = WorkflowName::parse(format!("acme~w-{agent}")).unwrap();
    let now = OffsetDateTime::now_utc();
    store
        .put_definition(&legato_store::DefinitionRecord {
            name: workflow.clone(),
            version: 1,
            hash: "h".into(),
            body: serde_json::json!({"name": workflow.as_str(), "version": 1, "steps": [
                {"id": "first", "agent": "echo", "input": {}, "compensate": {"agent": "echo", "input": {}}},
                {"id": "second", "agent": agent, "needs": ["first"], "input": {}},
            ]}),
            registered_at: now,
        })
        .await
        .unwrap();
    pending(store, &id, &workflow, Some("acme"), now).await;
    let start = start_of(workflow, Some("acme"), now);
    assert_eq!(
        applier.apply(&id, &start, None).await.unwrap(),
        Applied::Accepted
    );
    state_of(&store.load(&id).await.unwrap().unwrap().record).unwrap()
}

/// A task for an agent nobody registered, or another tenant's, is never
/// sent: its step fails in the same commit, naming the agent, and the
/// saga rolls back what completed. One registered a moment ago (on any
/// replica) is found.
#[tokio::test]
async fn a_task_for_a_missing_agent_fails_its_step_naming_it() {
    let (store, applier) = applier_on_memory().await;
    register_agent(&*store, "betas-own", Some("beta")).await;
    register_agent(&*store, "acmes-own", Some("acme")).await;
    for (n, agent) in ["nobody", "betas-own", "acmes-own", "late"]
        .into_iter()
        .enumerate()
    {
        let state = started_with(&store, &applier, &format!("i{n}"), agent).await;
        if agent == "late" {
            register_agent(&*store, "late", None).await;
        }
        let id = state.id.clone();
        applier
            .apply(&id, &completed(&state, "first"), None)
            .await
            .unwrap();
        let after = state_of(&store.load(&id).await.unwrap().unwrap().record).unwrap();
        let outbox = store.pending_outbox(1_000).await.unwrap();
        let sent_to = |agent: &str| {
            outbox
                .iter()
                .any(|o| o.row.routing_key == agent && o.instance == id)
        };
        match agent {
            "nobody" | "betas-own" => {
                let second = &after.steps[&legato_contracts::StepId::parse("second").unwrap()];
                assert_eq!(
                    second.tasks[0].error.as_deref(),
                    Some(format!("no agent {agent} is registered").as_str()),
                    "{agent}"
                );
                assert!(!sent_to(agent), "{agent}: never sent");
                assert!(
                    matches!(after.status, RuntimeStatus::Running | RuntimeStatus::Failed),
                    "rolling back or failed: {:?}",
                    after.status
                );
            }
            _ => {
                assert_eq!(after.status, RuntimeStatus::Running, "{agent}");
                assert!(sent_to(agent), "{agent}: sent");
            }
        }
    }
}

/// A child's start is taken up only while its parent waits for that
/// attempt: one for a parent that is gone, or for an attempt it no longer
/// runs, is let go without creating the child; messages for a child that
/// does not exist (purged with its parent) are stale, not poison.
/// The task key of `parent`'s step `a` (see [`started_fan_out`]).
fn key_of_a(parent: &InstanceState) -> legato_contracts::TaskKey {
    parent.task_key(
        legato_contracts::StepId::parse("a").unwrap(),
        None,
        legato_contracts::TaskRole::Action,
    )
}

/// The start of a child run of `workflow` for attempt `attempt` of the
/// task `key` of `parent`.
fn child_start(
    parent: &str,
    key: &legato_contracts::TaskKey,
    attempt: u32,
    workflow: &str,
) -> Input {
    Input::Start {
        at: OffsetDateTime::now_utc(),
        start: StartInstance {
            workflow: WorkflowName::parse(workflow).unwrap(),
            version: 1,
            input: serde_json::json!({}),
            tenant: None,
            parent: Some(legato_contracts::ParentLink {
                instance: InstanceId::parse(parent).unwrap(),
                key: key.clone(),
                attempt,
                depth: 1,
            }),
            budget: None,
            entity_operation: None,
        },
    }
}

#[tokio::test]
async fn a_childs_start_is_taken_up_only_while_its_parent_waits_for_it() {
    let (store, applier) = applier_on_memory().await;
    let parent = started_fan_out(&store, &applier).await;
    let key = key_of_a(&parent);
    for (instance, attempt, why) in [
        ("gone", 1, "parent gone no longer waits"),
        (parent.id.as_str(), 7, "no longer waits for task"),
    ] {
        let child = InstanceId::parse(format!("{instance}::a.a{attempt}")).unwrap();
        let start = child_start(instance, &key, attempt, "anything");
        let answer = applier.apply(&child, &start, None).await;
        assert!(
            matches!(&answer, Ok(Applied::Ignored(reason)) if reason.contains(why)),
            "{answer:?}"
        );
        assert!(store.load(&child).await.unwrap().is_none());
    }
    let purged = InstanceId::parse(format!("{}::a.a1", parent.id)).unwrap();
    let late = Input::Event(Event::TaskCompleted {
        at: OffsetDateTime::now_utc(),
        key,
        attempt: 1,
        output: serde_json::json!(1),
        custom_status: None,
        usage: None,
    });
    let answer = applier.apply(&purged, &late, None).await;
    assert!(matches!(answer, Ok(Applied::Ignored(_))), "{answer:?}");
}

/// The first start of a child creates it (its parent waits for it); when
/// it ends, a start of it again (after `legato up` restarted and asked
/// for its running children) tells the parent again how it ended.
#[tokio::test]
async fn a_child_is_created_by_its_start_and_an_ended_one_reports_again() {
    let (store, applier) = applier_on_memory().await;
    let parent = started_fan_out(&store, &applier).await;
    store
        .put_definition(&legato_store::DefinitionRecord {
            name: WorkflowName::parse("kid").unwrap(),
            version: 1,
            hash: "k".into(),
            body: serde_json::json!({"name": "kid", "version": 1,
                "steps": [{"id": "work", "agent": "echo", "input": {}}]}),
            registered_at: OffsetDateTime::now_utc(),
        })
        .await
        .unwrap();
    let child = InstanceId::parse(format!("{}::a.a1", parent.id)).unwrap();
    let start = child_start(parent.id.as_str(), &key_of_a(&parent), 1, "kid");
    assert_eq!(
        applier.apply(&child, &start, None).await.unwrap(),
        Applied::Accepted
    );
    let running = state_of(&store.load(&child).await.unwrap().unwrap().record).unwrap();
    assert_eq!(running.status, RuntimeStatus::Running);
    assert_eq!(running.parent.as_ref().map(|p| p.depth), Some(1));
    let again = applier.apply(&child, &start, None).await.unwrap();
    assert_eq!(again, Applied::Ignored("already started".into()));
    assert_eq!(
        applier
            .apply(&child, &completed(&running, "work"), None)
            .await
            .unwrap(),
        Applied::Accepted
    );
    let again = applier.apply(&child, &start, None).await.unwrap();
    assert!(
        matches!(&again, Applied::Ignored(why) if why.contains("how it ended told again")),
        "{again:?}"
    );
}
