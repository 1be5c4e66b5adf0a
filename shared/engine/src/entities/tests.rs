use super::*;

fn op(value: Value) -> Operation {
    serde_json::from_value(value).unwrap()
}

fn run(state: Value, operation: Value) -> Result<(Value, Value), String> {
    apply(&state, &op(operation))
}

#[test]
fn set_and_merge_make_their_path() {
    let (state, answer) = run(
        Value::Null,
        json!({"op": "set", "path": "/a/b", "value": 1}),
    )
    .unwrap();
    assert_eq!(
        (state.clone(), answer),
        (json!({"a": {"b": 1}}), Value::Null)
    );
    let (state, _) = run(
        state,
        json!({"op": "merge", "value": {"a": {"c": 2, "b": null}, "d": [1]}}),
    )
    .unwrap();
    assert_eq!(state, json!({"a": {"c": 2}, "d": [1]}));
    let (state, _) = run(state, json!({"op": "set", "path": "/d/0", "value": "x"})).unwrap();
    assert_eq!(state["d"], json!(["x"]));
    let err = run(state, json!({"op": "set", "path": "/d/3", "value": 1})).unwrap_err();
    assert!(err.contains("/d/3"), "{err}");
    let err = run(
        json!({"a": 1}),
        json!({"op": "set", "path": "/a/b", "value": 1}),
    )
    .unwrap_err();
    assert_eq!(err, "path /a/b: /a holds a number, which has no members");
    let err = run(Value::Null, json!({"op": "set", "path": "a", "value": 1})).unwrap_err();
    assert!(err.contains("must start with /"), "{err}");
}

#[test]
fn pointers_unescape_tilde_and_slash() {
    let (state, _) = run(
        Value::Null,
        json!({"op": "set", "path": "/a~1b/c~0d", "value": true}),
    )
    .unwrap();
    assert_eq!(state, json!({"a/b": {"c~d": true}}));
    let (state, _) = run(state, json!({"op": "remove", "path": "/a~1b/c~0d"})).unwrap();
    assert_eq!(state, json!({"a/b": {}}));
}

#[test]
fn append_keeps_the_last_cap_items() {
    let mut state = Value::Null;
    for n in 1..=5 {
        let (next, answer) = run(
            state,
            json!({"op": "append", "path": "/requests", "value": n, "cap": 3}),
        )
        .unwrap();
        assert_eq!(answer, json!(n.min(3)));
        state = next;
    }
    assert_eq!(state, json!({"requests": [3, 4, 5]}));
    let err = run(json!("x"), json!({"op": "append", "value": 1})).unwrap_err();
    assert_eq!(err, "append: the state holds a string, not an array");
}

#[test]
fn increment_stays_within_its_bounds_and_fails_without_change() {
    let (state, answer) = run(Value::Null, json!({"op": "increment"})).unwrap();
    assert_eq!((state.clone(), answer), (json!(1), json!(1)));
    let (state, answer) = run(state, json!({"op": "increment", "by": 4, "max": 5})).unwrap();
    assert_eq!((state.clone(), answer), (json!(5), json!(5)));
    let err = run(state.clone(), json!({"op": "increment", "max": 5})).unwrap_err();
    assert_eq!(err, "increment: 5 + 1 would pass the maximum 5");
    let err = run(
        state.clone(),
        json!({"op": "increment", "by": -6, "min": 0}),
    )
    .unwrap_err();
    assert_eq!(err, "increment: 5 + -6 would go below the minimum 0");
    let (state, answer) = run(state, json!({"op": "increment", "by": 0.25})).unwrap();
    assert_eq!((state, answer), (json!(5.25), json!(5.25)));
    let err = run(json!(i64::MAX), json!({"op": "increment"})).unwrap_err();
    assert!(err.contains("out of range"), "{err}");
    let err = run(json!({"n": "1"}), json!({"op": "increment", "path": "/n"})).unwrap_err();
    assert_eq!(err, "increment: /n holds a string, not a number");
}

#[test]
fn compare_and_set_swaps_only_on_a_match() {
    let cas = |expected: Value| json!({"op": "compare_and_set", "path": "/owner", "expected": expected, "value": "b"});
    let (state, answer) = run(json!({"owner": "a"}), cas(json!("x"))).unwrap();
    assert_eq!(answer, json!({"swapped": false, "current": "a"}));
    let (state, answer) = run(state, cas(json!("a"))).unwrap();
    assert_eq!(answer, json!({"swapped": true, "current": "b"}));
    assert_eq!(state, json!({"owner": "b"}));
    let (_, answer) = run(Value::Null, cas(Value::Null)).unwrap();
    assert_eq!(answer, json!({"swapped": true, "current": "b"}));
    let (state, _) = run(
        json!({}),
        json!({"op": "compare_and_set", "path": "/x/y", "expected": 1, "value": 2}),
    )
    .unwrap();
    assert_eq!(state, json!({}), "a miss walks through nothing");
}

#[test]
fn remove_takes_a_member_an_item_or_everything() {
    let state = json!({"a": [1, 2, 3], "b": 1});
    let (state, _) = run(state, json!({"op": "remove", "path": "/a/1"})).unwrap();
    assert_eq!(state, json!({"a": [1, 3], "b": 1}));
    let (state, _) = run(state, json!({"op": "remove", "path": "/nothing/here"})).unwrap();
    assert_eq!(state, json!({"a": [1, 3], "b": 1}));
    let (state, _) = run(state, json!({"op": "remove"})).unwrap();
    assert_eq!(state, Value::Null);
}

#[test]
fn read_answers_the_value_at_its_path_or_null() {
    let state = json!({"a": {"b": [1, 2]}});
    assert_eq!(
        run(state.clone(), json!({"op": "read", "path": "/a/b/1"}))
            .unwrap()
            .1,
        json!(2)
    );
    assert_eq!(
        run(state.clone(), json!({"op": "read", "path": "/x"}))
            .unwrap()
            .1,
        Value::Null
    );
    assert_eq!(
        run(state.clone(), json!({"op": "read"})).unwrap(),
        (state.clone(), state)
    );
}

fn holder(n: u32) -> Holder {
    Holder {
        instance: legato_contracts::InstanceId::parse(format!("i-{n}")).unwrap(),
        key: legato_contracts::TaskKey {
            run: 1,
            execution: 0,
            step: legato_contracts::StepId::parse("edit").unwrap(),
            item: Some(0),
            iteration: None,
            role: legato_contracts::TaskRole::Action,
        },
    }
}

fn caller(n: u32, attempt: u32) -> Caller {
    let h = holder(n);
    Caller {
        instance: h.instance,
        key: h.key,
        attempt,
        signal: false,
    }
}

fn acquire(lock: &LockState, n: u32, capacity: u32, attempt: u32) -> Applied {
    let op = Operation::Acquire {
        holder: holder(n),
        capacity,
    };
    apply_op(&json!({"kept": true}), lock, &op, Some(&caller(n, attempt)))
}

fn release(lock: &LockState, n: u32) -> Applied {
    apply_op(
        &json!({"kept": true}),
        lock,
        &Operation::Release { holder: holder(n) },
        None,
    )
}

#[test]
fn a_lock_is_held_by_one_and_handed_on_in_turn() {
    let first = acquire(&LockState::default(), 1, 1, 1);
    assert_eq!(first.reply, Reply::Now(Ok(granted())));
    assert_eq!(
        first.state,
        json!({"kept": true}),
        "locking leaves the state alone"
    );
    let second = acquire(&first.lock, 2, 1, 1);
    assert_eq!(second.reply, Reply::Later);
    let third = acquire(&second.lock, 3, 1, 1);
    // A retried attempt of a waiter keeps its place, told on its new attempt.
    let again = acquire(&third.lock, 2, 1, 2);
    assert_eq!(again.reply, Reply::Later);
    assert_eq!(again.lock.waiting.len(), 2);
    // The holder asking again holds it still.
    assert_eq!(
        acquire(&again.lock, 1, 1, 3).reply,
        Reply::Now(Ok(granted()))
    );
    let handed = release(&again.lock, 1);
    assert_eq!(handed.granted, vec![caller(2, 2)]);
    assert_eq!(handed.lock.holders, vec![holder(2)]);
    // A waiter that gives up leaves the line; the last release frees it.
    let gave_up = release(&handed.lock, 3);
    assert!(gave_up.granted.is_empty());
    assert!(release(&gave_up.lock, 2).lock.is_free());
    assert!(
        release(&LockState::default(), 9).lock.is_free(),
        "releasing nothing is fine"
    );
}

#[test]
fn a_semaphore_lets_in_up_to_its_capacity() {
    let mut lock = LockState::default();
    for n in 1..=3 {
        let applied = acquire(&lock, n, 3, 1);
        assert_eq!(applied.reply, Reply::Now(Ok(granted())), "{n}");
        lock = applied.lock;
    }
    let fourth = acquire(&lock, 4, 3, 1);
    assert_eq!(fourth.reply, Reply::Later);
    let fifth = acquire(&fourth.lock, 5, 3, 1);
    let freed = release(&fifth.lock, 2);
    assert_eq!(
        freed.granted,
        vec![caller(4, 1)],
        "first come, first served"
    );
    assert_eq!(freed.lock.holders.len(), 3);
}

#[test]
fn a_state_past_its_limit_is_refused() {
    let big = "x".repeat(MAX_ENTITY_STATE_BYTES);
    let err = run(Value::Null, json!({"op": "set", "value": big})).unwrap_err();
    assert!(err.starts_with("set would make the state"), "{err}");
}
