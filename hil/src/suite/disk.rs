//! vigil's data disk failing under it, at the block layer: writes refused with EIO by
//! device-mapper's `flakey` target in the guest, the filesystem remounted read-only by its own
//! error handling, the disk healed, the board power-cycled. Needs
//! [`Capability::DiskFaults`](crate::target::Capability::DiskFaults): the virtual board.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::systemd::show;
use super::Ctx;
use crate::rig::now_ns;

/// The device-mapper device the data disk is put behind.
const DM_NAME: &str = "vigil-data";

/// How long the disk refuses writes, in the guest's time.
const FAULT: Duration = Duration::from_secs(30);

/// The data disk behind a device-mapper device that passes everything through (`linear`),
/// mounted where it was with `errors=remount-ro`, as a board's data partition would be. vigil
/// is stopped. Returns the table that heals it. Undone by the next boot (fstab mounts the disk
/// itself).
fn data_disk_behind_dm(c: &mut Ctx) -> Result<String> {
    let data = c.target.data_dir();
    let out = c.target.shell(&format!(
        "set -e; dev=$(findmnt -no SOURCE {data}); umount {data}; modprobe dm_flakey; \
         sz=$(blockdev --getsz $dev); dmsetup create {DM_NAME} --table \"0 $sz linear $dev 0\"; \
         mount -o errors=remount-ro /dev/mapper/{DM_NAME} {data}; echo \"0 $sz linear $dev 0\""
    ))?;
    let healthy = out.lines().last().unwrap_or_default().trim().to_owned();
    ensure!(healthy.contains(" linear /dev/"), "cannot put {data} behind device-mapper:\n{out}");
    Ok(healthy)
}

/// Replaces the device's table; `--nolockfs --noflush`: a filesystem that has given up on its
/// journal cannot be frozen.
fn load_table(c: &mut Ctx, table: &str) -> Result<()> {
    c.target
        .shell(&format!(
            "set -e; dmsetup suspend --nolockfs --noflush {DM_NAME}; dmsetup load {DM_NAME} --table '{table}'; \
             dmsetup resume {DM_NAME}"
        ))
        .map(drop)
}

/// Whether the data directory's filesystem refuses a new file as read-only now (ext4 aborts its
/// journal on a failed write and, mounted `errors=remount-ro`, turns read-only).
fn read_only(c: &mut Ctx) -> Result<bool> {
    let data = c.target.data_dir();
    Ok(c.target
        .shell(&format!("touch {data}/.hil-probe 2>&1 && rm -f {data}/.hil-probe || true"))?
        .contains("Read-only"))
}

/// The `store_error` of the last retained status the rig received, if any status came.
fn last_store_error(c: &Ctx) -> Option<Option<String>> {
    let last = c.rig.monitor.on("status").pop()?;
    let status: serde_json::Value = serde_json::from_slice(&last.payload).ok()?;
    Some(status["store_error"].as_str().map(str::to_owned))
}

/// Writes to the data disk fail while vigil runs: vigil never stays down (it runs on, or is
/// started again), events acknowledged before the fault are kept, and after the disk is healed
/// and the board power-cycled (fsck, as at any boot) vigil serves again and delivers what it
/// stored.
pub fn disk_write_errors(c: &mut Ctx) -> Result<()> {
    c.fresh_device()?;
    c.target.stop()?;
    let healthy = data_disk_behind_dm(c)?;
    c.target.start()?;
    super::scenarios::wait_first_event(c)?;
    std::thread::sleep(Duration::from_secs(5));
    let acknowledged: BTreeSet<String> = c.events()?.into_iter().map(|(e, _)| e.id).collect();
    c.figure("events_acknowledged_before_the_fault", acknowledged.len() as f64);

    // Every write refused (EIO), reads served: device-mapper's flakey target, always "down".
    let restarts = show(c, "NRestarts")?;
    let failing = healthy.replacen(" linear ", " flakey ", 1) + " 0 1 1 error_writes";
    load_table(c, &failing)?;
    let fault = Instant::now();
    let mut became_read_only = None;
    while fault.elapsed() < FAULT {
        let state = show(c, "ActiveState")?;
        ensure!(state != "failed", "systemd gave up on vigil while its disk failed");
        if became_read_only.is_none() && read_only(c)? {
            became_read_only = Some(fault.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let restarts_during = show(c, "NRestarts")?.parse::<u64>()? - restarts.parse::<u64>()?;
    c.figure("restarts_while_the_disk_failed", restarts_during as f64);
    let journal = c.target.shell("journalctl -u vigil --no-pager -o cat -n 40")?;
    let read_only_after = became_read_only.with_context(|| {
        format!("the data disk refused writes for {FAULT:?} and never turned read-only:\n{journal}")
    })?;
    c.figure("read_only_after_s", read_only_after);
    // vigil runs on (or was started again), and says what it cannot do: in its retained
    // status, published without the failing disk, and in systemctl's status line.
    ensure!(show(c, "ActiveState")? == "active", "vigil is not active on a failing disk:\n{journal}");
    let status_text = show(c, "StatusText")?;
    ensure!(
        status_text.contains("the store refuses writes"),
        "the status line does not say the store refuses writes: {status_text:?}\n{journal}"
    );
    c.wait(Duration::from_secs(30), "a retained status with store_error", |c| {
        Ok(last_store_error(c).flatten().is_some())
    })?;
    load_table(c, &healthy)?;

    // A board whose data disk came back still has a read-only filesystem until it boots again.
    let t = Instant::now();
    c.power_cut()?;
    c.figure("back_after_power_cycle_s", t.elapsed().as_secs_f64());
    ensure!(!read_only(c)?, "the data disk is read-only after a boot");
    let since = now_ns();
    c.wait(Duration::from_secs(120), "events after the power cycle", |c| Ok(c.new_events_since(since)? > 0))?;
    ensure!(
        last_store_error(c) == Some(None),
        "the retained status after the power cycle still has store_error: {:?}",
        last_store_error(c)
    );
    c.stop_and_drain()?;
    let stored: BTreeSet<String> = c.check_no_event_lost()?.into_iter().map(|e| e.id).collect();
    let missing: Vec<&String> = acknowledged.difference(&stored).collect();
    ensure!(
        missing.is_empty(),
        "{} events the broker had received before the fault are gone from the store: {missing:?}",
        missing.len()
    );
    Ok(())
}
