//! The native socket core: listeners, one task per connection, limits and
//! graceful shutdown. Bytes become messages in [`crate::codec`]; messages
//! become answers in [`crate::service`]. Nothing here knows about plugins.
//!
//! - A semaphore caps open connections; at the cap the accept loop waits, so
//!   new clients queue in the listen backlog instead of being refused, and
//!   the connection idle the longest is asked to close to make room.
//! - A connection carries any number of requests, one after another or
//!   pipelined; answers are written in order, batched when several are
//!   ready. The guide's clients, which send one request and close, work too.
//! - A message must be finished within `message-timeout` of its first byte;
//!   a connection may sit idle `idle-timeout` between messages.
//! - On shutdown the listeners stop accepting, idle connections close, and
//!   requests in flight are answered before their connection closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, TryAcquireError};
use tokio::time::Instant;
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Level};

use crate::codec::{DecodeError, ErrorCode, Inbound, Message, MessageCodec, ProtocolError};
use crate::service::{Answer, Service};
use crate::wire::{self, WireTap};

/// Log target for the bytes of every message, shown with `-v`.
pub const WIRE_TARGET: &str = "wasmux::wire";

/// How long shutdown waits for requests in flight before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Answers pile up in the write buffer while pipelined requests are
/// processed; past this size they are flushed before reading on.
const MAX_PENDING_WRITE: usize = 256 * 1024;

/// Longest prefix of a message shown in the wire log.
const WIRE_LOG_LIMIT: usize = 1024;

/// How long a connection refused for a lost frame keeps reading (and
/// dropping) what the peer still sends, so that its last answers reach the
/// peer before the close.
const LINGER: Duration = Duration::from_secs(2);

/// Serves `service` on `listeners` until `shutdown` completes, then stops
/// accepting, lets requests in flight finish (up to a grace period) and returns.
pub async fn run(listeners: Vec<TcpListener>, service: Arc<Service>, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let connections = Arc::new(Semaphore::new(service.settings().limits.max_connections));
    let make_room = Arc::new(MakeRoom::default());
    for listener in listeners {
        let accept = Listener {
            listener,
            service: Arc::clone(&service),
            connections: Arc::clone(&connections),
            make_room: Arc::clone(&make_room),
            token: token.clone(),
            tracker: tracker.clone(),
        };
        tracker.spawn(accept.run());
    }

    shutdown.await;
    tracing::info!("shutting down: no new connections; finishing requests in flight");
    token.cancel();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await.is_err() {
        tracing::warn!("{} tasks still running after {SHUTDOWN_GRACE:?}; stopping anyway", tracker.len());
    }
    Ok(())
}

/// Accepts connections on one listening socket.
struct Listener {
    listener: TcpListener,
    service: Arc<Service>,
    /// One permit per open connection (shared by every listener).
    connections: Arc<Semaphore>,
    /// Asked when a client waits for a place: the connection that has been
    /// idle the longest closes. Idle connections at the cap would otherwise
    /// keep every newcomer waiting for their idle timeout.
    make_room: Arc<MakeRoom>,
    token: CancellationToken,
    tracker: TaskTracker,
}

/// Requests from the accept loops, at the connection cap, for an idle
/// connection to close.
#[derive(Default)]
struct MakeRoom {
    /// Requests not yet taken up.
    wanted: AtomicUsize,
    /// Wakes idle connections, the one waiting the longest first.
    idle: Notify,
}

impl MakeRoom {
    fn ask(&self) {
        self.wanted.fetch_add(1, Ordering::SeqCst);
        self.idle.notify_one();
    }

    /// Withdraws a request no connection has taken up (the place came free
    /// another way), so that no one closes for it later.
    fn withdraw(&self) {
        let _ = self.wanted.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    /// Takes up a request; false if none is open (a notification left over
    /// from a request since withdrawn).
    fn take(&self) -> bool {
        self.wanted.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }
}

impl Listener {
    async fn run(self) {
        let local = self.listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!("listening on {local}");
        let mut backoff = Duration::from_millis(1);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Usually out of file descriptors: wait, then retry.
                        tracing::error!("accept on {local} failed: {e}; retrying in {backoff:?}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                },
                () = self.token.cancelled() => return,
            };
            backoff = Duration::from_millis(1);
            let permit = match Arc::clone(&self.connections).try_acquire_owned() {
                Ok(permit) => permit,
                Err(TryAcquireError::Closed) => return,
                Err(TryAcquireError::NoPermits) => {
                    // At the cap: this client waits (and the next ones wait
                    // in the listen backlog) until a connection closes.
                    self.make_room.ask();
                    let permit = tokio::select! {
                        permit = Arc::clone(&self.connections).acquire_owned() => match permit {
                            Ok(permit) => permit,
                            Err(_) => return,
                        },
                        () = self.token.cancelled() => return,
                    };
                    self.make_room.withdraw();
                    permit
                }
            };
            let connection =
                Connection::new(stream, peer, Arc::clone(&self.service), Arc::clone(&self.make_room), self.token.clone());
            let span = tracing::info_span!("conn", %peer);
            let metrics = Arc::clone(self.service.metrics());
            metrics.connection_opened();
            self.tracker.spawn(
                async move {
                    connection.run().await;
                    metrics.connection_closed();
                    drop(permit);
                }
                .instrument(span),
            );
        }
    }
}

/// Why a connection ends.
enum Close {
    /// The peer closed between messages, or we are shutting down.
    Clean,
    /// The peer was idle too long.
    Idle,
    /// The peer was idle when a new client needed its place.
    MakeRoom,
    /// Reading or writing failed (reset, timeout on write, …).
    Io(String),
    /// The stream cannot be read further; the peer was told why.
    Protocol(ProtocolError),
    /// The sender may not go on (an unknown token); it was told why.
    Refused,
}

/// One client connection.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    service: Arc<Service>,
    /// See [`Listener::make_room`].
    make_room: Arc<MakeRoom>,
    token: CancellationToken,
    codec: MessageCodec,
    read_buf: BytesMut,
    write_buf: BytesMut,
    /// When the first byte of the message under way arrived.
    message_started: Option<Instant>,
    /// When the last bytes arrived.
    last_read: Instant,
    wire_log: bool,
    /// Keeps each message's bytes as they arrive, for the wire log (`-v`).
    wire_tap: Option<WireTap>,
}

impl Connection {
    fn new(stream: TcpStream, peer: SocketAddr, service: Arc<Service>, make_room: Arc<MakeRoom>, token: CancellationToken) -> Self {
        let _ = stream.set_nodelay(true);
        let max_content_length = service.settings().limits.max_content_length;
        Self {
            stream,
            peer,
            service,
            make_room,
            token,
            codec: MessageCodec::new(max_content_length),
            read_buf: BytesMut::with_capacity(4096),
            write_buf: BytesMut::with_capacity(4096),
            message_started: None,
            last_read: Instant::now(),
            wire_log: tracing::enabled!(target: WIRE_TARGET, Level::DEBUG),
            wire_tap: WireTap::if_enabled(peer, WIRE_LOG_LIMIT),
        }
    }

    async fn run(mut self) {
        tracing::debug!("accepted connection from {}", self.peer);
        let close = self.serve().await;
        match close {
            Close::Clean => tracing::debug!("closing connection to {}", self.peer),
            Close::Idle => tracing::debug!("closing idle connection to {}", self.peer),
            Close::MakeRoom => tracing::debug!("closing idle connection to {} to make room for a new client", self.peer),
            Close::Io(e) => tracing::debug!("connection to {} failed: {e}", self.peer),
            Close::Protocol(e) => tracing::info!("closing connection to {}: {e}", self.peer),
            Close::Refused => tracing::info!("closing connection to {}: request refused", self.peer),
        }
    }

    async fn serve(&mut self) -> Close {
        loop {
            // Answer every message already buffered, then write the answers at once.
            loop {
                match wire::decode(self.wire_tap.as_mut(), &mut self.codec, &mut self.read_buf) {
                    Ok(None) => break,
                    Ok(Some(inbound)) => {
                        self.message_started = None;
                        let answer = match inbound {
                            Inbound::Message(request) => {
                                tracing::debug!("{} request ({} bytes)", request.header.content_type, request.content.len());
                                self.service.handle(&request).await
                            }
                            Inbound::Invalid(error) => {
                                tracing::info!("invalid message from {}: {error}", self.peer);
                                self.service.count_refused(&error);
                                Answer { message: error.to_message(), close: false }
                            }
                        };
                        self.queue(&answer.message);
                        if answer.close {
                            let _ = self.flush().await;
                            let _ = self.stream.shutdown().await;
                            return Close::Refused;
                        }
                        if self.write_buf.len() >= MAX_PENDING_WRITE
                            && let Err(close) = self.flush().await
                        {
                            return close;
                        }
                    }
                    Err(DecodeError::Frame(error)) => return self.refuse(error).await,
                    Err(DecodeError::Io(e)) => return Close::Io(e.to_string()),
                }
            }
            if let Err(close) = self.flush().await {
                return close;
            }

            let mid_message = !self.read_buf.is_empty() || self.codec.is_mid_message();
            if !mid_message && self.token.is_cancelled() {
                return Close::Clean;
            }
            if mid_message && self.message_started.is_none() {
                self.message_started = Some(self.last_read);
            }
            let limits = self.service.settings().limits.clone();
            let deadline = match self.message_started {
                Some(started) => started + limits.message_timeout,
                None => Instant::now() + limits.idle_timeout,
            };
            tokio::select! {
                // Reading first: a connection whose next message is already
                // here is not idle, whatever else is ready.
                biased;
                read = self.stream.read_buf(&mut self.read_buf) => match read {
                    Ok(0) => return self.end_of_stream().await,
                    Ok(_) => self.last_read = Instant::now(),
                    Err(e) => return Close::Io(e.to_string()),
                },
                () = tokio::time::sleep_until(deadline) => {
                    return match self.message_started {
                        Some(_) => self.refuse(ProtocolError::new(
                            ErrorCode::Timeout,
                            format!("the message was not finished within {:?} of its first byte", limits.message_timeout),
                        )).await,
                        None => Close::Idle,
                    };
                }
                // Shutting down: idle connections close now; one in the
                // middle of a message gets to finish it (until its timeout).
                () = self.token.cancelled(), if !mid_message => return Close::Clean,
                // At the connection cap, idle connections give way to new
                // clients, the one idle the longest first (it has waited
                // here the longest).
                () = self.make_room.idle.notified(), if !mid_message => {
                    if self.make_room.take() {
                        return Close::MakeRoom;
                    }
                }
            }
        }
    }

    /// Appends an answer to the write buffer.
    fn queue(&mut self, message: &Message) {
        let start = self.write_buf.len();
        if let Err(e) = self.codec.encode(message, &mut self.write_buf) {
            // Only a plugin's extra header fields can make this happen.
            tracing::warn!("cannot send an answer: {e}");
            let error = Message::error(ErrorCode::PluginBadResponse, &format!("the plugin's answer cannot be sent: {e}"));
            let _ = self.codec.encode(&error, &mut self.write_buf);
        }
        if self.wire_log {
            tracing::debug!(target: WIRE_TARGET, "sending {} to {}", wire::wire_repr(&self.write_buf[start..], WIRE_LOG_LIMIT), self.peer);
        }
    }

    /// Writes out the buffered answers. A peer that does not read them
    /// within the message timeout is dropped.
    async fn flush(&mut self) -> Result<(), Close> {
        if self.write_buf.is_empty() {
            return Ok(());
        }
        let timeout = self.service.settings().limits.message_timeout;
        match tokio::time::timeout(timeout, self.stream.write_all(&self.write_buf)).await {
            Ok(Ok(())) => {
                self.write_buf.clear();
                Ok(())
            }
            Ok(Err(e)) => Err(Close::Io(e.to_string())),
            Err(_) => Err(Close::Io(format!("the peer did not read its answers for {timeout:?}"))),
        }
    }

    /// Tells the peer why its stream cannot be read further, then ends.
    async fn refuse(&mut self, error: ProtocolError) -> Close {
        self.service.count_refused(&error);
        self.queue(&error.to_message());
        if self.flush().await.is_ok() && self.stream.shutdown().await.is_ok() {
            self.linger().await;
        }
        Close::Protocol(error)
    }

    /// Reads and drops whatever the peer still sends, until it closes its
    /// side or [`LINGER`] (at most the message timeout) passes. Closing a
    /// socket with unread bytes makes the kernel reset the connection and
    /// throw away what it has not sent yet: the answers we just wrote,
    /// including the one that says what went wrong.
    async fn linger(&mut self) {
        let until = Instant::now() + LINGER.min(self.service.settings().limits.message_timeout);
        loop {
            self.read_buf.clear();
            tokio::select! {
                read = self.stream.read_buf(&mut self.read_buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                () = tokio::time::sleep_until(until) => return,
            }
        }
    }

    /// The peer closed its side: fine between messages, an error within one.
    async fn end_of_stream(&mut self) -> Close {
        match self.codec.decode_eof(&mut self.read_buf) {
            Ok(_) => Close::Clean,
            Err(DecodeError::Frame(error)) => self.refuse(error).await,
            Err(DecodeError::Io(e)) => Close::Io(e.to_string()),
        }
    }
}
