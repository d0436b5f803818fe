//! Reading files that someone else may have put in place: plugin files,
//! the configuration, cached code.
//!
//! A directory the server watches can hold anything its writers put there:
//! a FIFO (whose `open` blocks until a writer comes), a symbolic link to a
//! device (`/dev/zero` reads forever), a file of many gigabytes. So a file
//! is read only if it is a regular file, checked before it is opened (a
//! FIFO or a device is never opened) and again on the open descriptor
//! (`fstat`, in case it was replaced in between), opened without blocking,
//! and read up to a size cap. These calls block on the disk: call them off
//! the async runtime.

use std::fs::{File, Metadata};
use std::io::{self, Read as _};
use std::os::unix::fs::FileTypeExt as _;
use std::path::Path;

use rustix::fs::{Mode, OFlags};

/// Whether a symbolic link at the path itself is followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Follow it to what it points at (deployments link plugin and
    /// configuration files into place).
    Follow,
    /// Refuse it (files the server itself wrote, such as cached code).
    Refuse,
}

/// Opens `path` for reading if it is a regular file, without blocking;
/// returns the file and what `fstat` says of it. Anything else is an error
/// of kind `InvalidInput` that says what it is ("a FIFO", "a character
/// device"); a missing file is `NotFound`, as from `open`.
pub fn open_regular(path: &Path, links: Links) -> io::Result<(File, Metadata)> {
    let before = match links {
        Links::Follow => std::fs::metadata(path)?,
        Links::Refuse => std::fs::symlink_metadata(path)?,
    };
    check_regular(&before)?;
    let mut flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    if links == Links::Refuse {
        flags |= OFlags::NOFOLLOW;
    }
    let file = File::from(rustix::fs::open(path, flags, Mode::empty())?);
    let opened = file.metadata()?;
    check_regular(&opened)?;
    Ok((file, opened))
}

/// Reads `file` (opened by [`open_regular`], `metadata` its `fstat`) whole,
/// if it holds at most `max_size` bytes: an error of kind `FileTooLarge`
/// otherwise, found from its size before reading and checked again while
/// reading, in case it grows meanwhile.
pub fn read_capped(file: &File, metadata: &Metadata, max_size: u64) -> io::Result<Vec<u8>> {
    let too_large = |size: u64| io::Error::new(io::ErrorKind::FileTooLarge, format!("{size} bytes or more, over the limit of {max_size}"));
    if metadata.len() > max_size {
        return Err(too_large(metadata.len()));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    file.take(max_size.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_size {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// [`open_regular`], then [`read_capped`].
pub fn read_regular(path: &Path, max_size: u64, links: Links) -> io::Result<Vec<u8>> {
    let (file, metadata) = open_regular(path, links)?;
    read_capped(&file, &metadata, max_size)
}

fn check_regular(metadata: &Metadata) -> io::Result<()> {
    let kind = metadata.file_type();
    let what = if kind.is_file() {
        return Ok(());
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else {
        "not a file"
    };
    Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{what}, not a regular file")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let file = dir.path().join("plain");
        std::fs::write(&file, b"bytes").expect("write");
        assert_eq!(read_regular(&file, 5, Links::Follow).expect("read"), b"bytes");

        let error = read_regular(&file, 4, Links::Follow).expect_err("over the cap");
        assert_eq!(error.kind(), io::ErrorKind::FileTooLarge, "{error}");

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).expect("symlink");
        assert_eq!(read_regular(&link, 5, Links::Follow).expect("followed"), b"bytes");
        let error = read_regular(&link, 5, Links::Refuse).expect_err("not followed");
        assert!(error.to_string().contains("a symbolic link"), "{error}");

        let device = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &device).expect("symlink");
        let error = read_regular(&device, 5, Links::Follow).expect_err("a device");
        assert!(error.to_string().contains("a character device"), "{error}");

        let error = read_regular(dir.path(), 5, Links::Follow).expect_err("a directory");
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{error}");
        let error = read_regular(&dir.path().join("missing"), 5, Links::Follow).expect_err("missing");
        assert_eq!(error.kind(), io::ErrorKind::NotFound, "{error}");
    }

    #[test]
    fn a_fifo_is_not_opened() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let fifo = dir.path().join("x.wasm");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, Mode::from_raw_mode(0o600), 0).expect("mkfifo");
        // Opening it for reading without O_NONBLOCK would wait for a writer forever.
        let error = read_regular(&fifo, 5, Links::Follow).expect_err("a FIFO");
        assert!(error.to_string().contains("a FIFO"), "{error}");
    }
}
