//! The client side of the protocol, shared by `wasmux send`, the tests and
//! the examples: connect, send a message, read the answer, and send it
//! once more on a new connection if the server ended the connection without
//! beginning an answer, when the request may safely run twice.
//!
//! What the end of the stream (a FIN) before any byte of an answer proves:
//! from a wasmux server that was draining, making room or closing an idle
//! connection, that the request was never read (the server answers every
//! request it read before it closes). It proves nothing behind a proxy
//! whose backend crashed, nor from a server that crashed after reading the
//! request: the request may have run. Hence the re-send is for requests
//! known to be idempotent ([`Resend`]).

use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;
use wasmux_guide::python;

use crate::codec::{DecodeError, EncodeError, Inbound};
use crate::connection::ClientConnection;
use crate::message::{DEFAULT_MAX_CONTENT_LENGTH, Message};
use crate::net;
use crate::tls::TlsClient;

/// Whether a request is sent again, once, on a new connection, when the
/// server ends the connection with a FIN before any byte of its answer
/// arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// Never: running it twice could do harm (a plugin that counts or
    /// charges), and a FIN does not prove that it did not run.
    Never,
    /// Once: it is idempotent (the guide's search and binary requests).
    Once,
}

/// A connection to a wasmux (or any guide-protocol) server.
pub struct Client {
    connection: ClientConnection,
    addr: String,
    /// To connect again, for a re-send.
    tls: Option<TlsClient>,
    timeout: Duration,
    /// Requests sent again so far.
    resent: u64,
}

impl Client {
    /// Connects to `addr` (`host:port`, `[v6]:port`; names are resolved),
    /// over TLS if `tls` is given.
    pub async fn connect(addr: &str, tls: Option<&TlsClient>, timeout: Duration) -> anyhow::Result<Self> {
        let connection = Self::open(addr, tls, timeout).await?;
        Ok(Self { connection, addr: addr.to_owned(), tls: tls.cloned(), timeout, resent: 0 })
    }

    async fn open(addr: &str, tls: Option<&TlsClient>, timeout: Duration) -> anyhow::Result<ClientConnection> {
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
        Ok(connection)
    }

    /// Sends `request` and waits for one answer. If the server ends the
    /// connection before any byte of the answer arrived, and `resend` is
    /// [`Resend::Once`], sends it again on a new connection (which this
    /// client keeps).
    pub async fn request(&mut self, request: &Message, resend: Resend) -> anyhow::Result<Message> {
        self.send(request).await?;
        if let Some(answer) = self.receive_or_end().await? {
            return Ok(answer);
        }
        let addr = &self.addr;
        if resend == Resend::Never {
            bail!("{addr} closed the connection without answering; the request was not sent again (it may have run)");
        }
        tracing::info!("{addr} closed the connection before answering; sending the request again on a new connection");
        self.connection = Self::open(addr, self.tls.as_ref(), self.timeout).await?;
        self.resent += 1;
        self.send(request).await?;
        match self.receive_or_end().await? {
            Some(answer) => Ok(answer),
            None => bail!("{} closed the connection without answering, twice", self.addr),
        }
    }

    /// Requests sent again on a new connection so far.
    pub fn resent(&self) -> u64 {
        self.resent
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
        match self.receive_or_end().await? {
            Some(answer) => Ok(answer),
            None => bail!("{} closed the connection without answering", self.addr),
        }
    }

    /// Waits for the next answer; `None` if the server ended the connection
    /// (a FIN, or TLS's close_notify) before any byte of it.
    async fn receive_or_end(&mut self) -> anyhow::Result<Option<Message>> {
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
                Ok(Some(message))
            }
            Ok(Some(Inbound::Invalid(e))) => bail!("{addr} sent an invalid message: {e}"),
            Err(DecodeError::Io(e)) => bail!("reading from {addr}: {}", net::explain(&e)),
            Err(e) => bail!("{addr} sent an unreadable message: {e}"),
            Ok(None) => Ok(None),
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
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

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

    /// What the scripted server does with one connection.
    #[derive(Clone, Copy)]
    enum Peer {
        /// Reads the request, then ends the stream (a FIN) without
        /// answering, as a wasmux server closing between messages does
        /// (reading, and dropping, what arrives).
        EndsBeforeAnswering,
        /// Writes the first bytes of an answer, then ends the stream.
        EndsMidAnswer,
        /// Answers with the guide's answer to a search for morpheus.
        Answers,
    }

    /// A server on loopback that treats its connections as `script` says,
    /// in turn; counts the connections it accepted, and gives its listener
    /// back once the script is done.
    async fn scripted(script: Vec<Peer>) -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<tokio::net::TcpListener>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        let serving = tokio::spawn(async move {
            for peer in script {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let mut request = vec![0; 4096];
                let _ = stream.read(&mut request).await;
                match peer {
                    Peer::EndsBeforeAnswering => {}
                    Peer::EndsMidAnswer => stream.write_all(&answer()[..5]).await.unwrap(),
                    Peer::Answers => stream.write_all(&answer()).await.unwrap(),
                }
                if !matches!(peer, Peer::Answers) {
                    stream.shutdown().await.unwrap();
                    while stream.read(&mut request).await.is_ok_and(|n| n > 0) {}
                }
                tokio::spawn(async move {
                    let mut rest = Vec::new();
                    let _ = stream.read_to_end(&mut rest).await;
                });
            }
            listener
        });
        (addr, accepted, serving)
    }

    fn answer() -> Vec<u8> {
        let mut bytes = bytes::BytesMut::new();
        let answer = Message::new("text/json", "utf-8", "{\"result\": \"Follow the white rabbit. 🐰\"}".as_bytes().to_vec());
        tokio_util::codec::Encoder::encode(&mut crate::codec::MessageCodec::default(), &answer, &mut bytes).unwrap();
        bytes.to_vec()
    }

    const TIMEOUT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_request_the_server_ended_before_answering_is_sent_again_once() {
        let (addr, accepted, _serving) = scripted(vec![Peer::EndsBeforeAnswering, Peer::Answers]).await;
        let mut client = Client::connect(&addr, None, TIMEOUT).await.unwrap();
        let answer = client.request(&guide_request("search", "morpheus"), Resend::Once).await.unwrap();
        assert_eq!(describe_answer(&answer), "Got result: Follow the white rabbit. 🐰");
        assert_eq!((client.resent(), accepted.load(Ordering::SeqCst)), (1, 2));
    }

    #[tokio::test]
    async fn a_request_that_may_not_run_twice_is_not_sent_again() {
        let (addr, accepted, _serving) = scripted(vec![Peer::EndsBeforeAnswering, Peer::Answers]).await;
        let mut client = Client::connect(&addr, None, TIMEOUT).await.unwrap();
        let error = client.request(&guide_request("search", "morpheus"), Resend::Never).await.unwrap_err();
        assert_eq!(error.to_string(), format!("{addr} closed the connection without answering; the request was not sent again (it may have run)"));
        assert_eq!((client.resent(), accepted.load(Ordering::SeqCst)), (0, 1));
    }

    #[tokio::test]
    async fn an_answer_cut_off_is_an_error_not_a_resend() {
        let (addr, _accepted, serving) = scripted(vec![Peer::EndsMidAnswer]).await;
        let mut client = Client::connect(&addr, None, TIMEOUT).await.unwrap();
        let error = client.request(&guide_request("search", "morpheus"), Resend::Once).await.unwrap_err();
        assert!(error.to_string().starts_with(&format!("{addr} sent an unreadable message: ")), "{error}");
        assert_eq!(client.resent(), 0);
        // A second connection would have been made before the error: none
        // is waiting to be accepted.
        let listener = serving.await.unwrap();
        let pending = tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
        assert!(pending.is_err(), "the client connected again");
    }

    #[tokio::test]
    async fn a_request_is_sent_again_only_once() {
        let (addr, accepted, _serving) = scripted(vec![Peer::EndsBeforeAnswering, Peer::EndsBeforeAnswering, Peer::Answers]).await;
        let mut client = Client::connect(&addr, None, TIMEOUT).await.unwrap();
        let error = client.request(&guide_request("binary", "x"), Resend::Once).await.unwrap_err();
        assert_eq!(error.to_string(), format!("{addr} closed the connection without answering, twice"));
        assert_eq!((client.resent(), accepted.load(Ordering::SeqCst)), (1, 2));
    }
}
