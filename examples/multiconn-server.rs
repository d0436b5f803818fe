//! The guide's multi-connection echo server: one thread serves every client
//! at once with non-blocking sockets and a readiness loop. The guide uses
//! Python's `selectors`; the Rust equivalent is `mio` (epoll, kqueue, …),
//! the library tokio itself is built on.
//!
//! ```console
//! $ cargo run --example multiconn-server -- 127.0.0.1 65432
//! listening on ('127.0.0.1', 65432)
//! accepted connection from ('127.0.0.1', 61354)
//! echoing b'Message 1 from client.Message 2 from client.' to ('127.0.0.1', 61354)
//! closing connection to ('127.0.0.1', 61354)
//! ```
//!
//! Try it with `cargo run --example multiconn-client -- 127.0.0.1 65432 2`.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use wasmux::net::explain;
use wasmux_guide::python::bytes_repr;

/// The listening socket's token; client connections get 1, 2, 3, …
const LISTENER: Token = Token(0);

/// What the guide keeps beside each client socket
/// (`types.SimpleNamespace(addr=addr, inb=b'', outb=b'')`).
struct Connection {
    stream: TcpStream,
    addr: SocketAddr,
    /// Received bytes not yet echoed back.
    outb: Vec<u8>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os().skip(1).map(|arg| arg.to_string_lossy().into_owned()).collect();
    let [host, port] = &args[..] else { return usage() };
    let Ok(port) = port.parse::<u16>() else { return usage() };
    match serve(host, port) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("multiconn-server: {error}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ExitCode {
    println!("usage: multiconn-server <host> <port>");
    ExitCode::FAILURE
}

fn serve(host: &str, port: u16) -> Result<(), String> {
    // As in Python, an empty host means every IPv4 interface; a name is
    // resolved and its first address used.
    let bind_host = if host.is_empty() { "0.0.0.0" } else { host };
    let addr = (bind_host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| format!("cannot resolve \"{host}\": check the host name"))?;
    // mio's bind() is socket() + setsockopt(SO_REUSEADDR) + bind() + listen(),
    // on a non-blocking socket: lsock.setblocking(False) in the guide.
    let mut listener = TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {}", explain(&e)))?;
    let port = listener.local_addr().map_or(port, |a| a.port());
    println!("listening on ('{host}', {port})");

    // The selector: we register sockets with the events we care about, and
    // poll() blocks until at least one of them is ready.
    let mut poll = Poll::new().map_err(|e| format!("cannot create the poller: {e}"))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(|e| format!("cannot watch the listening socket: {e}"))?;

    let mut connections: HashMap<Token, Connection> = HashMap::new();
    let mut next_token = 1;
    let mut events = Events::with_capacity(128);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll failed: {e}"));
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                accept_wrapper(&listener, &poll, &mut connections, &mut next_token);
            } else if let Some(conn) = connections.get_mut(&event.token())
                && !service_connection(conn)
            {
                println!("closing connection to {}", python_addr(conn.addr));
                if let Some(mut conn) = connections.remove(&event.token()) {
                    // Stop watching the socket before it is closed (dropped).
                    let _ = poll.registry().deregister(&mut conn.stream);
                }
            }
        }
    }
}

/// Accepts every waiting client and watches it for reading and writing.
fn accept_wrapper(listener: &TcpListener, poll: &Poll, connections: &mut HashMap<Token, Connection>, next_token: &mut usize) {
    // mio reports readiness once per change (edge-triggered), where Python's
    // select() keeps reporting it: so accept until there is nobody left.
    loop {
        let (mut stream, addr) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                println!("error: accept failed: {}", explain(&e));
                return;
            }
        };
        println!("accepted connection from {}", python_addr(addr));
        let token = Token(*next_token);
        *next_token += 1;
        // Accepted sockets are already non-blocking: conn.setblocking(False).
        match poll.registry().register(&mut stream, token, Interest::READABLE | Interest::WRITABLE) {
            Ok(()) => {
                connections.insert(token, Connection { stream, addr, outb: Vec::new() });
            }
            Err(e) => println!("error: cannot watch {}: {e}", python_addr(addr)),
        }
    }
}

/// Reads what the client sent and echoes it back. Returns false when the
/// connection is done: the client closed it, or it failed.
fn service_connection(conn: &mut Connection) -> bool {
    let mut data = [0u8; 1024];
    // Read all that is there (edge-triggered: no new event for what is left).
    loop {
        match conn.stream.read(&mut data) {
            // The client closed its side, so we close ours.
            Ok(0) => return false,
            Ok(received) => conn.outb.extend_from_slice(&data[..received]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                println!("error: reading from {}: {}", python_addr(conn.addr), explain(&e));
                return false;
            }
        }
    }
    // The guide echoes when select() says the socket is writable, which a
    // healthy socket nearly always is. With edge-triggered events we just
    // try now; if the send buffer is full, the next writable event resumes.
    while !conn.outb.is_empty() {
        println!("echoing {} to {}", bytes_repr(&conn.outb), python_addr(conn.addr));
        match conn.stream.write(&conn.outb) {
            // send() may take fewer bytes than offered: keep the rest.
            Ok(sent) => drop(conn.outb.drain(..sent)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                println!("error: writing to {}: {}", python_addr(conn.addr), explain(&e));
                return false;
            }
        }
    }
    true
}

/// An address as Python prints it: `('127.0.0.1', 61354)`, or for IPv6
/// `('::1', 61354, 0, 0)` (with flow info and scope id).
fn python_addr(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("('{}', {})", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("('{}', {}, {}, {})", a.ip(), a.port(), a.flowinfo(), a.scope_id()),
    }
}
