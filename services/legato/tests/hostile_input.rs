//! Whatever arrives, nothing panics: arbitrary bytes and arbitrary JSON
//! fed to the definition parser, the expression compiler and evaluator,
//! the bus message decoder and the SignalR hub protocol parser, tens of
//! thousands of cases in all. Each refusal must be an error value.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use legato_contracts::Envelope;
use legato_signalr::protocol::{Message, records};
use legato_workflow::{Expr, Scope, Template, Variables};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Arbitrary JSON, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        "\\$\\{\\{.{0,30}\\}\\}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Text shaped like the inputs each parser expects, with noise.
fn expression() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,60}",
        "[a-z_.\\[\\]0-9 +*/%<>=!&|()\"'-]{0,60}",
        "(input|steps|item)(\\.[a-z]{1,6}){0,3}( [+*<=-] [0-9a-z.]{1,8}){0,3}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    #[test]
    fn the_message_decoder_refuses_any_bytes_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::decode(&bytes);
    }

    #[test]
    fn the_message_decoder_refuses_any_json_without_panicking(value in json_value(), data in json_value()) {
        let _ = Envelope::decode(value.to_string().as_bytes());
        // A well-formed envelope around arbitrary data, of every known type.
        for kind in legato_contracts::Payload::TYPES {
            let envelope = json!({"specversion": "1.0", "id": "x", "source": "/fuzz",
                "type": kind, "subject": "i-1", "time": "2026-11-30T00:00:00Z",
                "datacontenttype": "application/json", "data": data});
            let _ = Envelope::decode(envelope.to_string().as_bytes());
        }
    }

    #[test]
    fn the_hub_protocol_parser_refuses_any_frame_without_panicking(frame in ".{0,200}", value in json_value()) {
        if let Ok(parts) = records(&frame) {
            for record in parts {
                let _ = Message::parse(record);
            }
        }
        let _ = Message::parse(&value.to_string());
        let _ = records(&format!("{value}\u{1e}{frame}\u{1e}"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3_000, ..ProptestConfig::default() })]

    #[test]
    fn the_definition_parser_refuses_any_text_without_panicking(text in ".{0,300}") {
        let _ = legato_workflow::parse(&text);
    }

    #[test]
    fn the_definition_parser_refuses_any_json_without_panicking(value in json_value(), steps in prop::collection::vec(json_value(), 0..4)) {
        let _ = legato_workflow::from_value(value.clone());
        // A definition's shape with arbitrary parts.
        let shaped = json!({"name": "fuzz", "version": 1, "steps": steps, "output": value});
        let _ = legato_workflow::from_value(shaped);
    }

    #[test]
    fn expressions_compile_and_evaluate_without_panicking(source in expression(), input in json_value(), step in json_value()) {
        let mut steps = Map::new();
        steps.insert("a".into(), json!({"output": step, "status": "Completed"}));
        for vars in [Variables::Instance, Variables::ForEachItem] {
            if let Ok(expr) = Expr::parse_wrapped(&format!("${{{{ {source} }}}}"), vars)
                && let Ok(scope) = Scope::new(&input, steps.clone())
            {
                let _ = expr.evaluate(&scope);
                let _ = expr.evaluate_bool(&scope);
                let _ = expr.evaluate_list(&scope);
                if let Ok(with_item) = scope.with_item(&input) {
                    let _ = expr.evaluate(&with_item);
                }
            }
        }
        let text = json!({"x": format!("a ${{{{ {source} }}}} b"), "y": input.clone()});
        if let Ok(template) = Template::parse(text, Variables::Instance)
            && let Ok(scope) = Scope::new(&input, steps)
        {
            let _ = template.render(&scope);
        }
    }
}
