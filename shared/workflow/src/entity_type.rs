//! Entity types as registered (`docs/entities.md`): what a type's state
//! must look like, and the custom operations it has, each applied by a
//! workflow. A document is accepted only when all of it is valid;
//! otherwise every problem is listed with its path.

use std::collections::BTreeMap;
use std::sync::Arc;

use legato_contracts::{EntityType, WorkflowName, check_custom_name};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{InputError, ValidationError, ValidationErrors};

/// Most custom operations one type declares.
pub const MAX_CUSTOM_OPERATIONS: usize = 64;

/// A registered entity type.
#[derive(Debug, Clone, Serialize)]
pub struct EntityTypeDef {
    pub name: EntityType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The JSON Schema every state the entity takes must match (a `null`
    /// state, an entity that has none yet, is not checked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_schema: Option<Value>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub operations: BTreeMap<String, CustomOperationDef>,
    #[serde(skip)]
    validator: Option<Arc<jsonschema::Validator>>,
}

/// A custom operation: the workflow that applies it (its tenant's own by
/// that name, else the shared one, the latest version when it starts) and
/// what its input must look like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomOperationDef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub workflow: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
}

impl EntityTypeDef {
    /// Reads a type's document (`name`, `description`, `state_schema`,
    /// `operations`); `name`, when given, must be `expected` (the name it
    /// is registered under).
    pub fn parse(expected: &EntityType, doc: Value) -> Result<Self, ValidationErrors> {
        let Value::Object(mut doc) = doc else {
            return Err(ValidationErrors::one("", "must be an object"));
        };
        let mut problems = Vec::new();
        let mut problem = |path: &str, message: String| {
            problems.push(ValidationError {
                path: path.to_owned(),
                message,
            });
        };
        match doc.remove("name") {
            None => {}
            Some(Value::String(name)) if name == expected.as_str() => {}
            Some(other) => problem(
                "name",
                format!("is {other}, but the type is registered as {expected}"),
            ),
        }
        let description = match doc.remove("description") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => {
                problem("description", "must be a string".into());
                None
            }
        };
        let state_schema = doc.remove("state_schema").filter(|v| !v.is_null());
        let validator = match &state_schema {
            Some(schema) => match jsonschema::validator_for(schema) {
                Ok(validator) => Some(Arc::new(validator)),
                Err(e) => {
                    problem("state_schema", format!("not a valid JSON Schema: {e}"));
                    None
                }
            },
            None => None,
        };
        let mut operations = BTreeMap::new();
        match doc.remove("operations") {
            None | Some(Value::Null) => {}
            Some(Value::Object(declared)) => {
                if declared.len() > MAX_CUSTOM_OPERATIONS {
                    problem(
                        "operations",
                        format!("at most {MAX_CUSTOM_OPERATIONS} custom operations"),
                    );
                }
                for (name, spec) in declared {
                    let at = format!("operations.{name}");
                    if let Err(why) = check_custom_name(&name) {
                        problem(&at, why);
                        continue;
                    }
                    match serde_json::from_value::<CustomOperationDef>(spec) {
                        Ok(def) => {
                            if WorkflowName::scoped(None, def.workflow.as_str()).is_err() {
                                problem(
                                    &format!("{at}.workflow"),
                                    format!(
                                        "{:?} is not a workflow name: 1-64 characters of a-z 0-9 \
                                         - _, starting with a letter",
                                        def.workflow
                                    ),
                                );
                            }
                            if let Some(schema) = &def.input_schema
                                && let Err(e) = jsonschema::validator_for(schema)
                            {
                                problem(
                                    &format!("{at}.input_schema"),
                                    format!("not a valid JSON Schema: {e}"),
                                );
                            }
                            operations.insert(name, def);
                        }
                        Err(e) => problem(
                            &at,
                            format!("must be {{workflow, description?, input_schema?}}: {e}"),
                        ),
                    }
                }
            }
            Some(_) => problem(
                "operations",
                "must be an object: each custom operation by name".into(),
            ),
        }
        for field in doc.keys() {
            problem(
                field,
                "is not a field of an entity type (name, description, state_schema, operations)"
                    .into(),
            );
        }
        if !problems.is_empty() {
            return Err(ValidationErrors(problems));
        }
        Ok(Self {
            name: expected.clone(),
            description,
            state_schema,
            operations,
            validator,
        })
    }

    /// Reads a type's document from YAML or JSON text.
    pub fn parse_text(expected: &EntityType, text: &str) -> Result<Self, ValidationErrors> {
        let doc: Value = serde_yaml_ng::from_str(text)
            .map_err(|e| ValidationErrors::one("", format!("not a YAML or JSON document: {e}")))?;
        Self::parse(expected, doc)
    }

    /// Reads a type's file (YAML or JSON), whose `name` names the type.
    pub fn from_file_text(text: &str) -> Result<Self, ValidationErrors> {
        let doc: Value = serde_yaml_ng::from_str(text)
            .map_err(|e| ValidationErrors::one("", format!("not a YAML or JSON document: {e}")))?;
        let name = doc
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| ValidationErrors::one("name", "is required: the entity type's name"))?;
        let name =
            EntityType::parse(name).map_err(|e| ValidationErrors::one("name", e.to_string()))?;
        Self::parse(&name, doc)
    }

    /// The workflows its custom operations name, each with the path of
    /// the operation naming it (`operations.summarize.workflow`).
    pub fn workflows(&self) -> impl Iterator<Item = (String, &str)> {
        self.operations
            .iter()
            .map(|(name, def)| (format!("operations.{name}.workflow"), def.workflow.as_str()))
    }

    /// The document as registered, to store and show.
    pub fn to_document(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Why `state` may not be this type's state: each violation with its
    /// JSON Pointer.
    pub fn check_state(&self, state: &Value) -> Result<(), String> {
        let Some(validator) = &self.validator else {
            return Ok(());
        };
        if state.is_null() {
            return Ok(());
        }
        let errors: Vec<String> = validator
            .iter_errors(state)
            .take(5)
            .map(|e| {
                let at = e.instance_path().to_string();
                format!("{}: {e}", if at.is_empty() { "/" } else { &at })
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the state would not match {}'s state_schema: {}",
                self.name,
                errors.join("; ")
            ))
        }
    }

    /// The custom operation `name`, and whether `input` fits it.
    pub fn check_operation(
        &self,
        name: &str,
        input: &Value,
    ) -> Result<&CustomOperationDef, Vec<InputError>> {
        let Some(def) = self.operations.get(name) else {
            let known: Vec<&str> = self.operations.keys().map(String::as_str).collect();
            return Err(vec![InputError {
                pointer: "/op".into(),
                message: if known.is_empty() {
                    format!("entity type {} has no custom operations", self.name)
                } else {
                    format!(
                        "entity type {} has no operation {name}; its custom operations: {}",
                        self.name,
                        known.join(", ")
                    )
                },
            }]);
        };
        if let Some(schema) = &def.input_schema {
            crate::check_against(schema, input).map_err(|errors| {
                errors
                    .into_iter()
                    .map(|e| InputError {
                        pointer: format!("/input{}", e.pointer),
                        message: e.message,
                    })
                    .collect::<Vec<_>>()
            })?;
        }
        Ok(def)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn customer() -> EntityType {
        EntityType::parse("customer").unwrap()
    }

    #[test]
    fn a_type_checks_states_and_operations() {
        let def = EntityTypeDef::parse(
            &customer(),
            json!({
                "name": "customer",
                "state_schema": {"type": "object", "properties": {"visits": {"type": "integer", "maximum": 3}}},
                "operations": {
                    "summarize": {"workflow": "summarize-customer", "input_schema": {"type": "object", "required": ["words"]}}
                }
            }),
        )
        .unwrap();
        assert!(def.check_state(&json!({"visits": 2})).is_ok());
        assert!(def.check_state(&Value::Null).is_ok());
        let why = def.check_state(&json!({"visits": 4})).unwrap_err();
        assert!(why.contains("/visits"), "{why}");
        assert_eq!(
            def.check_operation("summarize", &json!({"words": 3}))
                .unwrap()
                .workflow,
            "summarize-customer"
        );
        let errors = def.check_operation("summarize", &json!({})).unwrap_err();
        assert_eq!(errors[0].pointer, "/input");
        let errors = def.check_operation("forget", &json!({})).unwrap_err();
        assert!(errors[0].message.contains("summarize"), "{errors:?}");
        let again = EntityTypeDef::parse(&customer(), def.to_document()).unwrap();
        assert_eq!(again.operations, def.operations);
    }

    #[test]
    fn every_problem_is_named_with_its_path() {
        let errors = EntityTypeDef::parse(
            &customer(),
            json!({
                "name": "client",
                "state_schema": {"type": 7},
                "operations": {"set": {"workflow": "x"}, "ok": {"workflow": "Bad Name"}, "odd": {"agent": "x"}},
                "colour": "blue"
            }),
        )
        .unwrap_err();
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "name",
                "state_schema",
                "operations.odd",
                "operations.ok.workflow",
                "operations.set",
                "colour"
            ]
        );
    }
}
