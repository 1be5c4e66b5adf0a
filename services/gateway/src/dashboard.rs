//! The dashboard: static files compiled into the binary and served at `/`
//! (the page) and `/dashboard/*` (its script, styles and the stock SignalR
//! browser client). They hold no data and need no credentials; everything
//! they show comes from the API, called with the signed-in user's token.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// (name, content type, content)
const FILES: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../dashboard/app.js"),
    ),
    (
        "entities.js",
        "text/javascript; charset=utf-8",
        include_str!("../dashboard/entities.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../dashboard/style.css"),
    ),
    (
        "signalr.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../dashboard/signalr.min.js"),
    ),
];

const INDEX: &str = include_str!("../dashboard/index.html");

/// Scripts and styles from the gateway only; connections to the gateway
/// and to the real-time service it redirects to (Azure SignalR is another
/// origin).
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     connect-src 'self' ws: wss: https:; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'";

pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/dashboard/{file}", get(file))
}

fn with_headers(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn index() -> Response {
    with_headers("text/html; charset=utf-8", INDEX)
}

async fn file(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => with_headers(content_type, body),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_only_files_that_are_served() {
        for name in ["app.js", "style.css", "signalr.min.js"] {
            assert!(INDEX.contains(&format!("/dashboard/{name}")), "{name}");
            assert!(FILES.iter().any(|(n, _, _)| *n == name));
        }
        // And every module a served script imports.
        for (_, _, body) in FILES {
            for import in body.split("from \"./").skip(1) {
                let name = import.split('"').next().unwrap_or_default();
                assert!(FILES.iter().any(|(n, _, _)| *n == name), "{name}");
            }
        }
    }
}
