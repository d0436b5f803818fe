//! Making room at the connection cap: a client waiting for a place asks,
//! and the connection idle the longest closes. The accept loops ask; the
//! connections' request loops take requests up. A connection being closed
//! gives its place up as soon as it has sent its FIN ([`Place`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

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

/// A connection's place under the connection cap.
pub(super) struct Place {
    /// Given back when the connection ends, or when it starts to linger.
    taken: Option<OwnedSemaphorePermit>,
    /// The few places for connections lingering outside the cap
    /// ([`super::descriptors::LINGERING`]), shared by all.
    lingering: Arc<Semaphore>,
}

impl Place {
    pub(super) fn new(taken: OwnedSemaphorePermit, lingering: Arc<Semaphore>) -> Self {
        Self { taken: Some(taken), lingering }
    }

    /// For a connection that has written its last answer and its FIN and
    /// now only waits for its peer to close: gives its place under the cap
    /// to the next client, taking one of the lingering places instead, to
    /// hold while it lingers. When all of those are taken, it keeps its
    /// place (returns `None`), as it would without them.
    pub(super) fn leave_to_linger(&mut self) -> Option<OwnedSemaphorePermit> {
        self.taken.as_ref()?;
        let lingering = Arc::clone(&self.lingering).try_acquire_owned().ok()?;
        self.taken = None;
        Some(lingering)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lingering_connection_gives_its_place_up_while_lingering_places_last() {
        let (cap, lingering) = (Arc::new(Semaphore::new(2)), Arc::new(Semaphore::new(1)));
        let mut first = Place::new(Arc::clone(&cap).try_acquire_owned().expect("a place"), Arc::clone(&lingering));
        let mut second = Place::new(Arc::clone(&cap).try_acquire_owned().expect("a place"), Arc::clone(&lingering));
        assert_eq!(cap.available_permits(), 0);

        let held = first.leave_to_linger().expect("a lingering place");
        assert_eq!(cap.available_permits(), 1, "the first gave its place up");
        assert!(first.leave_to_linger().is_none(), "a place is given up once");
        assert!(second.leave_to_linger().is_none(), "no lingering place is left");
        assert_eq!(cap.available_permits(), 1, "the second kept its place");

        drop(held);
        assert_eq!(lingering.available_permits(), 1);
        drop(second);
        assert_eq!(cap.available_permits(), 2);
    }
}
