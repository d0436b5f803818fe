//! A client of a server's admin endpoint (`wasmux serve --admin`): `GET` a
//! path, with the admin token if there is one, over HTTP/1.1 with hyper.

use std::time::Duration;

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use wasmux::net;

/// Largest answer read.
const MAX_ANSWER: usize = 64 << 20;

/// `GET path` from the admin endpoint at `address`; the body if the status
/// is 200, else an error that says what the endpoint answered (and, for a
/// 401, how to give the token). The whole exchange is bounded by `timeout`.
pub async fn get(address: &str, path: &str, token: Option<&str>, timeout: Duration) -> anyhow::Result<Bytes> {
    tokio::time::timeout(timeout, exchange(address, path, token, timeout))
        .await
        .with_context(|| format!("no answer from the admin endpoint {address} within {timeout:?}"))?
}

async fn exchange(address: &str, path: &str, token: Option<&str>, timeout: Duration) -> anyhow::Result<Bytes> {
    // A malformed address is said as such, not wrapped in a question about
    // a server that may well be running.
    net::host(address)?;
    let stream = net::connect(address, timeout).await.with_context(|| format!("no admin endpoint at {address} (is `wasmux serve --admin` running?)"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.context("starting HTTP")?;
    // Drives the connection while the request is sent and read; it ends
    // when `sender` is dropped.
    let driving = tokio::spawn(connection);
    let mut request = hyper::Request::get(path).header(hyper::header::HOST, address);
    if let Some(token) = token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(Empty::<Bytes>::new()).context("building the request")?;
    let answer = sender.send_request(request).await.with_context(|| format!("{address}{path}: the request failed"))?;
    let status = answer.status();
    let body = Limited::new(answer.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("{address}{path}: reading the answer failed: {e}"))?
        .to_bytes();
    drop(sender);
    let _ = driving.await;
    match status {
        hyper::StatusCode::OK => Ok(body),
        hyper::StatusCode::UNAUTHORIZED => {
            bail!("{address}{path} answered \"{status}\": the endpoint has an admin token; give it with --admin-token-file FILE")
        }
        _ => bail!("{address}{path} answered \"{status}\""),
    }
}
