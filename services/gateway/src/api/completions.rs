//! `POST /api/v1/tasks/complete`: many results in one request. A busy
//! worker finishes tasks faster than one request per result can carry them;
//! its SDK sends what finished while the last batch was on its way, so a
//! quiet worker still reports each result at once. Each completion is
//! answered as `POST /api/v1/tasks/{token}/complete` would answer it.

use axum::Json;
use axum::extract::State;
use legato_service::auth::Caller;
use legato_service::problem::Problem;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::tasks::{MAX_TASKS_PER_POLL, reporter};
use crate::GatewayState;
use crate::attempts::{self, Completion, Token};
use crate::body::JsonBody;

/// One task's result.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CompletionItem {
    /// The task token from the poll.
    pub token: String,
    /// The task's result (any JSON; `null` when absent).
    #[serde(default)]
    pub output: Value,
    /// Replaces the instance's custom status.
    pub custom_status: Option<Value>,
    /// What the attempt spent.
    pub usage: Option<crate::dto::UsageView>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CompleteManyRequest {
    /// 1 to 64 results, of any of the caller's tasks.
    #[schema(min_items = 1, max_items = 64)]
    pub completions: Vec<CompletionItem>,
}

/// What became of one completion.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CompletionResult {
    /// `recorded`: sent to the instance; `recorded_before`: a repeat of a
    /// result already recorded; `refused`: see `problem` (an unknown task
    /// answers as `404`, one no longer wanted as `409`; neither is worth
    /// sending again).
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CompleteManyResponse {
    /// One per completion, in the order sent.
    pub results: Vec<CompletionResult>,
}

fn refused(problem: Problem) -> CompletionResult {
    CompletionResult {
        status: "refused".into(),
        problem: Some(problem),
    }
}

#[utoipa::path(
    post, path = "/api/v1/tasks/complete", tag = "tasks",
    request_body = CompleteManyRequest,
    responses(
        (status = 200, description = "Each completion answered in order: recorded, recorded before, or refused with why", body = CompleteManyResponse),
        (status = 400, description = "A malformed body, or not 1 to 64 completions", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn complete_many(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    JsonBody(mut request): JsonBody<CompleteManyRequest>,
) -> Result<Json<CompleteManyResponse>, Problem> {
    let count = request.completions.len();
    if !(1..=MAX_TASKS_PER_POLL).contains(&count) {
        return Err(Problem::field(
            "/completions",
            format!("must hold 1 to {MAX_TASKS_PER_POLL} completions"),
        ));
    }
    // What a completion spent is part of the body's shape: a bad figure
    // refuses the whole request, as a malformed body does.
    let mut spent = Vec::with_capacity(count);
    for (i, item) in request.completions.iter_mut().enumerate() {
        spent.push(super::tasks::reported_usage(
            &format!("/completions/{i}/usage"),
            item.usage.take(),
        )?);
    }
    // Answers by position: the refused ones now, the rest once recorded.
    let mut results: Vec<Option<CompletionResult>> = Vec::with_capacity(count);
    let mut accepted = Vec::with_capacity(count);
    for (item, usage) in request.completions.into_iter().zip(spent) {
        let token = match Token::decode(&item.token) {
            Ok(token) => token,
            Err(problem) => {
                results.push(Some(refused(problem)));
                continue;
            }
        };
        if let Err(problem) = reporter(&state, &caller, &token).await {
            results.push(Some(refused(problem)));
            continue;
        }
        results.push(None);
        accepted.push(Completion {
            token,
            output: item.output,
            custom_status: item.custom_status,
            usage,
        });
    }
    let mut recorded = attempts::complete_all(&state, accepted).await?.into_iter();
    let results = results
        .into_iter()
        .map(|result| {
            result.unwrap_or_else(|| match recorded.next() {
                Some(Ok(reported)) => CompletionResult {
                    status: reported.as_str().into(),
                    problem: None,
                },
                Some(Err(problem)) => refused(problem),
                None => refused(Problem::not_found("no such task")),
            })
        })
        .collect();
    Ok(Json(CompleteManyResponse { results }))
}
