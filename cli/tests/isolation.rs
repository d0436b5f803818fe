//! Tenant isolation against a real `wasmux serve`, shown by its mechanism
//! rather than by a latency: a tenant allowed two requests at once that
//! sends six gets exactly two run (they spin in the `spin` fixture until
//! their deadline) and four refused `overloaded` while those run; and while
//! it is saturated, another tenant's requests are admitted and answered,
//! before any of its spinning calls ends.
//!
//! How much a spinning neighbour slows a quiet tenant is a speed figure:
//! the benchmark `spinning_neighbours` prints it (docs/configuration.md).

use std::sync::{Arc, Mutex};

use crate::common::{Answer, Server, message, search, wait_until};
use serde_json::json;

/// The noisy tenant's `concurrent-requests`.
const ALLOWED: usize = 2;

/// Its requests, sent at once on as many connections.
const SENT: usize = 6;

/// A spin to the deadline, as the noisy tenant.
fn spin_request() -> Vec<u8> {
    message(
        json!({"byteorder": "little", "content-type": "application/x-spin", "content-encoding": "binary", "authorization": "Bearer noisy"}),
        b"forever",
    )
}

#[test]
fn a_saturated_tenant_runs_its_limit_of_requests_and_another_tenant_is_still_admitted() {
    // The deadline only has to outlast the quiet requests below (a few
    // milliseconds each); it is long so that a busy machine cannot end the
    // spinning calls before the quiet tenant has been served.
    let server = Server::start_with_fixtures(&format!(
        "[tenants.default]\n\
         [tenants.noisy]\n\
         token-sha256 = \"{}\"\n\
         limits = {{ concurrent-requests = {ALLOWED}, plugin-deadline = \"5s\" }}\n\
         routes.\"application/x-spin\" = \"spin\"\n",
        wasmux::tenancy::TokenHash::of("noisy")
    ));
    let mut quiet = server.connect();
    assert_eq!(quiet.request(&search("ring")).result(), "In the caves beneath the Misty Mountains. 💍");

    // Every answer to the noisy tenant, in the order they arrive.
    let arrived: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut connections: Vec<_> = (0..SENT).map(|_| server.connect()).collect();
    for conn in &mut connections {
        conn.send(&spin_request());
    }
    let readers: Vec<_> = connections
        .into_iter()
        .map(|mut conn| {
            let arrived = Arc::clone(&arrived);
            std::thread::spawn(move || {
                let code = Answer::parse(&conn.read_message()).error_code();
                arrived.lock().unwrap_or_else(|e| e.into_inner()).push(code);
            })
        })
        .collect();
    let answers = || arrived.lock().unwrap_or_else(|e| e.into_inner()).clone();

    // Saturated: all but its allowed number refused at once, while those run.
    wait_until("the noisy tenant's requests over its limit refused", || answers().len() >= SENT - ALLOWED);
    assert_eq!(answers(), vec!["overloaded"; SENT - ALLOWED], "refused while its calls spin: exactly those over its limit");

    // The quiet tenant is admitted and answered meanwhile.
    for query in ["morpheus", "ring", "neo", "morpheus", "ring"] {
        assert!(quiet.request(&search(query)).json()["result"].is_string(), "the quiet tenant was not answered");
    }
    assert_eq!(answers().len(), SENT - ALLOWED, "a spinning call ended before the quiet tenant was served: {:?}", answers());

    // The calls that ran end at their deadline; nothing else ran.
    for reader in readers {
        reader.join().expect("a noisy client");
    }
    let answers = answers();
    assert_eq!(answers[SENT - ALLOWED..], vec!["plugin-timeout"; ALLOWED], "{answers:?}");
    server.assert_serves_others();
}
