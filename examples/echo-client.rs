//! The guide's echo client: connects, sends `Hello, world`, and prints what
//! the server sends back.
//!
//! ```console
//! $ cargo run --example echo-client -- 127.0.0.1 65432
//! Received b'Hello, world'
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;

use wasmux_guide::python::bytes_repr;

const MESSAGE: &[u8] = b"Hello, world";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os().skip(1).map(|arg| arg.to_string_lossy().into_owned()).collect();
    let [host, port] = &args[..] else { return usage() };
    let Ok(port) = port.parse::<u16>() else { return usage() };
    match echo(host, port) {
        Ok(data) => {
            // Python's print('Received', repr(data)).
            println!("Received {}", bytes_repr(&data));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("echo-client: {error}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ExitCode {
    println!("usage: echo-client <host> <port>");
    ExitCode::FAILURE
}

fn echo(host: &str, port: u16) -> Result<Vec<u8>, String> {
    let explain = |e: std::io::Error| format!("{host}:{port}: {}", wasmux::net::explain(&e));
    // A host name is resolved, and each address tried in turn.
    let mut stream = TcpStream::connect((host, port)).map_err(|e| format!("cannot connect to {}", explain(e)))?;
    // write_all() is Python's sendall(): it writes until every byte is sent.
    stream.write_all(MESSAGE).map_err(|e| format!("cannot send to {}", explain(e)))?;

    // The guide's client calls recv(1024) once, and warns that it may return
    // fewer bytes than were sent (even just b'H'). TCP is a stream, not
    // messages: read until the whole echo is back.
    let mut data = vec![0u8; MESSAGE.len()];
    stream.read_exact(&mut data).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => format!("{host}:{port} closed the connection before echoing everything"),
        _ => format!("reading from {}", explain(e)),
    })?;
    Ok(data)
}
