//! HAProxy's agent check: a port that tells the load balancer whether this
//! server takes new connections.
//!
//! HAProxy's regular health check says whether a server is up; its agent
//! check (`agent-check agent-port PORT` on a `server` line) connects to a
//! second port, reads one line and applies its words (HAProxy's
//! `doc/configuration.txt`, "agent-check"). This listener answers
//!
//! - `up ready` normally: `ready` returns the server to the READY
//!   administrative state (cancelling a DRAIN it set before, e.g. by the
//!   process this one replaced), `up` its operational state to UP;
//! - `drain` once [`AgentState::set_draining`] was called: HAProxy sends
//!   the server no new connections, while the ones it has go on, so that
//!   they can finish their requests and be closed at a message boundary.
//!
//! The listener never answers `down` or `maint`: only the agent could take
//! those back, and a process that stops would leave its successor marked
//! down. A stopped server simply stops answering; HAProxy does not count a
//! refused agent connection as a failure, its regular check finds the
//! server down, and the next process's `ready` cancels the drain.
//!
//! ```text
//! backend wasmux
//!     server s1 127.0.0.1:7001 check agent-check agent-port 7101 agent-inter 1s
//! ```
//!
//! This module depends on crates and std only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the agent answers while the server takes connections.
pub const READY: &str = "up ready\n";
/// What the agent answers while the server drains.
pub const DRAIN: &str = "drain\n";

/// How long one agent connection may take, from accept to close. HAProxy
/// reads one line and closes; anything slower is not HAProxy.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(2);

/// At most this many agent connections are served at once, so that a peer
/// opening many cannot make the server hold many tasks. HAProxy opens one
/// per check interval per backend.
const MAX_CONNECTIONS: usize = 16;

/// The most bytes read from an agent peer (HAProxy's `agent-send` string,
/// which this agent ignores) before closing.
const MAX_READ: usize = 1024;

/// The server's state as the load balancer should see it. Shared (`Arc`)
/// between the listener and whatever decides to drain (the SIGTERM handler).
#[derive(Debug, Default)]
pub struct AgentState {
    draining: AtomicBool,
}

impl AgentState {
    /// A state that answers [`READY`].
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// From now on answer [`DRAIN`]: HAProxy stops sending new connections
    /// (within its `agent-inter`).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Answer [`READY`] again (a drain called off).
    pub fn set_ready(&self) {
        self.draining.store(false, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The line an agent check gets now.
    pub fn answer(&self) -> &'static str {
        if self.is_draining() { DRAIN } else { READY }
    }
}

/// A bound agent listener. Binding is separate from serving so that the
/// caller learns the address (port 0) and a bind error before starting.
pub struct Agent {
    listener: TcpListener,
    state: Arc<AgentState>,
}

impl Agent {
    /// Listens on `addr`.
    pub async fn bind(addr: SocketAddr, state: Arc<AgentState>) -> std::io::Result<Self> {
        Ok(Self::on(TcpListener::bind(addr).await?, state))
    }

    /// Answers on `listener` (from [`crate::net::bind`], to share its port).
    pub fn on(listener: TcpListener, state: Arc<AgentState>) -> Self {
        Self { listener, state }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Answers agent checks until `shutdown` is cancelled, then waits for
    /// the exchanges under way (each at most two seconds).
    ///
    /// Stop it only after the drain is over: while it answers `drain`,
    /// HAProxy keeps the server out of rotation even if its health check
    /// still succeeds.
    pub async fn serve(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!("agent: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                // Too many at once: close; HAProxy ignores a failed agent check.
                continue;
            };
            let answer = self.state.answer();
            tracker.spawn(async move {
                let _slot = slot;
                if tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(stream, answer)).await.is_err() {
                    tracing::debug!("agent: {peer} took longer than {EXCHANGE_TIMEOUT:?}");
                }
            });
        }
        tracker.close();
        tracker.wait().await;
    }
}

/// Writes the answer, then reads what the peer sends until it closes, so
/// that closing with unread bytes (HAProxy's `agent-send`) does not reset
/// the connection before the answer is read.
async fn exchange(mut stream: TcpStream, answer: &str) {
    if stream.write_all(answer.as_bytes()).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let mut buf = [0u8; 256];
    let mut read = 0;
    while read < MAX_READ {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ask(addr: SocketAddr, send: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.expect("connect to the agent");
        stream.write_all(send).await.expect("send");
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer))
            .await
            .expect("an answer within 5 s")
            .expect("read the answer");
        answer
    }

    #[tokio::test]
    async fn answers_ready_then_drain_then_ready() {
        let state = AgentState::new();
        let agent = Agent::bind("127.0.0.1:0".parse().expect("an address"), Arc::clone(&state)).await.expect("bind");
        let addr = agent.local_addr().expect("address");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(agent.serve(shutdown.clone()));
        // Stop the listener even if an assertion fails.
        let _stop = shutdown.clone().drop_guard();

        assert_eq!(ask(addr, b"").await, "up ready\n");
        // HAProxy's `agent-send` string is read and ignored.
        assert_eq!(ask(addr, b"backend=wasmux\n").await, "up ready\n");
        state.set_draining();
        assert_eq!(ask(addr, b"").await, "drain\n");
        state.set_ready();
        assert_eq!(ask(addr, b"").await, "up ready\n");

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("stops within 5 s").expect("no panic");
        assert!(TcpStream::connect(addr).await.is_err(), "the port is closed after shutdown");
    }

    #[tokio::test]
    async fn a_silent_peer_is_dropped_and_others_are_served() {
        let state = AgentState::new();
        let agent = Agent::bind("127.0.0.1:0".parse().expect("an address"), state).await.expect("bind");
        let addr = agent.local_addr().expect("address");
        let shutdown = CancellationToken::new();
        let _stop = shutdown.clone().drop_guard();
        tokio::spawn(agent.serve(shutdown.clone()));
        // Peers that connect and never close hold a slot for at most
        // EXCHANGE_TIMEOUT; more than MAX_CONNECTIONS of them are refused.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS + 4 {
            idle.push(TcpStream::connect(addr).await.expect("connect"));
        }
        // While they hold every slot, a check is closed unanswered...
        assert_eq!(ask(addr, b"").await, "", "answered while every slot was held");
        // ... and once their EXCHANGE_TIMEOUT is over, checks are answered
        // again. (Asked until answered, within a bound, rather than after a
        // sleep: how soon depends on how busy the machine is.)
        let started = tokio::time::Instant::now();
        loop {
            let answer = ask(addr, b"").await;
            if answer == "up ready\n" {
                break;
            }
            assert_eq!(answer, "", "neither refused nor answered");
            assert!(started.elapsed() < EXCHANGE_TIMEOUT * 5, "still refused {:?} after the silent peers' timeout", started.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
