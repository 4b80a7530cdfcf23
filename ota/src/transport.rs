//! HTTPS for TUF: rustls on the ring provider with the configured CA and optional client
//! certificate, connect and read timeouts but no total timeout (bundles are large and links
//! slow), a minimum average rate (a server that trickles is given up on), and, for targets,
//! downloads that resume across interruptions and restarts.
//!
//! A target download is kept in `<downloads>/<key>.part` as it arrives, with the URL and the
//! server's validator (a strong `ETag`, else `Last-Modified`) in `<key>.json`. The next try asks
//! for the rest (`Range`, `If-Range`) and accepts only a `206` whose `Content-Range` starts where
//! the file ends; anything else, a `416` among it, starts over. The transport is told the signed
//! length of the target it fetches ([`HttpsTransport::expect_length`]): a part file that already
//! holds that many bytes (a restart between the last byte and the rename) is handed to TUF as
//! it is, with no request (a range from the end would be a `416`), and a longer one starts over. The bytes handed to tough are the part file's and
//! then the network's, so TUF checks the length and hash of the whole; only then is the part file
//! taken as the target ([`HttpsTransport::take_completed`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tough::{Transport, TransportError, TransportErrorKind, TransportStream};
use url::Url;

use crate::error::OtaError;

/// Timeouts and the slowest transfer accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing the TCP and TLS connection.
    pub connect: Duration,
    /// Silence on an open connection (reset by every byte received).
    pub read: Duration,
    /// Bytes per second a transfer must average over each `rate_window`; 0 turns the check off.
    pub min_rate: u64,
    pub rate_window: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(15),
            read: Duration::from_secs(60),
            min_rate: 1024,
            rate_window: Duration::from_secs(60),
        }
    }
}

/// A failure of the network or the server (retry later; a download resumes). Content that is
/// not what was signed is never one of these.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NetError(pub String);

/// The device could not keep the download (its own disk): not the network's fault.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StorageError(pub String);

/// The server sent less than the minimum rate over a window.
#[derive(Debug, thiserror::Error)]
#[error("{bytes} bytes in {secs} s, below {min_rate} bytes/s")]
pub struct SlowRetrieval {
    pub bytes: u64,
    pub secs: u64,
    pub min_rate: u64,
}

/// Bytes of the current target download so far (resumed bytes included) and its signed length.
#[derive(Debug, Default)]
pub struct Progress {
    done: AtomicU64,
    total: AtomicU64,
    resumed_from: AtomicU64,
}

impl Progress {
    /// (bytes so far, total, bytes that were already on disk when this try started)
    pub fn get(&self) -> (u64, u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
            self.resumed_from.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn start(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
        self.resumed_from.store(0, Ordering::Relaxed);
    }
}

/// What a `.part` file is a part of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PartInfo {
    url: String,
    /// `If-Range` value: a strong ETag or a Last-Modified date.
    validator: Option<String>,
}

#[derive(Debug, Clone)]
struct Resume {
    dir: PathBuf,
    targets_base: Url,
}

#[derive(Debug, Clone)]
pub struct HttpsTransport {
    client: reqwest::Client,
    timeouts: Timeouts,
    resume: Option<Resume>,
    progress: Arc<Progress>,
}

/// Chunks in flight between the download task and tough (each up to a socket read).
const CHANNEL_DEPTH: usize = 8;
/// A part file is synced to disk at least this often while it grows.
const SYNC_EVERY: u64 = 8 << 20;

impl HttpsTransport {
    pub fn new(tls: rustls::ClientConfig, timeouts: Timeouts) -> Result<Self, OtaError> {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(timeouts.connect)
            .read_timeout(timeouts.read)
            .https_only(true)
            // A redirect could lead off the configured server; TUF would catch forged content,
            // but the operator should see the misconfiguration.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| OtaError::Config(format!("cannot build the HTTPS client: {e}")))?;
        Ok(Self { client, timeouts, resume: None, progress: Arc::default() })
    }

    /// Downloads of URLs under `targets_base` are kept in `dir` as they arrive and resumed.
    pub fn with_resume(mut self, dir: PathBuf, targets_base: Url) -> Self {
        self.resume = Some(Resume { dir, targets_base });
        self
    }

    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// The signed length of the next target fetched (progress starts again from it).
    pub fn expect_length(&self, length: u64) {
        self.progress.start(length);
    }

    fn part_paths(&self, url: &Url) -> Option<(PathBuf, PathBuf)> {
        let r = self.resume.as_ref()?;
        if !url.as_str().starts_with(r.targets_base.as_str()) {
            return None;
        }
        let key = hex::encode(&sha2::Sha256::digest(url.as_str().as_bytes())[..16]);
        Some((r.dir.join(format!("{key}.part")), r.dir.join(format!("{key}.json"))))
    }

    /// After tough has read a target from `url` to the end without error (its length and hash
    /// are verified), the file that holds it; the caller renames it into place.
    pub fn take_completed(&self, url: &Url) -> Option<PathBuf> {
        let (part, info) = self.part_paths(url)?;
        let _ = std::fs::remove_file(info);
        part.exists().then_some(part)
    }

    /// Forgets a download whose content was refused.
    pub fn discard(&self, url: &Url) {
        if let Some((part, info)) = self.part_paths(url) {
            let _ = std::fs::remove_file(part);
            let _ = std::fs::remove_file(info);
        }
    }

    async fn get(
        &self,
        url: &Url,
        range_from: Option<(u64, Option<&str>)>,
    ) -> Result<reqwest::Response, TransportError> {
        let mut req = self.client.get(url.clone());
        if let Some((from, validator)) = range_from {
            req = req.header(reqwest::header::RANGE, format!("bytes={from}-"));
            if let Some(v) = validator {
                req = req.header(reqwest::header::IF_RANGE, v);
            }
        }
        let resp = req.send().await.map_err(|e| net(url, describe(&e)))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::GONE {
            return Err(TransportError::new(TransportErrorKind::FileNotFound, url));
        }
        // A range the server cannot satisfy is the caller's to handle (it starts over).
        let unsatisfiable = status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE && range_from.is_some();
        if !status.is_success() && !unsatisfiable {
            return Err(net(url, format!("the server answered {status}")));
        }
        Ok(resp)
    }

    async fn fetch_plain(&self, url: Url) -> Result<TransportStream, TransportError> {
        let resp = self.get(&url, None).await?;
        Ok(self.pump(url, None, Some(resp)))
    }

    async fn fetch_resumable(
        &self,
        url: Url,
        part: PathBuf,
        info_path: PathBuf,
    ) -> Result<TransportStream, TransportError> {
        let info: Option<PartInfo> = std::fs::read(&info_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|i: &PartInfo| i.url == url.as_str());
        let signed = self.progress.total.load(Ordering::Relaxed);
        let have = match (&info, std::fs::metadata(&part)) {
            (Some(_), Ok(m)) if signed == 0 || m.len() <= signed => m.len(),
            _ => 0,
        };
        if have > 0 && have == signed {
            tracing::info!(%url, have, "the download was complete before the restart; verifying it");
            self.progress.resumed_from.store(have, Ordering::Relaxed);
            return Ok(self.pump(url, Some((part, have)), None));
        }
        let mut resp = if have > 0 {
            let validator = info.as_ref().and_then(|i| i.validator.as_deref());
            Some(self.get(&url, Some((have, validator))).await?)
        } else {
            None
        };
        // Resume only on a 206 that starts where the part file ends.
        let resumed = match &resp {
            Some(r) if r.status() == reqwest::StatusCode::RANGE_NOT_SATISFIABLE => {
                tracing::warn!(%url, have, "the server cannot send the rest (416); starting the download over");
                resp = None;
                false
            }
            Some(r) if r.status() == reqwest::StatusCode::PARTIAL_CONTENT => {
                let starts_at =
                    r.headers().get(reqwest::header::CONTENT_RANGE).and_then(|v| v.to_str().ok()).and_then(range_start);
                if starts_at == Some(have) {
                    true
                } else {
                    tracing::warn!(%url, have, ?starts_at, "the server resumed elsewhere; starting the download over");
                    resp = None;
                    false
                }
            }
            Some(r) => {
                tracing::info!(%url, status = %r.status(), "the server sent the whole file; starting the download over");
                false
            }
            None => false,
        };
        let resp = match resp {
            Some(r) => r,
            None => self.get(&url, None).await?,
        };
        let validator = if resumed { info.and_then(|i| i.validator) } else { validator_of(&resp) };
        if !resumed {
            let fresh = PartInfo { url: url.to_string(), validator: validator.clone() };
            let write = std::fs::write(&info_path, serde_json::to_vec(&fresh).expect("part info serialises"))
                .and_then(|()| std::fs::File::create(&part).map(drop));
            write.map_err(|e| local(&url, &part, e))?;
        }
        let from = if resumed { have } else { 0 };
        self.progress.resumed_from.store(from, Ordering::Relaxed);
        Ok(self.pump(url, Some((part, from)), Some(resp)))
    }

    /// A stream of the part file's first `from` bytes, then the response body (none: the part
    /// file is whole), which is appended to the part file as it arrives; the rate is checked over
    /// each window.
    fn pump(&self, url: Url, part: Option<(PathBuf, u64)>, resp: Option<reqwest::Response>) -> TransportStream {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<tough::Bytes, TransportError>>(CHANNEL_DEPTH);
        let (timeouts, progress) = (self.timeouts, self.progress.clone());
        tokio::spawn(async move {
            let fail = |e: TransportError| async { drop(tx.send(Err(e)).await) };
            let mut sink = None;
            if let Some((path, from)) = &part {
                match replay(&url, path, *from, &tx, &progress).await {
                    Ok(Some(file)) => sink = Some(file),
                    Ok(None) => return,
                    Err(e) => return fail(e).await,
                }
            }
            let Some(resp) = resp else { return };
            let mut body = resp.bytes_stream();
            let (mut window_start, mut window_bytes, mut unsynced) = (Instant::now(), 0u64, 0u64);
            loop {
                let chunk = match body.next().await {
                    None => break,
                    Some(Ok(c)) => c,
                    Some(Err(e)) => {
                        if let Some(f) = &mut sink {
                            let _ = f.sync_data().await;
                        }
                        return fail(net(&url, describe(&e))).await;
                    }
                };
                if tx.is_closed() {
                    // The reader went away (the update was given up): nothing more goes to the
                    // part file, which a later try may already be resuming.
                    break;
                }
                if let (Some(f), Some((path, _))) = (&mut sink, &part) {
                    if let Err(e) = f.write_all(&chunk).await {
                        return fail(local(&url, path, e)).await;
                    }
                    unsynced += chunk.len() as u64;
                    if unsynced >= SYNC_EVERY {
                        unsynced = 0;
                        let _ = f.sync_data().await;
                    }
                }
                progress.done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                window_bytes += chunk.len() as u64;
                let elapsed = window_start.elapsed();
                if timeouts.min_rate > 0 && elapsed >= timeouts.rate_window {
                    if window_bytes < timeouts.min_rate.saturating_mul(elapsed.as_secs().max(1)) {
                        if let Some(f) = &mut sink {
                            let _ = f.sync_data().await;
                        }
                        let slow =
                            SlowRetrieval { bytes: window_bytes, secs: elapsed.as_secs(), min_rate: timeouts.min_rate };
                        return fail(TransportError::new_with_cause(TransportErrorKind::Other, &url, slow)).await;
                    }
                    (window_start, window_bytes) = (Instant::now(), 0);
                }
                if tx.send(Ok(chunk)).await.is_err() {
                    break; // tough stopped reading (too long): the caller discards the part
                }
            }
            if let Some(f) = &mut sink {
                if let Err(e) = f.sync_all().await {
                    let path = &part.as_ref().expect("a sink has a path").0;
                    return fail(local(&url, path, e)).await;
                }
            }
        });
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}

/// Sends the first `from` bytes of the part file, and opens it for appending the rest. `None`:
/// the reader went away.
async fn replay(
    url: &Url,
    path: &Path,
    from: u64,
    tx: &tokio::sync::mpsc::Sender<Result<tough::Bytes, TransportError>>,
    progress: &Progress,
) -> Result<Option<tokio::fs::File>, TransportError> {
    let mut file =
        tokio::fs::OpenOptions::new().read(true).append(true).open(path).await.map_err(|e| local(url, path, e))?;
    let mut left = from;
    while left > 0 {
        let mut buf = vec![0u8; left.min(256 << 10) as usize];
        file.read_exact(&mut buf).await.map_err(|e| local(url, path, e))?;
        left -= buf.len() as u64;
        progress.done.fetch_add(buf.len() as u64, Ordering::Relaxed);
        if tx.send(Ok(buf.into())).await.is_err() {
            return Ok(None);
        }
    }
    // Whatever lies past `from` (a partial write before a crash) is cut before appending.
    file.set_len(from).await.map_err(|e| local(url, path, e))?;
    Ok(Some(file))
}

/// `bytes START-END/TOTAL` → START.
fn range_start(content_range: &str) -> Option<u64> {
    content_range.strip_prefix("bytes ")?.split('-').next()?.trim().parse().ok()
}

/// The `If-Range` validator of a response: a strong ETag, else Last-Modified.
fn validator_of(resp: &reqwest::Response) -> Option<String> {
    let header =
        |h| resp.headers().get(h).and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok()).map(str::to_owned);
    header(reqwest::header::ETAG).filter(|e| !e.starts_with("W/")).or_else(|| header(reqwest::header::LAST_MODIFIED))
}

fn net(url: &Url, why: String) -> TransportError {
    TransportError::new_with_cause(TransportErrorKind::Other, url, NetError(why))
}

fn local(url: &Url, path: &Path, e: std::io::Error) -> TransportError {
    TransportError::new_with_cause(TransportErrorKind::Other, url, StorageError(format!("{}: {e}", path.display())))
}

/// reqwest's error with its sources (the useful part is often the innermost).
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "transfer failed"
    };
    format!("{what}: {}", crate::error::chain(e))
}

#[tough::async_trait]
impl Transport for HttpsTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        if url.scheme() != "https" {
            return Err(TransportError::new(TransportErrorKind::UnsupportedUrlScheme, url));
        }
        match self.part_paths(&url) {
            Some((part, info)) => self.fetch_resumable(url, part, info).await,
            None => self.fetch_plain(url).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_content_range_is_read_for_its_start() {
        assert_eq!(range_start("bytes 100-199/200"), Some(100));
        assert_eq!(range_start("bytes */200"), None);
        assert_eq!(range_start("items 1-2/3"), None);
    }
}
