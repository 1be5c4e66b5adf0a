//! What a model writes inside a task, relayed to the instance's watchers
//! as it comes (`legato.agent.output.v1` on the progress topic, never
//! recorded). Pieces that arrive while one publish is out go together in
//! the next, so a fast model costs a publish per broker round trip, not
//! one per token, and the first piece waits for nothing.

use legato_contracts::{AgentOutput, Envelope};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::TaskContext;

/// One output of an attempt (a model reply, a tool's log) on its way to
/// the instance's watchers: [`Output::push`] its text as it comes, then
/// [`Output::finish`]. See [`TaskContext::output`].
pub struct Output {
    pieces: mpsc::UnboundedSender<String>,
    sending: JoinHandle<()>,
}

impl Output {
    /// Relays the output of `call` (its journal entry name).
    pub(crate) fn start(ctx: &TaskContext, call: String) -> Self {
        let (pieces, received) = mpsc::unbounded_channel();
        let sending = tokio::spawn(send_all(ctx.clone(), call, received));
        Self { pieces, sending }
    }

    /// Sends `text` on (with whatever else comes before the next publish).
    pub fn push(&self, text: &str) {
        if !text.is_empty() {
            let _sender_gone_is_fine = self.pieces.send(text.to_owned());
        }
    }

    /// Returns once every piece pushed is out (or could not be sent), so
    /// watchers see the pieces before the step that wrote them completes.
    pub async fn finish(self) {
        drop(self.pieces);
        let _a_panic_was_logged = self.sending.await;
    }
}

async fn send_all(ctx: TaskContext, call: String, mut received: mpsc::UnboundedReceiver<String>) {
    let mut seq = 0;
    let mut carried: Option<String> = None;
    loop {
        let first = match carried.take() {
            Some(text) => text,
            None => match received.recv().await {
                Some(text) => text,
                None => return,
            },
        };
        let mut text = first;
        while let Ok(more) = received.try_recv() {
            if text.len() + more.len() > AgentOutput::MAX_TEXT_BYTES {
                carried = Some(more);
                break;
            }
            text.push_str(&more);
        }
        for part in within_limit(text) {
            seq += 1;
            publish(&ctx, &call, seq, part).await;
        }
    }
}

/// `text` in parts of at most [`AgentOutput::MAX_TEXT_BYTES`], cut
/// between characters.
fn within_limit(mut text: String) -> Vec<String> {
    let mut parts = Vec::new();
    while text.len() > AgentOutput::MAX_TEXT_BYTES {
        let mut cut = AgentOutput::MAX_TEXT_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let rest = text.split_off(cut);
        parts.push(text);
        text = rest;
    }
    parts.push(text);
    parts
}

async fn publish(ctx: &TaskContext, call: &str, seq: u64, text: String) {
    let piece = AgentOutput {
        key: ctx.key.clone(),
        attempt: ctx.attempt,
        call: call.to_owned(),
        seq,
        text,
    };
    let envelope = Envelope::new(
        ctx.source.clone(),
        ctx.instance.clone(),
        OffsetDateTime::now_utc(),
        piece,
    )
    .with_traceparent(ctx.traceparent.clone());
    // Watchers miss a piece; the whole reply is recorded all the same.
    if let Err(e) = ctx.bus.publish_envelope(&envelope).await {
        tracing::debug!(instance = %ctx.instance, key = %ctx.key, call, seq, "a piece of output not relayed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_between_characters_within_the_limit() {
        let text = "é".repeat(AgentOutput::MAX_TEXT_BYTES);
        let parts = within_limit(text.clone());
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.len() <= AgentOutput::MAX_TEXT_BYTES));
        assert_eq!(parts.concat(), text);
        assert_eq!(within_limit("short".into()), ["short"]);
    }
}
