//! Serving the Snapshots service on a unix socket.
//!
//! [`bind_socket`] prepares the socket (directory 0700, stale socket removed, socket 0660) and
//! [`serve`] runs the gRPC server on it until a [`CancellationToken`] fires, so tests can run
//! the daemon in-process on a temporary socket.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;

use crate::snapshots::service::Service;

/// Errors of setting up or running the gRPC server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} exists and is not a socket; refusing to remove it")]
    NotASocket { path: std::path::PathBuf },
    #[error("gRPC server")]
    Transport(#[from] tonic::transport::Error),
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ServerError {
    let path = path.to_owned();
    move |source| ServerError::Io { op, path, source }
}

/// Binds `path`: creates its directory (0700), removes a stale socket left by a previous run,
/// and restricts the socket to its owner and group (0660). Needs a tokio runtime.
pub fn bind_socket(path: &Path) -> Result<UnixListener, ServerError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("create", dir))?;
    }
    match fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            fs::remove_file(path).map_err(io("remove stale socket", path))?
        }
        Ok(_) => {
            return Err(ServerError::NotASocket {
                path: path.to_owned(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("stat", path)(e)),
    }
    let listener = UnixListener::bind(path).map_err(io("bind", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660)).map_err(io("chmod", path))?;
    Ok(listener)
}

/// Serves `service` on `listener` until `shutdown` is cancelled; in-flight calls finish first.
pub async fn serve(
    listener: UnixListener,
    service: Service,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    tonic::transport::Server::builder()
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener),
            shutdown.cancelled_owned(),
        )
        .await?;
    Ok(())
}
