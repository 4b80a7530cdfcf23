//! A real HTTPS file server on a free loopback port (a certificate from a throwaway test CA,
//! rustls), serving a directory, that can misbehave on request: cut a transfer, ignore `Range`,
//! trickle, append bytes to a target, or serve other bytes for a path. The OTA tests attack
//! devices with it; the OTA benchmark serves bundles with it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How the server misbehaves; changed while it runs.
#[derive(Debug, Default, Clone)]
pub struct Behaviour {
    /// Close the connection after this many body bytes of the next target response (once).
    pub cut_target_after: Option<u64>,
    /// Answer every request with the whole file, `200`, whatever `Range` says.
    pub ignore_range: bool,
    /// Answer every `Range` request with `416`, as a server whose file is shorter would.
    pub refuse_ranges: bool,
    /// Send target bodies this many bytes at a time, waiting this long between.
    pub trickle: Option<(usize, Duration)>,
    /// Bytes appended to every target body (and to its Content-Length).
    pub extra_target_bytes: usize,
    /// Bytes served instead of the file at a path (`metadata/timestamp.json`).
    pub replace: HashMap<String, Vec<u8>>,
}

#[derive(Debug, Default)]
pub struct Seen {
    /// Each request: path and its `Range` header.
    pub requests: Vec<(String, Option<String>)>,
}

pub struct Server {
    pub port: u16,
    /// The address it listens on (its certificate is for it).
    pub ip: std::net::IpAddr,
    pub ca: PathBuf,
    pub behaviour: Arc<Mutex<Behaviour>>,
    pub seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Serves `root` over HTTPS on 127.0.0.1 with a certificate from a new test CA in `pki`.
    pub async fn start(root: PathBuf, pki: &Path) -> Self {
        Self::start_on(root, pki, std::net::Ipv4Addr::LOCALHOST.into()).await
    }

    /// The same on a free port of `ip`, with a certificate for it.
    pub async fn start_on(root: PathBuf, pki: &Path, ip: std::net::IpAddr) -> Self {
        let ca = crate::pki::TestCa::new(pki, "update-ca");
        let (cert, key) = ca.issue_at("update-server", Some(&ip.to_string()));
        let chain = rustls_pemfile::certs(&mut std::fs::read(&cert).unwrap().as_slice())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut std::fs::read(&key).unwrap().as_slice()).unwrap().unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let behaviour = Arc::new(Mutex::new(Behaviour::default()));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (b, s) = (behaviour.clone(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, root, b, s) = (acceptor.clone(), root.clone(), b.clone(), s.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        serve(tls, &root, &b, &s).await;
                    }
                });
            }
        });
        Self { port, ip, ca: ca.ca_pem(), behaviour, seen, task }
    }

    /// The server's URL for directory `dir` (ends with `/`).
    pub fn url(&self, dir: &str) -> String {
        format!("https://{}/{dir}/", std::net::SocketAddr::new(self.ip, self.port))
    }

    pub fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.behaviour.lock().unwrap());
    }

    pub fn requests(&self) -> Vec<(String, Option<String>)> {
        self.seen.lock().unwrap().requests.clone()
    }
}

/// One request per connection: `GET /path`, with `Range: bytes=N-` and `If-Range` honoured as
/// nginx does: a range that starts at or past the end is `416` with `Content-Range: bytes */LEN`;
/// an `If-Range` that does not match gets the whole file.
async fn serve(
    mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    root: &Path,
    behaviour: &Mutex<Behaviour>,
    seen: &Mutex<Seen>,
) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tls.read(&mut byte).await.unwrap_or(0) == 0 || head.len() > 16 << 10 {
            return;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let path = text.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_owned();
    let header = |name: &str| {
        text.lines().find_map(|l| {
            l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_owned())
        })
    };
    let range = header("range");
    seen.lock().unwrap().requests.push((path.clone(), range.clone()));
    let b = behaviour.lock().unwrap().clone();
    let is_target = path.starts_with("targets/");
    let body = match b.replace.get(&path) {
        Some(bytes) => Some(bytes.clone()),
        None if path.contains("..") => None,
        None => std::fs::read(root.join(&path)).ok(),
    };
    let Some(mut body) = body else {
        let _ = tls.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
        let _ = tls.shutdown().await;
        return;
    };
    if is_target {
        body.extend(std::iter::repeat_n(b'X', b.extra_target_bytes));
    }
    let etag =
        format!("\"{}-{:x}\"", body.len(), body.iter().fold(0u64, |h, &x| h.wrapping_mul(31).wrapping_add(x.into())));
    let from = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|_| !b.ignore_range)
        .filter(|_| header("if-range").is_none_or(|v| v == etag));
    if from.is_some_and(|n| n >= body.len() || b.refuse_ranges) {
        let page = b"<html><head><title>416 Requested Range Not Satisfiable</title></head></html>\r\n";
        let head = format!(
            "HTTP/1.1 416 Requested Range Not Satisfiable\r\nContent-Range: bytes */{}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len(),
            page.len()
        );
        let _ = tls.write_all(&[head.as_bytes(), page].concat()).await;
        let _ = tls.shutdown().await;
        return;
    }
    let (status, part) = match from {
        Some(n) => {
            (format!("206 Partial Content\r\nContent-Range: bytes {n}-{}/{}", body.len() - 1, body.len()), &body[n..])
        }
        None => ("200 OK".to_owned(), &body[..]),
    };
    let head =
        format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nETag: {etag}\r\nConnection: close\r\n\r\n", part.len());
    if tls.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let cut = if is_target {
        let mut g = behaviour.lock().unwrap();
        g.cut_target_after.take()
    } else {
        None
    };
    let mut sent = 0usize;
    let step = b.trickle.filter(|_| is_target).map_or(64 << 10, |(n, _)| n);
    while sent < part.len() {
        let mut n = step.min(part.len() - sent);
        if let Some(c) = cut {
            let c = c as usize;
            if sent + n >= c {
                n = c.saturating_sub(sent);
                let _ = tls.write_all(&part[sent..sent + n]).await;
                let _ = tls.flush().await;
                return; // dropped without close_notify: the client sees a broken transfer
            }
        }
        if tls.write_all(&part[sent..sent + n]).await.is_err() {
            return;
        }
        sent += n;
        if let Some((_, pause)) = b.trickle.filter(|_| is_target) {
            let _ = tls.flush().await;
            tokio::time::sleep(pause).await;
        }
    }
    let _ = tls.shutdown().await;
}
