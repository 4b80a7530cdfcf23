//! `vigil-ops fleet exporter` scraped by a real Prometheus (Debian's package, installed by
//! `make setup`), with a simulated fleet of 1 000 devices publishing their metrics.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vigil_ops::fleet_bench::{raise_file_limit, Broker, Sim};

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vigil-ops"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET path` on 127.0.0.1:`port`: the status code and body (HTTP/1.0, read to the end).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

/// One number from a Prometheus instant query, once it has one.
fn query(port: u16, promql: &str) -> Option<f64> {
    let q = percent_encoding::utf8_percent_encode(promql, percent_encoding::NON_ALPHANUMERIC);
    let (code, body) = get(port, &format!("/api/v1/query?query={q}"))?;
    let v: serde_json::Value = serde_json::from_str(&body).ok().filter(|_| code == 200)?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn prometheus_scrapes_every_device_of_a_simulated_fleet_through_the_exporter() {
    let prometheus = "/usr/bin/prometheus";
    assert!(std::path::Path::new(prometheus).is_file(), "{prometheus} is missing: make setup installs it");
    raise_file_limit();
    let n = 1000;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path()).unwrap();
    let sim = Sim::start(&exe(), &broker.url(), n, dir.path(), &["--metrics-every", "2s", "--offline", "0.1"]).unwrap();
    let http = free_port();
    let _exporter = Killed(
        Command::new(exe())
            .args(["fleet", "--broker", &broker.url(), "exporter", "--listen", &format!("127.0.0.1:{http}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let web = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: vigil\n    static_configs:\n      \
             - targets: ['127.0.0.1:{http}']\n"
        ),
    )
    .unwrap();
    let _prometheus = Killed(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{web}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    // Every device's status, and the metrics of every online one, as Prometheus stored them.
    let until = Instant::now() + Duration::from_secs(120);
    let online = (n as f64 * 0.9).round();
    let wanted = [
        ("count(vigil_device_up)", n as f64),
        ("up{job=\"vigil\"}", 1.0),
        ("count(vigil_camera_fps)", online),
        ("count(vigil_camera_state{state=\"streaming\"} == 1)", n as f64),
        ("count(vigil_update_state{state=\"idle\"} == 1)", n as f64),
    ];
    loop {
        let last = wanted.iter().map(|(q, _)| query(web, q)).collect::<Vec<_>>();
        let online_now = query(web, "sum(vigil_device_up)");
        // The offline share comes from the seed: its count is the simulator's, not ours.
        let all = wanted.iter().zip(&last).all(|((q, want), got)| {
            if q.contains("vigil_camera_fps") {
                got.is_some() && got == &online_now
            } else {
                got == &Some(*want)
            }
        });
        if all {
            break;
        }
        assert!(Instant::now() < until, "Prometheus did not see the fleet within 2 min: {last:?}\n{}", log());
        std::thread::sleep(Duration::from_millis(500));
    }
    let online_now = query(web, "sum(vigil_device_up)").unwrap();
    assert!((online_now - online).abs() < n as f64 * 0.05, "about 90 % online: {online_now}");
    let (code, body) = get(http, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("# TYPE vigil_latency_seconds gauge"), "{}", &body[..400.min(body.len())]);
    assert_eq!(get(http, "/nothing").unwrap().0, 404);
    sim.finish().unwrap();
}
