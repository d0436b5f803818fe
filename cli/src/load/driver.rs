//! The connections: sending, reading and checking answers, in each mode.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::io::AsyncRead;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use wasmux::client::Resend;
use wasmux::codec::{DecodeError, Inbound};
use wasmux::connection::{ClientConnection, MessageReader};
use wasmux::message::{DEFAULT_MAX_CONTENT_LENGTH, Message};
use wasmux::net;

use super::plan::{Case, Cursor, Failure, FailureKind, Plan, Stop};
use super::report::{Report, Tally};
use super::args::Mode;

/// Pause after a failed connect, so a server that is down is not hammered
/// by a hot loop of refused connections.
const CONNECT_RETRY_PAUSE: Duration = Duration::from_millis(10);


/// Whether a request falls in the measured window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ticket {
    Warmup,
    Measured,
}

/// State every connection task shares.
pub(super) struct Shared {
    plan: Plan,
    started: Instant,
    /// When measuring starts (after the warm-up).
    window_start: Instant,
    /// With `Stop::After`, when sending stops.
    deadline: Option<Instant>,
    /// Measured requests handed out so far (for `Stop::Requests`).
    issued: AtomicU64,
    /// Paces all connections together under `--rate`.
    pace: Option<governor::DefaultDirectRateLimiter>,
    /// Requests answered so far, right or wrong, and errors: for the progress bar.
    answered: AtomicU64,
    failed: AtomicU64,
}

impl Shared {
    /// May another request be sent, and is it measured? Under `--rate`,
    /// waits for its turn first.
    async fn ticket(&self) -> Option<Ticket> {
        if let Some(pace) = &self.pace {
            pace.until_ready().await;
        }
        let now = Instant::now();
        if now < self.window_start {
            return Some(Ticket::Warmup);
        }
        match self.plan.stop {
            Stop::After(_) => (now < self.deadline.unwrap_or(now)).then_some(Ticket::Measured),
            Stop::Requests(n) => (self.issued.fetch_add(1, Ordering::Relaxed) < n).then_some(Ticket::Measured),
        }
    }

    fn record(&self, tally: &mut Tally, ticket: Ticket, sent: Instant, outcome: Result<(), Failure>) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(()) if ticket == Ticket::Measured => {
                let nanos = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
                tally.latency.saturating_record(nanos.max(1));
                tally.ok += 1;
            }
            Ok(()) => {}
            // Failures count even in the warm-up: a wrong answer is never hidden.
            Err(failure) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tally.failure(failure);
            }
        }
    }
}

/// Runs the plan and reports. `progress` shows a progress bar on stderr.
pub async fn run(plan: &Plan, progress: bool) -> Report {
    let started = Instant::now();
    let window_start = started + plan.warmup;
    let deadline = match plan.stop {
        Stop::After(d) => Some(window_start + d),
        Stop::Requests(_) => None,
    };
    let shared = Arc::new(Shared {
        plan: plan.clone(),
        started,
        window_start,
        deadline,
        issued: AtomicU64::new(0),
        // A burst of one: requests spread evenly over each second.
        pace: plan.rate.map(|rate| governor::RateLimiter::direct(governor::Quota::per_second(rate).allow_burst(std::num::NonZeroU32::MIN))),
        answered: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let bar = progress_bar(plan, progress);
    let ticker = {
        let shared = Arc::clone(&shared);
        let bar = bar.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(100));
            loop {
                every.tick().await;
                update_bar(&bar, &shared);
            }
        })
    };

    let tasks: Vec<_> = (0..plan.connections)
        .map(|id| {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                match shared.plan.mode {
                    Mode::Connect | Mode::Persistent => one_at_a_time(&shared, id).await,
                    Mode::Pipelined => pipelined(&shared, id).await,
                }
            })
        })
        .collect();
    let mut total = Tally::new();
    let mut lost = 0;
    for task in tasks {
        match task.await {
            Ok(tally) => total.merge(tally),
            Err(_) => lost += 1,
        }
    }
    let finished = Instant::now();
    ticker.abort();
    update_bar(&bar, &shared);
    bar.finish_and_clear();
    if lost > 0 {
        total.failure(Failure::new(FailureKind::Io, format!("{lost} load-generator tasks failed")));
    }
    Report::new(plan, &total, finished.saturating_duration_since(window_start))
}

fn progress_bar(plan: &Plan, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let (length, template) = match plan.stop {
        Stop::After(d) => (
            u64::try_from((plan.warmup + d).as_millis()).unwrap_or(u64::MAX),
            "{spinner} [{elapsed_precise}] {wide_bar} {msg}",
        ),
        Stop::Requests(n) => (n, "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}"),
    };
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr_with_hz(10));
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

fn update_bar(bar: &ProgressBar, shared: &Shared) {
    if bar.is_hidden() {
        return;
    }
    let answered = shared.answered.load(Ordering::Relaxed);
    let failed = shared.failed.load(Ordering::Relaxed);
    match shared.plan.stop {
        Stop::After(_) => {
            let elapsed = Instant::now().saturating_duration_since(shared.started);
            bar.set_position(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
        }
        Stop::Requests(_) => bar.set_position(shared.issued.load(Ordering::Relaxed)),
    }
    bar.set_message(format!("{answered} answers, {failed} errors"));
}

/// Opens a connection to the server under test (TLS too, if planned).
async fn open(plan: &Plan) -> Result<ClientConnection, Failure> {
    let (addr, timeout) = (plan.addr, plan.timeout);
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(Failure::new(FailureKind::Connect, format!("cannot connect to {addr}: {}", net::explain(&e)))),
        Err(_) => return Err(Failure::new(FailureKind::Connect, format!("cannot connect to {addr}: timed out after {timeout:?}"))),
    };
    if plan.reset_close && plan.mode == Mode::Connect {
        let _ = stream.set_zero_linger();
    }
    let Some(tls) = &plan.tls else {
        return Ok(ClientConnection::plain(stream, addr, DEFAULT_MAX_CONTENT_LENGTH));
    };
    match tokio::time::timeout(timeout, tls.connect(stream)).await {
        Ok(Ok(stream)) => Ok(ClientConnection::tls(stream, addr, DEFAULT_MAX_CONTENT_LENGTH)),
        Ok(Err(e)) => Err(Failure::new(FailureKind::Connect, format!("TLS handshake with {addr} failed: {e}"))),
        Err(_) => Err(Failure::new(FailureKind::Connect, format!("TLS handshake with {addr}: no answer within {timeout:?}"))),
    }
}

/// Reads the next answer.
async fn read_answer<R: AsyncRead + Unpin>(reader: &mut MessageReader<R>) -> Result<Message, Failure> {
    match reader.next().await {
        Ok(Some(Inbound::Message(message))) => Ok(message),
        Ok(Some(Inbound::Invalid(e))) | Err(DecodeError::Frame(e)) => Err(Failure::new(FailureKind::BadFrame, e.to_string())),
        Err(DecodeError::Io(e)) => Err(Failure::io(&e)),
        Ok(None) => Err(Failure::closed()),
    }
}

/// `connect` and `persistent`: send a request, wait for its answer, repeat.
/// A request the server ended the connection before answering is sent
/// again, once, on a new connection, if it may run twice.
async fn one_at_a_time(shared: &Shared, id: usize) -> Tally {
    let plan = &shared.plan;
    let mut tally = Tally::new();
    let mut cursor = plan.mix.cursor(id);
    let mut kept: Option<ClientConnection> = None;
    while let Some(ticket) = shared.ticket().await {
        let case = plan.mix.next(&mut cursor);
        let sent = Instant::now();
        let deadline = sent + plan.timeout;
        let mut answer = exchange(plan, &mut kept, case, deadline).await;
        if matches!(&answer, Err(failure) if failure.kind == FailureKind::Closed) && case.resend == Resend::Once {
            tally.resent += 1;
            answer = exchange(plan, &mut kept, case, deadline).await;
        }
        let outcome = answer.and_then(|answer| case.check(&answer));
        let refused = matches!(&outcome, Err(f) if f.kind == FailureKind::Connect);
        shared.record(&mut tally, ticket, sent, outcome);
        if refused {
            tokio::time::sleep(CONNECT_RETRY_PAUSE).await;
        }
    }
    tally
}

/// Sends `case` on the kept connection, or a new one, and reads its answer
/// by `deadline`. In persistent mode the connection is kept after an
/// answer; in connect mode it closes here (with a reset if asked: its
/// linger was set when it was opened).
async fn exchange(plan: &Plan, kept: &mut Option<ClientConnection>, case: &Case, deadline: Instant) -> Result<Message, Failure> {
    let attempt = async {
        let mut connection = match kept.take() {
            Some(connection) => connection,
            None => open(plan).await?,
        };
        connection.writer.queue_encoded(&case.bytes);
        connection.writer.flush().await.map_err(|e| Failure::io(&e))?;
        let answer = read_answer(&mut connection.reader).await?;
        Ok::<_, Failure>((connection, answer))
    };
    let result = tokio::time::timeout_at(deadline, attempt).await;
    match result {
        Ok(Ok((connection, answer))) => {
            if plan.mode == Mode::Persistent {
                *kept = Some(connection);
            }
            Ok(answer)
        }
        Ok(Err(failure)) => Err(failure),
        Err(_) => Err(Failure::timeout(plan.timeout)),
    }
}

/// A request on the wire, waiting for its answer.
pub(super) struct InFlight<'a> {
    /// When it was first sent.
    sent: Instant,
    ticket: Ticket,
    case: &'a Case,
    /// This is its second sending.
    resent: bool,
}

/// `pipelined`: keep up to `depth` requests in flight on each connection,
/// reconnecting after a failure. Requests the server ended the connection
/// before answering are sent again, once, first on the next connection, if
/// they may run twice.
async fn pipelined(shared: &Shared, id: usize) -> Tally {
    let plan = &shared.plan;
    let mut tally = Tally::new();
    let mut cursor = plan.mix.cursor(id);
    let mut again: VecDeque<InFlight<'_>> = VecDeque::new();
    loop {
        let connection = match open(plan).await {
            Ok(connection) => connection,
            Err(failure) => {
                if again.is_empty() {
                    let Some(ticket) = shared.ticket().await else { break };
                    shared.record(&mut tally, ticket, Instant::now(), Err(failure));
                } else {
                    for request in again.drain(..) {
                        shared.record(&mut tally, request.ticket, request.sent, Err(failure.clone()));
                    }
                }
                tokio::time::sleep(CONNECT_RETRY_PAUSE).await;
                continue;
            }
        };
        if pipeline(shared, connection, &mut cursor, &mut tally, &mut again).await {
            break;
        }
    }
    tally
}

/// Runs one pipelined connection until the plan stops (true) or the
/// connection fails (false; every request in flight counts as failed,
/// except those put in `again` to be sent again). The requests in `again`
/// are sent first.
///
/// A writer and a reader share the connection: the writer sends whenever a
/// slot is free (several requests in one write when several are), the
/// reader matches answers to requests in order and frees their slots.
/// Running both at once means a large request never deadlocks against a
/// server busy writing answers.
async fn pipeline<'a>(
    shared: &'a Shared,
    connection: ClientConnection,
    cursor: &mut Cursor,
    tally: &mut Tally,
    again: &mut VecDeque<InFlight<'a>>,
) -> bool {
    let plan = &shared.plan;
    let slots = Semaphore::new(plan.depth);
    let (queue, mut in_flight) = mpsc::unbounded_channel::<InFlight<'_>>();
    let ClientConnection { mut reader, mut writer } = connection;
    let outcome = {
        let slots = &slots;
        let resend_first = &mut *again;
        let write = async move {
            let written = 'writing: loop {
                let Ok(permit) = slots.acquire().await else { break Ok(()) };
                permit.forget();
                let mut free = 1;
                while let Ok(permit) = slots.try_acquire() {
                    permit.forget();
                    free += 1;
                }
                let mut more = true;
                for _ in 0..free {
                    if let Some(request) = resend_first.pop_front() {
                        writer.queue_encoded(&request.case.bytes);
                        let _ = queue.send(request);
                        continue;
                    }
                    // Under --rate the next ticket may be a while: what is
                    // queued goes now, not when the free slots are filled
                    // (a request held back would be timed from before it
                    // was sent, and meet a server's idle timeout).
                    if shared.pace.is_some()
                        && writer.pending() > 0
                        && let Err(e) = writer.flush().await
                    {
                        break 'writing Err((None, Failure::io(&e)));
                    }
                    let Some(ticket) = shared.ticket().await else {
                        more = false;
                        break;
                    };
                    let case = plan.mix.next(cursor);
                    writer.queue_encoded(&case.bytes);
                    let _ = queue.send(InFlight { sent: Instant::now(), ticket, case, resent: false });
                }
                if let Err(e) = writer.flush().await {
                    break Err((None, Failure::io(&e)));
                }
                if !more {
                    break Ok(());
                }
            };
            // Closing the queue tells the reader to stop once it is drained.
            drop(queue);
            written
        };
        let read = async {
            while let Some(request) = in_flight.recv().await {
                let answer = tokio::time::timeout_at(request.sent + plan.timeout, read_answer(&mut reader))
                    .await
                    .unwrap_or_else(|_| Err(Failure::timeout(plan.timeout)));
                match answer {
                    Ok(answer) => {
                        shared.record(tally, request.ticket, request.sent, request.case.check(&answer));
                        slots.add_permits(1);
                    }
                    Err(failure) => return Err((Some(request), failure)),
                }
            }
            Ok(())
        };
        tokio::pin!(write, read);
        let mut writing = true;
        loop {
            tokio::select! {
                written = &mut write, if writing => match written {
                    Ok(()) => writing = false,
                    Err(failure) => break Err(failure),
                },
                read = &mut read => break read,
            }
        }
    };
    match outcome {
        Ok(()) => true,
        Err((failed, failure)) => {
            // The requests in flight are lost with the connection. Ended
            // with a FIN before any byte of an answer, none of them was
            // answered: those that may run twice go again.
            let not_begun = failure.kind == FailureKind::Closed;
            let rest = std::iter::from_fn(|| in_flight.try_recv().ok());
            for request in failed.into_iter().chain(rest) {
                if not_begun && !request.resent && request.case.resend == Resend::Once {
                    tally.resent += 1;
                    again.push_back(InFlight { resent: true, ..request });
                } else {
                    shared.record(tally, request.ticket, request.sent, Err(failure.clone()));
                }
            }
            false
        }
    }
}
