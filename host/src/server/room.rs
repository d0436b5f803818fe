//! Making room at the connection cap: a client waiting for a place asks,
//! and the connection idle the longest closes. The accept loops ask; the
//! connections' request loops take requests up.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Requests from the accept loops, at the connection cap, for an idle
/// connection to close.
#[derive(Default)]
pub(super) struct MakeRoom {
    /// Requests not yet taken up.
    wanted: AtomicUsize,
    /// Wakes idle connections, the one waiting the longest first.
    idle: Notify,
}

impl MakeRoom {
    pub(super) fn ask(&self) {
        self.wanted.fetch_add(1, Ordering::SeqCst);
        self.idle.notify_one();
    }

    /// Withdraws a request no connection has taken up (the place came free
    /// another way), so that no one closes for it later.
    pub(super) fn withdraw(&self) {
        let _ = self.wanted.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    /// Completes when this idle connection has taken up a request to make
    /// room. Connections wait here in the order they went idle, so the one
    /// idle the longest is woken first.
    pub(super) async fn claim(&self) {
        loop {
            self.idle.notified().await;
            // A notification left over from a request since withdrawn is
            // not a request.
            if self.wanted.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                return;
            }
        }
    }
}
