//! Files that someone else may have put in place, or may read while they
//! are written: plugin files, the configuration, cached code, built
//! plugins.
//!
//! ## Reading
//!
//! A directory the server watches can hold anything its writers put there:
//! a FIFO (whose `open` blocks until a writer comes), a symbolic link to a
//! device (`/dev/zero` reads forever), a file of many gigabytes. So a file
//! is read only if it is a regular file, checked before it is opened (a
//! FIFO or a device is never opened) and again on the open descriptor
//! (`fstat`, in case it was replaced in between), opened without blocking,
//! and read up to a size cap. These calls block on the disk: call them off
//! the async runtime.
//!
//! ## Writing
//!
//! [`write_atomically`] writes a file whole or not at all: into a new file
//! of a random name beside it (created exclusively, so no one can plant a
//! link there first), synced to disk, then renamed over the old name, and
//! the directory synced. A reader (a server watching a plugin directory, a
//! restart reading the cache) sees the old file or the new one, never half
//! of one, even after a crash. [`create_atomically`] does the same but
//! never replaces a file already there.
//!
//! ## Locking
//!
//! [`try_lock`] takes a lock file's advisory lock (`flock`), for a
//! resource one process uses at a time: a data directory, a merge of
//! cached files. The kernel lets it go when the file is closed, also when
//! its process is killed, so a crash never leaves it held.
//!
//! ## Plugin names
//!
//! [`is_plugin_name`] is the rule for the `NAME` of a plugin file
//! `NAME.wasm`: the server serves only files so named, and `wasmux build`
//! refuses to write any other (both depend on this crate; the toolchain
//! does not depend on the server's library, so the rule lives here).

use std::fs::{File, Metadata};
use std::io::{self, Read as _};
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
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

/// Opens the lock file `path` (created with permissions 0o600 if missing;
/// it must be a regular file) and takes its exclusive advisory lock
/// without waiting. `Ok(None)` if another open file holds it: another
/// process, or this one through another [`try_lock`]. The lock lasts until
/// the returned file is closed.
pub fn try_lock(path: &Path, links: Links) -> io::Result<Option<File>> {
    let mut flags = OFlags::RDWR | OFlags::CREATE | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    if links == Links::Refuse {
        flags |= OFlags::NOFOLLOW;
    }
    let file = File::from(rustix::fs::open(path, flags, Mode::RUSR | Mode::WUSR)?);
    check_regular(&file.metadata()?)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// How the temporary files of [`write_atomically`] begin, so that a sweep
/// can recognise ones a crash left behind.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Writes `path` whole or not at all (see the module's doc): `contents`
/// fills a new file beside it, created with permissions `mode` (0o600 for
/// secrets and the server's own files, 0o644 for what others read).
pub fn write_atomically(path: &Path, mode: u32, contents: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    let (dir, mut file) = temporary_beside(path, mode)?;
    contents(file.as_file_mut())?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// [`write_atomically`], except that a file already at `path` is left as
/// it is: returns `false` then (someone else created it first).
pub fn create_atomically(path: &Path, mode: u32, contents: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<bool> {
    let (dir, mut file) = temporary_beside(path, mode)?;
    contents(file.as_file_mut())?;
    file.as_file().sync_all()?;
    match file.persist_noclobber(path) {
        Ok(_) => sync_dir(dir).map(|()| true),
        Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e.error),
    }
}

/// A new file of a random name in `path`'s directory, created exclusively
/// (`O_CREAT|O_EXCL`) with permissions `mode`.
fn temporary_beside(path: &Path, mode: u32) -> io::Result<(&Path, tempfile::NamedTempFile)> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        Some(_) => Path::new("."),
        None => return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a file's path", path.display()))),
    };
    let file = tempfile::Builder::new().prefix(TEMP_PREFIX).permissions(std::fs::Permissions::from_mode(mode)).tempfile_in(dir)?;
    Ok((dir, file))
}

/// Makes a rename in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Whether `name` can name a plugin, as the file `NAME.wasm` in a
/// directory the server watches: ASCII letters, digits and `-_.@`, not
/// starting with `.` (a hidden file is what a deploy tool writes before it
/// renames it into place). No length limit here: the file system has one.
pub fn is_plugin_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_names_are_letters_digits_and_four_signs() {
        for good in ["search", "binary-echo", "search@v2", "my_plugin.v1", "A9"] {
            assert!(is_plugin_name(good), "{good:?}");
        }
        for bad in ["", ".hidden", "my plugin", "a/b", "a\\b", "caf\u{e9}", "a:b", "a\0b", "tab\t"] {
            assert!(!is_plugin_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_lock_is_held_by_one_open_file_at_a_time() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("the.lock");
        let first = try_lock(&path, Links::Refuse).expect("open").expect("free: taken");
        assert!(try_lock(&path, Links::Refuse).expect("open").is_none(), "held by the first");
        assert_eq!(first.metadata().expect("fstat").permissions().mode() & 0o777, 0o600, "only its owner may open it");
        drop(first);
        assert!(try_lock(&path, Links::Refuse).expect("open").is_some(), "let go when the first was closed");

        let link = dir.path().join("link.lock");
        std::os::unix::fs::symlink(&path, &link).expect("symlink");
        let held = try_lock(&link, Links::Follow).expect("followed").expect("free");
        assert!(try_lock(&path, Links::Refuse).expect("open").is_none(), "the link's target is what was locked");
        drop(held);
        assert!(try_lock(&link, Links::Refuse).is_err(), "a link refused");

        let fifo = dir.path().join("fifo.lock");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, Mode::RUSR | Mode::WUSR, 0).expect("mkfifo");
        let error = try_lock(&fifo, Links::Follow).expect_err("a FIFO is no lock file");
        assert!(error.to_string().contains("a FIFO"), "{error}");
    }

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

    #[test]
    fn a_write_replaces_the_file_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("plugin.wasm");
        std::fs::write(&path, b"old").expect("write");
        write_atomically(&path, 0o644, |file| io::Write::write_all(file, b"new bytes")).expect("written");
        assert_eq!(std::fs::read(&path).expect("read"), b"new bytes");
        assert_eq!(std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777, 0o644);
        let names: Vec<_> = std::fs::read_dir(dir.path()).expect("list").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, ["plugin.wasm"]);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("tags.json");
        std::fs::write(&path, b"old").expect("write");
        let failed = write_atomically(&path, 0o600, |file| {
            io::Write::write_all(file, b"half")?;
            Err(io::Error::other("the disk is full"))
        });
        assert_eq!(failed.expect_err("failed").to_string(), "the disk is full");
        assert_eq!(std::fs::read(&path).expect("read"), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1, "the temporary file is removed");
    }

    #[test]
    fn create_never_replaces() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("key");
        assert!(create_atomically(&path, 0o600, |file| io::Write::write_all(file, b"first")).expect("created"));
        assert!(!create_atomically(&path, 0o600, |file| io::Write::write_all(file, b"second")).expect("not created"));
        assert_eq!(std::fs::read(&path).expect("read"), b"first");
        assert_eq!(std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777, 0o600);
    }
}
