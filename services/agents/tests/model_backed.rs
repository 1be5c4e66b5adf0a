//! The planner and coder with a chat model configured, run on the worker
//! runtime over the in-process bus, against a local OpenAI-compatible
//! stand-in (the real endpoints are cloud services): the model's answer
//! becomes the task's output, and an answer off-format is a retryable
//! failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::routing::post;
use legato_agent::llm::LlmSettings;
use legato_agent::{Worker, WorkerSettings};
use legato_agents::{AgentConfig, AgentKind, build};
use legato_bus::{Bus, InProcessBus, SubscriptionSpec};
use legato_contracts::{
    AgentName, Envelope, InstanceId, Payload, StepId, TaskDispatched, TaskKey, TaskRole, Topic,
    WorkflowName,
};
use legato_service::Shutdown;
use serde_json::{Value, json};
use time::OffsetDateTime;

/// A chat endpoint that always answers `content`.
async fn model(content: &'static str) -> String {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |Json(request): Json<Value>| async move {
            assert_eq!(request["response_format"]["type"], "json_object");
            Json(json!({"choices": [{"message": {"role": "assistant", "content": content}}]}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/v1")
}

async fn run_once(kind: AgentKind, endpoint: String, input: Value) -> Payload {
    let config = AgentConfig {
        llm: LlmSettings {
            endpoint,
            api_key: "sk-test".into(),
            ..LlmSettings::default()
        },
        ..AgentConfig::default()
    };
    run_with(kind, &config, input).await
}

async fn run_with(kind: AgentKind, config: &AgentConfig, input: Value) -> Payload {
    let bus = Arc::new(InProcessBus::default());
    let mut results = bus
        .subscribe(SubscriptionSpec::new(Topic::AgentResults, "test").bind("#"))
        .await
        .unwrap();
    let agent = build(kind, config).unwrap();
    let shutdown = Shutdown::new();
    let worker = Worker::new(
        agent,
        bus.clone(),
        WorkerSettings::default(),
        shutdown.clone(),
    )
    .with_store(Arc::new(legato_store::SqliteStore::in_memory().unwrap()));
    tokio::spawn(worker.start().await.unwrap());
    let task = TaskDispatched {
        key: TaskKey {
            run: 1,
            execution: 0,
            step: StepId::parse("s").unwrap(),
            item: None,
            iteration: None,
            role: TaskRole::Action,
        },
        attempt: 1,
        agent: AgentName::parse(kind.name()).unwrap(),
        workflow: WorkflowName::parse("w").unwrap(),
        input,
        deadline: None,
        heartbeat_timeout_ms: None,
        resent: false,
        answers: Default::default(),
    };
    let envelope = Envelope::new(
        "/test",
        InstanceId::parse("i").unwrap(),
        OffsetDateTime::now_utc(),
        task,
    );
    bus.publish_envelope(&envelope).await.unwrap();
    let payload = loop {
        let d = tokio::time::timeout(Duration::from_secs(10), results.next())
            .await
            .unwrap()
            .unwrap();
        let payload = d.decode().unwrap().payload;
        d.ack().await.unwrap();
        if !matches!(payload, Payload::TaskHeartbeat(_)) {
            break payload;
        }
    };
    shutdown.trigger();
    payload
}

#[tokio::test]
async fn the_planner_returns_the_models_plan() {
    let endpoint =
        model(r#"{"tasks": [{"agent": "data", "input": {"question": "totals?"}}]}"#).await;
    let Payload::TaskCompleted(done) = run_once(
        AgentKind::Planner,
        endpoint,
        json!({"request": "check totals"}),
    )
    .await
    else {
        panic!("expected a completion")
    };
    assert_eq!(
        done.output,
        json!({"tasks": [{"agent": "data", "input": {"question": "totals?"}}]})
    );
}

#[tokio::test]
async fn a_plan_naming_an_unknown_agent_is_a_retryable_failure() {
    let endpoint = model(r#"{"tasks": [{"agent": "shell", "input": {}}]}"#).await;
    let Payload::TaskFailed(failed) =
        run_once(AgentKind::Planner, endpoint, json!({"request": "x"})).await
    else {
        panic!("expected a failure")
    };
    assert!(failed.error.retryable);
    assert!(
        failed.error.message.contains("shell"),
        "{}",
        failed.error.message
    );
}

#[tokio::test]
async fn the_coder_wraps_the_models_proposal_with_a_stable_change_id() {
    let endpoint =
        model(r#"{"summary": "add export", "files": ["src/export.rs"], "steps": ["do it"]}"#).await;
    let Payload::TaskCompleted(done) = run_once(
        AgentKind::Coder,
        endpoint,
        json!({"action": "change", "task": "add export"}),
    )
    .await
    else {
        panic!("expected a completion")
    };
    assert_eq!(done.output["proposal"]["files"], json!(["src/export.rs"]));
    assert_eq!(
        done.output["change_id"],
        legato_agents::coder::change_id("add export")
    );
}

/// The data agent answers a question with a model-and-tool loop: the model
/// (the stand-in, scripted to call the first tool offered twice) lists the
/// tables through the agent's tools, then answers with what they returned.
#[tokio::test]
async fn the_data_agent_answers_a_question_through_the_models_tool_calls() {
    let model = legato_model_standin::ModelStandIn::start(0, "sk-test")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = AgentConfig {
        llm: LlmSettings {
            endpoint: model.base_url(),
            api_key: "sk-test".into(),
            model: "standin".into(),
            ..LlmSettings::default()
        },
        ..AgentConfig::default()
    };
    config.data.url = format!("sqlite://{}", dir.path().join("demo.db").display());
    legato_agents::data::demo::ensure(&dir.path().join("demo.db")).unwrap();
    let Payload::TaskCompleted(done) = run_with(
        AgentKind::Data,
        &config,
        json!({"question": "loop:3 which tables are there?"}),
    )
    .await
    else {
        panic!("expected a completion")
    };
    assert_eq!(
        (&done.output["turns"], &done.output["model"]),
        (&json!(3), &json!("configured"))
    );
    let answer = done.output["answer"].as_str().unwrap();
    assert!(answer.starts_with("done after 3 turns: "), "{answer}");
    assert!(
        answer.contains("invoices"),
        "the tool's rows reached the model: {answer}"
    );
    let calls = model.calls();
    assert_eq!(
        calls["loop:3 which tables are there?"].len(),
        3,
        "{calls:?}"
    );
    assert!(done.usage.is_some_and(|u| u.input_tokens > 0));
}
