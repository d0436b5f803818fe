//! A network namespace per session, so that every transcript has the whole
//! port range to itself: the documents keep the ports a reader uses
//! (65432, 9090, …), sessions run side by side, and nothing clashes with
//! other servers on the machine.
//!
//! A session runs in a child process started as `unshare --net -- …`
//! (`--map-root-user` too when not root, which needs unprivileged user
//! namespaces); the child brings its loopback interface up, which a new
//! namespace has down.

use std::process::{Command, Stdio};

/// The `unshare` arguments that put a command in a new network namespace.
pub fn unshare_args() -> Vec<&'static str> {
    if rustix::process::geteuid().is_root() { vec!["--net", "--"] } else { vec!["--net", "--map-root-user", "--"] }
}

/// Whether this machine lets us make network namespaces and bring their
/// loopback up, or why not: `exe` (this program) is run in one with its
/// `check-netns` subcommand.
pub fn available(exe: &std::path::Path) -> Result<(), String> {
    let status = Command::new("unshare")
        .args(unshare_args())
        .arg(exe)
        .arg("check-netns")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    match status {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(format!("unshare failed: {}", String::from_utf8_lossy(&output.stderr).trim())),
        Err(e) => Err(format!("cannot run unshare (util-linux): {e}")),
    }
}

/// Sets the loopback interface `lo` up (SIOCSIFFLAGS), as
/// `ip link set lo up` does.
pub fn loopback_up() -> std::io::Result<()> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // SAFETY: a plain socket(2); the descriptor is owned (and closed) by
    // the OwnedFd at once.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: an all-zero ifreq is valid (a name of NULs, zero flags).
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write an ifreq, which
    // `request` is, for the length of the call.
    unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
