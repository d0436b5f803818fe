//! The guide's echo server: waits for one client, sends back everything it
//! receives until the client closes, then exits.
//!
//! ```console
//! $ cargo run --example echo-server -- 127.0.0.1 65432
//! Connected by ('127.0.0.1', 64623)
//! ```
//!
//! Try it with `cargo run --example echo-client -- 127.0.0.1 65432`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os().skip(1).map(|arg| arg.to_string_lossy().into_owned()).collect();
    let [host, port] = &args[..] else { return usage() };
    let Ok(port) = port.parse::<u16>() else { return usage() };
    match serve_one_client(host, port) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("echo-server: {error}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ExitCode {
    println!("usage: echo-server <host> <port>");
    ExitCode::FAILURE
}

fn serve_one_client(host: &str, port: u16) -> Result<(), String> {
    // As in Python, an empty host means every IPv4 interface.
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    // `bind` is socket() + bind() + listen(); a host name is resolved and the
    // first address that can be bound is used, as Python's bind() does.
    let listener = TcpListener::bind((host, port)).map_err(|e| format!("cannot listen on {host}:{port}: {}", wasmux::net::explain(&e)))?;

    // accept() blocks until a client connects, and returns a new socket for
    // that client: the listening socket only ever accepts.
    let (mut conn, addr) = listener.accept().map_err(|e| format!("accept failed: {}", wasmux::net::explain(&e)))?;
    println!("Connected by {}", python_addr(addr));

    let mut data = [0u8; 1024];
    loop {
        // read() returns as soon as some bytes are there, at most 1024 of
        // them; 0 means the client closed its side.
        let received = conn.read(&mut data).map_err(|e| format!("reading from {addr}: {}", wasmux::net::explain(&e)))?;
        if received == 0 {
            return Ok(());
        }
        // write_all() is Python's sendall(): it writes until every byte is sent.
        conn.write_all(&data[..received]).map_err(|e| format!("writing to {addr}: {}", wasmux::net::explain(&e)))?;
    }
}

/// An address as Python prints it: `('127.0.0.1', 64623)`, or for IPv6
/// `('::1', 64623, 0, 0)` (with flow info and scope id).
fn python_addr(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("('{}', {})", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("('{}', {}, {}, {})", a.ip(), a.port(), a.flowinfo(), a.scope_id()),
    }
}
