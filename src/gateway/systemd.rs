//! Readiness for systemd (`Type=notify`): when `NOTIFY_SOCKET` is set, the gateway sends
//! `READY=1` with its own `MAINPID` once it listens. After an upgrade the new process says
//! so too, and systemd (with `NotifyAccess=all`) follows the service to it.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

pub(super) fn notify_ready() {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let message = format!("MAINPID={}\nREADY=1\n", std::process::id());
    if let Err(error) = send(&socket, message.as_bytes()) {
        tracing::warn!(%error, "cannot tell systemd that the gateway is ready");
    }
}

fn send(socket: &OsStr, message: &[u8]) -> io::Result<()> {
    let sender = UnixDatagram::unbound()?;
    match socket.as_bytes().strip_prefix(b"@") {
        // An abstract socket name, as systemd may hand out.
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sender.send_to_addr(message, &addr)?;
        }
        None => {
            sender.send_to(message, Path::new(socket))?;
        }
    }
    Ok(())
}
