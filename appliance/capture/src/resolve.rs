//! Name lookups with a deadline. `getaddrinfo` has no timeout of its own (an unreachable DNS
//! server holds it for tens of seconds), and the supervisor's thread must keep its rhythm: a
//! lookup runs on a thread of its own and is waited for up to a deadline. At most one lookup is
//! outstanding per resolver: a slow one is picked up by the next call instead of starting
//! another, so a dead DNS server costs one thread per camera, not one per poll.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

/// Finds an address for a host and port (the system resolver, or a stand-in in tests).
pub(crate) type Lookup = Arc<dyn Fn(&str, u16) -> Option<SocketAddr> + Send + Sync>;

pub(crate) struct Resolver {
    lookup: Lookup,
    timeout: Duration,
    pending: Option<Receiver<Option<SocketAddr>>>,
}

impl Resolver {
    /// The system resolver, waited for up to `timeout` a call.
    pub(crate) fn system(timeout: Duration) -> Self {
        Self::new(Arc::new(|host, port| (host, port).to_socket_addrs().ok()?.next()), timeout)
    }

    pub(crate) fn new(lookup: Lookup, timeout: Duration) -> Self {
        Self { lookup, timeout, pending: None }
    }

    /// The address of `host`, or `None` if it has none or the lookup did not answer in time.
    pub(crate) fn resolve(&mut self, host: &str, port: u16) -> Option<SocketAddr> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Some(SocketAddr::new(ip, port));
        }
        let answer = match self.pending.take() {
            Some(rx) => rx,
            None => {
                let (tx, rx) = mpsc::sync_channel(1);
                let (lookup, host) = (self.lookup.clone(), host.to_owned());
                let started = std::thread::Builder::new().name("dns".into()).spawn(move || {
                    let _ = tx.send(lookup(&host, port));
                });
                if started.is_err() {
                    return None;
                }
                rx
            }
        };
        match answer.recv_timeout(self.timeout) {
            Ok(addr) => addr,
            Err(RecvTimeoutError::Timeout) => {
                self.pending = Some(answer);
                None
            }
            Err(RecvTimeoutError::Disconnected) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use super::*;

    #[test]
    fn an_address_needs_no_lookup() {
        let mut r = Resolver::new(Arc::new(|_, _| panic!("no lookup for an address")), Duration::from_secs(1));
        assert_eq!(r.resolve("10.0.0.5", 554), Some("10.0.0.5:554".parse().unwrap()));
        assert_eq!(r.resolve("::1", 8554), Some("[::1]:8554".parse().unwrap()));
    }

    #[test]
    fn a_hung_lookup_is_given_up_on_at_the_deadline_and_not_started_twice() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let hung: Lookup = Arc::new(move |_, _| {
            counted.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_secs(3));
            None
        });
        let mut r = Resolver::new(hung, Duration::from_millis(100));
        let t0 = Instant::now();
        assert_eq!(r.resolve("cam.example", 554), None);
        assert_eq!(r.resolve("cam.example", 554), None);
        // Two calls, each waiting its deadline: far less than the lookup's 3 s.
        assert!(t0.elapsed() < Duration::from_secs(2), "the caller waited {:?}", t0.elapsed());
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the second call waits for the first lookup");
    }

    #[test]
    fn a_slow_answer_is_picked_up_by_the_next_call() {
        let slow: Lookup = Arc::new(|_, port| {
            std::thread::sleep(Duration::from_millis(200));
            Some(SocketAddr::from(([192, 0, 2, 1], port)))
        });
        let mut r = Resolver::new(slow, Duration::from_millis(20));
        assert_eq!(r.resolve("cam.example", 554), None, "not answered within 20 ms");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(r.resolve("cam.example", 554), Some("192.0.2.1:554".parse().unwrap()));
    }

    #[test]
    fn the_system_resolver_finds_localhost() {
        let mut r = Resolver::system(Duration::from_secs(5));
        assert!(r.resolve("localhost", 554).is_some_and(|a| a.ip().is_loopback()));
    }
}
