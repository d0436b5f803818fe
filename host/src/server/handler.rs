//! One connection's request loop: read messages, have the service answer
//! them, write the answers in order, and decide when the connection ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::room::{MakeRoom, Place};
use crate::codec::{DecodeError, Inbound};
use crate::connection::{Connection, More, ReadTimeouts};
use crate::message::{ErrorCode, Message, ProtocolError};
use crate::service::{Answer, Service};

/// Answers pile up in the write buffer while pipelined requests are
/// processed; past this size they are flushed before reading on.
const MAX_PENDING_WRITE: usize = 256 * 1024;

/// How long a connection the server ends keeps reading (and dropping) what
/// the peer still sends after its last answer and the FIN (at most the
/// message timeout), unless the peer closes first: see [`Handler::end`].
const LINGER: Duration = Duration::from_secs(2);

/// Invalid messages in a row after which a connection is closed: a peer
/// that sends nothing else is broken or hostile, and each of its messages
/// costs an answer (and, rate-limited, a log line).
pub const MAX_INVALID_IN_A_ROW: u32 = 32;

/// Serves one client connection.
pub(super) struct Handler<R, W> {
    pub connection: Connection<R, W>,
    pub peer: SocketAddr,
    pub service: Arc<Service>,
    /// Idle connections give way to waiting clients at the connection cap.
    pub make_room: Arc<MakeRoom>,
    /// This connection's place under the cap, given up when it lingers.
    pub place: Place,
    /// Cancelled at shutdown.
    pub token: CancellationToken,
}

/// Why a connection ends.
#[derive(Debug)]
enum Close {
    /// The peer closed between messages.
    Clean,
    /// The server is shutting down and this connection is between messages.
    Shutdown,
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

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Handler<R, W> {
    pub(super) async fn run(mut self) {
        tracing::debug!("accepted connection from {}", self.peer);
        let close = self.serve().await;
        // Said when decided, before the end below, which may take as long
        // as the linger.
        let peer = self.peer;
        let log = self.service.request_log();
        match &close {
            Close::Clean => tracing::debug!("closing connection to {peer}"),
            Close::Shutdown => tracing::debug!("closing connection to {peer}: shutting down"),
            Close::Idle => tracing::debug!("closing idle connection to {peer}"),
            Close::MakeRoom => tracing::debug!("closing idle connection to {peer} to make room for a new client"),
            Close::Io(e) => tracing::debug!("connection to {peer} failed: {e}"),
            Close::Protocol(e) => log.log(|| tracing::info!("closing connection to {peer}: {e}")),
            Close::Refused => log.log(|| tracing::info!("closing connection to {peer}: request refused")),
        }
        self.end(&close).await;
    }

    async fn serve(&mut self) -> Close {
        let mut invalid_in_a_row = 0;
        // Shutting down with a message under way: that one is read and
        // answered, and the connection ends after it, whatever follows it.
        let mut finishing = false;
        loop {
            // Answer every message already buffered, then write the answers at once.
            loop {
                let answer = match self.connection.reader.try_next() {
                    Ok(None) => break,
                    Ok(Some(Inbound::Message(request))) => {
                        invalid_in_a_row = 0;
                        tracing::debug!("{} request ({} bytes)", request.header.content_type, request.content.len());
                        self.service.handle(request).await
                    }
                    Ok(Some(Inbound::Invalid(error))) => {
                        invalid_in_a_row += 1;
                        if invalid_in_a_row >= MAX_INVALID_IN_A_ROW {
                            let message = format!("{error}; closing the connection after {MAX_INVALID_IN_A_ROW} invalid messages in a row");
                            return self.refuse(ProtocolError::new(error.code, message));
                        }
                        let peer = self.peer;
                        self.service.request_log().log(|| tracing::info!("invalid message from {peer}: {error}"));
                        self.service.count_refused(&error);
                        Answer { message: error.to_message(), close: false }
                    }
                    Err(DecodeError::Frame(error)) => return self.refuse(error),
                    Err(DecodeError::Io(e)) => return Close::Io(e.to_string()),
                };
                self.queue(&answer.message);
                if answer.close {
                    return Close::Refused;
                }
                if finishing {
                    // What follows arrived after the drain began (a client
                    // pipelining without a pause is never between two
                    // messages): it is dropped unanswered.
                    return Close::Shutdown;
                }
                if self.connection.writer.pending() >= MAX_PENDING_WRITE
                    && let Err(close) = self.flush().await
                {
                    return close;
                }
            }
            if let Err(close) = self.flush().await {
                return close;
            }
            if self.token.is_cancelled() {
                if !self.connection.reader.is_mid_message() {
                    return Close::Shutdown;
                }
                finishing = true;
            }
            let limits = &self.service.settings().limits;
            let timeouts = ReadTimeouts { message: limits.message_timeout, idle: limits.idle_timeout };
            let (token, make_room) = (&self.token, &self.make_room);
            // Shutting down: idle connections close now (one in the middle
            // of a message gets to finish it, until its timeout). At the
            // connection cap, idle connections give way to new clients.
            let stop_while_idle = async {
                tokio::select! {
                    () = token.cancelled() => {}
                    () = make_room.claim() => {}
                }
            };
            match self.connection.reader.read_more(Some(timeouts), stop_while_idle).await {
                Ok(More::Data) => {}
                Ok(More::Closed) => return Close::Clean,
                Ok(More::Idle) => return Close::Idle,
                Ok(More::Stopped) if self.token.is_cancelled() => return Close::Shutdown,
                Ok(More::Stopped) => return Close::MakeRoom,
                Err(DecodeError::Frame(error)) => return self.refuse(error),
                Err(DecodeError::Io(e)) => return Close::Io(e.to_string()),
            }
        }
    }

    /// Queues an answer. Only a plugin's extra header fields can make it
    /// unsendable; then the client gets an error answer instead.
    fn queue(&mut self, message: &Message) {
        if let Err(e) = self.connection.writer.queue(message) {
            tracing::warn!("cannot send an answer: {e}");
            let error = Message::error(ErrorCode::PluginBadResponse, &format!("the plugin's answer cannot be sent: {e}"));
            // An error answer always fits.
            let _ = self.connection.writer.queue(&error);
        }
    }

    /// Writes out the queued answers. A peer that does not read them within
    /// the message timeout is dropped.
    async fn flush(&mut self) -> Result<(), Close> {
        let timeout = self.service.settings().limits.message_timeout;
        match tokio::time::timeout(timeout, self.connection.writer.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Close::Io(e.to_string())),
            Err(_) => Err(Close::Io(format!("the peer did not read its answers for {timeout:?}"))),
        }
    }

    /// Tells the peer why its stream cannot be read further; the answer
    /// goes out after those queued before it, and then the stream ends.
    fn refuse(&mut self, error: ProtocolError) -> Close {
        self.service.count_refused(&error);
        self.queue(&error.to_message());
        Close::Protocol(error)
    }

    /// Ends a connection the server decided to close, so that the peer gets
    /// every answer owed and can tell which requests went unanswered: the
    /// answers queued are written (the refusal last, if there is one), then
    /// the write side is shut (a FIN: the peer reads the end of the stream
    /// after the last answer), then whatever the peer still sends (requests
    /// the server will not read) is read and dropped until it closes too,
    /// or for [`LINGER`] (at most the message timeout). While it lingers,
    /// its place under the connection cap goes to the next client, if one
    /// of the few places for lingering connections is free.
    ///
    /// Without that linger, closing a socket with unread bytes makes the
    /// kernel reset the connection, and a reset throws away what it has not
    /// sent yet: the answers just written, and the one saying why. A peer
    /// that reads slowly still gets them, as long as it reads within the
    /// message timeout; one that stops reading is dropped, as at any write.
    /// A client that sees the end of the stream with no byte of an answer
    /// begun knows the server never read that request, and may send it
    /// again elsewhere. The peer closing its side, or the connection
    /// failing, needs no end.
    async fn end(&mut self, close: &Close) {
        if matches!(close, Close::Clean | Close::Io(_)) {
            return;
        }
        if let Err(failed) = self.flush().await {
            tracing::debug!("connection to {} failed while closing: {failed:?}", self.peer);
            return;
        }
        // Over TLS the shutdown writes a close_notify, which waits for room
        // in the socket: a peer that stopped reading gets as long as for
        // any write.
        let timeout = self.service.settings().limits.message_timeout;
        if let Ok(Ok(())) = tokio::time::timeout(timeout, self.connection.writer.shutdown()).await {
            let linger = LINGER.min(self.service.settings().limits.message_timeout);
            let _lingering = self.place.leave_to_linger();
            let peer_closed = self.connection.reader.linger(linger).await;
            let peer = self.peer;
            if peer_closed {
                tracing::debug!("connection to {peer} closed by the peer after the server's FIN");
            } else {
                tracing::debug!("connection to {peer} closed after lingering {linger:?}: the peer did not close");
            }
        }
    }
}
