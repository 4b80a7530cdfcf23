//! Credentials (camera passwords): held in [`Secret`], which never shows its value in `Debug`,
//! has no `Display`, and is wiped from memory when dropped (`secrecy`). The value is read in
//! exactly two places: where it is handed to the camera, and where a configuration file is
//! written ([`Secret`]'s `Serialize`); every other output (`config/get`, status, logs, errors)
//! shows [`REDACTED`].

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a redacted credential reads as; a `config/set` that sends it back keeps the current one.
pub const REDACTED: &str = "***";

#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    /// The value itself: only for handing it to the camera, or writing the configuration file.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// The redaction marker ([`REDACTED`]) rather than a credential.
    pub fn is_redacted(&self) -> bool {
        self.expose() == REDACTED
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for Secret {}

/// Writes the value: a configuration file needs it. Outputs meant for people redact it first.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.expose())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(***)");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn a_configuration_file_round_trips_the_value() {
        let s: Secret = serde_json::from_str("\"p@ss\"").unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"p@ss\"");
        assert!(Secret::new(REDACTED).is_redacted() && !s.is_redacted());
    }
}
