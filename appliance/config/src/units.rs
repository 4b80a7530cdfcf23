//! Durations as the configuration file writes them (whole milliseconds, seconds or days; seconds
//! with a fraction) and as the code uses them: `Duration`, or `Option<Duration>` where the file's
//! 0 means "off". The key keeps its unit in its name (`watchdog_ms`); the field is typed
//! (`watchdog: Duration`), so no consumer converts units itself.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

fn whole<S: Serializer>(d: &Duration, unit: Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_nanos() / unit.as_nanos()).unwrap_or(u64::MAX))
}

fn times(n: u64, unit: Duration) -> Duration {
    unit.checked_mul(u32::try_from(n).unwrap_or(u32::MAX)).unwrap_or(Duration::MAX)
}

macro_rules! unit {
    ($name:ident, $unit:expr, $doc:literal) => {
        #[doc = $doc]
        pub mod $name {
            use super::*;

            pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
                whole(d, $unit, s)
            }

            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
                u64::deserialize(d).map(|n| times(n, $unit))
            }
        }
    };
}

unit!(ms, Duration::from_millis(1), "Whole milliseconds.");
unit!(secs, Duration::from_secs(1), "Whole seconds.");

/// Whole milliseconds, absent for `None`.
pub mod opt_ms {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => whole(d, Duration::from_millis(1), s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<u64>::deserialize(d).map(|n| n.map(Duration::from_millis))
    }
}

macro_rules! zero_is_off {
    ($name:ident, $unit:expr, $doc:literal) => {
        #[doc = $doc]
        pub mod $name {
            use super::*;

            pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
                whole(&d.unwrap_or(Duration::ZERO), $unit, s)
            }

            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
                u64::deserialize(d).map(|n| (n > 0).then(|| times(n, $unit)))
            }
        }
    };
}

zero_is_off!(secs_or_off, Duration::from_secs(1), "Whole seconds; 0 is `None` (off).");
zero_is_off!(days_or_off, Duration::from_secs(86_400), "Whole days; 0 is `None` (off).");

/// Seconds, fraction allowed; a negative or non-finite number is refused while parsing.
pub mod secs_f64 {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v)
            .map_err(|_| serde::de::Error::custom(format!("{v} is not a number of seconds from 0 up")))
    }
}

/// A duration in a file's unit, for the configuration check's messages.
pub(crate) fn in_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct T {
        #[serde(rename = "a_ms", with = "ms")]
        a: Duration,
        #[serde(rename = "b_s", with = "secs_or_off")]
        b: Option<Duration>,
        #[serde(rename = "c_s", with = "secs_f64")]
        c: Duration,
        #[serde(rename = "d_ms", with = "opt_ms", default)]
        d: Option<Duration>,
        #[serde(rename = "e_days", with = "days_or_off")]
        e: Option<Duration>,
    }

    #[test]
    fn file_units_become_typed_durations_and_back() {
        let t: T = toml::from_str("a_ms = 1500\nb_s = 0\nc_s = 2.5\ne_days = 2\n").unwrap();
        assert_eq!(
            t,
            T {
                a: Duration::from_millis(1500),
                b: None,
                c: Duration::from_millis(2500),
                d: None,
                e: Some(Duration::from_secs(2 * 86_400)),
            }
        );
        let back: T = toml::from_str(&toml::to_string(&t).unwrap()).unwrap();
        assert_eq!(back, t, "written back in the file's units");
        let t: T = toml::from_str("a_ms = 1\nb_s = 60\nc_s = 0\nd_ms = 40\ne_days = 0\n").unwrap();
        assert_eq!((t.b, t.d, t.e), (Some(Duration::from_secs(60)), Some(Duration::from_millis(40)), None));
    }

    #[test]
    fn negative_seconds_are_refused_with_the_key() {
        let e = toml::from_str::<T>("a_ms = 1\nb_s = 0\nc_s = -1.0\ne_days = 0\n").unwrap_err().to_string();
        assert!(e.contains("c_s") && e.contains("-1 is not a number of seconds from 0 up"), "{e}");
    }
}
