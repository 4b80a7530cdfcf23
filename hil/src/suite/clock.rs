//! A board whose clock starts in the past (an RTC that lost its time reads 2000-01-01) with no
//! time sync, then time sync arriving: systemd-timesyncd on the target, served by the rig's time
//! server ([`crate::ntp`]). Needs [`Capability::SetClock`](crate::target::Capability::SetClock).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use super::ota::{apply, publish, states_of};
use super::Ctx;
use crate::ntp::TimeServer;

/// The year an RTC without its battery starts in, here.
const PAST: &str = "2000-01-01 00:00:00";

/// Update states past the download, and so past the metadata refresh where the clock gates an
/// update (a refresh that waits for the clock is published as `downloading` with `retrying`).
const PAST_THE_CLOCK: [&str; 5] = ["verifying", "accepting", "activating", "canary", "successful"];

/// vigil started with the clock in 2000 and `ota.clock = "kernel"`: its events carry the year
/// 2000 and say their clock was not synchronized, an update waits for the clock and says why;
/// then the target's NTP client synchronizes from the rig: the update goes on, and events that
/// begin after the sync carry the right time and no mark.
pub fn clock_from_2000(c: &mut Ctx) -> Result<()> {
    c.target.shell(&format!("systemctl stop systemd-timesyncd 2>/dev/null; date -u -s '{PAST}' >/dev/null"))?;
    c.ota_clock = "kernel";
    c.fresh_device()?;
    super::scenarios::wait_first_event(c)?;
    let early = c.events()?;
    for (e, _) in &early {
        ensure!(
            e.start.starts_with("2000-") && e.clock_unsynchronized,
            "an event before the sync is stamped {} with clock_unsynchronized {}",
            e.start,
            e.clock_unsynchronized
        );
    }

    // An update asked for now waits for the clock, and says so.
    publish(c, "1.0.1", |m| m)?;
    apply(c, "hil-clock", "shapes", "1.0.1")?;
    c.wait(Duration::from_secs(60), "the update waiting for the clock, saying so", |c| {
        Ok(states_of(c, "hil-clock")
            .iter()
            .any(|s| s["detail"]["retrying"].as_str().is_some_and(|r| r.contains("the clock is not synchronized"))))
    })?;
    ensure!(
        !states_of(c, "hil-clock").iter().any(|s| PAST_THE_CLOCK.contains(&s["state"].as_str().unwrap_or(""))),
        "the update went on with an unsynchronized clock: {:?}",
        states_of(c, "hil-clock")
    );

    // Time sync arrives: systemd-timesyncd on the target, the rig its only server.
    let rig: std::net::IpAddr = c.target.rig_address().parse().context("the rig's address")?;
    let _server = TimeServer::start(SocketAddr::new(rig, 123))?;
    c.target.shell(&format!(
        "mkdir -p /run/systemd/timesyncd.conf.d && printf '[Time]\\nNTP={rig}\\n' > /run/systemd/timesyncd.conf.d/rig.conf && \
         systemctl unmask systemd-timesyncd >/dev/null 2>&1; systemctl restart systemd-timesyncd"
    ))?;
    let synced = c.wait(Duration::from_secs(60), "the target's clock synchronized by timesyncd", |c| {
        Ok(c.target.shell("timedatectl show -p NTPSynchronized --value")?.trim() == "yes")
    })?;
    c.figure("synchronized_after_s", synced);
    c.clock_offset_ns = c.target.clock_offset_ns()?;
    let offset_s = c.clock_offset_ns as f64 / 1e9;
    c.figure("clock_offset_after_sync_s", offset_s);
    ensure!(offset_s.abs() < 5.0, "the target's clock is {offset_s:.1} s off the rig's after the sync");

    c.wait(Duration::from_secs(120), "the update going on past the clock", |c| {
        let states = states_of(c, "hil-clock");
        if let Some(end) = states.iter().find(|s| s["state"] == "failed") {
            anyhow::bail!("the update gave up before the clock was synchronized: {end}");
        }
        Ok(states.iter().any(|s| PAST_THE_CLOCK.contains(&s["state"].as_str().unwrap_or(""))))
    })?;
    c.wait(Duration::from_secs(120), "an event begun after the sync, stamped now and unmarked", |c| {
        Ok(c.events()?.iter().any(|(e, _)| !e.clock_unsynchronized && !e.start.starts_with("2000-")))
    })?;
    let late: Vec<String> = c
        .events()?
        .iter()
        .filter(|(e, _)| !e.clock_unsynchronized && e.start.starts_with("2000-"))
        .map(|(e, _)| format!("{} {}", e.id, e.start))
        .collect();
    ensure!(late.is_empty(), "events stamped in 2000 without the mark: {late:?}");
    // As the image has it: no time sync for the scenarios after this one.
    c.target.shell("systemctl stop systemd-timesyncd; systemctl mask systemd-timesyncd; rm -f /run/systemd/timesyncd.conf.d/rig.conf")?;
    c.stop_and_check_nothing_lost()
}
