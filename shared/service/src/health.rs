//! `/healthz` says the process is alive; `/readyz` says it should be sent
//! work: its loops are running, it is not draining, and its store would
//! take a write.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::serve::ListenerExt;
use legato_store::Store;

use crate::Shutdown;

#[derive(Clone)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    store: Option<Arc<dyn Store>>,
}

impl Readiness {
    pub fn new(store: Option<Arc<dyn Store>>) -> Self {
        Self {
            ready: Arc::new(AtomicBool::new(false)),
            store,
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub async fn check(&self) -> Result<(), String> {
        if !self.ready.load(Ordering::Acquire) {
            return Err("not ready: starting or draining".into());
        }
        if let Some(store) = &self.store {
            store.ping().await.map_err(|e| format!("store: {e}"))?;
        }
        Ok(())
    }
}

pub fn health_router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(readiness)
}

/// Serves `app` with `/healthz` and `/readyz` until shutdown; readiness
/// drops as soon as draining starts, so a load balancer stops sending work
/// while in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    readiness: Readiness,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let app = app.merge(health_router(readiness.clone()));
    // Progress streams write small frames the client waits for: Nagle's
    // algorithm would hold each one back until the previous is acked
    // (tens of milliseconds against a delayed ACK).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY not set: {e}");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.wait().await;
            readiness.set_ready(false);
        })
        .await?;
    Ok(())
}

async fn readyz(State(readiness): State<Readiness>) -> (StatusCode, String) {
    match readiness.check().await {
        Ok(()) => (StatusCode::OK, "ready".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// Binds a service's HTTP port and says where, on stdout (scripts and
/// tests read the line to find a port chosen with `port = 0`).
pub async fn listen(
    service: &str,
    http: &crate::HttpSettings,
) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(http.addr()?).await?;
    let addr = listener.local_addr()?;
    println!("{service}: listening on http://{addr}");
    std::io::Write::flush(&mut std::io::stdout())?;
    Ok(listener)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn status(router: Router, path: &str) -> StatusCode {
        router
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap()
            .status()
    }

    #[tokio::test]
    async fn ready_only_between_start_and_drain() {
        let store: Arc<dyn Store> = Arc::new(legato_store::SqliteStore::in_memory().unwrap());
        let readiness = Readiness::new(Some(store));
        let router = health_router(readiness.clone());
        assert_eq!(status(router.clone(), "/healthz").await, StatusCode::OK);
        assert_eq!(
            status(router.clone(), "/readyz").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        readiness.set_ready(true);
        assert_eq!(status(router.clone(), "/readyz").await, StatusCode::OK);
        readiness.set_ready(false);
        assert_eq!(
            status(router, "/readyz").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
