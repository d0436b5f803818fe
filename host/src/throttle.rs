//! Log lines that peers cause (a refused message, a failed TLS handshake, a
//! plugin failing on a request) are rate-limited server-wide, so that a
//! flood of bad requests cannot flood the log, its disk, or whoever reads it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines a second a [`LogThrottle`] lets through.
pub const LINES_PER_SECOND: u32 = 20;

/// At most [`LINES_PER_SECOND`] lines in each second; the first line of a
/// second after lines were dropped is one saying how many. So a flood makes
/// at most one line more a second than the limit.
#[derive(Debug)]
pub struct LogThrottle {
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    written: u32,
    suppressed: u64,
}

impl Default for LogThrottle {
    fn default() -> Self {
        Self { window: Mutex::new(Window { started: Instant::now(), written: 0, suppressed: 0 }) }
    }
}

impl LogThrottle {
    /// Runs `log` (which writes one line) if this second's lines are not
    /// all written yet; otherwise counts the line as suppressed.
    pub fn log(&self, log: impl FnOnce()) {
        let suppressed = {
            let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let mut suppressed = 0;
            if now.duration_since(window.started) >= Duration::from_secs(1) {
                suppressed = std::mem::take(&mut window.suppressed);
                *window = Window { started: now, written: 0, suppressed: 0 };
            }
            if window.written == LINES_PER_SECOND {
                window.suppressed += 1;
                return;
            }
            window.written += 1;
            suppressed
        };
        if suppressed > 0 {
            tracing::warn!("{suppressed} log lines about refused requests were suppressed (at most {LINES_PER_SECOND} a second are written)");
        }
        log();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_second_s_lines_then_nothing_then_a_count_of_what_was_dropped() {
        let throttle = LogThrottle::default();
        let written = AtomicUsize::new(0);
        let write = || {
            throttle.log(|| {
                written.fetch_add(1, Ordering::Relaxed);
            })
        };
        (0..1000).for_each(|_| write());
        let first = written.load(Ordering::Relaxed) as u64;
        let suppressed = throttle.window.lock().unwrap().suppressed;
        // Each second's lines (one second, unless the loop was very slow).
        assert!(first >= u64::from(LINES_PER_SECOND) && first.is_multiple_of(u64::from(LINES_PER_SECOND)), "{first} lines");
        assert!(suppressed > 0 && suppressed <= 1000 - first, "{suppressed} suppressed");
        // A second later the count is reported and lines go through again.
        throttle.window.lock().unwrap().started -= Duration::from_secs(1);
        write();
        assert_eq!(written.load(Ordering::Relaxed) as u64, first + 1);
        assert_eq!(throttle.window.lock().unwrap().suppressed, 0);
    }
}
