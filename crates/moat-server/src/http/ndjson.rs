//! Long operations that report progress: with `Accept: application/x-ndjson` the answer streams
//! `{"progress": …}` lines while the work runs, then one `{"result": …}` or `{"error": …}` line.

use std::future::Future;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Response, header};
use serde_json::Value;
use tokio::sync::mpsc;

pub const NDJSON: &str = "application/x-ndjson";

/// Whether the caller asked for a progress stream.
pub fn wanted(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains(NDJSON))
}

/// Sends progress lines; a slow reader skips lines rather than slowing the work.
#[derive(Clone)]
pub struct Progress(mpsc::Sender<Value>);

impl Progress {
    pub fn send(&self, v: Value) {
        let _ = self.0.try_send(serde_json::json!({ "progress": v }));
    }
}

/// Runs `work` in its own task and streams its progress and final line.
pub fn respond<F, Fut>(work: F) -> Response<Body>
where
    F: FnOnce(Progress) -> Fut + Send + 'static,
    Fut: Future<Output = Value> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Value>(8);
    tokio::spawn(async move {
        let last = work(Progress(tx.clone())).await;
        let _ = tx.send(last).await;
    });
    let lines =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|v| (Ok::<_, std::convert::Infallible>(format!("{v}\n")), rx)) },
        );
    let mut resp = Response::new(Body::from_stream(lines));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    resp
}
