//! Cross-origin access for the browser-facing routes: the gateway's
//! negotiate and subscribe, the notifier's stream and hub. A SignalR client
//! sends credentials, so an allowed origin is echoed back, never `*`.

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::settings::SettingsError;

/// `origins` empty: any origin (echoed); otherwise exactly these
/// (`https://app.example.com`, scheme and host, no path).
pub fn layer(origins: &[String]) -> Result<CorsLayer, SettingsError> {
    let allow = if origins.is_empty() {
        AllowOrigin::mirror_request()
    } else {
        let values = origins
            .iter()
            .map(|o| {
                let o = o.trim_end_matches('/');
                let host = o
                    .strip_prefix("https://")
                    .or_else(|| o.strip_prefix("http://"));
                if host.is_none_or(|h| h.is_empty() || h.contains('/')) {
                    return Err(SettingsError::invalid(
                        "signalr.allowed_origins",
                        format!("{o:?} is not an origin (scheme://host[:port])"),
                    ));
                }
                HeaderValue::from_str(o).map_err(|e| {
                    SettingsError::invalid("signalr.allowed_origins", format!("{o:?}: {e}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(values)
    };
    Ok(CorsLayer::new()
        .allow_origin(allow)
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-requested-with"),
            HeaderName::from_static("x-signalr-user-agent"),
            HeaderName::from_static("x-legato-user"),
        ]))
}

/// Refuses `origins` that are not origins, at start rather than later.
pub fn check(origins: &[String]) -> Result<(), SettingsError> {
    layer(origins).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_scheme_and_host_only() {
        let ok = |o: &str| check(&[o.to_owned()]).is_ok();
        assert!(ok("https://app.example.com"));
        assert!(ok("http://localhost:5173/"));
        assert!(!ok("app.example.com"));
        assert!(!ok("https://app.example.com/path"));
        assert!(!ok("https://"));
        assert!(check(&[]).is_ok());
    }
}
