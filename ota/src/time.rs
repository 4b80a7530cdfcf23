//! Whether the wall clock can be trusted to judge metadata expiry.
//!
//! A board without an RTC battery boots in 1970, or at the last time it saved: with such a clock,
//! expired (frozen or replayed) metadata would look fresh. So the device checks for updates only
//! once the kernel says the clock is synchronized (NTP, chrony and systemd-timesyncd all clear the
//! kernel's `STA_UNSYNC` flag), and never at a time earlier than [`earliest_plausible`]. A wrong
//! clock delays updates and says why; it never locks the device out: the check is made again at
//! each try.

use std::time::{Duration, SystemTime};

/// 2026-01-01T00:00:00Z: no vigil with this crate ran earlier, so a clock reading earlier is wrong.
pub fn earliest_plausible() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600)
}

pub trait TimeSource: Send + Sync + std::fmt::Debug {
    /// `Err(why)` while the clock cannot be trusted.
    fn synchronized(&self) -> Result<(), String>;
}

/// The kernel's view, through `adjtimex(2)`.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelClock;

impl TimeSource for KernelClock {
    fn synchronized(&self) -> Result<(), String> {
        // SAFETY: adjtimex with `modes = 0` only reads the kernel's clock state into the zeroed
        // struct we own; rustix and nix do not wrap it.
        let (state, status) = unsafe {
            let mut tx: libc::timex = std::mem::zeroed();
            let state = libc::adjtimex(&mut tx);
            (state, tx.status)
        };
        if state == -1 {
            return Err(format!("adjtimex failed: {}", std::io::Error::last_os_error()));
        }
        if state == libc::TIME_ERROR || status & libc::STA_UNSYNC != 0 {
            return Err("the kernel reports the clock as unsynchronized".to_owned());
        }
        Ok(())
    }
}

/// A clock taken as synchronized (tests; a device whose operator vouches for its RTC).
#[derive(Debug, Default, Clone, Copy)]
pub struct AssumeSynchronized;

impl TimeSource for AssumeSynchronized {
    fn synchronized(&self) -> Result<(), String> {
        Ok(())
    }
}

/// A clock that never synchronizes (tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct NeverSynchronized;

impl TimeSource for NeverSynchronized {
    fn synchronized(&self) -> Result<(), String> {
        Err("no time source configured".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_the_first_of_january_2026() {
        assert_eq!(humantime::format_rfc3339(earliest_plausible()).to_string(), "2026-01-01T00:00:00Z");
    }

    #[test]
    fn the_kernel_answers() {
        // Either answer is possible on a build machine; what matters is that it is an answer
        // and not a failure of the call.
        if let Err(why) = KernelClock.synchronized() {
            assert!(!why.contains("adjtimex failed"), "{why}");
        }
    }
}
