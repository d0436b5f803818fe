//! Addresses, as the guide's reference section discusses them: IPv4, IPv6
//! (`[::1]:65432`) and host names (resolved with getaddrinfo; a server
//! listens on every address a name resolves to, a client tries each in
//! turn); an empty host (`:65432`) means every interface. Socket errors
//! come back as one line naming the address and what to check.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, bail};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

/// The guide's port.
pub const DEFAULT_PORT: u16 = 65432;

/// Pending connections the kernel holds for us while we are at capacity.
const LISTEN_BACKLOG: i32 = 1024;

/// Splits `host:port`, `[v6]:port` or `:port` into host and port. A URL
/// (what `wasmux serve` prints for its admin endpoint, pasted) is refused
/// as one, naming the HOST:PORT in it, before its `://` makes it look like
/// an IPv6 address without brackets.
fn split(spec: &str) -> anyhow::Result<(&str, u16)> {
    if let Some((_, rest)) = spec.split_once("://") {
        let authority = rest.split('/').next().unwrap_or_default();
        bail!("address \"{spec}\" is a URL: give HOST:PORT, as {authority}");
    }
    if spec.contains('/') {
        bail!("address \"{spec}\": give HOST:PORT, without a path");
    }
    let (host, port) = spec
        .rsplit_once(':')
        .with_context(|| format!("address \"{spec}\" has no port; write HOST:PORT, [IPv6]:PORT or :PORT"))?;
    let port = port
        .parse::<u16>()
        .with_context(|| format!("address \"{spec}\": \"{port}\" is not a port number (0-65535)"))?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.contains(':') && !spec.starts_with('[') {
        bail!("address \"{spec}\": write an IPv6 address in brackets, as [{host}]:{port}");
    }
    Ok((host, port))
}

/// The host part of `spec` (`HOST:PORT`, `[IPv6]:PORT`): a name or an address.
pub fn host(spec: &str) -> anyhow::Result<&str> {
    split(spec).map(|(host, _)| host)
}

/// Resolves `spec` to socket addresses (getaddrinfo for names), without
/// duplicates, in the resolver's order. An empty host gives the unspecified
/// addresses (every interface) of both families.
pub async fn resolve(spec: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let (host, port) = split(spec)?;
    if host.is_empty() {
        return Ok(vec![
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        ]);
    }
    let found = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("cannot resolve \"{host}\": check the host name (and /etc/hosts, DNS)"))?;
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for addr in found {
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    if addrs.is_empty() {
        bail!("\"{host}\" resolves to no address");
    }
    Ok(addrs)
}

/// Whether a listening socket shares its port with another server's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sharing {
    /// The port is this server's alone (the default): a second server on it
    /// is refused with "address already in use".
    #[default]
    Alone,
    /// `wasmux serve --take-over`: the socket is bound with `SO_REUSEPORT`,
    /// so that another server started with `--take-over` may bind the same
    /// port, and the newest such server takes every new connection (see
    /// [`steer_to_newest`]). The older one keeps the connections it has;
    /// once it is stopped, nothing that reached the port was refused.
    TakeOver,
}

/// Listens on every address `spec` resolves to. With port 0 the system
/// picks a port for the first address and every other address gets the
/// same one, so that `localhost:0` or `:0` is still one port.
pub async fn bind_all(spec: &str) -> anyhow::Result<Vec<TcpListener>> {
    bind_all_sharing(spec, Sharing::Alone).await
}

/// [`bind_all`], with the ports shared as `sharing` says.
pub async fn bind_all_sharing(spec: &str, sharing: Sharing) -> anyhow::Result<Vec<TcpListener>> {
    let addrs = resolve(spec).await?;
    let picking = addrs.len() > 1 && addrs.iter().all(|addr| addr.port() == 0);
    let mut attempts = 0;
    loop {
        match bind_each(&addrs, sharing) {
            Ok(listeners) => return Ok(listeners),
            // The port picked for the first address is taken on another one:
            // let the system pick again.
            Err((_, e)) if picking && e.kind() == io::ErrorKind::AddrInUse && attempts < PICK_ATTEMPTS => attempts += 1,
            Err((addr, e)) => bail!("cannot listen on {addr}: {}", explain(&e)),
        }
    }
}

/// How often `bind_all` lets the system pick a port again when the port it
/// picked for one address is taken on another.
const PICK_ATTEMPTS: usize = 16;

/// Binds every address, giving those with port 0 the port picked for the first.
fn bind_each(addrs: &[SocketAddr], sharing: Sharing) -> Result<Vec<TcpListener>, (SocketAddr, io::Error)> {
    let mut listeners = Vec::with_capacity(addrs.len());
    let mut picked = None;
    for &addr in addrs {
        let mut addr = addr;
        if let (0, Some(port)) = (addr.port(), picked) {
            addr.set_port(port);
        }
        let listener = bind(addr, sharing).map_err(|e| (addr, e))?;
        if addr.port() == 0 {
            picked = Some(listener.local_addr().map_err(|e| (addr, e))?.port());
        }
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Listens on `addr`, sharing the port as `sharing` says.
pub fn bind(addr: SocketAddr, sharing: Sharing) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As the guide advises: restarting must not fail on TIME_WAIT leftovers.
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // So that [::] and 0.0.0.0 can both be bound on the same port.
        socket.set_only_v6(true)?;
    }
    if sharing == Sharing::TakeOver {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    if sharing == Sharing::TakeOver {
        // Only once listening: the kernel adds a TCP socket to its port's
        // group at listen(2), and a program attached before would be lost.
        steer_to_newest(&socket)?;
    }
    TcpListener::from_std(socket.into())
}

/// Sends every new connection of `socket`'s port to `socket`, the newest
/// member of the port's `SO_REUSEPORT` group, instead of spreading them
/// over its members by a hash of their addresses.
///
/// The kernel numbers a group's sockets in the order they began to listen,
/// and fills a hole a closed one leaves with the last. A classic BPF
/// program attached to the group (`SO_ATTACH_REUSEPORT_CBPF`, socket(7))
/// picks a socket by that number for each new connection, and the kernel
/// falls back to the hash when the number is past the group's end. The
/// program here always says 1: with the old server and this one, that is
/// this one; alone (the old one stopped), 1 is past the end and the hash
/// of a one-socket group is this socket. Attaching replaces the group's
/// program, so a third server taking over from this one works the same.
/// Without it, an old server stopping would reset the connections the
/// kernel had already queued for it (`net.ipv4.tcp_migrate_req` is off by
/// default): with it, the old server gets none from the moment the new one
/// listens.
#[cfg(target_os = "linux")]
fn steer_to_newest(socket: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // `return 1`: BPF_RET | BPF_K.
    let mut program = [libc::sock_filter { code: (libc::BPF_RET | libc::BPF_K) as u16, jt: 0, jf: 0, k: 1 }];
    let fprog = libc::sock_fprog { len: program.len() as u16, filter: program.as_mut_ptr() };
    // SAFETY: `fprog` points at `program`, both alive for the call, and the
    // length given is `sock_fprog`'s own; the kernel copies the program.
    let done = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&raw const fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if done != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn steer_to_newest(_socket: &Socket) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "taking over a port needs Linux's SO_ATTACH_REUSEPORT_CBPF"))
}

/// Connects to the first address of `spec` that answers within `timeout`.
pub async fn connect(spec: &str, timeout: Duration) -> anyhow::Result<TcpStream> {
    let addrs = resolve(spec).await?;
    let (stream, _) = connect_first(&addrs, timeout).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Tries each of `addrs` in turn, as a client does with the addresses a
/// name resolves to, and gives the first connection made within `timeout`
/// with its address. The error is the last address's, in one line.
pub async fn connect_first(addrs: &[SocketAddr], timeout: Duration) -> anyhow::Result<(TcpStream, SocketAddr)> {
    let mut last = None;
    for &addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok((stream, addr)),
            Ok(Err(e)) => last = Some(format!("cannot connect to {addr}: {}", explain(&e))),
            Err(_) => {
                last = Some(format!(
                    "cannot connect to {addr}: timed out after {timeout:?}: no response; is the host up, and is a firewall dropping packets?"
                ))
            }
        }
    }
    bail!(last.unwrap_or_else(|| "no address to connect to".to_owned()))
}

/// One line for a socket error: what happened and what to check, after the
/// guide's table of common errors.
pub fn explain(error: &io::Error) -> String {
    let hint = match error.kind() {
        io::ErrorKind::AddrInUse => {
            "address already in use: another process is listening on this port (ss -ltnp shows which); stop it or pick another port"
        }
        io::ErrorKind::AddrNotAvailable => "address not available: this machine has no interface with that address",
        io::ErrorKind::ConnectionRefused => {
            "connection refused: no server is listening on that port; is it running, and is the port right?"
        }
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
            "connection reset by peer: the other side crashed or closed its socket uncleanly, or a firewall or other device in the path cut the connection"
        }
        io::ErrorKind::BrokenPipe => "broken pipe: the other side closed the connection while we were still sending",
        io::ErrorKind::TimedOut => "operation timed out: no response from the peer; is the host up, and is a firewall dropping packets?",
        io::ErrorKind::PermissionDenied => "permission denied: ports below 1024 need privileges; use a higher port",
        io::ErrorKind::NetworkUnreachable | io::ErrorKind::HostUnreachable => {
            "unreachable: no route to that network or host; check the address and the network"
        }
        _ => return error.to_string(),
    };
    hint.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_addresses() {
        assert_eq!(split("127.0.0.1:65432").unwrap(), ("127.0.0.1", 65432));
        assert_eq!(split("[::1]:7").unwrap(), ("::1", 7));
        assert_eq!(split(":80").unwrap(), ("", 80));
        assert_eq!(split("localhost:0").unwrap(), ("localhost", 0));
        assert!(split("localhost").unwrap_err().to_string().contains("has no port"));
        assert!(split("::1:80").unwrap_err().to_string().contains("in brackets"));
        assert!(split("a:99999").unwrap_err().to_string().contains("not a port number"));
        assert_eq!(split("http://127.0.0.1:9090").unwrap_err().to_string(), "address \"http://127.0.0.1:9090\" is a URL: give HOST:PORT, as 127.0.0.1:9090");
        assert_eq!(split("https://[::1]:9090/metrics").unwrap_err().to_string(), "address \"https://[::1]:9090/metrics\" is a URL: give HOST:PORT, as [::1]:9090");
        assert_eq!(split("localhost:9090/").unwrap_err().to_string(), "address \"localhost:9090/\": give HOST:PORT, without a path");
    }

    #[tokio::test]
    async fn resolves_numbers_names_and_empty_hosts() {
        assert_eq!(resolve("127.0.0.1:5").await.unwrap(), vec![SocketAddr::from(([127, 0, 0, 1], 5))]);
        assert_eq!(resolve("[::1]:5").await.unwrap(), vec![SocketAddr::from((Ipv6Addr::LOCALHOST, 5))]);
        assert!(resolve("localhost:5").await.unwrap().iter().all(|a| a.ip().is_loopback()));
        assert_eq!(resolve(":5").await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn port_in_use_is_explained() {
        let first = bind_all("127.0.0.1:0").await.unwrap();
        let port = first[0].local_addr().unwrap().port();
        let error = bind_all(&format!("127.0.0.1:{port}")).await.unwrap_err().to_string();
        assert!(error.contains(&format!("cannot listen on 127.0.0.1:{port}: address already in use")), "{error}");
    }

    #[tokio::test]
    async fn every_address_of_a_name_gets_the_same_picked_port() {
        for spec in ["localhost:0", ":0"] {
            let listeners = bind_all(spec).await.unwrap();
            let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
            assert_eq!(addrs.len(), resolve(spec).await.unwrap().len(), "{spec}: {addrs:?}");
            assert!(addrs[0].port() != 0 && addrs.iter().all(|a| a.port() == addrs[0].port()), "{spec}: {addrs:?}");
        }
    }

    #[tokio::test]
    async fn an_empty_host_listens_on_both_families() {
        let listeners = bind_all(":0").await.unwrap();
        let port = listeners[0].local_addr().unwrap().port();
        for loopback in ["127.0.0.1", "[::1]"] {
            let addr = format!("{loopback}:{port}");
            connect(&addr, Duration::from_secs(2)).await.unwrap_or_else(|e| panic!("{addr}: {e:#}"));
        }
    }

    #[test]
    fn every_error_of_the_guides_table_is_explained() {
        for (kind, start) in [
            (io::ErrorKind::AddrInUse, "address already in use: "),
            (io::ErrorKind::ConnectionRefused, "connection refused: "),
            (io::ErrorKind::ConnectionReset, "connection reset by peer: "),
            (io::ErrorKind::TimedOut, "operation timed out: "),
        ] {
            let text = explain(&io::Error::from(kind));
            assert!(text.starts_with(start) && !text.contains('\n'), "{text}");
        }
        assert_eq!(explain(&io::Error::other("odd")), "odd");
    }

    /// Which of `listeners` accepts the next connection to `port`, if one
    /// does within a second.
    async fn who_accepts(port: u16, listeners: &[&TcpListener]) -> Option<usize> {
        let _client = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        let accepts = listeners.iter().enumerate().map(|(i, l)| Box::pin(async move { l.accept().await.map(|_| i) }));
        let (accepted, _, _) = tokio::time::timeout(Duration::from_secs(1), futures::future::select_all(accepts)).await.ok()?;
        Some(accepted.expect("accept"))
    }

    #[tokio::test]
    async fn a_server_taking_over_a_port_gets_every_new_connection() {
        let old = bind_all_sharing("127.0.0.1:0", Sharing::TakeOver).await.unwrap().remove(0);
        let port = old.local_addr().unwrap().port();
        assert_eq!(who_accepts(port, &[&old]).await, Some(0));
        // Beside it, on its port: not spread by a hash, every one to the new.
        let new = bind_all_sharing(&format!("127.0.0.1:{port}"), Sharing::TakeOver).await.unwrap().remove(0);
        for _ in 0..32 {
            assert_eq!(who_accepts(port, &[&old, &new]).await, Some(1));
        }
        // The old one stopped: the new one alone.
        drop(old);
        for _ in 0..4 {
            assert_eq!(who_accepts(port, &[&new]).await, Some(0));
        }
        // And a third takes over from the second.
        let newer = bind_all_sharing(&format!("127.0.0.1:{port}"), Sharing::TakeOver).await.unwrap().remove(0);
        for _ in 0..8 {
            assert_eq!(who_accepts(port, &[&new, &newer]).await, Some(1));
        }
    }

    #[tokio::test]
    async fn only_servers_that_take_over_share_a_port() {
        let alone = bind_all("127.0.0.1:0").await.unwrap();
        let port = alone[0].local_addr().unwrap().port();
        let error = bind_all_sharing(&format!("127.0.0.1:{port}"), Sharing::TakeOver).await.unwrap_err().to_string();
        assert!(error.contains("address already in use"), "{error}");
        let sharing = bind_all_sharing("127.0.0.1:0", Sharing::TakeOver).await.unwrap();
        let port = sharing[0].local_addr().unwrap().port();
        let error = bind_all(&format!("127.0.0.1:{port}")).await.unwrap_err().to_string();
        assert!(error.contains("address already in use"), "{error}");
    }

    #[tokio::test]
    async fn refused_connection_is_explained() {
        let listener = bind_all("127.0.0.1:0").await.unwrap();
        let addr = listener[0].local_addr().unwrap();
        drop(listener);
        let error = connect(&addr.to_string(), Duration::from_secs(2)).await.unwrap_err().to_string();
        assert!(error.contains("connection refused: no server is listening"), "{error}");
    }
}
