//! A rollout's state on disk: the state file (a snapshot of the whole [`Rollout`], JSON, what
//! `vigil-ops fleet ota report` prints) and, beside it, `<state file>.journal`: one JSON line per
//! device record or rollout field changed since that snapshot.
//!
//! Writing the whole rollout at every change is O(N) per message and O(N²) per rollout (13 GB
//! written for 3 000 devices, seen); appending the records that changed is O(1) per change. The
//! journal is synced before any command goes out, so a command leaves only once the record that
//! says it was sent is on disk. When the journal has grown to a few times the snapshot's size it
//! is folded into a new snapshot, so the bytes written stay O(N) per rollout.
//!
//! Each line carries the snapshot's `generation`. A compaction writes the new snapshot (raised
//! generation) durably before it empties the journal, so a crash between the two leaves lines
//! that name the old generation, which are skipped. A last line cut short by a crash was never
//! synced, so no command depended on it: it is dropped.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::rollout::{Device, End, Rollout};

/// The journal is folded into the snapshot once it holds this many lines per device (and at
/// least [`MIN_LINES`]).
const LINES_PER_DEVICE: usize = 4;
const MIN_LINES: usize = 1024;

/// The rollout's own fields that change as it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Fields {
    waves_started: usize,
    max_failures: u32,
    device_timeout_s: u64,
    aborting: Option<String>,
    end: Option<End>,
}

impl Fields {
    fn of(r: &Rollout) -> Self {
        Self {
            waves_started: r.waves_started,
            max_failures: r.max_failures,
            device_timeout_s: r.device_timeout_s,
            aborting: r.aborting.clone(),
            end: r.end.clone(),
        }
    }

    fn apply(self, r: &mut Rollout) {
        r.waves_started = self.waves_started;
        r.max_failures = self.max_failures;
        r.device_timeout_s = self.device_timeout_s;
        r.aborting = self.aborting;
        r.end = self.end;
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Change {
    Device { id: String, record: Device },
    Rollout(Fields),
}

#[derive(Debug, Deserialize)]
struct Line {
    generation: u64,
    #[serde(flatten)]
    change: Change,
}

/// A [`Line`] as written.
#[derive(Serialize)]
struct LineRef<'a> {
    generation: u64,
    #[serde(flatten)]
    change: &'a Change,
}

/// The journal's path for the state file `path`.
pub fn journal_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".journal");
    PathBuf::from(p)
}

/// Reads a rollout: its snapshot, then its journal's lines of the same generation.
pub fn load(path: &Path) -> Result<Rollout, String> {
    let mut rollout = Rollout::load(path)?;
    let journal = journal_path(path);
    let text = match std::fs::read(&journal) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(rollout),
        Err(e) => return Err(format!("cannot read {}: {e}", journal.display())),
    };
    let complete = text.ends_with(b"\n");
    let lines: Vec<&[u8]> = text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    for (i, raw) in lines.iter().enumerate() {
        let line: Line = match serde_json::from_slice(raw) {
            Ok(line) => line,
            // Cut short by a crash: never synced, so nothing was sent on its strength.
            Err(_) if i + 1 == lines.len() && !complete => break,
            Err(e) => {
                return Err(format!(
                    "{} line {} is not a rollout journal line ({e}); move the state file and its journal away \
                     to start a new rollout",
                    journal.display(),
                    i + 1
                ))
            }
        };
        if line.generation != rollout.generation {
            continue;
        }
        match line.change {
            Change::Device { id, record } => {
                rollout.devices.insert(id, record);
            }
            Change::Rollout(fields) => fields.apply(&mut rollout),
        }
    }
    Ok(rollout)
}

/// The open state of a running rollout.
pub struct StateFile {
    path: PathBuf,
    journal: File,
    lines: usize,
    fields: Fields,
    /// Bytes handed to the file system so far (snapshots and journal lines).
    pub written: u64,
}

impl StateFile {
    /// Starts writing `rollout` at `path`: a fresh snapshot (a new generation) and an empty
    /// journal, whether the rollout is new or read back with [`load`].
    pub fn start(path: &Path, rollout: &mut Rollout) -> std::io::Result<Self> {
        let journal =
            OpenOptions::new().create(true).append(true).open(journal_path(path)).map_err(|e| with_path(e, path))?;
        let mut state = Self { path: path.to_owned(), journal, lines: 0, fields: Fields::of(rollout), written: 0 };
        state.compact(rollout)?;
        Ok(state)
    }

    /// Appends what changed in `rollout` since the last call; with `sync`, makes it durable
    /// before returning (a command is about to go out on its strength).
    pub fn record(&mut self, rollout: &mut Rollout, sync: bool) -> std::io::Result<()> {
        let mut changes = Vec::new();
        for id in rollout.take_changed() {
            if let Some(d) = rollout.devices.get(&id) {
                changes.push(Change::Device { id, record: d.clone() });
            }
        }
        let fields = Fields::of(rollout);
        if fields != self.fields {
            changes.push(Change::Rollout(fields.clone()));
            self.fields = fields;
        }
        let mut buf = Vec::new();
        for change in &changes {
            serde_json::to_writer(&mut buf, &LineRef { generation: rollout.generation, change })
                .expect("a journal line serialises");
            buf.push(b'\n');
        }
        if !buf.is_empty() {
            self.lines += changes.len();
            self.journal.write_all(&buf).map_err(|e| with_path(e, &self.path))?;
            self.written += buf.len() as u64;
        }
        if self.lines > (LINES_PER_DEVICE * rollout.devices.len()).max(MIN_LINES) {
            return self.compact(rollout);
        }
        if sync && !buf.is_empty() {
            self.journal.sync_data().map_err(|e| with_path(e, &self.path))?;
        }
        Ok(())
    }

    /// Folds the journal into a new snapshot.
    fn compact(&mut self, rollout: &mut Rollout) -> std::io::Result<()> {
        rollout.take_changed();
        rollout.generation += 1;
        let bytes = serde_json::to_vec_pretty(rollout).expect("a rollout serialises");
        vigil_core::fsutil::write_durably(&self.path, &bytes).map_err(|e| with_path(e, &self.path))?;
        self.written += bytes.len() as u64;
        // Lines from here on are the new generation's; the old ones are skipped even if the
        // truncation does not reach the disk.
        self.journal.set_len(0).map_err(|e| with_path(e, &self.path))?;
        self.journal.sync_data().map_err(|e| with_path(e, &self.path))?;
        self.lines = 0;
        self.fields = Fields::of(rollout);
        Ok(())
    }
}

fn with_path(e: std::io::Error, path: &Path) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("the state file {} (or its journal): {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::rollout::{DeviceState, DeviceStatus, Plan, Selection};

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    fn rollout(n: usize) -> Rollout {
        let statuses: BTreeMap<String, DeviceStatus> = (1..=n)
            .map(|i| {
                let s = DeviceStatus {
                    online: true,
                    model: Some(("shapes".into(), "1.0.0".into())),
                    vigil: None,
                    checks_every_s: None,
                };
                (format!("dev-{i}"), s)
            })
            .collect();
        let plan = Plan {
            name: "shapes".into(),
            version: "1.0.1".into(),
            canary: None,
            waves: "1,100%".into(),
            max_failures: 0,
            device_timeout: Duration::from_secs(600),
        };
        Rollout::new(plan, Selection::RunningModel, &statuses, "push-1".into(), at(0)).unwrap()
    }

    fn ota(r: &mut Rollout, device: &str, state: &str, t: u64) {
        let v = serde_json::json!({ "request_id": "push-1", "state": state });
        r.on_message(&format!("vigil/{device}/ota"), v.to_string().as_bytes(), at(t));
    }

    fn as_json(r: &Rollout) -> serde_json::Value {
        let mut v = serde_json::to_value(r).unwrap();
        v["generation"] = 0.into();
        v
    }

    #[test]
    fn the_snapshot_and_its_journal_read_back_as_the_rollout_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("push.json");
        let mut r = rollout(3);
        let mut state = StateFile::start(&path, &mut r).unwrap();
        assert_eq!(r.step(at(0)), ["dev-1"]);
        state.record(&mut r, true).unwrap();
        ota(&mut r, "dev-1", "downloading", 1);
        ota(&mut r, "dev-1", "successful", 2);
        assert_eq!(r.step(at(3)), ["dev-2", "dev-3"]);
        state.record(&mut r, true).unwrap();
        let journal = std::fs::read_to_string(journal_path(&path)).unwrap();
        // dev-1 sent and the first wave started; then dev-1's outcome, dev-2 and dev-3 sent and
        // the last wave started.
        assert_eq!(journal.lines().count(), 6, "{journal}");
        let back = load(&path).unwrap();
        assert_eq!(as_json(&back), as_json(&r));
        assert_eq!(back.devices["dev-2"].state, DeviceState::Sent);
        // The snapshot alone is the rollout as it started (what the journal adds is not in it).
        assert_eq!(Rollout::load(&path).unwrap().devices["dev-1"].state, DeviceState::Pending);
    }

    #[test]
    fn a_last_line_cut_short_is_dropped_and_a_bad_line_before_it_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("push.json");
        let mut r = rollout(2);
        let mut state = StateFile::start(&path, &mut r).unwrap();
        r.step(at(0));
        state.record(&mut r, true).unwrap();
        let whole = std::fs::read(journal_path(&path)).unwrap();
        let mut cut = whole.clone();
        cut.extend_from_slice(br#"{"generation":1,"device":{"id":"dev-2","rec"#);
        std::fs::write(journal_path(&path), &cut).unwrap();
        assert_eq!(load(&path).unwrap().devices["dev-1"].state, DeviceState::Sent, "the synced line counts");
        let mut bad = b"not json\n".to_vec();
        bad.extend_from_slice(&whole);
        std::fs::write(journal_path(&path), &bad).unwrap();
        let e = load(&path).unwrap_err();
        assert!(e.contains("line 1 is not a rollout journal line") && e.contains("move the state file"), "{e}");
    }

    #[test]
    fn compaction_keeps_the_bytes_written_linear_and_lines_of_an_older_generation_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("push.json");
        let n = 2000;
        let mut r = rollout(n);
        let mut state = StateFile::start(&path, &mut r).unwrap();
        let snapshot = std::fs::metadata(&path).unwrap().len();
        r.step(at(0));
        state.record(&mut r, true).unwrap();
        ota(&mut r, "dev-1", "successful", 1);
        let sent = r.step(at(1));
        assert_eq!(sent.len(), n - 1);
        state.record(&mut r, true).unwrap();
        // The worst case: a batch per message, so every state of every device is a line.
        for id in &sent {
            for phase in ["downloading", "verifying", "accepting", "activating", "canary", "successful"] {
                ota(&mut r, id, phase, 2);
                state.record(&mut r, false).unwrap();
            }
        }
        state.record(&mut r, true).unwrap();
        assert!(r.generation > 1, "the journal was folded in");
        // Each device's record is written a bounded number of times: O(N) in all.
        assert!(state.written < 20 * snapshot, "{} bytes written for a {snapshot}-byte snapshot", state.written);
        let back = load(&path).unwrap();
        assert_eq!(as_json(&back), as_json(&r));
        // A crash after a compaction's snapshot, before the journal was emptied: the old
        // generation's lines stay in the file and are skipped.
        let stale = format!(
            "{}\n",
            serde_json::to_string(&LineRef {
                generation: r.generation - 1,
                change: &Change::Device { id: "dev-5".into(), record: back.devices["dev-1"].clone() },
            })
            .unwrap()
        );
        let mut journal = stale.into_bytes();
        journal.extend(std::fs::read(journal_path(&path)).unwrap());
        std::fs::write(journal_path(&path), journal).unwrap();
        assert_eq!(as_json(&load(&path).unwrap()), as_json(&r));
    }
}
