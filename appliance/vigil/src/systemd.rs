//! vigil as a `Type=notify` systemd service (`package/vigil.service`, docs/systemd.md):
//!
//! - `READY=1` once the store is open and the cameras and the scheduler run (not once every
//!   camera streams: an unreachable camera must not hold the service in "activating");
//! - `STATUS=` a line for `systemctl status`: cameras streaming, the model, the uplink;
//! - `WATCHDOG=1` only while the pipeline progresses — the scheduler turns (it does at least
//!   every 100 ms, frames or not) and every camera thread lives (a file played to its end
//!   finishes its thread: that is not a death) — never from a timer alone, so a deadlocked
//!   scheduler or a dead camera thread gets the service restarted;
//! - `EXTEND_TIMEOUT_USEC=` while the model loads (a TensorRT engine build on a first start takes
//!   minutes on an Orin) and while its first inferences run (the warm-up: slow on a cold engine
//!   or a slow board, and before READY, since the watchdog needs the scheduler's turns);
//! - `STOPPING=1` when it stops.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) nothing is sent.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// How far each `EXTEND_TIMEOUT_USEC` moves the start deadline, and how often it is sent.
const EXTEND_BY: Duration = Duration::from_secs(60);
const EXTEND_EVERY: Duration = Duration::from_secs(20);

fn under_systemd() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

fn send(states: &[NotifyState<'_>]) {
    if under_systemd() {
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }
}

/// Start-up is over: the service runs.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// The service is stopping.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Runs `work` (loading the model) while telling systemd, every 20 s, that start-up goes on.
pub fn extending_start<T>(work: impl FnOnce() -> T) -> T {
    if !under_systemd() {
        return work();
    }
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let ticker = std::thread::Builder::new().name("start-timeout".into()).spawn(move || loop {
        send(&[NotifyState::ExtendTimeoutUsec(EXTEND_BY.as_micros().try_into().unwrap_or(u32::MAX))]);
        if finished.recv_timeout(EXTEND_EVERY) != Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            return;
        }
    });
    let out = work();
    drop(done);
    if let Ok(t) = ticker {
        let _ = t.join();
    }
    out
}

/// The watchdog period systemd asked for (`WatchdogSec=`), if any.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|p| under_systemd() && !p.is_zero())
}

/// Whether the pipeline progressed since the last look.
#[derive(Debug, Default)]
pub struct Liveness {
    last_turns: Option<u64>,
}

impl Liveness {
    /// `turns`: the scheduler's loop count now; `dead_cameras`: cameras whose thread ended.
    /// `Err` says why no ping is due.
    pub fn check(&mut self, turns: u64, dead_cameras: &[String]) -> Result<(), String> {
        let stalled = self.last_turns.is_some_and(|t| turns <= t);
        self.last_turns = Some(turns);
        if stalled {
            return Err(format!("the scheduler has not turned since the last check ({turns} turns)"));
        }
        if !dead_cameras.is_empty() {
            return Err(format!("camera threads ended: {}", dead_cameras.join(", ")));
        }
        Ok(())
    }
}

/// Pings the watchdog every half `period` while [`Liveness`] holds, with the status line when
/// it changes; stops at `cancel`.
pub fn spawn_watchdog(
    period: Duration,
    turns: impl Fn() -> u64 + Send + 'static,
    dead_cameras: impl Fn() -> Vec<String> + Send + 'static,
    status_line: impl Fn() -> String + Send + 'static,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut liveness = Liveness::default();
        let mut tick = tokio::time::interval(period / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_status = String::new();
        let mut complained = false;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            match liveness.check(turns(), &dead_cameras()) {
                Ok(()) => {
                    complained = false;
                    let line = status_line();
                    if line != last_status {
                        send(&[NotifyState::Watchdog, NotifyState::Status(&line)]);
                        last_status = line;
                    } else {
                        send(&[NotifyState::Watchdog]);
                    }
                }
                Err(why) if !complained => {
                    complained = true;
                    tracing::error!("not pinging systemd's watchdog: {why}; systemd restarts vigil if this lasts");
                }
                Err(_) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_fed_only_while_the_scheduler_turns_and_every_camera_thread_lives() {
        let mut l = Liveness::default();
        assert_eq!(l.check(5, &[]), Ok(()), "the first look has nothing to compare with");
        assert_eq!(l.check(9, &[]), Ok(()));
        let e = l.check(9, &[]).unwrap_err();
        assert!(e.contains("has not turned"), "{e}");
        assert_eq!(l.check(10, &[]), Ok(()), "turning again");
        let e = l.check(11, &["door".to_owned()]).unwrap_err();
        assert!(e.contains("camera threads ended: door"), "{e}");
    }
}
