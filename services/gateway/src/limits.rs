//! What keeps the gateway up under load it should not carry: a per-tenant
//! rate on starts and on signals (429 with `Retry-After`), a time limit on
//! every request (503), and the size limits on bodies and fields.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use legato_contracts::TenantId;
use legato_service::auth::{Principal, Role};
use legato_service::problem::Problem;
use serde::{Deserialize, Serialize};

/// The `gateway.limits` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// Starts one tenant may make per second, sustained; 0: no limit.
    pub starts_per_second: u32,
    /// Signals (events, approvals, terminate, suspend, resume, restart,
    /// purge) one tenant may send per second, sustained; 0: no limit.
    pub signals_per_second: u32,
    /// How many of either may come at once above the sustained rate.
    pub burst: u32,
    /// A request not answered in this time gets 503 (the store or the bus
    /// is too slow); its work may still complete.
    pub request_timeout_ms: u64,
    /// Longest `reason` of terminate, suspend and resume, in bytes.
    pub max_reason_bytes: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            starts_per_second: 500,
            signals_per_second: 500,
            burst: 1000,
            request_timeout_ms: 30_000,
            max_reason_bytes: 4096,
        }
    }
}

/// Tenants seen recently, beyond which idle ones are forgotten (their
/// buckets are full again by then anyway).
const REMEMBERED_TENANTS: usize = 10_000;

type Limiter = DefaultKeyedRateLimiter<Option<TenantId>>;

/// The per-tenant buckets of starts and of signals.
#[derive(Clone)]
pub struct RateLimits {
    starts: Option<Arc<Limiter>>,
    signals: Option<Arc<Limiter>>,
}

impl RateLimits {
    pub fn new(settings: &LimitSettings) -> Self {
        let limiter = |per_second: u32| {
            let rate = NonZeroU32::new(per_second)?;
            let burst = NonZeroU32::new(settings.burst).unwrap_or(rate);
            Some(Arc::new(RateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            )))
        };
        Self {
            starts: limiter(settings.starts_per_second),
            signals: limiter(settings.signals_per_second),
        }
    }

    /// `Ok` if the tenant may do one more `role` thing now, else how long
    /// until it may.
    fn check(&self, role: Role, tenant: &Option<TenantId>) -> Result<(), Duration> {
        let limiter = match role {
            Role::Start => &self.starts,
            Role::Signal | Role::Operate => &self.signals,
            _ => &None,
        };
        let Some(limiter) = limiter else {
            return Ok(());
        };
        if limiter.len() > REMEMBERED_TENANTS {
            limiter.retain_recent();
        }
        limiter
            .check_key(tenant)
            .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }
}

/// 429 with `Retry-After` when the caller's tenant is over its rate.
pub async fn rate_limit(
    State(limits): State<RateLimits>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let path = matched.as_ref().map_or("", MatchedPath::as_str);
    let role = crate::api::required_role(request.method(), path);
    let tenant = request
        .extensions()
        .get::<Arc<Principal>>()
        .and_then(|p| p.tenant.clone());
    if let Err(wait) = limits.check(role, &tenant) {
        return Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests",
            format!("this tenant is over its rate of {role:?} requests; retry later"),
        )
        .retry_after(wait.max(Duration::from_secs(1)))
        .into_response();
    }
    next.run(request).await
}

/// 503 when the request takes longer than `request_timeout_ms`.
pub async fn time_limit(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Request timed out",
            format!(
                "no answer within {} ms; the store or the bus is slow. A start may have \
                 been accepted: read the instance before starting it again",
                limit.as_millis()
            ),
        )
        .retry_after(Duration::from_secs(1))
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tenant_has_its_own_bucket() {
        let limits = RateLimits::new(&LimitSettings {
            starts_per_second: 1,
            burst: 2,
            ..LimitSettings::default()
        });
        let acme = TenantId::parse("acme").ok();
        assert!(limits.check(Role::Start, &acme).is_ok());
        assert!(limits.check(Role::Start, &acme).is_ok());
        let wait = limits.check(Role::Start, &acme).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert!(limits.check(Role::Start, &None).is_ok(), "another tenant");
        assert!(
            limits.check(Role::Read, &acme).is_ok(),
            "reads are not rated"
        );
        assert!(
            limits.check(Role::Signal, &acme).is_ok(),
            "signals have their own"
        );
    }

    #[test]
    fn zero_is_no_limit() {
        let limits = RateLimits::new(&LimitSettings {
            starts_per_second: 0,
            ..LimitSettings::default()
        });
        for _ in 0..10_000 {
            assert!(limits.check(Role::Start, &None).is_ok());
        }
    }
}
