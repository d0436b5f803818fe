//! Accepting connections under the connection cap, and the TLS handshake
//! when serving TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, TryAcquireError};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::handler::Handler;
use super::room::{MakeRoom, Place};
use crate::connection::{BufferBudget, Connection};
use crate::service::Service;

/// Accepts connections on one listening socket.
pub(super) struct Listener {
    pub listener: TcpListener,
    /// Set when every connection is TLS.
    pub tls: Option<TlsAcceptor>,
    pub service: Arc<Service>,
    /// One permit per open connection (shared by every listener).
    pub connections: Arc<Semaphore>,
    /// One permit per connection lingering outside the cap (shared).
    pub lingering: Arc<Semaphore>,
    /// What all connections' read buffers may hold together (shared).
    pub budget: Arc<BufferBudget>,
    /// Asked when a client waits for a place: the connection that has been
    /// idle the longest closes. Idle connections at the cap would otherwise
    /// keep every newcomer waiting for their idle timeout.
    pub make_room: Arc<MakeRoom>,
    pub token: CancellationToken,
    pub tracker: TaskTracker,
}

impl Listener {
    pub(super) async fn run(self) {
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
                    self.make_room.served();
                    permit
                }
            };
            let accepted = Accepted {
                peer,
                service: Arc::clone(&self.service),
                budget: Arc::clone(&self.budget),
                make_room: Arc::clone(&self.make_room),
                place: Place::new(permit, Arc::clone(&self.lingering)),
                token: self.token.clone(),
            };
            let tls = self.tls.clone();
            let metrics = Arc::clone(self.service.metrics());
            metrics.connection_opened();
            self.tracker.spawn(
                async move {
                    match tls {
                        None => accepted.serve_tcp(stream).await,
                        Some(tls) => accepted.serve_tls(stream, tls).await,
                    }
                    metrics.connection_closed();
                }
                .instrument(tracing::info_span!("conn", %peer)),
            );
        }
    }
}

/// A connection accepted under the cap: what its request loop will need.
struct Accepted {
    peer: SocketAddr,
    service: Arc<Service>,
    budget: Arc<BufferBudget>,
    make_room: Arc<MakeRoom>,
    /// Held until the connection ends or lingers.
    place: Place,
    token: CancellationToken,
}

impl Accepted {
    async fn serve_tcp(self, stream: TcpStream) {
        let max_content_length = self.service.settings().limits.max_content_length;
        let connection = Connection::tcp(stream, self.peer, max_content_length);
        self.serve(connection).await;
    }

    /// The TLS handshake first, within the message timeout (a peer that
    /// starts one and stalls is like a message not finished), then the
    /// request loop over the encrypted stream.
    async fn serve_tls(self, stream: TcpStream, tls: TlsAcceptor) {
        // Messages are small and latency matters: no Nagle delay.
        let _ = stream.set_nodelay(true);
        let limits = &self.service.settings().limits;
        let (timeout, max_content_length) = (limits.message_timeout, limits.max_content_length);
        let failed = tokio::select! {
            handshake = tokio::time::timeout(timeout, tls.accept(stream)) => match handshake {
                Ok(Ok(stream)) => {
                    let (reader, writer) = tokio::io::split(stream);
                    let connection = Connection::new(reader, writer, self.peer, max_content_length);
                    return self.serve(connection).await;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("not finished within {timeout:?}"),
            },
            () = self.token.cancelled() => return,
        };
        let peer = self.peer;
        self.service.request_log().log(|| tracing::info!("TLS handshake with {peer} failed: {failed}"));
    }

    async fn serve<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(self, connection: Connection<R, W>) {
        let Self { peer, service, budget, make_room, place, token } = self;
        Handler { connection: connection.with_budget(budget), peer, service, make_room, place, token }.run().await;
    }
}
