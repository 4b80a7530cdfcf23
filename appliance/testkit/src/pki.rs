//! A throwaway certificate authority for tests, made with the `openssl` command: a CA, server
//! certificates for 127.0.0.1, and client certificates whose CN is their name (P-256 keys, valid
//! for [`DAYS`]). Shared by the mTLS broker tests, the OTA tests' HTTPS server and the rig.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Days a certificate is valid: long enough for the OTA clock tests, which run a device's clock
/// 400 days ahead (ota/tests/clock.rs).
pub const DAYS: &str = "800";

/// `openssl req` arguments for a new P-256 key without a passphrase.
const NEW_EC_KEY: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

/// A CA in `dir` (`<ca>.pem`, `<ca>.key`) that issues `<name>.pem` and `<name>.key` there.
pub struct TestCa {
    dir: PathBuf,
    ca: String,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl is installed");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl TestCa {
    /// A new CA named `ca` (its files are `<ca>.pem` and `<ca>.key` in `dir`).
    pub fn new(dir: &Path, ca: &str) -> Self {
        let (pem, key, subj) = (format!("{ca}.pem"), format!("{ca}.key"), format!("/CN=vigil test {ca}"));
        let args = ["-keyout", &key, "-out", &pem, "-days", DAYS, "-subj", &subj];
        openssl(dir, &[&["req", "-x509"][..], NEW_EC_KEY, &args].concat());
        Self { dir: dir.to_owned(), ca: ca.to_owned() }
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.ca))
    }

    /// Makes `<name>.key` and `<name>.pem`, signed by the CA: a server certificate for
    /// 127.0.0.1, or a client certificate whose CN is `name`. Returns (certificate, key).
    pub fn issue(&self, name: &str, server: bool) -> (PathBuf, PathBuf) {
        self.issue_at(name, server.then_some("127.0.0.1"))
    }

    /// [`TestCa::issue`], a server certificate being for the IP address `server_ip` (the HIL
    /// rig's address as a board sees it).
    pub fn issue_at(&self, name: &str, server_ip: Option<&str>) -> (PathBuf, PathBuf) {
        let dir = &self.dir;
        let ext = match server_ip {
            Some(ip) => format!(
                "subjectAltName=IP:{ip}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
            ),
            None => "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n".to_owned(),
        };
        std::fs::write(dir.join(format!("{name}.ext")), ext).expect("write extensions");
        let cn = format!("/CN={}", server_ip.unwrap_or(name));
        let (key, csr, pem, ext) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
        openssl(dir, &[&["req"][..], NEW_EC_KEY, &["-keyout", &key, "-out", &csr, "-subj", &cn]].concat());
        let (ca_pem, ca_key) = (format!("{}.pem", self.ca), format!("{}.key", self.ca));
        let sign = ["x509", "-req", "-in", &csr, "-CA", &ca_pem, "-CAkey", &ca_key, "-CAcreateserial"];
        openssl(dir, &[&sign[..], &["-days", DAYS, "-out", &pem, "-extfile", &ext]].concat());
        (dir.join(pem), dir.join(key))
    }
}
