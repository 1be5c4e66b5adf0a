#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
use legato_workflow::{Action, AgentRef, Work, parse};
use serde_json::json;

const FEATURE: &str = r#"
name: feature-request
version: 1
input_schema:
  type: object
  required: [request]
  properties:
    request: { type: string, minLength: 1 }
steps:
  - id: plan
    agent: planner
    input: { request: "${{ input.request }}" }
    retry: { max_attempts: 3, initial_interval_ms: 500, backoff: 2, max_interval_ms: 5000 }
  - id: work
    needs: [plan]
    for_each: "${{ steps.plan.output.tasks }}"
    agent: "${{ item.agent }}"
    input: "${{ item.input }}"
    max_parallel: 3
  - id: approve
    needs: [work]
    wait_for_event: { name: approval, timeout_ms: 86400000 }
  - id: finalize
    needs: [approve]
    if: "${{ steps.approve.output.approved }}"
    agent: coder
    input: { results: "${{ steps.work.output }}" }
    compensate: { agent: coder, input: { revert: "${{ steps.finalize.output }}" } }
output:
  approved: "${{ steps.approve.output.approved }}"
"#;

#[test]
fn parses_the_feature_request_shape() {
    let wf = parse(FEATURE).unwrap();
    assert_eq!(wf.name.as_str(), "feature-request");
    assert_eq!(wf.steps.len(), 4);
    assert!(matches!(
        &wf.steps[1].action,
        Action::ForEach {
            work: Work::Agent(AgentRef::Dynamic(_)),
            max_parallel: Some(3),
            ..
        }
    ));
    assert!(wf.steps[3].compensate.is_some());
}

#[test]
fn json_and_yaml_give_the_same_definition_and_hash() {
    let yaml = parse(FEATURE).unwrap();
    let as_json = serde_json::to_string(&yaml).unwrap();
    let again = parse(&as_json).unwrap();
    assert_eq!(yaml, again);
    assert_eq!(yaml.content_hash(), again.content_hash());
    let via_serde: legato_workflow::Workflow = serde_json::from_str(&as_json).unwrap();
    assert_eq!(via_serde, yaml);
}

#[test]
fn lists_every_problem_with_its_path() {
    let doc = json!({
        "name": "bad",
        "version": 1,
        "steps": [
            {"id": "a", "agent": "echo", "needs": ["c"]},
            {"id": "b", "agent": "echo", "needs": ["a", "ghost"]},
            {"id": "c", "agent": "echo", "needs": ["b"], "input": "${{ steps.zzz.output }}"},
            {"id": "a", "timer": {"delay_ms": 5}},
            {"id": "d", "teleport": {}},
            {"id": "e", "agent": "echo", "if": "${{ 1 + }}"},
            {"id": "f", "agent": "echo", "timer": {"delay_ms": 1}},
            {"id": "g", "agent": "echo", "retry": {"max_attempts": 0, "backoff": 0.5}}
        ]
    });
    let errors = legato_workflow::from_value(doc).unwrap_err();
    let text = errors.to_string();
    for expected in [
        "duplicate step id",
        "unknown step \"ghost\"",
        "needs form a cycle through: a, b, c",
        "steps[4] (d): unknown field `teleport`",
        "steps[5] (e).if: `1 +` is not a valid CEL expression",
        "found agent and timer",
        "retry.max_attempts: must be at least 1",
        "retry.backoff: must be a number >= 1, got 0.5",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(errors.0.len() >= 8, "{text}");
}

#[test]
fn expressions_may_only_read_ancestors() {
    let doc = json!({
        "name": "x", "version": 1,
        "steps": [
            {"id": "a", "agent": "echo"},
            {"id": "b", "agent": "echo", "input": "${{ steps.a.output }}"},
            {"id": "d", "agent": "echo", "needs": ["a"]},
            {"id": "c", "agent": "echo", "needs": ["d"], "input": {"v": "${{ steps.a.output }}"}}
        ]
    });
    let text = legato_workflow::from_value(doc).unwrap_err().to_string();
    assert!(
        text.contains("steps (b).input: reads steps.a, which is not among its needs"),
        "{text}"
    );
    assert!(
        !text.contains("steps (c)"),
        "a transitive ancestor is fine: {text}"
    );
}

#[test]
fn rejects_unknown_top_level_fields_and_bad_names() {
    let text = parse("name: Bad Name\nversion: 0\nstepz: []\n")
        .unwrap_err()
        .to_string();
    assert!(text.contains("stepz: unknown field"), "{text}");
    assert!(text.contains("name: invalid workflow name"), "{text}");
    assert!(
        text.contains("version: must be a positive integer"),
        "{text}"
    );
    assert!(text.contains("steps: is required"), "{text}");
}

#[test]
fn input_schema_violations_name_the_field() {
    let wf = parse(FEATURE).unwrap();
    assert!(
        wf.check_input(&json!({"request": "add CSV export"}))
            .is_ok()
    );
    let errors = wf.check_input(&json!({"request": ""})).unwrap_err();
    assert_eq!(errors[0].pointer, "/request");
    let errors = wf.check_input(&json!({})).unwrap_err();
    assert!(errors[0].message.contains("request"), "{errors:?}");
}

#[test]
fn invalid_input_schema_is_rejected_at_registration() {
    let text = parse(
        "name: x\nversion: 1\ninput_schema: { type: 12 }\nsteps: [{id: a, timer: {delay_ms: 1}}]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        text.contains("input_schema: not a valid JSON Schema"),
        "{text}"
    );
}

const LOOP: &str = r#"
name: write-review
version: 1
steps:
  - id: brief
    agent: planner
  - id: draft
    needs: [brief]
    loop:
      max_iterations: 5
      until: ${{ steps.review.output.approved }}
      output: { text: "${{ steps.write.output }}" }
      steps:
        - id: write
          agent: coder
          input: { brief: "${{ steps.brief.output }}", round: "${{ iteration }}", last: "${{ previous }}" }
        - id: review
          agent: reviewer
          needs: [write]
          input: "${{ steps.write.output }}"
  - id: publish
    needs: [draft]
    agent: echo
    input: { value: "${{ steps.draft.output.text }}" }
"#;

#[test]
fn a_loop_s_body_reads_its_own_steps_the_loop_s_ancestors_and_iteration() {
    let workflow = parse(LOOP).unwrap();
    let draft = workflow.step("draft").unwrap();
    let Action::Loop { repeat } = &draft.action else {
        panic!("{draft:?}")
    };
    assert_eq!(repeat.max_iterations, 5);
    assert_eq!(repeat.steps.len(), 2);
    // Found wherever they are, and listed with the agents they name.
    assert!(workflow.step("review").is_some());
    assert_eq!(
        workflow.enclosing_loop("review").map(|s| s.id.as_str()),
        Some("draft")
    );
    let ids: Vec<&str> = workflow.all_steps().iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["brief", "draft", "publish", "write", "review"]);
    let agents: Vec<String> = workflow
        .named_agents()
        .into_iter()
        .map(|(at, agent)| format!("{at}={agent}"))
        .collect();
    assert!(
        agents.contains(&"/steps/1/loop/steps/1/agent=reviewer".to_owned()),
        "{agents:?}"
    );
    // What it serialises to parses back the same.
    let again = legato_workflow::from_value(serde_json::to_value(&workflow).unwrap()).unwrap();
    assert_eq!(again, workflow);
    assert_eq!(again.content_hash(), workflow.content_hash());
}

#[test]
fn loops_are_checked_like_everything_else() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "      max_iterations: 5\n",
            "",
            "steps[1] (draft).loop.max_iterations: is required: every loop has a ceiling",
        ),
        (
            "max_iterations: 5",
            "max_iterations: 10001",
            "steps[1] (draft).loop.max_iterations: must be between 1 and 10000, got 10001",
        ),
        (
            "input: { value: \"${{ steps.draft.output.text }}\" }",
            "input: { value: \"${{ steps.review.output }}\" }",
            "steps (publish).input: reads steps.review, which is inside loop draft: read the loop's output (steps.draft.output) instead",
        ),
        (
            "          needs: [write]",
            "          needs: [brief]",
            "steps (draft).loop.steps (review).needs: step \"brief\" is not beside it",
        ),
        (
            "    agent: planner\n",
            "    agent: planner\n    input: \"${{ iteration }}\"\n",
            "reads unknown variable(s) iteration; available here: input, steps",
        ),
        (
            "          input: \"${{ steps.write.output }}\"",
            "          input: \"${{ steps.write.output }}\"\n          compensate: { agent: coder }",
            "steps[1] (draft).loop.steps[1] (review).compensate: a step inside a loop, race or lock is not compensated on its own",
        ),
        (
            "        - id: review",
            "        - id: inner\n          loop: { max_iterations: 2, steps: [{ id: deep, agent: echo }] }\n        - id: review",
            "steps[1] (draft).loop.steps[1] (inner).loop: loops, races and locks do not nest",
        ),
        (
            "        - id: review",
            "        - id: publish\n          agent: echo\n        - id: review",
            "steps (publish): duplicate step id",
        ),
        (
            "until: ${{ steps.review.output.approved }}",
            "until: ${{ steps.publish.output }}",
            "steps (draft).loop.until: reads steps.publish, which is not among its needs",
        ),
    ];
    for (from, to, expected) in cases {
        assert!(LOOP.contains(from), "{from}");
        let text = parse(&LOOP.replacen(from, to, 1)).unwrap_err().to_string();
        assert!(text.contains(expected), "{from} -> {to}:\n{text}");
    }
}

#[test]
fn a_macro_s_own_variable_is_not_taken_for_one_of_the_scope() {
    use legato_workflow::{Expr, Variables};
    for ok in [
        "${{ input.xs.all(x, x > 1) }}",
        "${{ input.xs.map(x, x * 2).filter(y, y > 2).exists(z, z == input.n) }}",
        "${{ {'k': input.xs.exists_one(x, x == 1)} }}",
    ] {
        assert!(Expr::parse_wrapped(ok, Variables::Instance).is_ok(), "{ok}");
    }
    // Bound inside the macro only: outside it is unknown again.
    let err = Expr::parse_wrapped("${{ input.xs.all(x, x > 1) && x }}", Variables::Instance)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown variable(s) x"), "{err}");
    let err = Expr::parse_wrapped("${{ input.xs.all(x, y > 1) }}", Variables::Instance)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown variable(s) y"), "{err}");
}

const CHILDREN: &str = r#"
name: feature
version: 1
steps:
  - id: code
    workflow: coder
    input: { task: "${{ input.task }}" }
    retry: { max_attempts: 2 }
  - id: test_each
    needs: [code]
    for_each: ${{ steps.code.output.files }}
    workflow: { name: tester, version: 2 }
    input: { file: "${{ item }}" }
    max_parallel: 2
"#;

#[test]
fn child_workflow_steps_name_the_workflow_and_pin_a_version_if_they_like() {
    let wf = parse(CHILDREN).unwrap();
    let Action::Workflow { workflow, .. } = &wf.steps[0].action else {
        panic!("{:?}", wf.steps[0].action);
    };
    assert_eq!((workflow.name.as_str(), workflow.version), ("coder", None));
    let Action::ForEach {
        work: Work::Workflow(each),
        max_parallel: Some(2),
        ..
    } = &wf.steps[1].action
    else {
        panic!("{:?}", wf.steps[1].action);
    };
    assert_eq!((each.name.as_str(), each.version), ("tester", Some(2)));
    let named: Vec<(String, String)> = wf
        .named_workflows()
        .into_iter()
        .map(|(at, w)| (at, w.name.to_string()))
        .collect();
    assert_eq!(
        named,
        [
            ("/steps/0/workflow".to_owned(), "coder".to_owned()),
            ("/steps/1/workflow".to_owned(), "tester".to_owned())
        ]
    );
    // What is stored reads back as the same definition.
    let again = legato_workflow::from_value(serde_json::to_value(&wf).unwrap()).unwrap();
    assert_eq!(again, wf);
}

#[test]
fn child_workflow_steps_are_checked_like_everything_else() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "    workflow: coder\n",
            "    workflow: coder\n    agent: echo\n",
            "needs exactly one action of agent, workflow, for_each, wait_for_event, timer, loop, race, entity, lock; found agent and workflow",
        ),
        (
            "    workflow: { name: tester, version: 2 }",
            "    workflow: { name: tester, version: 2 }\n    agent: echo",
            "steps[1] (test_each).agent: a for_each step names either the agent each item goes to or the workflow each item runs",
        ),
        (
            "    workflow: coder\n",
            "    workflow: acme~coder\n",
            "steps[0] (code).workflow.name: invalid workflow name",
        ),
        (
            "version: 2 }",
            "version: 0 }",
            "steps[1] (test_each).workflow.version: versions count from 1",
        ),
        (
            "    workflow: coder\n",
            "    workflow: coder\n    heartbeat_timeout_ms: 1000\n",
            "steps[0] (code).heartbeat_timeout_ms: only agent steps",
        ),
        (
            "    workflow: coder\n",
            "    workflow: { name: coder, tag: x }\n",
            "steps[0] (code)",
        ),
    ];
    for (from, to, expected) in cases {
        assert!(CHILDREN.contains(from), "{from}");
        let text = parse(&CHILDREN.replacen(from, to, 1))
            .unwrap_err()
            .to_string();
        assert!(text.contains(expected), "{from} -> {to}:\n{text}");
    }
}

const ENTITIES: &str = r#"
name: guarded
version: 1
steps:
  - id: recall
    entity: { type: customer, id: "${{ input.customer }}", op: read, path: /requests }
  - id: change
    needs: [recall]
    lock:
      entities:
        - { type: repo, id: "${{ input.repo }}" }
      capacity: 2
      steps:
        - id: code
          agent: echo
          input: { previous: "${{ steps.recall.output }}" }
        - id: note
          needs: [code]
          entity: { type: customer, id: "${{ input.customer }}", op: append, path: /requests, value: "${{ steps.code.output }}", cap: 5, signal: true }
      output: "${{ steps.code.output }}"
output: "${{ steps.change.output }}"
"#;

#[test]
fn entity_and_lock_steps_parse_and_read_back_the_same() {
    let wf = parse(ENTITIES).unwrap();
    let again = legato_workflow::from_value(serde_json::to_value(&wf).unwrap()).unwrap();
    assert_eq!(again, wf);
    assert_eq!(wf.all_steps().len(), 4, "the lock's steps are steps");
    assert_eq!(wf.enclosing("note").unwrap().id.as_str(), "change");
}

#[test]
fn entity_and_lock_steps_are_checked_like_everything_else() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "op: read, path: /requests",
            "op: Teleport",
            "steps[0] (recall).entity.op: is required: one of set, merge, append, increment, compare_and_set, remove, read, or a custom operation of the entity's type",
        ),
        (
            "op: read, path: /requests",
            "op: summarize, path: /requests",
            "steps[0] (recall).entity.path: a custom operation takes only input",
        ),
        (
            "op: read, path: /requests",
            "op: acquire",
            "steps[0] (recall).entity.op: is required",
        ),
        (
            "op: read, path: /requests",
            "op: read, path: requests",
            "steps[0] (recall).entity.path: must be a JSON Pointer",
        ),
        (
            "op: read, path: /requests",
            "op: read, signal: true",
            "steps[0] (recall).entity.signal: a read is for its answer",
        ),
        (
            "op: read, path: /requests",
            "op: increment, value: 3",
            "steps[0] (recall).entity.value: increment takes only path, by, min, max",
        ),
        (
            "op: append, path: /requests, value",
            "op: append, path: /requests, valu",
            "steps[1] (change).lock.steps[1] (note).entity.value: is required by append",
        ),
        (
            "type: customer, id: \"${{ input.customer }}\", op: read",
            "type: Customer, id: \"${{ input.customer }}\", op: read",
            "steps[0] (recall).entity.type: invalid entity type",
        ),
        (
            "        - { type: repo, id: \"${{ input.repo }}\" }\n",
            "        - { type: repo }\n",
            "steps[1] (change).lock.entities[0].id: is required",
        ),
        (
            "      capacity: 2\n",
            "      capacity: 0\n",
            "steps[1] (change).lock.capacity: must be at least 1",
        ),
        (
            "          agent: echo\n",
            "          agent: echo\n          compensate: { agent: echo }\n",
            "steps[1] (change).lock.steps[0] (code).compensate: a step inside a loop, race or lock is not compensated on its own",
        ),
        (
            "      output: \"${{ steps.code.output }}\"",
            "      output: \"${{ steps.nowhere.output }}\"",
            "steps (change).lock.output: reads steps.nowhere, which is not a step",
        ),
        (
            "output: \"${{ steps.change.output }}\"",
            "output: \"${{ steps.code.output }}\"",
            "reads steps.code, which is inside lock change",
        ),
    ];
    for (from, to, expected) in cases {
        assert!(ENTITIES.contains(from), "{from}");
        let text = parse(&ENTITIES.replacen(from, to, 1))
            .unwrap_err()
            .to_string();
        assert!(text.contains(expected), "{from} -> {to}:\n{text}");
    }
}
