//! One push: a task POSTed to its agent's endpoint, and the answer taken
//! as its outcome.
//!
//! The request is a CloudEvent in binary mode (`ce-*` headers, the task as
//! the JSON body), signed per Standard Webhooks (`webhook-id`: the
//! attempt's idempotency key, the same on every retry of the attempt;
//! `webhook-timestamp`; `webhook-signature`), with the agent's auth header
//! or a managed-identity token. The answer:
//! - `2xx` (but `202`) with JSON: the task's output (no body: `null`);
//! - `202` with `Location`: asynchronous request-reply: the status URL is
//!   polled (honouring `Retry-After`) until it answers `200` with the
//!   result, or `303`/`302` to where the result is;
//! - `202` without `Location`: the endpoint completes the task later
//!   through the task's `callbackUrl` (or heartbeats it there) within the
//!   lease;
//! - `4xx` but `408`/`429`: the step fails for good, with the body as the
//!   message;
//! - `408`, `429`, `5xx`, no answer in time: sent again after `Retry-After`
//!   (or a backoff), a few times within the attempt, then the attempt fails
//!   as retryable and the step's retry policy decides.
//!
//! While it waits, the attempt's lease is renewed; a lease the orchestrator
//! no longer wants (the instance was terminated, the step timed out) ends
//! the wait.

use std::time::Duration;

use azure_core::auth::TokenCredential;
use legato_contracts::Usage;
use reqwest::{Method, Response, StatusCode, header};
use serde_json::{Value, json};
use time::OffsetDateTime;
use url::Url;

use super::Pusher;
use crate::attempts::{self, Taken, Token};
use crate::registry::{Agent, PushTarget};

/// Sends of one attempt's request before the attempt is failed as
/// retryable (the step's retry policy then decides).
const SENDS: u32 = 3;
/// Longest wait between two polls of a status URL, whatever it asks.
const MAX_POLL_WAIT: Duration = Duration::from_secs(30);
/// How much of a failure body becomes the step's error.
const MAX_MESSAGE_CHARS: usize = 4_096;

/// How one send went.
enum Sent {
    /// The task's output.
    Output(Value),
    /// Poll this status URL.
    Accepted(Url, Duration),
    /// The endpoint calls back.
    CallingBack,
    /// The step fails for good.
    Refused(String),
    /// Worth sending again after this long.
    Retry(String, Duration),
}

pub(super) async fn deliver(pusher: &Pusher, agent: &Agent, target: &PushTarget, taken: Taken) {
    let token = taken.token.clone();
    let mut spent = Usage::default();
    let outcome = tokio::select! {
        outcome = send_until_answered(pusher, agent, target, &taken, &mut spent) => Ok(outcome),
        gone = keep_lease(pusher, &token, taken.lease_ms) => Err(gone),
    };
    let usage = (!spent.is_empty()).then_some(spent);
    let reported = match outcome {
        Ok(Some(Ok(output))) => attempts::complete(&pusher.state, &token, output, None, usage)
            .await
            .map(drop),
        Ok(Some(Err((message, retryable)))) => {
            attempts::fail(&pusher.state, &token, message, retryable, usage)
                .await
                .map(drop)
        }
        // The endpoint calls back.
        Ok(None) => Ok(()),
        Err(gone) => {
            tracing::info!(agent = %agent.name, key = %token.key, "push abandoned: {gone}");
            let attempt = token.idempotency_key();
            pusher.state.figures.dropped(agent.name.as_str(), &attempt);
            Ok(())
        }
    };
    if let Err(problem) = reported {
        // Not recorded: the lease runs out and the attempt is retried.
        tracing::warn!(agent = %agent.name, key = %token.key, "push outcome not recorded: {}", problem.detail);
    }
}

/// Renews the lease a third of the way through it until the attempt is no
/// longer wanted; returns why.
async fn keep_lease(pusher: &Pusher, token: &Token, lease_ms: u64) -> String {
    let every = Duration::from_millis((lease_ms / 3).max(200));
    loop {
        tokio::time::sleep(every).await;
        if let Err(problem) = attempts::heartbeat(&pusher.state, token, lease_ms, None, None).await
            && matches!(problem.status, 404 | 409)
        {
            return problem.detail;
        }
    }
}

type Outcome = Result<Value, (String, bool)>;

/// Sends the task until the endpoint answers for good; `None` when it
/// calls back instead.
async fn send_until_answered(
    pusher: &Pusher,
    agent: &Agent,
    target: &PushTarget,
    taken: &Taken,
    spent: &mut Usage,
) -> Option<Outcome> {
    let mut body = body(pusher, taken, &taken.journal);
    let mut last = String::new();
    for send in 1..=SENDS {
        if send > 1 {
            // The endpoint may have recorded steps before it failed: the
            // next send carries them, so they are not done again.
            match attempts::journal::read(&pusher.state, &taken.token.instance, &taken.task.key)
                .await
            {
                Ok(journal) => body = self::body(pusher, taken, &journal),
                Err(problem) => {
                    last = format!("its journal could not be read: {}", problem.detail);
                    continue;
                }
            }
        }
        match post(pusher, agent, target, taken, &body, spent).await {
            Sent::Output(output) => return Some(Ok(output)),
            Sent::Refused(message) => return Some(Err((message, false))),
            Sent::CallingBack => return None,
            Sent::Accepted(status_url, wait) => {
                return Some(poll_status(pusher, target, status_url, wait, spent).await);
            }
            Sent::Retry(why, wait) => {
                last = why;
                if send < SENDS {
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
    Some(Err((
        format!("push agent {}: {last} (after {SENDS} sends)", agent.name),
        true,
    )))
}

/// The task as the endpoint gets it: what a pull worker gets, and where to
/// call back.
fn body(pusher: &Pusher, taken: &Taken, journal: &serde_json::Map<String, Value>) -> Vec<u8> {
    let mut view = crate::api::pulled(taken);
    view.journal = journal.clone();
    let mut body = serde_json::to_value(view).unwrap_or_else(|_| json!({}));
    let encoded = taken.token.encode();
    let signature = pusher.signer.callback_signature(&encoded);
    body["callbackUrl"] = json!(format!(
        "{}/api/v1/callbacks/{encoded}.{signature}",
        pusher.base_url
    ));
    serde_json::to_vec(&body).unwrap_or_default()
}

async fn post(
    pusher: &Pusher,
    agent: &Agent,
    target: &PushTarget,
    taken: &Taken,
    body: &[u8],
    spent: &mut Usage,
) -> Sent {
    let id = taken.token.idempotency_key();
    let timestamp = OffsetDateTime::now_utc().unix_timestamp();
    let mut request = pusher
        .http
        .request(Method::POST, &target.url)
        .timeout(Duration::from_millis(
            pusher.state.settings.push.timeout_ms.max(1),
        ))
        .header(header::CONTENT_TYPE, "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", &id)
        .header("ce-source", "/legato/gateway")
        .header("ce-type", "legato.task.dispatched.v1")
        .header("ce-subject", taken.token.instance.local())
        .header("ce-time", crate::dto::rfc3339(OffsetDateTime::now_utc()))
        .header("idempotency-key", &id)
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            pusher.signer.webhook_signature(&id, timestamp, body),
        )
        .body(body.to_vec());
    match authorization(pusher, target).await {
        Ok(Some((name, value))) => request = request.header(name, value),
        Ok(None) => {}
        Err(why) => return Sent::Retry(why, Duration::from_secs(1)),
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => {
            return Sent::Retry(
                format!("no answer from {}: {e}", target.url),
                Duration::from_secs(1),
            );
        }
    };
    count_spent(&response, spent);
    answer(pusher, agent, target, response).await
}

/// The header in which an endpoint's answers (the task's, a status URL's)
/// say what they spent: the usage JSON of the pull protocol's results.
pub(crate) const USAGE_HEADER: &str = "legato-usage";

/// Adds what an answer says it spent; an unreadable figure is logged and
/// left out, never fails the task.
fn count_spent(response: &Response, spent: &mut Usage) {
    let Some(value) = response.headers().get(USAGE_HEADER) else {
        return;
    };
    let read = value
        .to_str()
        .map_err(|e| e.to_string())
        .and_then(|text| {
            serde_json::from_str::<crate::dto::UsageView>(text).map_err(|e| e.to_string())
        })
        .map(Usage::from)
        .and_then(|usage| usage.check().map(|()| usage));
    match read {
        Ok(usage) => spent.merge(&usage),
        Err(why) => tracing::warn!("a push answer's {USAGE_HEADER} is left out: {why}"),
    }
}

/// The auth header a target asks for.
async fn authorization(
    pusher: &Pusher,
    target: &PushTarget,
) -> Result<Option<(String, String)>, String> {
    let Some(auth) = &target.auth else {
        return Ok(None);
    };
    if let (Some(header), Some(secret)) = (&auth.header, &auth.secret) {
        let value = pusher
            .state
            .settings
            .push
            .secrets
            .get(secret)
            .ok_or_else(|| format!("no secret {secret} in gateway.push.secrets"))?;
        return Ok(Some((header.clone(), value.clone())));
    }
    if let Some(audience) = &auth.audience {
        let identity = pusher
            .identity
            .as_ref()
            .ok_or("no managed identity to ask a token of (IDENTITY_ENDPOINT is not set)")?;
        let scope = format!("{}/.default", audience.trim_end_matches('/'));
        let token = identity
            .get_token(&[&scope])
            .await
            .map_err(|e| format!("no token for {audience}: {e}"))?;
        return Ok(Some((
            header::AUTHORIZATION.to_string(),
            format!("Bearer {}", token.token.secret()),
        )));
    }
    Ok(None)
}

/// How long an answer asks to wait (`Retry-After` in seconds), or `dflt`.
fn retry_after(response: &Response, dflt: Duration) -> Duration {
    response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(dflt, Duration::from_secs)
        .min(MAX_POLL_WAIT)
}

async fn text_of(response: Response) -> String {
    let text = response.text().await.unwrap_or_default();
    text.chars().take(MAX_MESSAGE_CHARS).collect()
}

async fn answer(pusher: &Pusher, agent: &Agent, target: &PushTarget, response: Response) -> Sent {
    let status = response.status();
    if status == StatusCode::ACCEPTED {
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let wait = retry_after(&response, Duration::from_secs(1));
        return match location {
            None => Sent::CallingBack,
            Some(location) => match status_url(pusher, target, &location) {
                Ok(url) => Sent::Accepted(url, wait),
                Err(why) => Sent::Refused(format!("push agent {}: {why}", agent.name)),
            },
        };
    }
    if status.is_success() {
        return match output_of(response).await {
            Ok(output) => Sent::Output(output),
            Err(why) => Sent::Refused(format!("push agent {}: {why}", agent.name)),
        };
    }
    let retryable = matches!(status.as_u16(), 408 | 429) || status.is_server_error();
    let wait = retry_after(&response, Duration::from_secs(1));
    let body = text_of(response).await;
    if retryable {
        Sent::Retry(format!("answered {status}: {body}"), wait)
    } else {
        Sent::Refused(if body.is_empty() {
            format!("push agent {} answered {status}", agent.name)
        } else {
            body
        })
    }
}

async fn output_of(response: Response) -> Result<Value, String> {
    let bytes = response
        .bytes()
        .await
        .map_err(|e| format!("the answer's body was cut off: {e}"))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("the answer is not JSON: {e}"))
}

/// A `Location` (absolute, or relative to the agent's URL) held to the same
/// rules as the agent's URL.
fn status_url(pusher: &Pusher, target: &PushTarget, location: &str) -> Result<Url, String> {
    let base = Url::parse(&target.url).map_err(|e| e.to_string())?;
    let url = base
        .join(location)
        .map_err(|e| format!("Location {location:?}: {e}"))?;
    super::guard::check_url(url.as_str(), &pusher.state.settings.push)
        .map_err(|why| format!("Location {url}: {why}"))
}

/// Asynchronous request-reply: polls the status URL until the result.
async fn poll_status(
    pusher: &Pusher,
    target: &PushTarget,
    mut url: Url,
    mut wait: Duration,
    spent: &mut Usage,
) -> Outcome {
    let mut failures = 0;
    loop {
        tokio::time::sleep(wait).await;
        let mut request = pusher.http.get(url.clone()).timeout(Duration::from_millis(
            pusher.state.settings.push.timeout_ms.max(1),
        ));
        if let Ok(Some((name, value))) = authorization(pusher, target).await {
            request = request.header(name, value);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                failures += 1;
                if failures >= SENDS {
                    return Err((format!("the status URL {url} did not answer: {e}"), true));
                }
                wait = Duration::from_secs(1);
                continue;
            }
        };
        let status = response.status();
        wait = retry_after(&response, Duration::from_secs(1));
        count_spent(&response, spent);
        match status.as_u16() {
            200 => return output_of(response).await.map_err(|why| (why, false)),
            202 => failures = 0,
            302 | 303 => {
                let location = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                url = status_url(pusher, target, &location).map_err(|why| (why, false))?;
                wait = Duration::ZERO;
            }
            408 | 429 | 500..=599 => {
                failures += 1;
                if failures >= SENDS {
                    let body = text_of(response).await;
                    return Err((format!("the status URL answered {status}: {body}"), true));
                }
            }
            _ => return Err((text_of(response).await, false)),
        }
    }
}
