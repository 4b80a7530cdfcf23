//! Certificates for a simulated fleet on the shipped fleet broker (mutual TLS, its ACL): a CA,
//! the broker's certificate for 127.0.0.1, an operator's (common name `operator`, the ACL's
//! operator), and one per simulated device with its device id as common name. They are made in
//! this process (rcgen): 10 000 device certificates take about a second, where the `openssl`
//! command takes about 40 ms a certificate. The devices share one key: the broker checks each
//! device's signature at each handshake all the same, and one key is one file to hand over.
//!
//! Throwaway material for benchmarks and tests, readable by everyone: mosquitto started as root
//! reads its files as its own user.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};

use crate::sim::device_id;

/// Certificate and key files in one directory, named as the shipped broker configuration names
/// its own (`fleet-ca.pem`, `broker.pem`, `broker.key`).
pub struct FleetPki {
    dir: PathBuf,
}

impl FleetPki {
    /// Makes the CA, the broker's and the operator's certificates, and those of devices
    /// `<prefix>-00001` … `<prefix>-<devices>` (in that order in one file), in `dir`.
    pub fn make(dir: &Path, prefix: &str, devices: usize) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
            anyhow::Ok(())
        };
        let ca_key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "vigil fleet-bench CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = params.self_signed(&ca_key)?;
        write("fleet-ca.pem", &ca.pem())?;

        let leaf = |cn: &str, serial: u64, server: bool| {
            let mut params = CertificateParams::default();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.serial_number = Some(SerialNumber::from(serial));
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            if server {
                params.subject_alt_names = vec![SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST))];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            } else {
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
            params
        };
        for (name, serial, server) in [("broker", 1, true), ("operator", 2, false)] {
            let key = KeyPair::generate()?;
            let cn = if server { "127.0.0.1" } else { name };
            write(&format!("{name}.pem"), &leaf(cn, serial, server).signed_by(&key, &ca, &ca_key)?.pem())?;
            write(&format!("{name}.key"), &key.serialize_pem())?;
        }
        let device_key = KeyPair::generate()?;
        let mut bundle = String::new();
        for i in 1..=devices {
            let params = leaf(&device_id(prefix, i), 2 + i as u64, false);
            bundle += &params.signed_by(&device_key, &ca, &ca_key)?.pem();
        }
        write("devices.pem", &bundle)?;
        write("device.key", &device_key.serialize_pem())?;
        Ok(Self { dir: dir.to_owned() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("fleet-ca.pem")
    }

    /// `fleet-sim`'s options for the devices' certificates.
    pub fn sim_args(&self) -> Vec<String> {
        let path = |name: &str| self.dir.join(name).display().to_string();
        ["--ca", &path("fleet-ca.pem"), "--device-certs", &path("devices.pem"), "--device-key", &path("device.key")]
            .map(str::to_owned)
            .to_vec()
    }

    /// `vigil-ops fleet`'s options for the operator's certificate.
    pub fn operator_args(&self) -> Vec<String> {
        let path = |name: &str| self.dir.join(name).display().to_string();
        ["--ca", &path("fleet-ca.pem"), "--cert", &path("operator.pem"), "--key", &path("operator.key")]
            .map(str::to_owned)
            .to_vec()
    }
}
