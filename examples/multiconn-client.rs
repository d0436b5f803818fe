//! The guide's multi-connection client: opens NUM_CONNECTIONS connections at
//! once, sends two messages on each, and closes each connection once the
//! server has echoed everything back; one thread, non-blocking sockets and a
//! readiness loop (`mio`, Rust's `selectors`).
//!
//! ```console
//! $ cargo run --example multiconn-client -- 127.0.0.1 65432 2
//! starting connection 1 to ('127.0.0.1', 65432)
//! starting connection 2 to ('127.0.0.1', 65432)
//! sending b'Message 1 from client.' to connection 1
//! sending b'Message 2 from client.' to connection 1
//! sending b'Message 1 from client.' to connection 2
//! sending b'Message 2 from client.' to connection 2
//! received b'Message 1 from client.Message 2 from client.' from connection 1
//! closing connection 1
//! received b'Message 1 from client.Message 2 from client.' from connection 2
//! closing connection 2
//! ```

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use wasmux::net::explain;
use wasmux_guide::python::bytes_repr;

const MESSAGES: [&[u8]; 2] = [b"Message 1 from client.", b"Message 2 from client."];

/// What the guide keeps beside each socket (`types.SimpleNamespace(connid=…,
/// msg_total=…, recv_total=0, messages=list(messages), outb=b'')`).
struct Connection {
    connid: usize,
    stream: TcpStream,
    /// False until the non-blocking connect has completed.
    connected: bool,
    /// Messages not yet sent.
    messages: VecDeque<&'static [u8]>,
    /// The part of the current message not yet sent.
    outb: &'static [u8],
    /// Everything the server has echoed so far.
    received: Vec<u8>,
}

/// How a connection ended.
enum Done {
    /// Everything sent came back.
    Echoed,
    Failed(String),
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os().skip(1).map(|arg| arg.to_string_lossy().into_owned()).collect();
    let [host, port, num_conns] = &args[..] else { return usage() };
    let (Ok(port), Ok(num_conns)) = (port.parse::<u16>(), num_conns.parse::<usize>()) else { return usage() };
    match run(host, port, num_conns) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("multiconn-client: {error}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ExitCode {
    println!("usage: multiconn-client <host> <port> <num_connections>");
    ExitCode::FAILURE
}

/// Runs every connection to its end; true if all of them got their echo.
fn run(host: &str, port: u16, num_conns: usize) -> Result<bool, String> {
    let server_addr = (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| format!("cannot resolve \"{host}\": check the host name"))?;
    let mut poll = Poll::new().map_err(|e| format!("cannot create the poller: {e}"))?;
    let mut connections = start_connections(&poll, host, server_addr, num_conns)?;

    let mut all_echoed = true;
    let mut events = Events::with_capacity(128);
    // Until every connection is closed.
    while !connections.is_empty() {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll failed: {e}"));
        }
        for event in events.iter() {
            let Some(conn) = connections.get_mut(&event.token()) else { continue };
            let Some(done) = service_connection(conn) else { continue };
            if let Done::Failed(error) = done {
                println!("error: connection {}: {error}", conn.connid);
                all_echoed = false;
            }
            println!("closing connection {}", conn.connid);
            if let Some(mut conn) = connections.remove(&event.token()) {
                let _ = poll.registry().deregister(&mut conn.stream);
            }
        }
    }
    Ok(all_echoed)
}

fn start_connections(poll: &Poll, host: &str, server_addr: SocketAddr, num_conns: usize) -> Result<HashMap<Token, Connection>, String> {
    let mut connections = HashMap::new();
    for connid in 1..=num_conns {
        println!("starting connection {connid} to ('{host}', {})", server_addr.port());
        // A non-blocking connect, like the guide's connect_ex(): it returns at
        // once, and the socket becomes writable when the connection is up.
        let mut stream =
            TcpStream::connect(server_addr).map_err(|e| format!("cannot connect to {server_addr}: {}", explain(&e)))?;
        poll.registry()
            .register(&mut stream, Token(connid), Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| format!("cannot watch connection {connid}: {e}"))?;
        let conn = Connection {
            connid,
            stream,
            connected: false,
            messages: MESSAGES.into_iter().collect(),
            outb: b"",
            received: Vec::new(),
        };
        connections.insert(Token(connid), conn);
    }
    Ok(connections)
}

/// Sends what is left to send and reads what came back. Returns how the
/// connection ended, or None while it goes on.
fn service_connection(conn: &mut Connection) -> Option<Done> {
    if !conn.connected {
        // Did the connect succeed? mio's way to ask: take_error(), then peer_addr().
        if let Ok(Some(e)) | Err(e) = conn.stream.take_error() {
            return Some(Done::Failed(format!("cannot connect: {}", explain(&e))));
        }
        match conn.stream.peer_addr() {
            Ok(_) => conn.connected = true,
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return None,
            Err(e) => return Some(Done::Failed(format!("cannot connect: {}", explain(&e)))),
        }
    }

    // Send the messages, one after the other, as long as the socket takes them.
    loop {
        if conn.outb.is_empty() {
            match conn.messages.pop_front() {
                Some(message) => conn.outb = message,
                None => break,
            }
        }
        println!("sending {} to connection {}", bytes_repr(conn.outb), conn.connid);
        match conn.stream.write(conn.outb) {
            // send() may take fewer bytes than offered: keep the rest.
            Ok(sent) => conn.outb = &conn.outb[sent..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Some(Done::Failed(format!("sending: {}", explain(&e)))),
        }
    }

    // Read everything that has arrived (edge-triggered: no new event for
    // what is left), until all we sent is back.
    let msg_total: usize = MESSAGES.iter().map(|m| m.len()).sum();
    let mut data = [0u8; 1024];
    loop {
        match conn.stream.read(&mut data) {
            Ok(0) => {
                return Some(Done::Failed(format!(
                    "the server closed the connection after echoing {} of {msg_total} bytes",
                    conn.received.len()
                )));
            }
            Ok(received) => {
                conn.received.extend_from_slice(&data[..received]);
                if conn.received.len() >= msg_total {
                    println!("received {} from connection {}", bytes_repr(&conn.received), conn.connid);
                    return Some(Done::Echoed);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Some(Done::Failed(format!("reading: {}", explain(&e)))),
        }
    }
}
