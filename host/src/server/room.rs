//! Making room at the connection cap: a client waiting for a place asks,
//! and the connection idle the longest closes. The accept loops ask; the
//! connections' request loops take requests up. A connection being closed
//! gives its place up as soon as it has sent its FIN ([`Place`]).

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Requests from the accept loops, at the connection cap, for an idle
/// connection to close. Several accept loops (one a listening address) may
/// wait at once, each for one place.
#[derive(Default)]
pub(super) struct MakeRoom {
    requests: Mutex<Requests>,
    /// Wakes idle connections, the one waiting the longest first.
    idle: Notify,
}

#[derive(Default)]
struct Requests {
    /// Accept loops waiting for a place.
    waiting: usize,
    /// Connections closing for one of them, whose place has not yet gone
    /// to a waiting accept loop.
    closing: usize,
}

impl MakeRoom {
    /// An accept loop waits for a place.
    pub(super) fn ask(&self) {
        self.requests().waiting += 1;
        self.idle.notify_one();
    }

    /// The accept loop that asked has its place: if a connection was
    /// closing for a request, this place is taken to be the one it gave up,
    /// else the request is withdrawn (the place came free another way), so
    /// that no one closes for it later. Either way, every other accept
    /// loop's request still stands.
    pub(super) fn served(&self) {
        let mut requests = self.requests();
        requests.waiting = requests.waiting.saturating_sub(1);
        requests.closing = requests.closing.saturating_sub(1);
    }

    /// Completes when this idle connection has taken up a request to make
    /// room. Connections wait here in the order they went idle, so the one
    /// idle the longest is woken first; a request made while none was
    /// waiting is taken up by the first to go idle.
    pub(super) async fn claim(&self) {
        let mut first = true;
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Waiting from here on: a request made after the check below
            // wakes this connection (or another waiting one).
            notified.as_mut().enable();
            if std::mem::take(&mut first) {
                // The order connections go idle in decides which makes
                // room first; tests wait for this line to know it, so it
                // comes once the connection is in line.
                tracing::trace!("idle: waiting for the next message, in line to make room");
            }
            {
                let mut requests = self.requests();
                if requests.waiting > requests.closing {
                    requests.closing += 1;
                    return;
                }
            }
            notified.await;
        }
    }

    fn requests(&self) -> MutexGuard<'_, Requests> {
        // Two counters changed together under the lock: a panic cannot
        // leave them half-changed.
        self.requests.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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

    /// Completes `claim` if a request stands for it within a while.
    async fn claims(room: &MakeRoom) -> bool {
        tokio::time::timeout(std::time::Duration::from_millis(200), room.claim()).await.is_ok()
    }

    #[tokio::test]
    async fn requests_made_while_no_connection_was_idle_are_each_taken_up() {
        let room = MakeRoom::default();
        // Two accept loops ask while every connection is mid-message.
        room.ask();
        room.ask();
        assert!(claims(&room).await, "the first connection to go idle closes");
        assert!(claims(&room).await, "and the second, for the second request");
        assert!(!claims(&room).await, "no third request");
    }

    #[tokio::test]
    async fn an_accept_loop_served_leaves_the_other_loops_request_standing() {
        let room = MakeRoom::default();
        room.ask();
        room.ask();
        assert!(claims(&room).await);
        // The first loop gets the place the claimed connection gave up.
        room.served();
        assert!(claims(&room).await, "the second loop's request was lost");
        room.served();
        assert!(!claims(&room).await);
    }

    #[tokio::test]
    async fn a_request_withdrawn_before_any_connection_closed_is_not_taken_up() {
        let room = MakeRoom::default();
        room.ask();
        // A place came free another way.
        room.served();
        assert!(!claims(&room).await);
    }

    #[tokio::test]
    async fn a_waiting_idle_connection_is_woken_by_a_request() {
        let room = Arc::new(MakeRoom::default());
        let waiting = tokio::spawn({
            let room = Arc::clone(&room);
            async move { room.claim().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        room.ask();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.expect("woken").expect("the task");
    }

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
