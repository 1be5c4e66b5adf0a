//! Agent inputs are typed: a task whose input does not fit fails at once
//! (not retryable), naming the problem.

use legato_contracts::TaskError;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub(crate) fn parse<T: DeserializeOwned>(agent: &str, input: &Value) -> Result<T, TaskError> {
    T::deserialize(input).map_err(|e| fatal(format!("{agent}: invalid input: {e}")))
}

pub(crate) fn fatal(message: impl Into<String>) -> TaskError {
    TaskError {
        message: message.into(),
        retryable: false,
    }
}

pub(crate) fn retryable(message: impl Into<String>) -> TaskError {
    TaskError {
        message: message.into(),
        retryable: true,
    }
}
