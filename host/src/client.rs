//! The client side of the protocol, shared by `wasmux send`, the tests and
//! the examples: connect, send a message, read the answer.

use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;
use wasmux_guide::python;

use crate::codec::{DecodeError, EncodeError, Inbound};
use crate::connection::ClientConnection;
use crate::message::{DEFAULT_MAX_CONTENT_LENGTH, Message};
use crate::net;
use crate::tls::TlsClient;

/// A connection to a wasmux (or any guide-protocol) server.
pub struct Client {
    connection: ClientConnection,
    addr: String,
    timeout: Duration,
}

impl Client {
    /// Connects to `addr` (`host:port`, `[v6]:port`; names are resolved),
    /// over TLS if `tls` is given.
    pub async fn connect(addr: &str, tls: Option<&TlsClient>, timeout: Duration) -> anyhow::Result<Self> {
        let stream = net::connect(addr, timeout).await?;
        let connection = match tls {
            None => ClientConnection::plain(stream, addr, DEFAULT_MAX_CONTENT_LENGTH),
            Some(tls) => {
                let stream = match tokio::time::timeout(timeout, tls.connect(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => bail!("TLS handshake with {addr} failed: {e}"),
                    Err(_) => bail!("TLS handshake with {addr} failed: no answer within {timeout:?}; does it serve TLS?"),
                };
                ClientConnection::tls(stream, addr, DEFAULT_MAX_CONTENT_LENGTH)
            }
        };
        Ok(Self { connection, addr: addr.to_owned(), timeout })
    }

    /// Sends `request` and waits for one answer.
    pub async fn request(&mut self, request: &Message) -> anyhow::Result<Message> {
        self.send(request).await?;
        self.receive().await
    }

    /// Sends a message without waiting for the answer (for pipelining).
    pub async fn send(&mut self, request: &Message) -> anyhow::Result<()> {
        let addr = &self.addr;
        match self.connection.writer.queue(request) {
            Ok(()) => {}
            Err(EncodeError::Io(e)) => bail!("cannot send to {addr}: {}", net::explain(&e)),
            Err(e) => bail!("cannot send to {addr}: {e}"),
        }
        match tokio::time::timeout(self.timeout, self.connection.writer.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => bail!("cannot send to {addr}: {}", net::explain(&e)),
            Err(_) => bail!(
                "cannot send to {addr}: timed out after {:?}: the server is not reading; is it overloaded or stuck?",
                self.timeout
            ),
        }
    }

    /// Waits for the next answer.
    pub async fn receive(&mut self) -> anyhow::Result<Message> {
        let addr = &self.addr;
        let next = tokio::time::timeout(self.timeout, self.connection.reader.next()).await.map_err(|_| {
            anyhow::anyhow!(
                "no answer from {addr} within {:?}: the server accepted the connection but did not answer; is it a guide-protocol server, and is it overloaded or stuck?",
                self.timeout
            )
        })?;
        match next {
            Ok(Some(Inbound::Message(message))) => {
                tracing::debug!("received {} response from {addr}", message.header.content_type);
                Ok(message)
            }
            Ok(Some(Inbound::Invalid(e))) => bail!("{addr} sent an invalid message: {e}"),
            Err(DecodeError::Io(e)) => bail!("reading from {addr}: {}", net::explain(&e)),
            Err(e) => bail!("{addr} sent an unreadable message: {e}"),
            Ok(None) => bail!("{addr} closed the connection without answering"),
        }
    }
}

/// The request the guide's client makes for `ACTION VALUE`: a `text/json`
/// search for the action `search`, otherwise ACTION+VALUE as binary.
pub fn guide_request(action: &str, value: &str) -> Message {
    if action == "search" {
        let mut body = serde_json::Map::new();
        body.insert("action".into(), Value::String(action.into()));
        body.insert("value".into(), Value::String(value.into()));
        let content = python::to_vec(&body).unwrap_or_default();
        Message::new("text/json", "utf-8", content)
    } else {
        Message::new(wasmux_guide::BINARY_REQUEST_TYPE, "binary", format!("{action}{value}").into_bytes())
    }
}

/// What the guide's client prints for an answer: `Got result: …` for JSON
/// with a `result`, `Got response: b'…'` otherwise.
pub fn describe_answer(answer: &Message) -> String {
    if answer.header.content_type == "text/json"
        && let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&answer.content)
        && let Some(result) = body.get("result")
    {
        return format!("Got result: {}", python::str_of(result));
    }
    format!("Got response: {}", python::bytes_repr(&answer.content))
}

/// Reads a `--content-file`, with a clear error.
pub fn read_content(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guide_requests() {
        let search = guide_request("search", "morpheus");
        assert_eq!(search.header.content_type, "text/json");
        assert_eq!(&search.content[..], br#"{"action": "search", "value": "morpheus"}"#);
        let binary = guide_request("binary", "😃");
        assert_eq!(binary.header.content_type, "binary/custom-client-binary-type");
        assert_eq!(binary.header.content_encoding, "binary");
        assert_eq!(&binary.content[..], "binary😃".as_bytes());
    }

    #[test]
    fn answers_are_described_like_the_guide() {
        let result = Message::new("text/json", "utf-8", "{\"result\": \"Follow the white rabbit. 🐰\"}".as_bytes().to_vec());
        assert_eq!(describe_answer(&result), "Got result: Follow the white rabbit. 🐰");
        let binary = Message::new("binary/custom-server-binary-type", "binary", b"First 10 bytes of request: binary\xf0\x9f\x98\x83".to_vec());
        assert_eq!(describe_answer(&binary), r"Got response: b'First 10 bytes of request: binary\xf0\x9f\x98\x83'");
        let error = Message::error(crate::message::ErrorCode::NoRoute, "nope");
        assert_eq!(describe_answer(&error), "Got result: Error: nope");
            }
}
