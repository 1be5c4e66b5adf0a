//! Pieces of what a model writes inside a task of an agent outside the
//! binary, relayed to the instance's watchers as they come. Nothing is
//! read or kept: a piece costs one publish, and a watcher who comes later
//! reads the whole reply from the task's journal or result.

use legato_contracts::AgentOutput;
use legato_contracts::journal;
use legato_service::problem::Problem;

use super::{Token, publish};
use crate::GatewayState;

/// Sends piece `seq` of output `call` of the attempt `token` names.
pub(crate) async fn relay(
    state: &GatewayState,
    token: &Token,
    call: String,
    seq: u64,
    text: String,
) -> Result<(), Problem> {
    journal::check_name(&call).map_err(|why| Problem::field("/call", why))?;
    if seq == 0 {
        return Err(Problem::field("/seq", "must be at least 1"));
    }
    if text.len() > AgentOutput::MAX_TEXT_BYTES {
        return Err(Problem::field(
            "/text",
            format!(
                "must be at most {} bytes; send a longer text as several pieces",
                AgentOutput::MAX_TEXT_BYTES
            ),
        ));
    }
    let piece = AgentOutput {
        key: token.key.clone(),
        attempt: token.attempt,
        call,
        seq,
        text,
    };
    publish(state, &token.instance, None, piece.into()).await
}
