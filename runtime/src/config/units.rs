//! Human units in TOML: durations like `"250ms"` and sizes like `"16MiB"`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The longest duration any key takes: a year. Longer ones are refused where
/// they are written, so no deadline or backoff computed from them overflows
/// the clock.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The largest size any key takes: 1 TiB.
pub const MAX_SIZE: u64 = 1 << 40;

/// A duration written as `"250ms"`, `"30s"`, `"1m 30s"` (humantime syntax),
/// at most [`MAX_DURATION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"250ms\", \"30s\" or \"2m\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Dur, E> {
                let d = humantime::parse_duration(s.trim()).map_err(|e| {
                    E::custom(format!(
                        "invalid duration {s:?}: {e}; expected a duration such as \"250ms\", \"30s\" or \"2m\""
                    ))
                })?;
                if d > MAX_DURATION {
                    return Err(E::custom(format!(
                        "duration {s:?} is too long: at most 365 days (\"365d\")"
                    )));
                }
                Ok(Dur(d))
            }
        }
        d.deserialize_str(V)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl From<Dur> for Duration {
    fn from(d: Dur) -> Duration {
        d.0
    }
}

/// A size in bytes written as `"16MiB"`, `"512KiB"`, `"1GB"` or a plain
/// integer, at most [`MAX_SIZE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"16MiB\", \"512KiB\" or a number of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom(format!("invalid size {v}: a size cannot be negative")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                bounded(v, &v.to_string())
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Size, E> {
                let b = s.trim().parse::<bytesize::ByteSize>().map_err(|e| {
                    E::custom(format!(
                        "invalid size {s:?}: {e}; expected a size such as \"16MiB\" or \"512KiB\""
                    ))
                })?;
                bounded(b.as_u64(), &format!("{s:?}"))
            }
        }
        d.deserialize_any(V)
    }
}

/// `v` as a size, if it is at most [`MAX_SIZE`].
fn bounded<E: de::Error>(v: u64, written: &str) -> Result<Size, E> {
    if v > MAX_SIZE {
        return Err(E::custom(format!(
            "size {written} is too large: at most 1TiB"
        )));
    }
    Ok(Size(v))
}

/// The largest binary unit that divides the size evenly: `2GiB`, `640MiB`,
/// `1000` (bytes).
impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ];
        for (n, unit) in UNITS {
            if self.0 >= n && self.0.is_multiple_of(n) {
                return write!(f, "{}{unit}", self.0 / n);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct T {
        d: Dur,
        s: Size,
    }

    #[test]
    fn parses_units() {
        let t: T = toml::from_str("d = \"250ms\"\ns = \"16MiB\"").unwrap();
        assert_eq!(t.d.0, Duration::from_millis(250));
        assert_eq!(t.s.0, 16 * 1024 * 1024);
        let t: T = toml::from_str("d = \"2m\"\ns = 1024").unwrap();
        assert_eq!(t.d.0, Duration::from_secs(120));
        assert_eq!(t.s.0, 1024);
    }

    #[test]
    fn shows_sizes_in_the_largest_even_unit() {
        assert_eq!(Size(2 << 30).to_string(), "2GiB");
        assert_eq!(Size(640 << 20).to_string(), "640MiB");
        assert_eq!(Size(1536).to_string(), "1536");
        assert_eq!(Size(0).to_string(), "0");
    }

    #[test]
    fn rejects_bad_units() {
        let e = toml::from_str::<T>("d = \"fast\"\ns = 1").err().unwrap();
        assert!(e.to_string().contains("invalid duration"), "{e}");
        let e = toml::from_str::<T>("d = \"1s\"\ns = \"lots\"")
            .err()
            .unwrap();
        assert!(e.to_string().contains("invalid size"), "{e}");
    }

    #[test]
    fn refuses_absurd_durations_and_sizes() {
        for d in ["300000000000y", "92233720368547758s", "366d"] {
            let e = toml::from_str::<T>(&format!("d = \"{d}\"\ns = 1"))
                .err()
                .unwrap_or_else(|| panic!("{d} accepted"));
            assert!(e.to_string().contains("at most 365 days"), "{e}");
        }
        let t: T = toml::from_str("d = \"365d\"\ns = \"1TiB\"").unwrap();
        assert_eq!(t.d.0, MAX_DURATION);
        for s in ["\"2TiB\"", "18446744073709551615", "\"16EiB\""] {
            let e = toml::from_str::<T>(&format!("d = \"1s\"\ns = {s}"))
                .err()
                .unwrap_or_else(|| panic!("{s} accepted"));
            assert!(
                e.to_string().contains("at most 1TiB") || e.to_string().contains("invalid size"),
                "{e}"
            );
        }
    }
}
