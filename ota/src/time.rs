//! Whether the wall clock can be trusted to judge metadata expiry.
//!
//! A board without an RTC battery boots in 1970, or at the last time it saved: with such a clock,
//! expired (frozen or replayed) metadata would look fresh. So the device checks for updates only
//! once the kernel says the clock is synchronized (NTP, chrony and systemd-timesyncd all clear the
//! kernel's `STA_UNSYNC` flag), and never at a time earlier than [`earliest_plausible`]. A wrong
//! clock delays updates and says why; it never locks the device out: the check is made again at
//! each try.

pub use vigil_core::clock::earliest_plausible;

pub trait TimeSource: Send + Sync + std::fmt::Debug {
    /// `Err(why)` while the clock cannot be trusted.
    fn synchronized(&self) -> Result<(), String>;
}

/// The kernel's view, through `adjtimex(2)`.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelClock;

impl TimeSource for KernelClock {
    fn synchronized(&self) -> Result<(), String> {
        vigil_core::clock::kernel_clock_synchronized()
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
