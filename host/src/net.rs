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
    /// [`steer_to_newest`]). The older one keeps the connections it has
    /// and, once stopped, drains them. At most two servers share a port:
    /// the steering can only tell the newer of two apart.
    ///
    /// Such a socket is only bound, not listening, until
    /// [`Bound::listen`]: a server that fails to start after binding
    /// (a bad token file, another port taken) has taken no connection from
    /// the running one.
    TakeOver,
}

/// Listens on every address `spec` resolves to. With port 0 the system
/// picks a port for the first address and every other address gets the
/// same one, so that `localhost:0` or `:0` is still one port.
pub async fn bind_all(spec: &str) -> anyhow::Result<Vec<TcpListener>> {
    bind_all_sharing(spec, Sharing::Alone).await?.listen()
}

/// Binds every address `spec` resolves to as [`bind_all`] does, sharing
/// the ports as `sharing` says; [`Bound::listen`] then listens.
pub async fn bind_all_sharing(spec: &str, sharing: Sharing) -> anyhow::Result<Bound> {
    let addrs = resolve(spec).await?;
    let picking = addrs.iter().all(|addr| addr.port() == 0);
    let mut attempts = 0;
    loop {
        match bind_each(&addrs, sharing) {
            Ok(sockets) => return Ok(Bound { sockets, sharing }),
            // The port picked for the first address is taken on another one:
            // let the system pick again.
            Err((_, e)) if picking && e.kind() == io::ErrorKind::AddrInUse && attempts < PICK_ATTEMPTS => attempts += 1,
            Err((addr, e)) => bail!("{}", cannot_listen(addr, &e, sharing)),
        }
    }
}

/// Why `addr` could not be bound, in one line; a port in use while taking
/// over says what `--take-over` shares.
fn cannot_listen(addr: SocketAddr, error: &io::Error, sharing: Sharing) -> String {
    let hint = match (sharing, error.kind()) {
        (Sharing::TakeOver, io::ErrorKind::AddrInUse) => " (--take-over shares a port only with a server started with --take-over, by the same user)",
        _ => "",
    };
    format!("cannot listen on {addr}: {}{hint}", explain(error))
}

/// Binds one address, as [`bind_all_sharing`] binds each.
pub fn bind_one(addr: SocketAddr, sharing: Sharing) -> anyhow::Result<Bound> {
    let sockets = bind_each(&[addr], sharing).map_err(|(addr, e)| anyhow::anyhow!("{}", cannot_listen(addr, &e, sharing)))?;
    Ok(Bound { sockets, sharing })
}

/// Sockets bound to their addresses: listening already when alone on
/// their ports, not yet when taking them over ([`Sharing::TakeOver`]).
#[derive(Debug)]
pub struct Bound {
    sockets: Vec<(Socket, SocketAddr)>,
    sharing: Sharing,
}

impl Bound {
    /// The addresses bound (with the ports the system picked).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets.iter().map(|(_, addr)| *addr).collect()
    }

    /// Listens on every socket; taking a port over, from now on its new
    /// connections come here ([`steer_to_newest`]).
    ///
    /// Only now are the sockets registered with the async runtime: a bound
    /// socket that is not listening polls as hung up, and tokio keeps a
    /// socket's "closed" readiness for good, so an accept loop on it would
    /// spin.
    pub fn listen(self) -> anyhow::Result<Vec<TcpListener>> {
        let mut listeners = Vec::with_capacity(self.sockets.len());
        for (socket, addr) in self.sockets {
            if self.sharing == Sharing::TakeOver {
                socket.listen(LISTEN_BACKLOG).with_context(|| format!("cannot listen on {addr}"))?;
                // Only once listening: the kernel adds a TCP socket to its
                // port's group at listen(2); a program attached before
                // would be lost.
                steer_to_newest(&socket).with_context(|| format!("cannot take over {addr}"))?;
            }
            listeners.push(TcpListener::from_std(socket.into()).with_context(|| format!("cannot listen on {addr}"))?);
        }
        Ok(listeners)
    }
}

/// How often `bind_all` lets the system pick a port again when the port it
/// picked for one address is taken on another.
const PICK_ATTEMPTS: usize = 16;

/// Binds every address, giving those with port 0 the port picked for the first.
fn bind_each(addrs: &[SocketAddr], sharing: Sharing) -> Result<Vec<(Socket, SocketAddr)>, (SocketAddr, io::Error)> {
    let mut sockets = Vec::with_capacity(addrs.len());
    let mut picked = None;
    for &addr in addrs {
        let mut addr = addr;
        if let (0, Some(port)) = (addr.port(), picked) {
            addr.set_port(port);
        }
        let socket = bind(addr, sharing).map_err(|e| (addr, e))?;
        let bound = socket.local_addr().ok().and_then(|a| a.as_socket()).ok_or_else(|| (addr, io::Error::other("the socket has no address")))?;
        if addr.port() == 0 {
            picked = Some(bound.port());
        }
        sockets.push((socket, bound));
    }
    Ok(sockets)
}

/// A socket bound to `addr`: listening if alone on its port, only bound
/// if taking it over (see [`Sharing::TakeOver`]).
fn bind(addr: SocketAddr, sharing: Sharing) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As the guide advises: restarting must not fail on TIME_WAIT leftovers.
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // So that [::] and 0.0.0.0 can both be bound on the same port.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    if sharing == Sharing::Alone {
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        return Ok(socket);
    }
    if addr.port() != 0 {
        may_take_over(addr, &listening_sockets(addr.port()))?;
    }
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    if addr.port() == 0 {
        // A port the system picked may be one another server shares (it
        // picks among those too): only a port of its own will do.
        let port = socket.local_addr()?.as_socket().map_or(0, |a| a.port());
        if listening_sockets(port).iter().any(|other| overlaps(*other, addr)) {
            return Err(io::Error::from(io::ErrorKind::AddrInUse));
        }
    }
    Ok(socket)
}

/// Whether a socket bound to `addr` may take over from those listening on
/// its port now (`listening`): only from one server at a time, on the very
/// same address (another spelling of it, `:PORT` for `127.0.0.1:PORT`,
/// would be a group of its own, and the more specific address would keep
/// its connections).
fn may_take_over(addr: SocketAddr, listening: &[SocketAddr]) -> io::Result<()> {
    let mut same = 0;
    for &other in listening.iter().filter(|other| overlaps(**other, addr)) {
        if other.ip() != addr.ip() {
            return Err(io::Error::other(format!(
                "{other} is listening on this port: to take it over, listen on the same address ({other}), not {addr}"
            )));
        }
        same += 1;
    }
    if same >= 2 {
        return Err(io::Error::other(format!(
            "two servers already share {addr} (a take-over is under way): start this one once the older has exited"
        )));
    }
    Ok(())
}

/// Whether a listener on `a` and one on `b` take some of the same
/// connections: the same port, family and address, or a wildcard address
/// of the family. (Our IPv6 sockets are IPv6 only; one that is not, of
/// another program, would overlap IPv4 too, which is not seen here.)
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.is_ipv4() == b.is_ipv4() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// The addresses of the TCP sockets listening on `port` in this network
/// namespace, one per socket, whoever owns them (`/proc/net/tcp` and
/// `tcp6`; none where those cannot be read).
fn listening_sockets(port: u16) -> Vec<SocketAddr> {
    let mut found = Vec::new();
    for (path, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        if let Ok(table) = std::fs::read_to_string(path) {
            found.extend(parse_listening(&table, v6).into_iter().filter(|addr| addr.port() == port));
        }
    }
    found
}

/// The local addresses of the sockets in state LISTEN (`0A`) of a
/// `/proc/net/tcp` (or, with `v6`, `tcp6`) table. An address is written as
/// the hexadecimal of each 32-bit word of the address in the machine's
/// byte order, then `:` and the port.
fn parse_listening(table: &str, v6: bool) -> Vec<SocketAddr> {
    let word = |hex: &str| u32::from_str_radix(hex, 16).ok().map(u32::to_ne_bytes);
    let mut found = Vec::new();
    for line in table.lines().skip(1) {
        let mut fields = line.split_whitespace();
        let (Some(local), Some(_remote), Some("0A")) = (fields.nth(1), fields.next(), fields.next()) else { continue };
        let Some((ip, port)) = local.split_once(':') else { continue };
        let Ok(port) = u16::from_str_radix(port, 16) else { continue };
        let ip = match (v6, ip.len()) {
            (false, 8) => word(ip).map(|b| std::net::IpAddr::from(Ipv4Addr::from(b))),
            (true, 32) => {
                let mut bytes = [0u8; 16];
                let mut ok = true;
                for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                    match word(&ip[i * 8..i * 8 + 8]) {
                        Some(b) => chunk.copy_from_slice(&b),
                        None => ok = false,
                    }
                }
                ok.then(|| std::net::IpAddr::from(Ipv6Addr::from(bytes)))
            }
            _ => None,
        };
        if let Some(ip) = ip {
            found.push(SocketAddr::new(ip, port));
        }
    }
    found
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
/// of a one-socket group is this socket. So a group must never hold three
/// ([`may_take_over`] refuses a third): with three, 1 would be the middle
/// one. Attaching replaces the group's program, so a third server taking
/// over from this one once the first has exited works the same. Without
/// the program, the connections would be spread over both servers, and
/// the old one stopping would reset those the kernel had queued for it
/// (`net.ipv4.tcp_migrate_req` is off by default). With it, the old server
/// gets none from the moment the new one listens. What the kernel queued
/// for it before, its accept loop takes at once; only clients left
/// waiting in its queue because it is at `max-connections` are reset when
/// it stops.
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

    /// A server's socket on `spec` that takes the port over at once.
    async fn taking_over(spec: &str) -> TcpListener {
        bind_all_sharing(spec, Sharing::TakeOver).await.unwrap().listen().unwrap().remove(0)
    }

    #[tokio::test]
    async fn a_server_taking_over_a_port_gets_every_new_connection() {
        let old = taking_over("127.0.0.1:0").await;
        let port = old.local_addr().unwrap().port();
        assert_eq!(who_accepts(port, &[&old]).await, Some(0));
        // Bound beside it but not yet listening (still starting): nothing.
        let new = bind_all_sharing(&format!("127.0.0.1:{port}"), Sharing::TakeOver).await.unwrap();
        for _ in 0..8 {
            assert_eq!(who_accepts(port, &[&old]).await, Some(0));
        }
        // Listening: not spread by a hash, every one to the new.
        let new = new.listen().unwrap().remove(0);
        for _ in 0..32 {
            assert_eq!(who_accepts(port, &[&old, &new]).await, Some(1));
        }
        // While two share the port, a third is refused.
        let error = bind_all_sharing(&format!("127.0.0.1:{port}"), Sharing::TakeOver).await.unwrap_err().to_string();
        assert!(error.contains("two servers already share 127.0.0.1:") && error.contains("once the older has exited"), "{error}");
        // The old one stopped: the new one alone.
        drop(old);
        for _ in 0..4 {
            assert_eq!(who_accepts(port, &[&new]).await, Some(0));
        }
        // And a third takes over from the second.
        let newer = taking_over(&format!("127.0.0.1:{port}")).await;
        for _ in 0..8 {
            assert_eq!(who_accepts(port, &[&new, &newer]).await, Some(1));
        }
    }

    #[tokio::test]
    async fn taking_over_needs_the_same_spelling_of_the_address() {
        let old = taking_over("127.0.0.1:0").await;
        let port = old.local_addr().unwrap().port();
        let error = bind_all_sharing(&format!(":{port}"), Sharing::TakeOver).await.unwrap_err().to_string();
        assert!(error.contains(&format!("127.0.0.1:{port} is listening on this port: to take it over, listen on the same address")), "{error}");
        let wide = taking_over("0.0.0.0:0").await;
        let port = wide.local_addr().unwrap().port();
        let error = bind_all_sharing(&format!("127.0.0.1:{port}"), Sharing::TakeOver).await.unwrap_err().to_string();
        assert!(error.contains(&format!("0.0.0.0:{port} is listening on this port")), "{error}");
    }

    #[test]
    fn listening_sockets_are_read_from_the_kernels_tables() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
                  0: 0100007F:FF98 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n   \
                  1: 0100007F:FF98 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n   \
                  2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0\n";
        let lo = u32::from_ne_bytes([127, 0, 0, 1]);
        let v4 = v4.replace("0100007F", &format!("{lo:08X}"));
        assert_eq!(parse_listening(&v4, false), vec![SocketAddr::from(([127, 0, 0, 1], 65432)), SocketAddr::from(([0, 0, 0, 0], 22))]);
        let one = u32::from_ne_bytes([0, 0, 0, 1]);
        let v6 = format!("  sl  local_address ...\n   0: 000000000000000000000000{one:08X}:1F90 00000000000000000000000000000000:0000 0A 0 0 0\n");
        assert_eq!(parse_listening(&v6, true), vec![SocketAddr::from((Ipv6Addr::LOCALHOST, 8080))]);
        assert!(parse_listening("header\n 0: garbage\n", false).is_empty());
    }

    #[tokio::test]
    async fn this_machines_listeners_are_found() {
        let listener = bind_all("127.0.0.1:0").await.unwrap().remove(0);
        let addr = listener.local_addr().unwrap();
        assert_eq!(listening_sockets(addr.port()), vec![addr]);
    }

    #[tokio::test]
    async fn only_servers_that_take_over_share_a_port() {
        let alone = bind_all("127.0.0.1:0").await.unwrap();
        let port = alone[0].local_addr().unwrap().port();
        let error = bind_all_sharing(&format!("127.0.0.1:{port}"), Sharing::TakeOver).await.unwrap_err().to_string();
        assert!(error.contains("address already in use") && error.contains("(--take-over shares a port only with a server started with --take-over"), "{error}");
        let sharing = taking_over("127.0.0.1:0").await;
        let port = sharing.local_addr().unwrap().port();
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
