//! HAProxy (`examples/cluster/haproxy.cfg`, Debian's haproxy 2.6) in front
//! of three real `wasmux serve` processes on loopback, with an agent
//! ([`wasmux::agent`]) per server: the protocol health check, the agent's
//! drain, and no request lost while a server stops.
//!
//! The agents run in this test's own tokio runtime, so that the test can
//! set each one's state directly; `cli/tests/fleet.rs` drives the same
//! through `wasmux serve --agent` and SIGTERM.


use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::haproxy::{LoadBalancer, ServerStat};
use crate::common::{Raw, Server, search};
use tokio_util::sync::CancellationToken;
use wasmux::agent::{Agent, AgentState};

const RABBIT: &str = "Follow the white rabbit. 🐰";

/// The three agents, served by a runtime of their own (the test itself
/// uses blocking sockets).
struct Agents {
    states: Vec<Arc<AgentState>>,
    ports: [u16; 3],
    shutdown: CancellationToken,
    /// Serves the agents; dropping it ends them.
    _runtime: tokio::runtime::Runtime,
}

impl Agents {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("a runtime");
        let shutdown = CancellationToken::new();
        let mut states = Vec::new();
        let mut ports = [0; 3];
        for port in &mut ports {
            let state = AgentState::new();
            let agent = runtime
                .block_on(Agent::bind("127.0.0.1:0".parse().expect("an address"), Arc::clone(&state)))
                .expect("bind an agent");
            *port = agent.local_addr().expect("address").port();
            runtime.spawn(agent.serve(shutdown.clone()));
            states.push(state);
        }
        Self { states, ports, shutdown, _runtime: runtime }
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        // The runtime, dropped after this, ends the listeners' tasks.
        self.shutdown.cancel();
    }
}

/// Sends a search on a new connection through the load balancer.
fn request(lb: &LoadBalancer) -> Result<(), String> {
    let connection = std::net::TcpStream::connect_timeout(&lb.addr, crate::common::STEP).map_err(|e| format!("connect: {e}"))?;
    connection.set_read_timeout(Some(crate::common::STEP)).map_err(|e| e.to_string())?;
    let mut raw = Raw { stream: connection };
    std::io::Write::write_all(&mut raw.stream, &search("morpheus")).map_err(|e| format!("send: {e}"))?;
    let answer = raw.try_read_message().map_err(|e| format!("read: {e}"))?;
    let result = crate::common::Answer::parse(&answer).result();
    if result == RABBIT { Ok(()) } else { Err(format!("wrong answer {result:?}")) }
}

fn totals(lb: &LoadBalancer) -> HashMap<String, u64> {
    lb.servers().into_iter().map(|(name, stat)| (name, stat.total)).collect()
}

#[test]
fn balances_drains_by_agent_and_loses_nothing_when_a_server_stops() {
    let servers = [Server::start(), Server::start(), Server::start()];
    let agents = Agents::start();
    let lb = LoadBalancer::start([servers[0].addr, servers[1].addr, servers[2].addr], agents.ports);

    // The protocol health check finds every server up.
    for name in ["wasmux1", "wasmux2", "wasmux3"] {
        lb.wait_for_status(name, "UP", Duration::from_secs(10));
    }

    // Connections are spread over the three.
    let before = totals(&lb);
    for _ in 0..30 {
        request(&lb).expect("a request through haproxy");
    }
    let after = totals(&lb);
    for name in ["wasmux1", "wasmux2", "wasmux3"] {
        assert!(after[name] - before[name] >= 5, "{name} got too few of 30 connections: {before:?} -> {after:?}");
    }

    // A persistent connection; find the server it is on, once HAProxy has
    // counted the 30 connections above closed (on a busy machine it may
    // still count one open for a moment).
    crate::common::wait_until("HAProxy counts the earlier connections closed", || lb.servers().values().all(|s| s.current == 0));
    let mut kept = Raw::connect(lb.addr);
    assert_eq!(kept.request(&search("morpheus")).result(), RABBIT);
    let on: Vec<(String, ServerStat)> = lb.servers().into_iter().filter(|(_, s)| s.current == 1).collect();
    assert_eq!(on.len(), 1, "one server holds the connection: {on:?}");
    let drained = on[0].0.clone();
    let index: usize = drained.trim_start_matches("wasmux").parse::<usize>().expect("wasmuxN") - 1;

    // Its agent says drain: within a second or two HAProxy sends it no new
    // connection, while the open one keeps being served.
    let started = Instant::now();
    agents.states[index].set_draining();
    lb.wait_for_status(&drained, "DRAIN", Duration::from_secs(5));
    let drain_seen = started.elapsed();
    let before = totals(&lb);
    for _ in 0..30 {
        request(&lb).expect("a request while one server drains");
    }
    let after = totals(&lb);
    assert_eq!(after[&drained], before[&drained], "a draining server got new connections: {before:?} -> {after:?}");
    assert_eq!(kept.request(&search("morpheus")).result(), RABBIT, "the open connection is still served");

    // Ready again: back in rotation.
    agents.states[index].set_ready();
    lb.wait_for_status(&drained, "UP", Duration::from_secs(5));

    // A server stops while clients keep connecting: connections refused by
    // it are retried on another server (`option redispatch 1`) until the
    // health check takes it out. Every request is answered.
    let victim = (index + 1) % 3;
    let victim_name = format!("wasmux{}", victim + 1);
    let [a, b, c] = servers;
    let mut servers = [Some(a), Some(b), Some(c)];
    let mut stopped = servers[victim].take().expect("running");
    let (mut sent, mut failures) = (0, Vec::new());
    let started = Instant::now();
    let (mut terminated, mut down_after) = (None, None);
    while started.elapsed() < Duration::from_secs(6) && sent < 5000 {
        if sent == 20 {
            assert!(stopped.terminate(), "wasmux stops on SIGTERM");
            terminated = Some(Instant::now());
        }
        sent += 1;
        if let Err(e) = request(&lb) {
            failures.push(e);
        }
        if let Some(at) = terminated
            && down_after.is_none()
            && lb.servers()[&victim_name].status.starts_with("DOWN")
        {
            down_after = Some(at.elapsed());
        }
    }
    assert!(failures.is_empty(), "{} of {sent} requests failed: {failures:?}", failures.len());
    let down_after = down_after.expect("the stopped server seen DOWN by the health check");
    eprintln!(
        "figures: drain seen by haproxy {:.1} s after set_draining; {victim_name} seen DOWN {:.1} s after it stopped; \
         {sent} requests on new connections meanwhile, 0 failed",
        drain_seen.as_secs_f64(),
        down_after.as_secs_f64()
    );
    drop(stopped);
    drop(lb);
    drop(agents);
}
