//! The socket hand-over of a zero-downtime upgrade, over pingora's fd transfer: the new
//! process (`serve --upgrade`) waits at the upgrade socket, the old one (on `SIGQUIT`)
//! connects and sends its listening sockets with their addresses.
//!
//! Whoever can reach the upgrade socket can hand the gateway a listener of their choosing,
//! or receive the real ones and with them the traffic, so its directory must be the
//! gateway's own: it is created 0700 when missing and refused when others can write to it.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use pingora::server::{Fds, ListenFds};

/// Pingora's listen-fd table once the listeners run, kept for a hand-over.
#[derive(Default)]
pub(crate) struct ListenTable(std::sync::OnceLock<ListenFds>);

impl ListenTable {
    pub(super) fn set(&self, table: &ListenFds) {
        let _ = self.0.set(std::sync::Arc::clone(table));
    }

    pub(super) fn get(&self) -> Option<ListenFds> {
        self.0.get().cloned()
    }
}

impl std::fmt::Debug for ListenTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if self.0.get().is_some() {
            "listening"
        } else {
            "not yet"
        };
        f.debug_tuple("ListenTable").field(&state).finish()
    }
}

/// The longest path a Unix socket address holds (`sun_path`, with its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Waits (five seconds) for the running gateway's sockets; returns them by address.
pub(super) fn receive_sockets(path: &Path) -> io::Result<Vec<(String, RawFd)>> {
    let path = usable_path(path)?;
    let mut fds = Fds::new();
    fds.get_from_sock(path).map_err(|errno| match errno {
        nix::errno::Errno::EAGAIN | nix::errno::Errno::ETIMEDOUT => io::Error::new(
            io::ErrorKind::TimedOut,
            "nothing arrived within 5 seconds: send SIGQUIT to the running gateway while this \
             one waits (`mcp-u2m-gateway upgrade` does both)",
        ),
        errno => io::Error::from(errno),
    })?;
    let (addresses, sockets) = fds.serialize();
    Ok(addresses.into_iter().zip(sockets).collect())
}

/// Sends the listening sockets in `table` to the process waiting at `path` (retrying for
/// five seconds while none is).
pub(super) fn send_sockets(table: &ListenFds, path: &Path) -> io::Result<()> {
    let path = usable_path(path)?;
    table
        .lock()
        .send_to_sock(path)
        .map(|_| ())
        .map_err(io::Error::from)
}

/// `path` as the string pingora takes, once its directory is private and it fits.
fn usable_path(path: &Path) -> io::Result<&str> {
    let text = path.to_str().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "the path is not valid UTF-8")
    })?;
    if text.len() > MAX_SOCKET_PATH {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a Unix socket path holds {MAX_SOCKET_PATH} bytes at most; set a shorter \
                 server.upgrade_socket"
            ),
        ));
    }
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is writable by others, who could take the listeners over through the \
                 upgrade socket: chmod 700 {0}, or set server.upgrade_socket to a private \
                 directory",
                dir.display()
            ),
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_others_can_write_to_is_refused_and_a_missing_one_is_made_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("new").join("upgrade.sock");
        assert!(usable_path(&missing).is_ok());
        let made = std::fs::metadata(dir.path().join("new")).expect("made");
        assert_eq!(made.permissions().mode() & 0o777, 0o700);

        let open = dir.path().join("open");
        std::fs::create_dir(&open).expect("dir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let error = usable_path(&open.join("upgrade.sock")).expect_err("refused");
        assert_eq!(error.kind(), io::ErrorKind::PermissionDenied);
        assert!(error.to_string().contains("chmod 700"), "{error}");
    }

    #[test]
    fn a_path_longer_than_a_socket_address_holds_is_refused() {
        let long = Path::new("/tmp").join("x".repeat(120));
        let error = usable_path(&long).expect_err("too long");
        assert!(
            error.to_string().contains("server.upgrade_socket"),
            "{error}"
        );
    }
}
