//! Durations ("500ms", "10s", "2m", "1h30m") and sizes ("512MiB", "64MB", "1G", 1024).
//!
//! Both deserialize from a string (or a bare number: seconds, bytes) and fail inside serde,
//! so the TOML/YAML error carries the value's line and column.

use schemars::JsonSchema;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationSpec(pub Duration);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

const DURATION_HELP: &str =
    "a duration such as \"500ms\", \"10s\", \"2m\", \"1h\" or \"1m30s\" (units: ms, s, m, h)";
const SIZE_HELP: &str =
    "a size such as \"512MiB\", \"64MB\", \"1GiB\" or a number of bytes (units: B, K, KB, KiB, M, MB, MiB, G, GB, GiB, T, TB, TiB)";

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("empty duration; expected {DURATION_HELP}"));
    }
    let mut total = 0f64;
    let mut rest = t;
    let mut any = false;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("invalid duration {s:?}; expected {DURATION_HELP}"));
        }
        let num: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}; expected {DURATION_HELP}"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = rest[..unit_len].trim();
        rest = &rest[unit_len..];
        let mult = match unit {
            "ms" => 0.001,
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" | "mins" => 60.0,
            "h" => 3600.0,
            "" if !any && rest.is_empty() => 1.0,
            _ => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {unit:?}; expected {DURATION_HELP}"
                ))
            }
        };
        total += num * mult;
        any = true;
    }
    if !total.is_finite() || total <= 0.0 {
        return Err(format!("duration {s:?} must be greater than zero"));
    }
    Ok(Duration::from_secs_f64(total))
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let num_len = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    if num_len == 0 {
        return Err(format!("invalid size {s:?}; expected {SIZE_HELP}"));
    }
    let num: f64 = t[..num_len]
        .parse()
        .map_err(|_| format!("invalid size {s:?}; expected {SIZE_HELP}"))?;
    let unit = t[num_len..].trim();
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1e12,
        "tib" => 1024f64.powi(4),
        _ => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {unit:?}; expected {SIZE_HELP}"
            ))
        }
    };
    let v = num * mult;
    if !v.is_finite() || v < 1.0 {
        return Err(format!("size {s:?} must be at least one byte"));
    }
    Ok(v as u64)
}

pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else if !ms.is_multiple_of(60_000) || ms == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{}m", ms / 60_000)
    }
}

pub fn format_size(b: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, m) in UNITS {
        if b >= m && b.is_multiple_of(m) {
            return format!("{}{name}", b / m);
        }
    }
    format!("{b}B")
}

struct DurationVisitor;
impl de::Visitor<'_> for DurationVisitor {
    type Value = DurationSpec;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(DURATION_HELP)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationSpec, E> {
        parse_duration(v).map(DurationSpec).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<DurationSpec, E> {
        if v == 0 {
            return Err(E::custom("duration must be greater than zero"));
        }
        Ok(DurationSpec(Duration::from_secs(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurationSpec, E> {
        if v <= 0 {
            return Err(E::custom("duration must be greater than zero"));
        }
        Ok(DurationSpec(Duration::from_secs(v as u64)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<DurationSpec, E> {
        if !(v.is_finite() && v > 0.0) {
            return Err(E::custom("duration must be greater than zero"));
        }
        Ok(DurationSpec(Duration::from_secs_f64(v)))
    }
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurationVisitor)
    }
}

impl Serialize for DurationSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

/// A size written without a unit is bytes; below 1 MiB that is never a sensible limit
/// (`memory = 512` killed jobs with SIGSEGV and no word of memory): the unit is asked for.
fn bare_bytes(v: u64) -> Result<u64, String> {
    if v < 1 << 20 {
        return Err(format!(
            "{v} without a unit means {v} bytes, too small for a limit: write the unit, e.g. \"{v}MiB\" (a number without a unit is bytes and must be at least 1MiB)"
        ));
    }
    Ok(v)
}

struct SizeVisitor;
impl de::Visitor<'_> for SizeVisitor {
    type Value = ByteSize;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(SIZE_HELP)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
        let bytes = parse_size(v).map_err(E::custom)?;
        if v.trim().bytes().all(|b| b.is_ascii_digit()) {
            return bare_bytes(bytes).map(ByteSize).map_err(E::custom);
        }
        Ok(ByteSize(bytes))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
        bare_bytes(v).map(ByteSize).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
        if v <= 0 {
            return Err(E::custom("size must be at least one byte"));
        }
        bare_bytes(v as u64).map(ByteSize).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SizeVisitor)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_size(self.0))
    }
}

impl JsonSchema for DurationSpec {
    fn schema_name() -> String {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        let v = serde_json::json!({
            "description": "A duration: \"500ms\", \"10s\", \"2m\", \"1h\", \"1m30s\", or a number of seconds.",
            "anyOf": [
                {"type": "string", "pattern": "^\\s*([0-9]+(\\.[0-9]+)?\\s*(ms|s|sec|secs|m|min|mins|h)?\\s*)+$"},
                {"type": "number", "exclusiveMinimum": 0}
            ]
        });
        serde_json::from_value(v).expect("static schema")
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> String {
        "ByteSize".into()
    }
    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        let v = serde_json::json!({
            "description": "A size: \"512MiB\", \"64MB\", \"1GiB\", or a number of bytes.",
            "anyOf": [
                {"type": "string", "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*([bB]|[kKmMgGtT]([bB]|i[bB])?)?\\s*$"},
                {"type": "integer", "minimum": 1}
            ]
        });
        serde_json::from_value(v).expect("static schema")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("64MB").unwrap(), 64_000_000);
        assert_eq!(parse_size("1k").unwrap(), 1000);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("12 bananas").is_err());
        assert!(parse_size("MiB").is_err());
        assert_eq!(format_size(512 << 20), "512MiB");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn a_limit_without_a_unit_below_a_mebibyte_asks_for_one() {
        let parse = |yaml: &str| serde_json::from_str::<ByteSize>(yaml);
        let e = parse("512").unwrap_err().to_string();
        assert!(
            e.contains("512 without a unit means 512 bytes") && e.contains("\"512MiB\""),
            "{e}"
        );
        let e = parse("\"512\"").unwrap_err().to_string();
        assert!(e.contains("512MiB"), "{e}");
        assert_eq!(parse("1048576").unwrap(), ByteSize(1 << 20));
        assert_eq!(parse("\"512B\"").unwrap(), ByteSize(512));
        assert_eq!(parse("\"512MiB\"").unwrap(), ByteSize(512 << 20));
    }
}
