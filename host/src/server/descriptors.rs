//! File descriptors. Every connection takes one, and so do the listeners,
//! the admin endpoint and its clients, plugin and configuration files being
//! read, the compiled-code cache, wasmtime's memory images and tokio itself.
//! A server out of descriptors cannot accept: a new client waits in the
//! listen backlog until it gives up, however idle the connections holding
//! them. So the soft open-file limit (often 1024) is raised to the hard one
//! at start, and the connection cap is kept below it with room for the rest:
//! at the cap, the connection idle the longest makes room instead.

use std::io;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors kept free for what the server opens after it starts
/// (plugin and configuration files, cache entries, admin clients, the
/// watcher), beyond those already open when it computes its cap.
pub const RESERVED: usize = 64;

/// Connections the server is ending that may linger (reading what their
/// peer still sends, up to two seconds) outside the connection cap, so
/// that a client waiting for a place gets it when the connection making
/// room sends its FIN, not when its peer answers that FIN.
pub const LINGERING: usize = 32;

/// Raises the soft limit on open files to the hard limit. Returns the soft
/// limit before and after (`u64::MAX` for unlimited).
pub fn raise_open_file_limit() -> io::Result<(u64, u64)> {
    let limit = getrlimit(Resource::Nofile);
    let before = limit.current.unwrap_or(u64::MAX);
    // `None` is unlimited: a finite soft limit below the hard one is raised.
    let below_hard = match (limit.current, limit.maximum) {
        (Some(soft), Some(hard)) => soft < hard,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if below_hard {
        setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum })?;
    }
    Ok((before, getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)))
}

/// The soft limit on open files (`None`: unlimited).
fn open_file_limit() -> Option<usize> {
    getrlimit(Resource::Nofile).current.and_then(|n| usize::try_from(n).ok())
}

/// Descriptors open now (`None` where `/proc/self/fd` cannot tell).
fn open_descriptors() -> Option<usize> {
    // Reading the directory takes a descriptor of its own, counted too.
    std::fs::read_dir("/proc/self/fd").ok().map(|entries| entries.count().saturating_sub(1))
}

/// The connection cap: `configured`, or lower when the open-file limit
/// leaves no room for that many connections beside the descriptors open
/// now, [`RESERVED`] more and [`LINGERING`] connections being closed.
pub(super) fn connection_cap(configured: usize) -> usize {
    let Some(limit) = open_file_limit() else { return configured };
    let in_use = open_descriptors().unwrap_or(0);
    let room = limit.saturating_sub(in_use + RESERVED + LINGERING);
    if room >= configured {
        return configured;
    }
    let cap = room.max(1);
    tracing::warn!(
        "serving at most {cap} connections, not max-connections = {configured}: the open-file limit is {limit} \
         ({in_use} in use, {RESERVED} kept for files, {LINGERING} for connections closing); raise the hard limit (ulimit -Hn, LimitNOFILE=) to serve more"
    );
    cap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_under_the_limit() {
        assert_eq!(connection_cap(1), 1);
        let cap = connection_cap(usize::MAX);
        match open_file_limit() {
            Some(limit) => assert!(cap >= 1 && cap + RESERVED + LINGERING <= limit, "cap {cap} with limit {limit}"),
            // No limit: nothing to keep the cap under.
            None => assert_eq!(cap, usize::MAX),
        }
    }
}
