//! Every way the server ends a connection delivers what it owes: each
//! request it read whole gets its answer (or its error answer), in order,
//! the refusal included; requests it never read get none; then the stream
//! ends with a FIN, never a reset, so that the client can tell exactly
//! which requests went unanswered.
//!
//! Each test has a client with a small receive buffer that pipelines
//! requests for big answers (the server cannot send them until it reads),
//! sends more requests behind them once the server has decided to close,
//! and reads slowly: a reset would throw away what the server's kernel had
//! not sent yet, and the client would read ECONNRESET instead of the end of
//! the stream. Each runs over plain TCP and over TLS.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::common::certificates::Certificates;
use crate::common::{Answer, STEP, Server, message, raw, search};

/// The client's receive buffer (the kernel doubles it): a few KiB, so that
/// nearly all of a big answer waits on the server's side until it is read.
const RECEIVE_BUFFER: usize = 4096;

/// The slow reader's pause between reads of at most [`READ`] bytes: about
/// 1 MB/s, well within the message timeout.
const PACE: Duration = Duration::from_millis(3);

/// The most the slow reader takes at a time.
const READ: usize = 4096;

/// The sizes of the big answers (the `bad-response` fixture's `size N`),
/// each different so that their order shows.
const BIG: [usize; 2] = [1_000_000, 1_000_001];

/// Routes to the fixture that answers with N bytes; answers up to 2 MiB.
const ROUTES: &str = "[routes]\n\"test/big\" = \"bad-response\"\n\"*\" = \"search\"\n";

const RABBIT: &str = "Follow the white rabbit. 🐰";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Plain,
    Tls,
}

const TRANSPORTS: [Transport; 2] = [Transport::Plain, Transport::Tls];

/// A server with the fixtures, `limits` (a TOML `[limits]` body) and
/// `more` configuration, over `transport`.
fn start(transport: Transport, limits: &str, more: &str) -> (Server, Option<Certificates>) {
    let config = format!("[limits]\nmax-response = \"2 MiB\"\n{limits}\n{ROUTES}{more}");
    match transport {
        Transport::Plain => (Server::start_with_fixtures(&config), None),
        Transport::Tls => {
            let certs = Certificates::new();
            let (cert, key) = (certs.path("cert.pem"), certs.path("key.pem"));
            (Server::start_with_fixtures_and(&config, &["--tls-cert", &cert, "--tls-key", &key]), Some(certs))
        }
    }
}

/// A request for an answer of `size` bytes.
fn big(size: usize) -> Vec<u8> {
    message(json!({"byteorder": "little", "content-type": "test/big", "content-encoding": "utf-8"}), format!("size {size}").as_bytes())
}

/// A message whose frame is intact but whose header lacks a content-type:
/// answered with `bad-header`, and the connection goes on (up to a limit).
fn invalid() -> Vec<u8> {
    raw(br#"{"byteorder": "little", "content-encoding": "utf-8", "content-length": 0}"#, b"")
}

/// What an answer must be.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// The fixture's answer of this many bytes.
    Big(usize),
    /// The search for morpheus.
    Rabbit,
    /// An error answer with this code.
    Error(&'static str),
}

impl Expect {
    fn check(self, answer: &Answer, index: usize) {
        match self {
            Self::Big(size) => {
                assert_eq!(answer.header["content-type"], "application/octet-stream", "answer {index}: {:?}", answer.header);
                assert_eq!(answer.content.len(), size, "answer {index}: the wrong answer, or in the wrong order");
            }
            Self::Rabbit => assert_eq!(answer.result(), RABBIT, "answer {index}"),
            Self::Error(code) => assert_eq!(answer.error_code(), code, "answer {index}: {:?}", answer.json()),
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}
type BoxedStream = Pin<Box<dyn Stream>>;

/// What the slow reader got: every byte, and how the stream ended.
struct Received {
    bytes: Vec<u8>,
    /// `Ok` for the end of the stream (a FIN, or TLS's close_notify).
    end: io::Result<()>,
}

/// A client that reads slowly through a small receive buffer, in a task of
/// its own, while the test sends requests and acts on the server.
struct SlowClient {
    runtime: tokio::runtime::Runtime,
    writer: Option<WriteHalf<BoxedStream>>,
    reader: Option<tokio::task::JoinHandle<Received>>,
    /// Bytes read so far.
    read: Arc<AtomicUsize>,
    /// This client's address, as the server's log names it.
    pub local: SocketAddr,
}

impl SlowClient {
    fn connect(server: &Server, certs: Option<&Certificates>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("a runtime");
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        socket.set_recv_buffer_size(RECEIVE_BUFFER).expect("SO_RCVBUF");
        socket.connect_timeout(&server.addr.into(), STEP).expect("connect");
        socket.set_nonblocking(true).expect("non-blocking");
        let stream = std::net::TcpStream::from(socket);
        let local = stream.local_addr().expect("local address");
        let stream: BoxedStream = runtime.block_on(async {
            let stream = tokio::net::TcpStream::from_std(stream).expect("a tokio stream");
            match certs {
                None => Box::pin(stream) as BoxedStream,
                Some(certs) => {
                    let ca = std::path::PathBuf::from(certs.path("ca.pem"));
                    let tls = wasmux::tls::TlsClient::new(&server.addr_string(), Some(&ca)).expect("a TLS client");
                    let stream = tokio::time::timeout(STEP, tls.connect(stream)).await.expect("a handshake in time").expect("the TLS handshake");
                    Box::pin(stream) as BoxedStream
                }
            }
        });
        let (reader, writer) = tokio::io::split(stream);
        let read = Arc::new(AtomicUsize::new(0));
        let reader = runtime.spawn(read_slowly(reader, Arc::clone(&read)));
        Self { runtime, writer: Some(writer), reader: Some(reader), read, local }
    }

    fn send(&mut self, bytes: &[u8]) {
        let writer = self.writer.as_mut().expect("not closed");
        // The flush sends what a TLS stream kept of them.
        let sent = self.runtime.block_on(async { tokio::time::timeout(STEP, async { writer.write_all(bytes).await?; writer.flush().await }).await });
        sent.expect("sent in time").expect("send");
    }

    /// Bytes read so far.
    fn read(&self) -> usize {
        self.read.load(Ordering::Relaxed)
    }

    /// Waits until the first byte of an answer arrived: the server has
    /// read what was sent before and is writing the answers.
    fn wait_for_answers(&self) {
        let end = Instant::now() + STEP;
        while self.read() == 0 {
            assert!(Instant::now() < end, "no answer began within {STEP:?}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for the slow reader to reach the end of the stream (or an
    /// error), then closes this side.
    fn finish(mut self) -> Received {
        let reader = self.reader.take().expect("reading");
        let received = self.runtime.block_on(reader).expect("the reader task");
        drop(self.writer.take());
        received
    }
}

async fn read_slowly(mut reader: ReadHalf<BoxedStream>, read: Arc<AtomicUsize>) -> Received {
    let mut bytes = Vec::new();
    let mut chunk = vec![0; READ];
    loop {
        tokio::time::sleep(PACE).await;
        match tokio::time::timeout(STEP, reader.read(&mut chunk)).await {
            Err(_) => return Received { bytes, end: Err(io::Error::new(io::ErrorKind::TimedOut, "nothing for 10 s")) },
            Ok(Ok(0)) => return Received { bytes, end: Ok(()) },
            Ok(Ok(n)) => {
                bytes.extend_from_slice(&chunk[..n]);
                read.store(bytes.len(), Ordering::Relaxed);
            }
            Ok(Err(e)) => return Received { bytes, end: Err(e) },
        }
    }
}

impl Received {
    /// The answers received, whole, and the bytes after the last of them.
    fn answers(&self) -> (Vec<Answer>, usize) {
        let mut answers = Vec::new();
        let mut at = 0;
        while let Some(length) = message_length(&self.bytes[at..]) {
            answers.push(Answer::parse(&self.bytes[at..at + length]));
            at += length;
        }
        (answers, self.bytes.len() - at)
    }

    /// Exactly the answers `expected`, in order, whole, then the end of
    /// the stream, nothing after it, and no reset.
    fn assert_exactly(&self, what: &str, expected: &[Expect]) {
        let (answers, rest) = self.answers();
        let summary = format!(
            "{what}: {} bytes, {} whole answers and {rest} bytes of another, then {:?}",
            self.bytes.len(),
            answers.len(),
            self.end.as_ref().map_err(|e| e.to_string())
        );
        if let Err(e) = &self.end {
            panic!("{summary}: the stream did not end with a FIN ({e}, {:?})", e.kind());
        }
        assert_eq!(rest, 0, "{summary}: part of an answer");
        assert_eq!(answers.len(), expected.len(), "{summary}: expected {expected:?}");
        for (index, (answer, expect)) in answers.iter().zip(expected).enumerate() {
            expect.check(answer, index);
        }
        println!("{summary}");
    }
}

/// The length of the whole message at the start of `bytes`, if it is all there.
fn message_length(bytes: &[u8]) -> Option<usize> {
    let header_length = usize::from(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]));
    let header: serde_json::Value = serde_json::from_slice(bytes.get(2..2 + header_length)?).expect("a JSON header");
    let length = 2 + header_length + usize::try_from(header["content-length"].as_u64().expect("content-length")).expect("a length");
    (bytes.len() >= length).then_some(length)
}

/// Waits for the server to say `line` about this client.
fn wait_for_log(server: &Server, line: &str) {
    assert!(server.wait_for_log(line, STEP), "no {line:?} in the log:\n{}", server.log());
}

#[test]
fn a_refusal_with_close_answers_what_came_before_then_ends_with_a_fin() {
    for transport in TRANSPORTS {
        let hash = wasmux::tenancy::TokenHash::of("the-right-token");
        let (server, certs) = start(transport, "", &format!("[tenants.default]\n[tenants.alpha]\ntoken-sha256 = \"{hash}\"\n"));
        let mut client = SlowClient::connect(&server, certs.as_ref());
        // Two big answers, then a request with a wrong credential: the
        // server refuses it and closes.
        let header = json!({"byteorder": "little", "content-type": "test/big", "content-encoding": "utf-8", "authorization": "Bearer wrong"});
        let wrong = message(header, b"size 10");
        client.send(&[big(BIG[0]), big(BIG[1]), wrong].concat());
        client.wait_for_answers();
        // Requests behind it, which the server will not read.
        client.send(&[search("morpheus"), big(BIG[0])].concat());
        let received = client.finish();
        received.assert_exactly(&format!("{transport:?}"), &[Expect::Big(BIG[0]), Expect::Big(BIG[1]), Expect::Error("unauthorized")]);
        wait_for_log(&server, "closing connection to 127.0.0.1:");
        assert_serves_others(&server, certs.as_ref());
    }
}

#[test]
fn a_lost_frame_answers_what_came_before_then_ends_with_a_fin() {
    for transport in TRANSPORTS {
        let (server, certs) = start(transport, "", "");
        let mut client = SlowClient::connect(&server, certs.as_ref());
        client.send(&[big(BIG[0]), big(BIG[1]), raw(b"not json", b"")].concat());
        client.wait_for_answers();
        client.send(&[search("morpheus"), big(BIG[0])].concat());
        let received = client.finish();
        received.assert_exactly(&format!("{transport:?}"), &[Expect::Big(BIG[0]), Expect::Big(BIG[1]), Expect::Error("bad-frame")]);
        assert_serves_others(&server, certs.as_ref());
    }
}

#[test]
fn invalid_messages_in_a_row_are_answered_then_the_stream_ends_with_a_fin() {
    // docs/protocol.md: "stays open, until 32 invalid messages in a row".
    let limit = 32;
    for transport in TRANSPORTS {
        let (server, certs) = start(transport, "", "");
        let mut client = SlowClient::connect(&server, certs.as_ref());
        let mut requests = vec![big(BIG[0]), big(BIG[1])];
        requests.extend(std::iter::repeat_n(invalid(), limit));
        client.send(&requests.concat());
        client.wait_for_answers();
        client.send(&[search("morpheus"), big(BIG[0])].concat());
        let received = client.finish();
        let mut expected = vec![Expect::Big(BIG[0]), Expect::Big(BIG[1])];
        expected.extend(std::iter::repeat_n(Expect::Error("bad-header"), limit));
        received.assert_exactly(&format!("{transport:?}"), &expected);
        let (answers, _) = received.answers();
        let last = answers.last().expect("answers").json()["error"]["message"].as_str().unwrap_or_default().to_owned();
        assert!(last.ends_with(&format!("; closing the connection after {limit} invalid messages in a row")), "{last}");
        assert_serves_others(&server, certs.as_ref());
    }
}

#[test]
fn an_idle_timeout_after_big_answers_ends_with_a_fin() {
    for transport in TRANSPORTS {
        let (server, certs) = start(transport, "idle-timeout = \"300ms\"", "");
        let mut client = SlowClient::connect(&server, certs.as_ref());
        client.send(&big(BIG[0]));
        // Once the answer is in the server's socket, the connection is idle
        // (no request comes) while the client is still reading it.
        wait_for_log(&server, &format!("closing idle connection to {}\n", client.local));
        let unread = BIG[0].saturating_sub(client.read());
        // A request sent as the server closes: never read, never answered.
        client.send(&search("morpheus"));
        let received = client.finish();
        received.assert_exactly(&format!("{transport:?}, {unread} bytes unread at the close"), &[Expect::Big(BIG[0])]);
        assert!(unread > 64 * 1024, "{transport:?}: the client read its answer before the close ({unread} bytes left): no test");
        assert_serves_others(&server, certs.as_ref());
    }
}

#[test]
fn making_room_at_the_connection_cap_ends_the_idle_connection_with_a_fin() {
    for transport in TRANSPORTS {
        let (server, certs) = start(transport, "max-connections = 1", "");
        let mut client = SlowClient::connect(&server, certs.as_ref());
        client.send(&big(BIG[0]));
        client.wait_for_answers();
        // A new client at the cap: the idle connection makes room once its
        // answer is in its socket, while the client is still reading it.
        let newcomer = {
            let (addr, certs_dir) = (server.addr, certs.as_ref().map(|c| c.path("ca.pem")));
            std::thread::spawn(move || newcomer_request(addr, certs_dir))
        };
        wait_for_log(&server, &format!("closing idle connection to {} to make room for a new client", client.local));
        let unread = BIG[0].saturating_sub(client.read());
        client.send(&search("morpheus"));
        let received = client.finish();
        received.assert_exactly(&format!("{transport:?}, {unread} bytes unread at the close"), &[Expect::Big(BIG[0])]);
        assert!(unread > 64 * 1024, "{transport:?}: the client read its answer before the close ({unread} bytes left): no test");
        assert_eq!(newcomer.join().expect("the newcomer"), RABBIT, "{transport:?}: the new client");
    }
}

#[test]
fn a_client_waiting_at_the_cap_gets_the_place_while_the_idle_connection_lingers() {
    // One place. The first client is answered, then neither reads on nor
    // closes, so the connection that makes room for the next client
    // lingers its whole time after its FIN.
    let (server, _) = start(Transport::Plain, "max-connections = 1", "");
    let mut idle = server.connect();
    let answer = idle.try_read_message_after(&search("morpheus")).expect("the first client's answer");
    assert_eq!(Answer::parse(&answer).result(), RABBIT);
    let idle_addr = idle.stream.local_addr().expect("the first client's address");
    assert_eq!(newcomer_request(server.addr, None), RABBIT, "the client waiting for the place");
    let lingered = format!("connection to {idle_addr} closed after lingering");
    wait_for_log(&server, &lingered);
    // The newcomer was let in when the idle connection sent its FIN, not
    // when its linger ended.
    let log = server.log();
    let made_room = log.find(&format!("closing idle connection to {idle_addr} to make room")).expect("room made");
    let accepted = log[made_room..].find("accepted connection from").map(|at| made_room + at);
    let ended = log.find(&lingered).expect("the linger's end");
    assert!(accepted.is_some_and(|accepted| accepted < ended), "the newcomer waited for the linger to end:\n{log}");
    drop(idle);
}

/// Another client is served at once.
fn assert_serves_others(server: &Server, certs: Option<&Certificates>) {
    assert_eq!(newcomer_request(server.addr, certs.map(|c| c.path("ca.pem"))), RABBIT, "another client");
}

/// A search on a new connection (TLS if `ca` is given): its result.
fn newcomer_request(addr: SocketAddr, ca: Option<String>) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        let tls = ca.map(|ca| wasmux::tls::TlsClient::new(&addr.to_string(), Some(std::path::Path::new(&ca))).expect("a TLS client"));
        let mut client = wasmux::client::Client::connect(&addr.to_string(), tls.as_ref(), STEP).await.expect("connect");
        let answer = client.request(&wasmux::client::guide_request("search", "morpheus"), wasmux::client::Resend::Never).await.expect("an answer");
        let body: serde_json::Value = serde_json::from_slice(&answer.content).expect("JSON");
        body["result"].as_str().unwrap_or_default().to_owned()
    })
}

#[test]
fn a_drain_answers_what_it_read_then_ends_with_a_fin() {
    for (transport, signal) in [(Transport::Plain, "TERM"), (Transport::Tls, "INT"), (Transport::Plain, "INT"), (Transport::Tls, "TERM")] {
        let (mut server, certs) = start(transport, "", "");
        let mut client = SlowClient::connect(&server, certs.as_ref());
        client.send(&[big(BIG[0]), big(BIG[1]), search("morpheus")].concat());
        client.wait_for_answers();
        let killed = std::process::Command::new("kill").args([&format!("-{signal}"), &server.pid().to_string()]).status().expect("kill");
        assert!(killed.success());
        wait_for_log(&server, "shutting down: no new connections");
        let unread = (BIG[0] + BIG[1]).saturating_sub(client.read());
        // Sent as the drain begins: the connection's loop may or may not
        // have read it before it saw the drain, so it is answered whole or
        // not at all, and the stream still ends with a FIN.
        client.send(&search("morpheus"));
        let received = client.finish();
        let what = format!("{transport:?}, SIG{signal}, {unread} bytes unread at the drain");
        let owed = [Expect::Big(BIG[0]), Expect::Big(BIG[1]), Expect::Rabbit, Expect::Rabbit];
        let read_before_the_drain = if received.answers().0.len() == owed.len() { &owed[..] } else { &owed[..3] };
        received.assert_exactly(&what, read_before_the_drain);
        assert!(server.stop_with(signal), "{what}: the server did not exit cleanly; log:\n{}", server.log());
        assert!(server.log().contains("every request answered; stopped"), "{what}: {}", server.log());
    }
}

/// A client that pipelines without a pause, each write the end of one
/// request and the start of the next, is never between two messages: the
/// drain answers the request under way when it began and ends the stream
/// after it, rather than reading and answering new requests until
/// `--drain-timeout` cuts the connection (as it did).
#[test]
fn a_drain_ends_a_connection_that_never_pauses_between_requests() {
    use std::io::{Read, Write};
    let (mut server, _) = start(Transport::Plain, "", "");
    let mut stream = std::net::TcpStream::connect(server.addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("a read timeout");
    let request = search("morpheus");
    let half = request.len() / 2;
    let mut writer = stream.try_clone().expect("the write side");
    let sent = Arc::new(AtomicUsize::new(0));
    // Held by the test while it signals the server: the sender stops
    // between two writes, so the requests sent before the signal are known
    // exactly, whatever the scheduling.
    let gate = Arc::new(std::sync::Mutex::new(()));
    let sending = {
        let (sent, gate) = (Arc::clone(&sent), Arc::clone(&gate));
        std::thread::spawn(move || {
            // At most 30 s of requests, 100 a second.
            if writer.write_all(&request[..half]).is_err() {
                return;
            }
            for _ in 0..3000 {
                {
                    let _turn = gate.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if writer.write_all(&[&request[half..], &request[..half]].concat()).is_err() {
                        return;
                    }
                    sent.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    // Answers arrive: the connection is busy.
    let (mut received, mut answers) = (Vec::new(), 0);
    let mut chunk = [0; 4096];
    let count = |received: &mut Vec<u8>, answers: &mut usize| {
        while let Some(length) = message_length(received) {
            received.drain(..length);
            *answers += 1;
        }
    };
    while answers < 20 {
        let n = stream.read(&mut chunk).expect("answers");
        assert!(n > 0, "the stream ended before the drain");
        received.extend_from_slice(&chunk[..n]);
        count(&mut received, &mut answers);
    }
    // The sender stops with half a request written; the drain begins.
    let held = gate.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let sent_at_the_signal = sent.load(Ordering::SeqCst);
    let killed = std::process::Command::new("kill").args(["-TERM", &server.pid().to_string()]).status().expect("kill");
    assert!(killed.success());
    let signalled = Instant::now();
    wait_for_log(&server, "shutting down: no new connections");
    drop(held);
    // Then the stream ends, with a FIN, soon: the default drain timeout is 10 s.
    let ended = loop {
        match stream.read(&mut chunk) {
            Ok(0) => break signalled.elapsed(),
            Ok(n) => {
                received.extend_from_slice(&chunk[..n]);
                count(&mut received, &mut answers);
            }
            Err(e) => panic!("the stream did not end with a FIN after {:?}: {e}; log:\n{}", signalled.elapsed(), server.log()),
        }
    };
    assert!(received.is_empty(), "an answer was cut off");
    assert!(ended < Duration::from_secs(5), "the stream ended {ended:?} after SIGTERM, not after the request under way; log:\n{}", server.log());
    // Every answer is to a request sent whole before the signal, the one
    // half sent then, or the one the connection was in when it saw the
    // drain: it looks between two reads, and the write that ends the half
    // request begins the next.
    assert!(answers <= sent_at_the_signal + 2, "{answers} answers to {sent_at_the_signal} requests sent before SIGTERM; log:\n{}", server.log());
    drop(stream);
    sending.join().expect("the sending thread");
    assert!(server.stop_with("TERM"), "the server did not exit cleanly; log:\n{}", server.log());
    assert!(server.log().contains("every request answered; stopped"), "{}", server.log());
}
