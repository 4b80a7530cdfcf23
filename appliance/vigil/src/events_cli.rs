//! `vigil events`: list, show, tail and export stored events, on a running service (through its
//! control socket, [`vigil_fleet::control`]) or on a stopped one's store, with the same query code
//! ([`vigil_store::query`]) either way.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};

use vigil_core::event::{Event, Phase};
use vigil_fleet::commands::{self, TailArgs};
use vigil_fleet::control::{self, Connection, TailItem};
use vigil_store::query::{self, EventsQuery, Order, Page, PAGE_MAX};
use vigil_store::{Store, StoreError};

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// The configuration whose data_dir to read (default: /etc/vigil/vigil.toml).
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    /// Read this data directory instead of the config's.
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: EventsCommand,
}

#[derive(Debug, clap::Args)]
pub struct Filter {
    /// Only events captured at or after this time (RFC 3339, e.g. 2026-11-24T08:00:00Z).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<SystemTime>,
    /// Only events captured before this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<SystemTime>,
    /// Only this camera's events.
    #[arg(long)]
    pub camera: Option<String>,
    /// Only events of this label.
    #[arg(long)]
    pub label: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum EventsCommand {
    /// List events by capture time, oldest first.
    List {
        #[command(flatten)]
        filter: Filter,
        /// Only the newest N events (still printed oldest first).
        #[arg(long)]
        last: Option<usize>,
        /// One JSON object per line (the event record of docs/mqtt.md).
        #[arg(long)]
        json: bool,
    },
    /// One event in full.
    Show {
        id: String,
        /// The event record as JSON.
        #[arg(long)]
        json: bool,
        /// Write the event's snapshot (JPEG) to this file.
        #[arg(long)]
        snapshot: Option<PathBuf>,
    },
    /// The newest events, then each event message (new, update, end) as the running service
    /// stores it. Waits for the service when it is not running; Ctrl-C stops.
    Tail {
        /// Stored events to show first (at most 500).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=500))]
        last: u64,
        /// Only this camera's events.
        #[arg(long)]
        camera: Option<String>,
        /// Only events of this label.
        #[arg(long)]
        label: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Write events (and optionally their snapshots) to a file, oldest first.
    Export {
        #[command(flatten)]
        filter: Filter,
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
        /// Write here (atomically: the file appears whole or not at all) instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Copy each event's snapshot into this directory as <event id>.jpg.
        #[arg(long)]
        snapshots: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// One JSON event record per line.
    Jsonl,
    /// A header and one row per event.
    Csv,
}

fn parse_time(s: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(s).map_err(|e| format!("{e}: give an RFC 3339 time such as 2026-11-24T08:00:00Z"))
}

/// Where events are read from.
enum Source {
    /// The running service answers on its control socket.
    Live(Connection),
    /// No service runs: the store itself (this process holds its lock until dropped, so every
    /// method takes the source and closes the store before its result is printed).
    Stopped(Store),
}

impl Source {
    fn open(dir: &Path) -> anyhow::Result<Self> {
        if let Some(c) = connect(dir)? {
            return Ok(Source::Live(c));
        }
        if !dir.join("store").exists() {
            bail!("no store under {}; check data_dir (has vigil run there yet?)", dir.display());
        }
        match Store::open_read_only(dir) {
            Ok(s) => Ok(Source::Stopped(s)),
            Err(StoreError::Locked(path)) => bail!(
                "the store at {} is in use, and no vigil answers on {}. vigil may be starting or stopping (try \
                 again in a moment); another `vigil events` command may be reading it (let it finish); or vigil \
                 runs without its control socket (its log says why)",
                path.display(),
                control::socket_path(dir).display()
            ),
            Err(e) => Err(e.into()),
        }
    }

    fn page(&mut self, q: &EventsQuery) -> anyhow::Result<Page> {
        match self {
            Source::Live(c) => Ok(serde_json::from_value(c.call("events/query", serde_json::to_value(q)?)?)?),
            Source::Stopped(store) => Ok(q.check().map_err(anyhow::Error::msg)?.run(store)?),
        }
    }

    fn event(self, id: &str) -> anyhow::Result<Event> {
        match self {
            Source::Live(mut c) => {
                let mut got = c.call("events/get", serde_json::json!({ "id": id }))?;
                Ok(serde_json::from_value(got["event"].take())?)
            }
            Source::Stopped(store) => store.event(id)?.ok_or_else(|| anyhow::anyhow!(commands::no_event(id))),
        }
    }

    /// Every event `q` selects, oldest first, to `f` (which returns false to stop). From a
    /// running service page by page; from a store all at once, the store closed before `f` runs
    /// (a reader paging through the output must not keep vigil from starting).
    fn each(mut self, mut q: EventsQuery, mut f: impl FnMut(Event) -> anyhow::Result<bool>) -> anyhow::Result<()> {
        q.limit = Some(PAGE_MAX);
        q.order = Some(Order::Oldest);
        let mut all = Vec::new();
        loop {
            let page = self.page(&q)?;
            match self {
                Source::Live(_) => {
                    for e in page.events {
                        if !f(e)? {
                            return Ok(());
                        }
                    }
                }
                Source::Stopped(_) => all.extend(page.events),
            }
            match page.next {
                Some(next) => q.after = Some(next),
                None => break,
            }
        }
        drop(self);
        for e in all {
            if !f(e)? {
                break;
            }
        }
        Ok(())
    }

    /// The newest `n` events `q` selects, oldest first.
    fn newest(mut self, q: EventsQuery, n: usize) -> anyhow::Result<Vec<Event>> {
        query::newest(q, n, |q| self.page(q))
    }
}

/// The running service's control socket; `None` when no service is there.
fn connect(dir: &Path) -> anyhow::Result<Option<Connection>> {
    use std::io::ErrorKind;
    match Connection::connect(dir) {
        Ok(c) => Ok(Some(c)),
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => Ok(None),
        Err(e) => {
            let socket = control::socket_path(dir);
            let hint =
                if e.kind() == ErrorKind::PermissionDenied { "; run this as vigil's user or as root" } else { "" };
            bail!("cannot connect to {}: {e}{hint}", socket.display())
        }
    }
}

/// Writes one line; `Ok(false)` when the reader has gone (a closed pipe: `| head`), an error for
/// anything else (a full disk must not pass for a finished export).
fn emit(w: &mut dyn Write, text: &str) -> anyhow::Result<bool> {
    match writeln!(w, "{text}") {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write the output")),
    }
}

/// Flushes stdout, a closed pipe being no error.
fn finish(w: &mut dyn Write) -> anyhow::Result<()> {
    match w.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write the output"))
        }
        _ => Ok(()),
    }
}

impl Filter {
    fn query(&self) -> EventsQuery {
        let time = |t: Option<SystemTime>| t.map(|t| humantime::format_rfc3339_nanos(t).to_string());
        EventsQuery {
            from: time(self.since),
            to: time(self.until),
            camera: self.camera.clone(),
            label: self.label.clone(),
            ..EventsQuery::default()
        }
    }
}

/// Runs `vigil events …`.
pub fn run(args: &EventsArgs) -> anyhow::Result<()> {
    let dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => vigil_config::Config::load_or_system(args.config.as_deref())?.data_dir,
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match &args.command {
        EventsCommand::List { filter, last, json } => {
            let source = Source::open(&dir)?;
            let mut print = |e: Event| emit(&mut out, &line(&e, *json)?);
            match last {
                Some(n) => {
                    for e in source.newest(filter.query(), *n)? {
                        if !print(e)? {
                            break;
                        }
                    }
                }
                None => source.each(filter.query(), print)?,
            }
        }
        EventsCommand::Show { id, json, snapshot } => {
            let event = Source::open(&dir)?.event(id)?;
            if let Some(file) = snapshot {
                let stored = event.snapshot.as_ref().with_context(|| format!("event {id} has no snapshot"))?;
                std::fs::copy(dir.join(stored), file)
                    .with_context(|| format!("cannot copy {} to {}", dir.join(stored).display(), file.display()))?;
            }
            let text = if *json { serde_json::to_string_pretty(&event)? } else { details(&event, &dir) };
            emit(&mut out, text.trim_end())?;
        }
        EventsCommand::Tail { last, camera, label, json } => {
            let last = usize::try_from(*last).expect("at most 500");
            let args = TailArgs { last, camera: camera.clone(), label: label.clone() };
            tail(&dir, args, *json, &mut out)?;
        }
        EventsCommand::Export { filter, format, output, snapshots } => {
            export(&dir, filter, *format, output.as_deref(), snapshots.as_deref())?
        }
    }
    finish(&mut out)
}

fn phase(e: &Event) -> &'static str {
    match e.phase {
        Phase::New => "new",
        Phase::Update => "update",
        Phase::End => "end",
    }
}

/// One line per event: JSON, or columns for people.
fn line(e: &Event, json: bool) -> anyhow::Result<String> {
    if json {
        return Ok(serde_json::to_string(e)?);
    }
    Ok(format!(
        "{}  {}  {:<10} {:<12} {:<10} {:.2}  {:>6.1}s  {}",
        e.start,
        e.id,
        e.camera_id,
        e.rule,
        e.label,
        e.best_score,
        e.dwell_s,
        phase(e)
    ))
}

fn details(e: &Event, dir: &Path) -> String {
    let b = &e.bbox;
    let n = &e.box_norm;
    let ended = match (&e.end, e.end_reason) {
        (Some(end), Some(reason)) => format!("{end} ({})", serde_json::to_value(reason).unwrap_or_default()),
        _ => "open".to_owned(),
    };
    let snapshot = e.snapshot.as_ref().map_or("none".to_owned(), |s| dir.join(s).display().to_string());
    format!(
        "id          {}\nphase       {} (revision {})\ndevice      {}\ncamera      {}\nrule        {}\n\
         label       {} (class {})\ntrack       {}\nbest score  {:.3}\nbox         {:.0},{:.0} → {:.0},{:.0} px \
         ({:.3},{:.3} → {:.3},{:.3})\nbest frame  {} (seq {}, {}×{})\nzones       {}\nstart       {}\n\
         last        {}\nend         {}\ndwell       {:.1} s over {} frames\nmodel       {} {} on {}\n\
         snapshot    {}\n",
        e.id,
        phase(e),
        e.revision,
        e.device_id,
        e.camera_id,
        e.rule,
        e.label,
        e.class_id,
        e.track_id,
        e.best_score,
        b.x1,
        b.y1,
        b.x2,
        b.y2,
        n[0],
        n[1],
        n[2],
        n[3],
        e.best.captured_at,
        e.best.seq,
        e.best.width,
        e.best.height,
        if e.zones.is_empty() { "-".to_owned() } else { e.zones.join(", ") },
        e.start,
        e.last,
        ended,
        e.dwell_s,
        e.frames,
        e.model.name,
        e.model.version,
        e.model.backend,
        snapshot
    )
}

/// How often `tail` looks for a service that is not running.
const TAIL_RETRY: Duration = Duration::from_secs(1);

fn tail(dir: &Path, args: TailArgs, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let mut backlog = args.last;
    let mut said_waiting = false;
    let mut reconnecting = false;
    loop {
        let Some(mut conn) = connect(dir)? else {
            // Not running (or starting, or stopping): show the backlog from the store if it is
            // free; it is closed again before anything is printed, so that vigil can start.
            if backlog > 0 && dir.join("store").exists() {
                match Store::open_read_only(dir) {
                    Ok(store) => {
                        let q = EventsQuery {
                            camera: args.camera.clone(),
                            label: args.label.clone(),
                            ..Default::default()
                        };
                        for e in Source::Stopped(store).newest(q, backlog)? {
                            if !emit(out, &line(&e, json)?)? {
                                return Ok(());
                            }
                        }
                        finish(out)?;
                        backlog = 0;
                    }
                    Err(StoreError::Locked(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if !std::mem::replace(&mut said_waiting, true) {
                eprintln!("vigil is not running on {}; waiting for it (Ctrl-C stops)", dir.display());
            }
            std::thread::sleep(TAIL_RETRY);
            continue;
        };
        conn.tail(&TailArgs { last: backlog, ..args.clone() })?;
        if std::mem::take(&mut reconnecting) {
            eprintln!(
                "vigil is back. Events it ended as it started (end_reason `restart`) are not shown here; \
                 `vigil events list --last N` shows every event's latest state"
            );
        }
        backlog = 0;
        said_waiting = true;
        while let Some(item) = conn.next_tail()? {
            match item {
                TailItem::Event(e) => {
                    if !emit(out, &line(&e, json)?)? {
                        return Ok(());
                    }
                    finish(out)?;
                }
                TailItem::Lagged(n) => {
                    eprintln!("warning: {n} bursts of events were not shown: this reader fell behind")
                }
            }
        }
        eprintln!("vigil closed the connection (stopping or restarting); waiting for it (Ctrl-C stops)");
        reconnecting = true;
        std::thread::sleep(TAIL_RETRY);
    }
}

const CSV_HEADER: &str = "id,camera,rule,label,class_id,track_id,best_score,start,last,end,end_reason,dwell_s,\
frames,zones,x1,y1,x2,y2,x1_norm,y1_norm,x2_norm,y2_norm,model,model_version,snapshot";

/// A CSV field: quoted when it holds a comma, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn csv_row(e: &Event) -> String {
    let reason = e.end_reason.map(|r| serde_json::to_value(r).unwrap_or_default());
    let fields = [
        e.id.clone(),
        e.camera_id.clone(),
        e.rule.clone(),
        e.label.clone(),
        e.class_id.to_string(),
        e.track_id.to_string(),
        format!("{:.4}", e.best_score),
        e.start.clone(),
        e.last.clone(),
        e.end.clone().unwrap_or_default(),
        reason.as_ref().and_then(|r| r.as_str()).unwrap_or_default().to_owned(),
        format!("{:.3}", e.dwell_s),
        e.frames.to_string(),
        e.zones.join(";"),
        format!("{:.1}", e.bbox.x1),
        format!("{:.1}", e.bbox.y1),
        format!("{:.1}", e.bbox.x2),
        format!("{:.1}", e.bbox.y2),
        format!("{:.5}", e.box_norm[0]),
        format!("{:.5}", e.box_norm[1]),
        format!("{:.5}", e.box_norm[2]),
        format!("{:.5}", e.box_norm[3]),
        e.model.name.clone(),
        e.model.version.clone(),
        e.snapshot.clone().unwrap_or_default(),
    ];
    fields.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(",")
}

fn export(
    dir: &Path,
    filter: &Filter,
    format: Format,
    output: Option<&Path>,
    snapshots: Option<&Path>,
) -> anyhow::Result<()> {
    if let Some(d) = snapshots {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let source = Source::open(dir)?;
    let mut counts = (0usize, 0usize, 0usize); // events, snapshots copied, snapshots gone
    let write = |w: &mut dyn Write| -> anyhow::Result<()> {
        if matches!(format, Format::Csv) && !emit(w, CSV_HEADER)? {
            return Ok(());
        }
        source.each(filter.query(), |e| {
            let row = match format {
                Format::Jsonl => serde_json::to_string(&e)?,
                Format::Csv => csv_row(&e),
            };
            if !emit(w, &row)? {
                return Ok(false);
            }
            counts.0 += 1;
            if let (Some(d), Some(s)) = (snapshots, &e.snapshot) {
                // Retention may delete an event's snapshot while a live store is exported.
                match std::fs::copy(dir.join(s), d.join(format!("{}.jpg", e.id))) {
                    Ok(_) => counts.1 += 1,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => counts.2 += 1,
                    Err(err) => {
                        return Err(anyhow::Error::new(err).context(format!("cannot copy the snapshot of {}", e.id)))
                    }
                }
            }
            Ok(true)
        })
    };
    match output {
        Some(path) => {
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(".tmp");
            vigil_core::fsutil::write_atomically_with(path, Path::new(&tmp), write)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        None => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            write(&mut out)?;
            finish(&mut out)?;
        }
    }
    let (events, copied, gone) = counts;
    let mut summary = format!("exported {events} events");
    if snapshots.is_some() {
        summary += &format!(", {copied} snapshots");
        if gone > 0 {
            summary += &format!(" ({gone} deleted by retention meanwhile)");
        }
    }
    if let Some(p) = output {
        summary += &format!(" to {}", p.display());
    }
    eprintln!("{summary}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_they_must_be() {
        assert_eq!(csv_field("gate"), "gate");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        let mut e = vigil_core::event::test_event(1);
        e.zones = vec!["door, north".into(), "yard".into()];
        let row = csv_row(&e);
        assert_eq!(row.matches(',').count(), CSV_HEADER.matches(',').count() + 1, "one comma inside quotes: {row}");
        assert!(row.contains("\"door, north;yard\""), "{row}");
    }
}
