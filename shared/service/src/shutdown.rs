//! Graceful shutdown as a value: one token, cloned into every loop. When it
//! fires, consumers stop taking messages, finish (or leave unacked) what they
//! hold, and return.

use tokio_util::sync::CancellationToken;

#[derive(Clone, Default, Debug)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn trigger(&self) {
        self.0.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Completes once shutdown has been triggered.
    pub async fn wait(&self) {
        self.0.cancelled().await;
    }

    /// A child that also fires on its own (e.g. one task's cancellation).
    pub fn child(&self) -> Self {
        Self(self.0.child_token())
    }

    /// Triggers this shutdown on SIGTERM or Ctrl-C.
    pub fn on_signals(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received: draining");
            me.trigger();
        });
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM ({e}); Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Waits for every task of a service to end; the first error wins and
/// (when a shutdown is given) stops the others, so one failed loop never
/// leaves a half-working process behind.
pub async fn join_all(
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
    what: &str,
    stop_on_error: Option<&Shutdown>,
) -> anyhow::Result<()> {
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(e) = result {
            tracing::error!("{what} stopped: {e:#}");
            first_error.get_or_insert(e);
            if let Some(shutdown) = stop_on_error {
                shutdown.trigger();
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}
