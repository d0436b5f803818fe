//! A framed connection: a byte stream ⇄ [`Message`]s in both directions,
//! with the `-v` wire tap on each. The server, `wasmux send` and
//! `wasmux bench` all read and write messages through it; nothing else in
//! wasmux touches a socket's bytes.
//!
//! The two directions are separate halves ([`MessageReader`],
//! [`MessageWriter`]) so that a client can write requests while it reads
//! answers (pipelining), and so that any stream (TCP, TLS) fits.
//!
//! Reading is one loop, [`MessageReader::read_more`]: decode what is
//! buffered, and read more under the server's deadlines (a message must be
//! finished within `message-timeout` of its first byte; a connection may be
//! idle `idle-timeout` between messages), or none (clients put their own
//! timeout around a whole exchange).
//!
//! Memory: a connection's read buffer grows with the message under way
//! and goes back to a few KiB once that message is done, so idle
//! connections hold little whatever they sent before. On a server, a
//! message whose content is longer than [`FREE_BUFFER`] draws its length
//! from a server-wide [`BufferBudget`] before its content is read, and gives
//! it back once the message has been handled: when the budget is spent, the
//! connection waits, not reading (and TCP stops its peer sending), instead
//! of the server growing.

use std::fmt::Display;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::codec::{Decoder, Encoder};

use crate::codec::{DecodeError, EncodeError, Inbound, MessageCodec};
use crate::message::{ErrorCode, Message, ProtocolError};
use crate::wire::{self, WireTap};

/// Longest prefix of a message shown in the wire log.
const WIRE_LOG_LIMIT: usize = 1024;

/// Room each buffer starts with: a few of the guide's messages.
const INITIAL_BUFFER: usize = 4096;

/// Buffer a connection may hold without drawing on the [`BufferBudget`]; a
/// buffer that grew past it is given back once the message it grew for is
/// done (a read buffer) or once everything is written (a write buffer).
/// The guide's messages come nowhere near it; a header of the largest size
/// the protocol allows (64 KiB) nearly fills it.
pub const FREE_BUFFER: usize = 64 * 1024;

/// Both halves of a connection.
pub struct Connection<R, W> {
    pub reader: MessageReader<R>,
    pub writer: MessageWriter<W>,
}

/// A TCP connection's halves.
pub type TcpConnection = Connection<OwnedReadHalf, OwnedWriteHalf>;

impl TcpConnection {
    /// Frames `stream`, refusing messages longer than `max_content_length`.
    /// `peer` names the other side in the wire log.
    pub fn tcp(stream: TcpStream, peer: impl Display, max_content_length: usize) -> Self {
        // Messages are small and latency matters: no Nagle delay.
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        Self::new(reader, writer, peer, max_content_length)
    }
}

/// A client's connection, plain or TLS (`wasmux send`, `wasmux bench`): the
/// stream's type is erased, which costs a virtual call per read or write.
pub type ClientConnection = Connection<Box<dyn AsyncRead + Send + Unpin>, Box<dyn AsyncWrite + Send + Unpin>>;

impl ClientConnection {
    /// Frames a plain TCP stream.
    pub fn plain(stream: TcpStream, peer: impl Display, max_content_length: usize) -> Self {
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        Self::new(Box::new(reader), Box::new(writer), peer, max_content_length)
    }

    /// Frames a TLS stream (the handshake done).
    pub fn tls(stream: tokio_rustls::client::TlsStream<TcpStream>, peer: impl Display, max_content_length: usize) -> Self {
        let _ = stream.get_ref().0.set_nodelay(true);
        let (reader, writer) = tokio::io::split(stream);
        Self::new(Box::new(reader), Box::new(writer), peer, max_content_length)
    }
}

impl<R, W> Connection<R, W> {
    pub fn new(reader: R, writer: W, peer: impl Display, max_content_length: usize) -> Self {
        let peer = peer.to_string();
        Self {
            writer: MessageWriter { io: writer, buf: BytesMut::with_capacity(INITIAL_BUFFER), tap: wire::enabled().then(|| peer.clone()) },
            reader: MessageReader {
                io: reader,
                codec: MessageCodec::new(max_content_length),
                buf: BytesMut::with_capacity(INITIAL_BUFFER),
                tap: WireTap::if_enabled(&peer, WIRE_LOG_LIMIT),
                message_started: None,
                last_read: Instant::now(),
                grown: false,
                outgrown: false,
                drawn: None,
            },
        }
    }

    /// Makes messages longer than [`FREE_BUFFER`] draw their length from
    /// `budget` before their content is read, waiting while it is spent
    /// (servers; clients read without one).
    pub fn with_budget(mut self, budget: Arc<BufferBudget>) -> Self {
        self.reader.drawn = Some(Drawn { budget, held: None });
        self
    }
}

/// The content all connections may be reading at once, in bytes
/// (`max-buffered`), not counting the first [`FREE_BUFFER`] of each. A
/// message draws its whole length when its header has been read, and gives
/// it back when its connection next reads (by then the message has been
/// handled); while the budget is spent it waits, not reading, and TCP stops
/// its peer sending.
///
/// Drawing a message's whole length at once, rather than as its bytes
/// arrive, and holding nothing while waiting for it, means that two
/// connections can never each hold part of the budget while both wait for
/// more: waiters are served in turn (the semaphore is fair), as earlier
/// messages finish.
#[derive(Debug)]
pub struct BufferBudget {
    /// One permit a KiB.
    kib: Arc<Semaphore>,
    total_kib: usize,
}

impl BufferBudget {
    pub fn new(bytes: usize) -> Arc<Self> {
        let total_kib = bytes.div_ceil(1024).clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Self { kib: Arc::new(Semaphore::new(total_kib)), total_kib })
    }

    /// Bytes not drawn by any connection now.
    pub fn available(&self) -> usize {
        self.kib.available_permits() * 1024
    }
}

/// What one reader has drawn from the [`BufferBudget`]; given back when
/// dropped.
struct Drawn {
    budget: Arc<BufferBudget>,
    held: Option<OwnedSemaphorePermit>,
}

impl Drawn {
    /// KiB of budget a message of `length` bytes needs. A message longer
    /// than the whole budget needs the whole budget, so that it can be read
    /// once the others have given theirs back.
    fn needed(&self, length: usize) -> usize {
        length.saturating_sub(FREE_BUFFER).div_ceil(1024).min(self.budget.total_kib)
    }

    fn held(&self) -> usize {
        self.held.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Gives `kib` of what is held back to the budget.
    fn give_back(&mut self, kib: usize) {
        if kib == 0 {
            return;
        }
        if kib >= self.held() {
            self.held = None;
        } else if let Some(held) = &mut self.held {
            drop(held.split(kib));
        }
    }

    /// Waits until what is drawn covers a message of `length` bytes.
    ///
    /// What is held goes back before the wait, and the whole length is
    /// drawn at once: a reader that waited for the difference while
    /// keeping the rest (a pipelined message longer than the one before)
    /// could deadlock with another that the fair semaphore had handed part
    /// of what it waits for, each holding what the other needs, for the
    /// life of the process.
    async fn cover(&mut self, length: usize) {
        let needed = self.needed(length);
        if needed <= self.held() {
            return;
        }
        self.held = None;
        let needed = u32::try_from(needed).unwrap_or(u32::MAX);
        // The semaphore is never closed.
        if let Ok(permit) = Arc::clone(&self.budget.kib).acquire_many_owned(needed).await {
            self.held = Some(permit);
        }
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Connection<R, W> {
    /// Writes `message` and waits for the next message, for clients.
    pub async fn exchange(&mut self, message: &Message) -> Result<Option<Inbound>, ExchangeError> {
        self.writer.queue(message)?;
        self.writer.flush().await.map_err(ExchangeError::Write)?;
        self.reader.next().await.map_err(ExchangeError::Read)
    }
}

/// Why [`Connection::exchange`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Write(io::Error),
    #[error(transparent)]
    Read(DecodeError),
}

/// The time limits a server puts on reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadTimeouts {
    /// To finish a message, counted from its first byte.
    pub message: Duration,
    /// Between messages.
    pub idle: Duration,
}

/// What [`MessageReader::read_more`] found.
#[derive(Debug)]
pub enum More {
    /// More bytes arrived.
    Data,
    /// The peer closed its side between messages.
    Closed,
    /// No message began within the idle timeout.
    Idle,
    /// The connection was idle when `stop_while_idle` completed.
    Stopped,
}

/// Messages coming in, decoded.
pub struct MessageReader<R> {
    io: R,
    codec: MessageCodec,
    buf: BytesMut,
    /// Keeps each message's bytes as they arrive, for the wire log (`-v`).
    tap: Option<WireTap>,
    /// When the first byte of the message under way arrived.
    message_started: Option<Instant>,
    /// When bytes last arrived.
    last_read: Instant,
    /// The buffer grew past [`FREE_BUFFER`] since it was last given back.
    grown: bool,
    /// It grew for a message that has been decoded since: it goes back to
    /// its first size before the next read, unless it holds more than
    /// [`FREE_BUFFER`] of what follows.
    outgrown: bool,
    /// What the messages under way have drawn from the server's budget, if
    /// it has one.
    drawn: Option<Drawn>,
}

impl<R: AsyncRead + Unpin> MessageReader<R> {
    /// The next message already buffered, without reading. A
    /// [`DecodeError::Frame`] means the stream cannot be read further.
    pub fn try_next(&mut self) -> Result<Option<Inbound>, DecodeError> {
        let decoded = match &mut self.tap {
            Some(tap) => tap.decode(&mut self.codec, &mut self.buf),
            None => self.codec.decode(&mut self.buf),
        };
        if let Ok(Some(_)) = decoded {
            self.message_started = None;
            self.outgrown |= self.grown;
        }
        decoded
    }

    /// Reads until the next message; `None` when the peer closed between
    /// messages. No deadline: callers put one around the exchange.
    pub async fn next(&mut self) -> Result<Option<Inbound>, DecodeError> {
        loop {
            if let Some(inbound) = self.try_next()? {
                return Ok(Some(inbound));
            }
            match self.read_more(None, std::future::pending()).await? {
                More::Data => {}
                More::Closed | More::Idle | More::Stopped => return Ok(None),
            }
        }
    }

    /// True if part of a message has arrived and not yet been decoded.
    pub fn is_mid_message(&self) -> bool {
        !self.buf.is_empty() || self.codec.is_mid_message()
    }

    /// Reads more bytes, under `timeouts` if given. While no message is
    /// under way, completes early with [`More::Stopped`] if
    /// `stop_while_idle` completes first (shutdown, or a new client needs
    /// the place). A message not finished in time, or cut off by the peer
    /// closing, is a [`DecodeError::Frame`].
    pub async fn read_more(&mut self, timeouts: Option<ReadTimeouts>, stop_while_idle: impl Future<Output = ()>) -> Result<More, DecodeError> {
        let mid_message = self.is_mid_message();
        if mid_message && self.message_started.is_none() {
            self.message_started = Some(self.last_read);
        }
        if self.outgrown && self.buf.len() <= FREE_BUFFER {
            self.give_back();
        }
        self.draw_for_content().await;
        if self.buf.len() == self.buf.capacity() {
            self.buf.reserve(INITIAL_BUFFER);
        }
        self.grown |= self.buf.capacity() > FREE_BUFFER;
        let deadline = timeouts.map(|timeouts| match self.message_started {
            Some(started) => started + timeouts.message,
            None => Instant::now() + timeouts.idle,
        });
        let sleep = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // Reading first: a connection whose next message is already
            // here is not idle, whatever else is ready.
            biased;
            read = self.io.read_buf(&mut self.buf) => match read.or_else(eof_as_end)? {
                0 => self.end_of_stream(),
                _ => {
                    self.last_read = Instant::now();
                    Ok(More::Data)
                }
            },
            () = sleep => match (self.message_started, timeouts) {
                (Some(_), Some(timeouts)) => Err(DecodeError::Frame(ProtocolError::new(
                    ErrorCode::Timeout,
                    format!("the message was not finished within {:?} of its first byte", timeouts.message),
                ))),
                _ => Ok(More::Idle),
            },
            () = stop_while_idle, if !mid_message => Ok(More::Stopped),
        }
    }

    /// Holds what the message under way needs of the budget, and no more:
    /// what earlier messages drew goes back (they have been handled by the
    /// time their connection reads again), and before the content of a
    /// message is read its length is drawn, waiting while the budget is
    /// spent. The wait is the server's, not the peer's: it does not count
    /// against the message's deadline.
    async fn draw_for_content(&mut self) {
        let Some(drawn) = &mut self.drawn else { return };
        let length = self.codec.content_length().unwrap_or(0);
        let (needed, held) = (drawn.needed(length), drawn.held());
        if needed <= held {
            drawn.give_back(held - needed);
            return;
        }
        let more = needed - held;
        let waiting = Instant::now();
        drawn.cover(length).await;
        let waited = waiting.elapsed();
        if waited > Duration::from_millis(1) {
            tracing::debug!("waited {waited:?} for {more} KiB of the read budget");
        }
        if let Some(started) = &mut self.message_started {
            *started += waited;
        }
    }

    /// After a big message: the buffer goes back to its first size (what
    /// follows the message, at most [`FREE_BUFFER`], is copied over). The
    /// big allocation is freed with the message's content.
    fn give_back(&mut self) {
        let mut fresh = BytesMut::with_capacity(INITIAL_BUFFER.max(self.buf.len()));
        fresh.extend_from_slice(&self.buf);
        self.buf = fresh;
        self.grown = false;
        self.outgrown = false;
    }

    /// The peer closed its side: fine between messages, an error within one.
    fn end_of_stream(&mut self) -> Result<More, DecodeError> {
        let decoded = match &mut self.tap {
            Some(tap) => tap.decode_eof(&mut self.codec, &mut self.buf),
            None => self.codec.decode_eof(&mut self.buf),
        };
        // Everything buffered was decoded before reading, so nothing is
        // left to produce: the end is clean or cuts a message off.
        decoded.map(|_| More::Closed)
    }

    /// Reads and drops whatever the peer still sends, until it closes its
    /// side or `duration` passes. Closing a socket with unread bytes makes
    /// the kernel reset the connection and throw away what it has not sent
    /// yet: the answers just written, including the one that says what
    /// went wrong. Returns whether the peer closed (or the connection
    /// failed) before `duration` passed.
    pub async fn linger(&mut self, duration: Duration) -> bool {
        let until = Instant::now() + duration;
        loop {
            self.buf.clear();
            tokio::select! {
                read = self.io.read_buf(&mut self.buf) => match read {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => {}
                },
                () = tokio::time::sleep_until(until) => return false,
            }
        }
    }
}

/// A TLS peer that closed without a close_notify has closed: the
/// protocol's own lengths say whether a message was cut off.
fn eof_as_end(error: io::Error) -> io::Result<usize> {
    if error.kind() == io::ErrorKind::UnexpectedEof { Ok(0) } else { Err(error) }
}

/// Messages going out, encoded and buffered until [`MessageWriter::flush`].
pub struct MessageWriter<W> {
    io: W,
    buf: BytesMut,
    /// The peer's name, when the wire log is on.
    tap: Option<String>,
}

impl<W: AsyncWrite + Unpin> MessageWriter<W> {
    /// Appends `message` to what is to be written; on error nothing is appended.
    pub fn queue(&mut self, message: &Message) -> Result<(), EncodeError> {
        let start = self.buf.len();
        MessageCodec::default().encode(message, &mut self.buf)?;
        self.log(start);
        Ok(())
    }

    /// Appends a message encoded beforehand (a load generator's requests).
    pub fn queue_encoded(&mut self, bytes: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(bytes);
        self.log(start);
    }

    fn log(&self, start: usize) {
        if let Some(peer) = &self.tap {
            wire::log_sent(&self.buf[start..], peer, WIRE_LOG_LIMIT);
        }
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Writes out everything queued, and flushes the stream: a TLS stream
    /// takes plaintext faster than its socket takes the records, and keeps
    /// what the socket has no room for (up to rustls' 64 KiB) until it is
    /// written to again or flushed. Without the flush, the end of a message
    /// written while the peer was reading slower than it came stayed there,
    /// and the peer waited for it. A TCP stream's flush does nothing.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.io.write_all(&self.buf).await?;
            self.buf.clear();
            if self.buf.capacity() > FREE_BUFFER {
                self.buf = BytesMut::with_capacity(INITIAL_BUFFER);
            }
        }
        self.io.flush().await
    }

    /// Closes the writing side (a FIN): the peer reads the end of the stream.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.io.shutdown().await
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &W {
        &self.io
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEARCH: &[u8] = b"\x00d{\"byteorder\": \"big\", \"content-type\": \"text/json\", \"content-encoding\": \"utf-8\", \"content-length\": 41}{\"action\": \"search\", \"value\": \"morpheus\"}";

    const TIMEOUTS: ReadTimeouts = ReadTimeouts { message: Duration::from_secs(5), idle: Duration::from_secs(60) };

    /// Timeouts short enough to wait out in real time. (Paused time would
    /// need tokio's `test-util`, which a test build would then unify into
    /// the server's tokio and every crate above it: a second build of them
    /// after `cargo xtask serve`'s.)
    const SHORT: ReadTimeouts = ReadTimeouts { message: Duration::from_millis(150), idle: Duration::from_millis(100) };

    fn pair() -> (Connection<tokio::io::ReadHalf<tokio::io::DuplexStream>, tokio::io::WriteHalf<tokio::io::DuplexStream>>, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let (reader, writer) = tokio::io::split(ours);
        (Connection::new(reader, writer, "peer", 1024), theirs)
    }

    #[tokio::test]
    async fn messages_in_pieces_come_out_whole_and_in_order() {
        let (mut conn, mut peer) = pair();
        let two = [SEARCH, SEARCH].concat();
        tokio::spawn(async move {
            for chunk in two.chunks(7) {
                peer.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        for _ in 0..2 {
            let Some(Inbound::Message(message)) = conn.reader.next().await.unwrap() else { panic!("no message") };
            assert_eq!(&message.content[..], br#"{"action": "search", "value": "morpheus"}"#);
        }
        assert!(conn.reader.next().await.unwrap().is_none(), "a clean end between messages");
    }

    #[tokio::test]
    async fn a_stream_cut_in_the_middle_of_a_message_is_an_error() {
        let (mut conn, mut peer) = pair();
        peer.write_all(&SEARCH[..30]).await.unwrap();
        drop(peer);
        let error = conn.reader.next().await.unwrap_err();
        assert!(matches!(&error, DecodeError::Frame(e) if e.code == ErrorCode::Truncated), "{error}");
    }

    #[tokio::test]
    async fn a_message_must_be_finished_in_time_from_its_first_byte() {
        let (mut conn, mut peer) = pair();
        let started = tokio::time::Instant::now();
        peer.write_all(&SEARCH[..30]).await.unwrap();
        assert!(matches!(conn.reader.read_more(Some(SHORT), std::future::pending()).await, Ok(More::Data)));
        assert!(conn.reader.try_next().unwrap().is_none());
        let error = conn.reader.read_more(Some(SHORT), std::future::pending()).await.unwrap_err();
        assert!(matches!(&error, DecodeError::Frame(e) if e.code == ErrorCode::Timeout), "{error}");
        assert!(started.elapsed() >= SHORT.message, "timed out after {:?}, before the message timeout", started.elapsed());
    }

    #[tokio::test]
    async fn an_idle_connection_times_out_or_stops_but_one_mid_message_does_not_stop() {
        let (mut conn, mut peer) = pair();
        let started = tokio::time::Instant::now();
        assert!(matches!(conn.reader.read_more(Some(SHORT), std::future::pending()).await, Ok(More::Idle)));
        assert!(started.elapsed() >= SHORT.idle, "idle after {:?}", started.elapsed());
        assert!(matches!(conn.reader.read_more(Some(SHORT), std::future::ready(())).await, Ok(More::Stopped)));
        peer.write_all(&SEARCH[..30]).await.unwrap();
        assert!(matches!(conn.reader.read_more(Some(SHORT), std::future::ready(())).await, Ok(More::Data)));
        assert!(conn.reader.is_mid_message());
        // Mid-message, a stop request waits: only the message timeout ends it.
        let read = conn.reader.read_more(Some(SHORT), std::future::ready(())).await;
        assert!(matches!(read, Err(DecodeError::Frame(ref e)) if e.code == ErrorCode::Timeout), "{read:?}");
    }

    /// A message of `length` bytes of content.
    fn big(length: usize) -> Vec<u8> {
        let header = format!(r#"{{"byteorder": "big", "content-type": "x", "content-encoding": "binary", "content-length": {length}}}"#);
        let mut bytes = u16::try_from(header.len()).unwrap().to_be_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + length, b'z');
        bytes
    }

    /// A reader over a duplex stream, with a budget, for messages up to 1 MiB.
    fn budgeted(budget: &Arc<BufferBudget>) -> (Connection<tokio::io::ReadHalf<tokio::io::DuplexStream>, tokio::io::WriteHalf<tokio::io::DuplexStream>>, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let (reader, writer) = tokio::io::split(ours);
        (Connection::new(reader, writer, "peer", 1 << 20).with_budget(Arc::clone(budget)), theirs)
    }

    /// Reads until a message is decoded.
    async fn read_message<R: AsyncRead + Unpin>(reader: &mut MessageReader<R>) -> Message {
        loop {
            if let Some(Inbound::Message(message)) = reader.try_next().unwrap() {
                return message;
            }
            reader.read_more(Some(TIMEOUTS), std::future::pending()).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_big_message_draws_on_the_budget_and_gives_its_buffer_back() {
        let budget = BufferBudget::new(1 << 20);
        let (mut conn, mut peer) = budgeted(&budget);
        tokio::spawn(async move { peer.write_all(&big(600 << 10)).await });
        let message = read_message(&mut conn.reader).await;
        assert_eq!(message.content.len(), 600 << 10);
        assert!(conn.reader.buf.capacity() >= 600 << 10 || conn.reader.grown);
        assert!(budget.available() <= (1 << 20) - (500 << 10), "{} bytes of the budget left", budget.available());
        drop(message);
        // Reading again: the buffer and the budget are given back first.
        let read = conn.reader.read_more(Some(TIMEOUTS), std::future::ready(())).await;
        assert!(matches!(read, Ok(More::Stopped | More::Closed)), "{read:?}");
        assert_eq!(conn.reader.buf.capacity(), INITIAL_BUFFER);
        assert_eq!(budget.available(), 1 << 20);
    }

    #[tokio::test]
    async fn a_message_over_what_is_left_of_the_budget_waits_for_it() {
        let budget = BufferBudget::new(1 << 20);
        let (mut first, mut first_peer) = budgeted(&budget);
        let (mut second, mut second_peer) = budgeted(&budget);
        let message = big(700 << 10);
        // The first message's header: it draws 700 KiB less the free 64 KiB.
        first_peer.write_all(&message[..200]).await.unwrap();
        first.reader.read_more(Some(TIMEOUTS), std::future::pending()).await.unwrap();
        assert!(first.reader.try_next().unwrap().is_none());
        assert_eq!(first.reader.codec.content_length(), Some(700 << 10));
        first.reader.draw_for_content().await;
        assert_eq!(budget.available(), (1 << 20) - (636 << 10));
        // The second cannot draw as much: it waits, not reading.
        tokio::spawn(async move { second_peer.write_all(&message).await });
        let waited = tokio::time::timeout(Duration::from_millis(200), read_message(&mut second.reader)).await;
        assert!(waited.is_err(), "read a message the budget had no room for");
        // The first gives its part back: the second goes on.
        drop(first);
        drop(first_peer);
        assert_eq!(read_message(&mut second.reader).await.content.len(), 700 << 10);
    }

    /// A pipelined message longer than the one before it, on a connection
    /// that still holds that one's part of the budget, while another
    /// connection waits for a part: both are read. (When the first waited
    /// for the difference while keeping its part, and the fair semaphore
    /// had handed the second what was free, each held what the other
    /// waited for, for good.)
    #[tokio::test]
    async fn a_longer_pipelined_message_does_not_deadlock_with_another_waiting_connection() {
        let budget = BufferBudget::new(1 << 20);
        let (mut first, mut first_peer) = budgeted(&budget);
        let (mut second, mut second_peer) = budgeted(&budget);
        // The first connection's 600 KiB message, all but its last byte:
        // it draws 600 KiB less the free 64 KiB.
        let (a, b) = (big(600 << 10), big(1 << 20));
        let first_reads = tokio::spawn(async move {
            let lengths = [read_message(&mut first.reader).await.content.len(), read_message(&mut first.reader).await.content.len()];
            (lengths, first)
        });
        first_peer.write_all(&a[..a.len() - 1]).await.unwrap();
        while budget.available() > (1 << 20) - (536 << 10) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The second's 600 KiB: it waits for what the first holds.
        let second_reads = tokio::spawn(async move { read_message(&mut second.reader).await.content.len() });
        let second_sends = tokio::spawn(async move { second_peer.write_all(&big(600 << 10)).await.map(|()| second_peer) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The first message ends, and a longer one follows on its heels.
        let first_sends = tokio::spawn(async move {
            first_peer.write_all(&a[a.len() - 1..]).await?;
            first_peer.write_all(&b).await.map(|()| first_peer)
        });
        let both = async { (first_reads.await.unwrap(), second_reads.await.unwrap()) };
        let ((lengths, _first), second_length) = tokio::time::timeout(Duration::from_secs(10), both).await.expect("both connections read their messages");
        assert_eq!(lengths, [600 << 10, 1 << 20]);
        assert_eq!(second_length, 600 << 10);
        let _peers = (first_sends.await.unwrap().unwrap(), second_sends.await.unwrap().unwrap());
    }

    /// A TLS stream takes a message faster than its socket does and keeps
    /// the rest: `flush` must not return before all of it is written. Real
    /// rustls over loopback TCP, with small socket buffers at both ends and
    /// a peer that reads 1 KiB at a time, so that every write finds the
    /// socket nearly full. (With the buffers the kernel gives loopback
    /// sockets, megabytes, the tail is left behind only now and then.)
    #[tokio::test]
    async fn over_tls_a_flushed_message_reaches_a_slow_reader_whole() {
        let (acceptor, connector, name) = crate::tls::test_ends();
        let listening = tokio::net::TcpSocket::new_v4().unwrap();
        listening.set_recv_buffer_size(4 << 10).unwrap();
        listening.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let listener = listening.listen(1).unwrap();
        let connecting = tokio::net::TcpSocket::new_v4().unwrap();
        connecting.set_send_buffer_size(8 << 10).unwrap();
        let (ours, theirs) = tokio::join!(connecting.connect(listener.local_addr().unwrap()), listener.accept());
        let (ours, theirs) = tokio::join!(connector.connect(name, ours.unwrap()), acceptor.accept(theirs.unwrap().0));
        let (ours, mut theirs) = (ours.expect("the client's handshake"), theirs.expect("the server's handshake"));
        let (reader, writer) = tokio::io::split(ours);
        let mut conn = Connection::new(reader, writer, "peer", 1024);
        let message = Message::new("x/y", "binary", vec![b'z'; 1 << 20]);
        conn.writer.queue(&message).unwrap();
        let length = conn.writer.pending();
        let slow_reader = tokio::spawn(async move {
            let mut received = Vec::new();
            let mut chunk = [0; 1024];
            // Until all of it came, or nothing more does for a second.
            while received.len() < length {
                match tokio::time::timeout(Duration::from_secs(1), theirs.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => received.extend_from_slice(&chunk[..n]),
                    _ => break,
                }
                tokio::task::yield_now().await;
            }
            received
        });
        tokio::time::timeout(Duration::from_secs(10), conn.writer.flush()).await.expect("flushed in time").unwrap();
        let received = slow_reader.await.unwrap();
        assert_eq!(received.len(), length, "the peer got {} bytes of {length}", received.len());
        let mut received = BytesMut::from(&received[..]);
        let Some(Inbound::Message(got)) = MessageCodec::new(2 << 20).decode(&mut received).unwrap() else { panic!("not a message") };
        assert_eq!(got.content, message.content);
    }

    #[tokio::test]
    async fn queued_messages_are_written_on_flush() {
        let (mut conn, mut peer) = pair();
        let message = Message::new("text/json", "utf-8", &br#"{"result": "x"}"#[..]);
        conn.writer.queue(&message).unwrap();
        conn.writer.queue_encoded(SEARCH);
        assert!(conn.writer.pending() > SEARCH.len());
        conn.writer.flush().await.unwrap();
        assert_eq!(conn.writer.pending(), 0);
        let mut codec = MessageCodec::default();
        let mut received = BytesMut::new();
        let mut got = Vec::new();
        while got.len() < 2 {
            peer.read_buf(&mut received).await.unwrap();
            while let Some(Inbound::Message(m)) = codec.decode(&mut received).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got[0].content, message.content);
        assert_eq!(got[1].header.byteorder, "big");
    }
}
