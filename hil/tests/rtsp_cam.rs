//! The synthetic camera listens where its READY line says, and stops listening when killed.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Command, Stdio};

#[test]
fn it_listens_on_the_port_it_announces() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil-rtsp-cam"))
        .args(["--mount", "a", "--mount", "b"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("vigil-rtsp-cam starts");
    let lines: Vec<String> = BufReader::new(child.stdout.take().unwrap()).lines().take(2).map(|l| l.unwrap()).collect();
    assert!(lines[0].starts_with("READY rtsp://127.0.0.1:") && lines[0].ends_with("/a"), "{lines:?}");
    assert!(lines[1].ends_with("/b"), "{lines:?}");
    let port: u16 = lines[0].rsplit_once(':').unwrap().1.trim_end_matches("/a").parse().unwrap();
    assert_ne!(port, 0);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok(), "listening on {port}");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "still listening on {port} after kill");
}

#[test]
fn bad_mount_names_are_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil-rtsp-cam")).args(["--mount", "a/b"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mount names"), "{out:?}");
}

#[test]
fn a_clip_that_cannot_be_read_is_refused_before_serving() {
    let out =
        Command::new(env!("CARGO_BIN_EXE_vigil-rtsp-cam")).args(["--clip", "/nonexistent/clip.mp4"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("clip"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("READY"), "no READY for a clip it cannot serve");
}
