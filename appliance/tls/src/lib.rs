//! One way to make a TLS client configuration, shared by the MQTT uplink and OTA downloads: the
//! ring crypto provider (the whole appliance uses ring; see docs/decisions/0004-tuf-with-tough.md
//! for the one library that brings aws-lc-rs), a CA bundle that verifies the server, and, when
//! configured, a client certificate that proves the device (mutual TLS).

use std::path::Path;
use std::sync::Arc;

/// A client configuration trusting the PEM certificates in `ca`, presenting `client` (certificate
/// chain and private key, PEM: PKCS#8, PKCS#1 or SEC1) when given. `Err` names the file at fault.
pub fn client_config(ca: &Path, client: Option<(&Path, &Path)>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut read_pem(ca)?.as_slice()) {
        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots.add(cert).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{} holds no PEM certificate", ca.display()));
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    match client {
        Some((cert, key)) => {
            let chain = rustls_pemfile::certs(&mut read_pem(cert)?.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: {e}", cert.display()))?;
            if chain.is_empty() {
                return Err(format!("{} holds no PEM certificate", cert.display()));
            }
            let key_der = rustls_pemfile::private_key(&mut read_pem(key)?.as_slice())
                .map_err(|e| format!("{}: {e}", key.display()))?
                .ok_or_else(|| format!("{} holds no private key", key.display()))?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| e.to_string())
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// The bytes of a PEM file; the error names it.
pub fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_without_certificates_or_keys_are_named() {
        let dir = std::env::temp_dir().join(format!("vigil-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = client_config(&empty, None).unwrap_err();
        assert!(e.contains("empty.pem holds no PEM certificate"), "{e}");
        let e = client_config(&dir.join("missing.pem"), None).unwrap_err();
        assert!(e.contains("cannot read") && e.contains("missing.pem"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
