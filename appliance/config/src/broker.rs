//! The broker address `mqtt.url` names.

/// Broker address parsed from `mqtt.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("`{url}` is not a URL; write mqtt://host:port or mqtts://host:port"))?;
        let tls = match scheme {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => return Err(format!("unknown scheme `{other}`; use mqtt:// (plain) or mqtts:// (TLS)")),
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('?') {
            return Err(format!("`{url}` must be only scheme://host[:port], without a path or query"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                let port = p.parse::<u16>().map_err(|_| format!("port `{p}` is not a number from 1 to 65535"))?;
                if port == 0 {
                    return Err("port 0 is not a broker port".to_owned());
                }
                (h.to_owned(), port)
            }
            _ => (rest.to_owned(), if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        if host.is_empty() {
            return Err(format!("`{url}` names no host"));
        }
        Ok(Self { tls, host, port })
    }
}
