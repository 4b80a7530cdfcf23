//! The rig's time server: SNTP (RFC 4330) answers from the rig's own clock, so that a target's
//! NTP client (systemd-timesyncd on the virtual board) can synchronize a clock that started in
//! the past, on a network that reaches nothing but the rig. It answers every request as a
//! stratum 1 server; it never sets a clock itself.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// Seconds from NTP's era 0 (1900-01-01) to the Unix epoch.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// An NTP timestamp (seconds since 1900, and a 32-bit fraction) of `t`.
fn ntp_timestamp(t: SystemTime) -> [u8; 8] {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = (since.as_secs() + NTP_UNIX_OFFSET) as u32;
    let frac = ((u64::from(since.subsec_nanos()) << 32) / 1_000_000_000) as u32;
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&secs.to_be_bytes());
    out[4..].copy_from_slice(&frac.to_be_bytes());
    out
}

/// The answer to `request` (a client's 48-byte packet, mode 3), received at `received`; `None`
/// for anything else.
fn answer(request: &[u8], received: SystemTime) -> Option<[u8; 48]> {
    if request.len() < 48 || request[0] & 0x07 != 3 {
        return None;
    }
    let version = (request[0] >> 3) & 0x07;
    let mut reply = [0u8; 48];
    reply[0] = (version << 3) | 4; // leap indicator 0 (synchronized), the client's version, server mode
    reply[1] = 1; // stratum 1: a reference clock
    reply[2] = request[2]; // the client's poll interval
    reply[3] = (-20i8) as u8; // precision: about a microsecond
                              // Root delay and dispersion: 0 (a reference clock); reference id: "RIG".
    reply[12..16].copy_from_slice(b"RIG\0");
    reply[16..24].copy_from_slice(&ntp_timestamp(received)); // reference: when last set
    reply[24..32].copy_from_slice(&request[40..48]); // originate: the client's transmit time
    reply[32..40].copy_from_slice(&ntp_timestamp(received));
    reply[40..48].copy_from_slice(&ntp_timestamp(SystemTime::now()));
    Some(reply)
}

/// Answers NTP requests on a UDP address until dropped.
pub struct TimeServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TimeServer {
    /// Serves on `addr` (NTP's port is 123: clients such as timesyncd take no other).
    pub fn start(addr: SocketAddr) -> Result<Self> {
        let socket = UdpSocket::bind(addr).with_context(|| format!("the rig's time server cannot bind {addr}"))?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let addr = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new().name("rig-ntp".into()).spawn(move || {
            let mut buf = [0u8; 512];
            while !stopping.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                if let Some(reply) = answer(&buf[..n], SystemTime::now()) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        })?;
        Ok(Self { addr, stop, thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TimeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_ntp(b: &[u8]) -> f64 {
        let secs = u32::from_be_bytes(b[..4].try_into().unwrap()) as f64;
        let frac = u32::from_be_bytes(b[4..8].try_into().unwrap()) as f64 / 4_294_967_296.0;
        secs + frac - NTP_UNIX_OFFSET as f64
    }

    #[test]
    fn a_client_request_is_answered_with_the_rigs_time_and_its_own_transmit_time_echoed() {
        let server = TimeServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut request = [0u8; 48];
        request[0] = (4 << 3) | 3; // version 4, client
        request[2] = 6;
        request[40..48].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        client.send_to(&request, server.addr()).unwrap();
        let mut reply = [0u8; 64];
        let (n, _) = client.recv_from(&mut reply).unwrap();
        assert_eq!(n, 48);
        assert_eq!(reply[0], (4 << 3) | 4, "leap 0, version 4, server");
        assert_eq!((reply[1], reply[2]), (1, 6), "stratum 1, the client's poll");
        assert_eq!(&reply[24..32], &[1, 2, 3, 4, 5, 6, 7, 8], "originate = the client's transmit time");
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        for field in [32, 40] {
            assert!((from_ntp(&reply[field..field + 8]) - now).abs() < 2.0, "field at {field}");
        }
        // Not a client request (a server's answer, a short packet): no answer.
        assert!(answer(&reply[..48], SystemTime::now()).is_none());
        assert!(answer(&request[..20], SystemTime::now()).is_none());
    }
}
