//! The shipped fleet broker configuration with certificates made for the test.

use super::*;

/// The shipped production broker configuration (appliance/config/mosquitto: TLS only, client
/// certificates required, certificate CN as user name, the vigil ACL) on a free loopback port,
/// with a fleet CA and certificates made for the test: the broker's (IP 127.0.0.1) and one per
/// client name.
pub struct TlsBroker {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl TlsBroker {
    pub fn start(clients: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let ca = vigil_testkit::pki::TestCa::new(d, "fleet-ca");
        ca.issue("broker", true);
        for name in clients {
            ca.issue(name, false);
        }
        // mosquitto started as root drops to its own user: it must be able to read the test's
        // files (throwaway keys, so world-readable is fine).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod tempdir");
        for entry in std::fs::read_dir(d).expect("list tempdir") {
            let path = entry.expect("entry").path();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        let shipped = repo_root().join("appliance/config/mosquitto");
        let template = std::fs::read_to_string(shipped.join("mosquitto.conf")).expect("the shipped broker config");
        for _ in 0..5 {
            let port = free_port();
            let conf = vigil_testkit::shipped_broker_conf(&template, port, d, &shipped.join("vigil.acl"), None);
            assert!(conf.contains("require_certificate true"));
            std::fs::write(d.join("broker.conf"), conf).expect("write broker.conf");
            let log = std::fs::File::create(d.join("broker.log")).expect("broker log");
            if let Some(child) = spawn_mosquitto(&d.join("broker.conf"), port, log.into()) {
                return Self { child, port, dir };
            }
        }
        panic!("mosquitto (TLS) did not start: {}", std::fs::read_to_string(d.join("broker.log")).unwrap_or_default());
    }

    pub fn url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }

    /// TLS settings for client `name` (None: CA only, no client certificate).
    pub fn tls(&self, name: Option<&str>) -> vigil_config::TlsConfig {
        let d = self.dir.path();
        vigil_config::TlsConfig {
            ca: d.join("fleet-ca.pem"),
            cert: name.map(|n| d.join(format!("{n}.pem"))),
            key: name.map(|n| d.join(format!("{n}.key"))),
        }
    }

    /// The `[mqtt.tls]` section of a vigil.toml for device `name`.
    pub fn tls_toml(&self, name: &str) -> String {
        let t = self.tls(Some(name));
        format!(
            "[mqtt.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            t.ca.display(),
            t.cert.unwrap().display(),
            t.key.unwrap().display()
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
