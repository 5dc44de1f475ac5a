//! Blobs on disk: `<data_dir>/media/<aa>/<blake3 hex>`, shared by every media ID with the
//! same content. Everything is written to `media/tmp/` first and renamed into place once
//! complete and synced, so a crash never leaves a partial file under a final name.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::body::{Body, Bytes, HttpBody};
use axum::http::{HeaderMap, StatusCode, header};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::api::account::random_token;
use crate::services::AppState;
use crate::{Error, Result};

/// What an upload left on disk.
pub struct Stored {
    pub blake3: String,
    pub size: u64,
}

pub fn media_dir(s: &AppState) -> PathBuf {
    s.config.data_dir.join("media")
}

/// Where the blob with this hash lives; the hash comes from our own table, but is checked
/// anyway because it becomes a path.
pub fn blob_path(s: &AppState, blake3: &str) -> Result<PathBuf> {
    if blake3.len() != 64 || !blake3.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(Error::internal("malformed blob hash"));
    }
    Ok(media_dir(s).join(&blake3[..2]).join(blake3))
}

/// A file in `media/tmp/` that is removed when dropped unless it was moved into place, so
/// a refused, failed or abandoned (client gone, future dropped) upload leaves nothing.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    fn new(s: &AppState) -> TempFile {
        TempFile {
            path: media_dir(s).join("tmp").join(random_token(12)),
            keep: false,
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn io_error(e: std::io::Error) -> Error {
    tracing::error!(error = %e, "media storage error");
    Error::internal("media storage error")
}

/// Streams an upload body to disk, hashing as it goes; over `max_upload_bytes` is
/// `M_TOO_LARGE` and leaves nothing behind.
pub async fn store(s: &AppState, headers: &HeaderMap, mut body: Body) -> Result<Stored> {
    let limit = s.config.max_upload_bytes;
    let too_large = || Error::too_large(format!("Cannot upload files larger than {limit} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let tmp = TempFile::new(s);
    if let Some(dir) = tmp.path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(io_error)?;
    }
    let mut file = tokio::fs::File::create(&tmp.path).await.map_err(io_error)?;
    let mut hasher = blake3::Hasher::new();
    let mut size: u64 = 0;
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|e| {
            Error::new(
                StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                format!("upload interrupted: {e}"),
            )
        })?;
        let Ok(data) = frame.into_data() else { continue };
        size += data.len() as u64;
        if size > limit {
            return Err(too_large());
        }
        hasher.update(&data);
        write_all(&mut file, &data).await.map_err(io_error)?;
    }
    // Flushing surfaces the error of tokio's last in-flight write, which sync_all would not.
    std::future::poll_fn(|cx| Pin::new(&mut file).poll_flush(cx))
        .await
        .map_err(io_error)?;
    file.sync_all().await.map_err(io_error)?;
    drop(file);
    let blake3 = hasher.finalize().to_hex().to_string();
    let dest = blob_path(s, &blake3)?;
    tokio::task::spawn_blocking(move || place(tmp, &dest))
        .await
        .map_err(|e| Error::internal(format!("task failed: {e}")))??;
    Ok(Stored { blake3, size })
}

/// `AsyncWriteExt::write_all` without tokio's `io-util` feature.
async fn write_all(file: &mut tokio::fs::File, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let n = std::future::poll_fn(|cx| Pin::new(&mut *file).poll_write(cx, data)).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
    }
    Ok(())
}

/// Moves a complete temp file to `dest` unless a file is already there: content-addressed
/// names mean an existing file holds the same bytes.
fn place(mut tmp: TempFile, dest: &Path) -> Result<()> {
    if dest.exists() {
        return Ok(());
    }
    let dir = dest
        .parent()
        .ok_or_else(|| Error::internal("blob path has no parent"))?;
    std::fs::create_dir_all(dir).map_err(io_error)?;
    std::fs::rename(&tmp.path, dest).map_err(io_error)?;
    tmp.keep = true;
    // The rename itself must survive a crash, or a committed row could name a missing blob.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes `bytes` to `dest` through a synced temp file (for derived files such as
/// thumbnails; blocking).
pub fn write_atomically(s: &AppState, dest: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = TempFile::new(s);
    if let Some(dir) = tmp.path.parent() {
        std::fs::create_dir_all(dir).map_err(io_error)?;
    }
    let mut f = std::fs::File::create(&tmp.path).map_err(io_error)?;
    f.write_all(bytes).map_err(io_error)?;
    f.sync_all().map_err(io_error)?;
    drop(f);
    place(tmp, dest)
}

/// Opens a blob for streaming out. A row whose blob is missing is reported as unknown
/// media (and logged: it means the data dir lost a file).
pub async fn open(path: &Path) -> Result<Body> {
    let file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::error!(path = %path.display(), "media blob missing");
            return Err(Error::not_found("Media not found"));
        }
        Err(e) => return Err(io_error(e)),
    };
    let len = file.metadata().await.map_err(io_error)?.len();
    Ok(Body::new(FileBody { file, remaining: len }))
}

/// A response body read from a file in chunks, with its exact length (so `Content-Length`
/// is set) and without holding the whole blob in memory.
struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
}

const CHUNK: u64 = 64 * 1024;

impl HttpBody for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::io::Result<Frame<Bytes>>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let mut buf = vec![0u8; self.remaining.min(CHUNK) as usize];
        let mut rb = ReadBuf::new(&mut buf);
        ready!(Pin::new(&mut self.file).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        if n == 0 {
            return Poll::Ready(Some(Err(std::io::ErrorKind::UnexpectedEof.into())));
        }
        buf.truncate(n);
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
