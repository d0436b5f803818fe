//! The native socket core: listeners, one task per connection, limits and
//! graceful shutdown. Bytes become messages in [`crate::connection`];
//! messages become answers in [`crate::service`]. Nothing here knows about
//! plugins.
//!
//! - [`listener`]: accepts connections under the connection cap (and runs
//!   the TLS handshake when serving TLS); at the cap new clients wait in the
//!   listen backlog and the connection idle the longest is asked to make room.
//! - [`descriptors`]: the open-file limit, raised at start, and the
//!   connection cap kept below it.
//! - [`room`]: at the cap, a waiting client's request that the connection
//!   idle the longest close.
//! - [`handler`]: one connection's request loop: answers in order, batched
//!   when pipelined requests are ready together, and when to close.
//! - [`run`]: starts a listener per socket; on shutdown they stop
//!   accepting, idle connections close, and requests in flight are
//!   answered before their connection closes.

mod descriptors;
mod handler;
mod listener;
mod room;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::BufferBudget;
use crate::service::Service;
pub use descriptors::{RESERVED as RESERVED_DESCRIPTORS, raise_open_file_limit};
use listener::Listener;
use room::MakeRoom;

/// Serves `service` on `listeners` (over TLS if `tls` is given) until
/// `shutdown` completes, then stops accepting, closes idle connections, lets
/// the requests in flight finish (each connection closes after its current
/// answer), and returns when all have, or after `drain_timeout`.
///
/// Call it once everything else the server keeps open is open: the
/// connection cap is kept below the open-file limit with room for what is
/// open then, and [`RESERVED_DESCRIPTORS`] more.
pub async fn run(
    listeners: Vec<TcpListener>,
    tls: Option<TlsAcceptor>,
    service: Arc<Service>,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let limits = &service.settings().limits;
    let connections = Arc::new(Semaphore::new(descriptors::connection_cap(limits.max_connections)));
    let lingering = Arc::new(Semaphore::new(descriptors::LINGERING));
    let budget = BufferBudget::new(limits.max_buffered);
    let make_room = Arc::new(MakeRoom::default());
    for listener in listeners {
        let accept = Listener {
            listener,
            tls: tls.clone(),
            service: Arc::clone(&service),
            connections: Arc::clone(&connections),
            lingering: Arc::clone(&lingering),
            budget: Arc::clone(&budget),
            make_room: Arc::clone(&make_room),
            token: token.clone(),
            tracker: tracker.clone(),
        };
        tracker.spawn(accept.run());
    }

    shutdown.await;
    // Cancelled before it is said: a connection that reads after this line
    // has seen the drain begin (tests wait for the line).
    token.cancel();
    tracing::info!("shutting down: no new connections; finishing requests in flight");
    tracker.close();
    if tokio::time::timeout(drain_timeout, tracker.wait()).await.is_err() {
        tracing::warn!("{} connections still open after {drain_timeout:?}; stopping anyway", tracker.len());
    } else {
        tracing::info!("every request answered; stopped");
    }
    Ok(())
}
