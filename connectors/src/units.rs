//! Human-friendly quantities used in specs, flags and query strings:
//! byte sizes (`64Mi`, `512KiB`, `1G`) and durations (`5s`, `10m`, `24h`,
//! `1h30m`, `250ms`). This is the one duration grammar of evoke: function
//! specs, webhook tolerances, cron `@every`, flags and query strings all
//! parse with [`parse_duration`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number of bytes, written `64Mi`, `64MiB`, `1Gi`, `512K`, or plain bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const KI: u64 = 1024;
    pub const MI: u64 = 1024 * 1024;
    pub const GI: u64 = 1024 * 1024 * 1024;

    pub const fn mib(n: u64) -> ByteSize {
        ByteSize(n * Self::MI)
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size; write e.g. 64Mi, 512Ki or 1Gi"))?;
        let mult = match unit.trim() {
            "" | "B" => 1,
            "K" | "Ki" | "KiB" | "KB" | "k" => Self::KI,
            "M" | "Mi" | "MiB" | "MB" => Self::MI,
            "G" | "Gi" | "GiB" | "GB" => Self::GI,
            other => {
                return Err(format!("`{s}` has an unknown unit `{other}`; use Ki, Mi or Gi"));
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n != 0 && n.is_multiple_of(Self::GI) {
            write!(f, "{}Gi", n / Self::GI)
        } else if n != 0 && n.is_multiple_of(Self::MI) {
            write!(f, "{}Mi", n / Self::MI)
        } else if n != 0 && n.is_multiple_of(Self::KI) {
            write!(f, "{}Ki", n / Self::KI)
        } else {
            write!(f, "{n}")
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// The longest duration evoke takes (100 years): every setting's own range
/// is far below it, and beyond it a duration no longer prints to text that
/// parses back (found by the `units` fuzz target).
pub const MAX_DURATION: Duration = Duration::from_secs(36525 * 24 * 3600);

/// Parses a humantime duration (`5s`, `250ms`, `10m`, `24h`) with a message
/// that says what is expected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    match parse_any(s) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        Ok(_) | Err(None) => Err(format!(
            "`{s}` is longer than the longest duration evoke takes (100 years)"
        )),
        Err(Some(e)) => Err(e),
    }
}

/// Parses how far to look back (`--since 10m`): longer than
/// [`MAX_DURATION`] means "everything", not an error.
pub fn parse_lookback(s: &str) -> Result<Duration, String> {
    match parse_any(s) {
        Ok(d) => Ok(d.min(MAX_DURATION)),
        Err(None) => Ok(MAX_DURATION),
        Err(Some(e)) => Err(e),
    }
}

/// `Err(None)`: far too long to be a duration evoke takes.
fn parse_any(s: &str) -> Result<Duration, Option<String>> {
    // humantime panics ("overflow in Duration::new") when the parts of a
    // duration add up past u64::MAX seconds (a `units` fuzz finding): short
    // text with numbers of at most 10 digits can never get near that.
    let t = s.trim();
    if t.len() > 64
        || t.split(|c: char| !c.is_ascii_digit())
            .any(|n| n.trim_start_matches('0').len() > 10)
    {
        return Err(None);
    }
    humantime::parse_duration(t).map_err(|e| {
        Some(format!(
            "`{s}` is not a duration ({e}); write e.g. 500ms, 5s, 10m or 24h"
        ))
    })
}

/// Formats a duration the way it is written in specs.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Serde adapter for optional durations (absent or null = `None`).
pub mod duration_opt {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => parse_duration(&s).map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

/// Serde adapter for humantime durations that also names the expected form.
pub mod duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!("64Mi".parse::<ByteSize>().unwrap(), ByteSize::mib(64));
        assert_eq!("64MiB".parse::<ByteSize>().unwrap(), ByteSize::mib(64));
        assert_eq!("1Gi".parse::<ByteSize>().unwrap().0, ByteSize::GI);
        assert_eq!("100".parse::<ByteSize>().unwrap().0, 100);
        assert_eq!(ByteSize::mib(64).to_string(), "64Mi");
        assert!("64Xi".parse::<ByteSize>().unwrap_err().contains("unknown unit"));
        assert!("lots".parse::<ByteSize>().is_err());
    }

    #[test]
    fn durations_up_to_the_longest_print_back_to_themselves() {
        for d in [
            MAX_DURATION,
            MAX_DURATION - Duration::from_nanos(1),
            Duration::from_secs(3_155_759_999) + Duration::from_millis(17),
            Duration::from_millis(1),
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{d:?}");
        }
        assert_eq!(parse_lookback("99999999999h"), Ok(MAX_DURATION));
        // The fuzz finding itself (fuzz/seeds/units/huge-duration-round-trip).
        let found = format!(
            "{}18446744073709551615s750ms250ms6750ms250ms000279799.17m",
            "0".repeat(210)
        );
        assert!(parse_duration(&found).is_err());
        assert!(parse_lookback("soon").is_err());
    }

    #[test]
    fn hostile_numbers_are_refused_not_overflowed() {
        for bad in [
            "",
            " ",
            "-1",
            "-1Mi",
            "18446744073709551616",
            "18446744073709551615Gi",
            "18446744073709551615Mi",
            "9223372036854775808Ki",
            "1.5Gi",
        ] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?}");
        }
        assert_eq!("18446744073709551615".parse::<ByteSize>().unwrap().0, u64::MAX);
        for bad in [
            "",
            "-5s",
            "18446744073709551616s",
            "18446744073709551615h",
            "9223372036854775807d",
            "99999999999999999999999999ms",
            "5 parsecs",
            // Parsed by humantime, but no longer printable as text that
            // parses back (a `units` fuzz finding): beyond MAX_DURATION.
            "18446744073709551615s",
            "101years",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert!(parse_duration("soon").unwrap_err().contains("not a duration"));
    }
}
