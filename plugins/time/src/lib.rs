//! The time plugin: the current time, conversions between RFC 3339, Unix
//! seconds and fixed UTC offsets, date arithmetic and differences. Reads only
//! the wall clock the sandbox provides; no time-zone database (offsets only).

use chrono::{DateTime, Datelike, Duration, FixedOffset, TimeZone, Utc};
use orchestra_plugin_sdk::prelude::*;

fn offset(raw: Option<&str>) -> Result<FixedOffset, ToolError> {
    let raw = raw.unwrap_or("+00:00").trim();
    if raw.eq_ignore_ascii_case("z") || raw.eq_ignore_ascii_case("utc") {
        return Ok(FixedOffset::east_opt(0).expect("zero offset"));
    }
    let (sign, rest) = match raw.as_bytes().first() {
        Some(b'+') => (1, &raw[1..]),
        Some(b'-') => (-1, &raw[1..]),
        _ => {
            return Err(ToolError::InvalidArguments(format!(
                "offset {raw:?} must look like +02:00 or -05:30"
            )))
        }
    };
    let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
    let (h, m): (i32, i32) = match (h.parse(), m.parse()) {
        (Ok(h), Ok(m)) if h <= 23 && m <= 59 => (h, m),
        _ => {
            return Err(ToolError::InvalidArguments(format!(
                "offset {raw:?} must look like +02:00 or -05:30"
            )))
        }
    };
    FixedOffset::east_opt(sign * (h * 3600 + m * 60))
        .ok_or_else(|| ToolError::InvalidArguments(format!("offset {raw:?} is out of range")))
}

fn parse(raw: &str) -> Result<DateTime<FixedOffset>, ToolError> {
    let raw = raw.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t);
    }
    if let Ok(secs) = raw.parse::<i64>() {
        if let Some(t) = Utc.timestamp_opt(secs, 0).single() {
            return Ok(t.fixed_offset());
        }
    }
    Err(ToolError::InvalidArguments(format!(
        "{raw:?} is neither an RFC 3339 timestamp (2025-01-31T12:00:00Z) nor Unix seconds"
    )))
}

#[derive(Serialize, JsonSchema)]
struct Moment {
    /// RFC 3339 timestamp in the requested offset.
    rfc3339: String,
    /// Seconds since 1970-01-01T00:00:00Z.
    unix: i64,
    /// Day of the week, in English.
    weekday: String,
    /// Day of the year, from 1.
    day_of_year: u32,
    /// ISO week number.
    iso_week: u32,
}

fn moment(t: DateTime<FixedOffset>) -> Moment {
    Moment {
        rfc3339: t.to_rfc3339(),
        unix: t.timestamp(),
        weekday: format!("{:?}", t.weekday()),
        day_of_year: t.ordinal(),
        iso_week: t.iso_week().week(),
    }
}

#[derive(Deserialize, JsonSchema)]
struct Now {
    /// UTC offset for the answer, like `+02:00` (default UTC).
    #[serde(default)]
    offset: Option<String>,
}

fn now(args: Now) -> Result<Moment, ToolError> {
    Ok(moment(
        Utc::now().with_timezone(&offset(args.offset.as_deref())?),
    ))
}

#[derive(Deserialize, JsonSchema)]
struct Convert {
    /// RFC 3339 timestamp or Unix seconds.
    time: String,
    /// UTC offset to express it in, like `-05:00` (default UTC).
    #[serde(default)]
    offset: Option<String>,
}

fn convert(args: Convert) -> Result<Moment, ToolError> {
    Ok(moment(
        parse(&args.time)?.with_timezone(&offset(args.offset.as_deref())?),
    ))
}

#[derive(Deserialize, JsonSchema)]
struct Add {
    /// RFC 3339 timestamp or Unix seconds.
    time: String,
    /// Days to add (negative to subtract).
    #[serde(default)]
    days: i64,
    /// Hours to add.
    #[serde(default)]
    hours: i64,
    /// Minutes to add.
    #[serde(default)]
    minutes: i64,
    /// Seconds to add.
    #[serde(default)]
    seconds: i64,
}

fn add(args: Add) -> Result<Moment, ToolError> {
    let start = parse(&args.time)?;
    let total = [
        Duration::try_days(args.days),
        Duration::try_hours(args.hours),
        Duration::try_minutes(args.minutes),
        Duration::try_seconds(args.seconds),
    ]
    .into_iter()
    .try_fold(Duration::zero(), |acc, d| {
        d.and_then(|d| acc.checked_add(&d))
    })
    .ok_or_else(|| ToolError::InvalidArguments("the duration is too large".into()))?;
    let end = start
        .checked_add_signed(total)
        .ok_or_else(|| ToolError::InvalidArguments("the result is out of range".into()))?;
    Ok(moment(end))
}

#[derive(Deserialize, JsonSchema)]
struct Diff {
    /// Start: RFC 3339 timestamp or Unix seconds.
    from: String,
    /// End: RFC 3339 timestamp or Unix seconds.
    to: String,
}

#[derive(Serialize, JsonSchema)]
struct Difference {
    /// `to - from` in seconds (negative if `to` is earlier).
    seconds: i64,
    /// The same, as days, hours, minutes and seconds.
    human: String,
}

fn diff(args: Diff) -> Result<Difference, ToolError> {
    let seconds = (parse(&args.to)? - parse(&args.from)?).num_seconds();
    let a = seconds.unsigned_abs();
    let human = format!(
        "{}{}d {}h {}m {}s",
        if seconds < 0 { "-" } else { "" },
        a / 86_400,
        a % 86_400 / 3600,
        a % 3600 / 60,
        a % 60
    );
    Ok(Difference { seconds, human })
}

fn plugin() -> Plugin {
    Plugin::new(
        "time",
        env!("CARGO_PKG_VERSION"),
        "The current time, conversions and date arithmetic.",
    )
    .tool(
        Tool::new(
            "now",
            "Returns the current date and time, optionally at a UTC offset.",
            now,
        )
        .read_only(),
    )
    .tool(
        Tool::new(
            "convert",
            "Converts an RFC 3339 timestamp or Unix seconds to another UTC offset.",
            convert,
        )
        .read_only(),
    )
    .tool(
        Tool::new(
            "add",
            "Adds days, hours, minutes and seconds to a time.",
            add,
        )
        .read_only(),
    )
    .tool(Tool::new("diff", "Computes the time between two moments.", diff).read_only())
}

orchestra_plugin_sdk::export!(plugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_and_arithmetic() {
        let m = convert(Convert {
            time: "0".into(),
            offset: Some("+02:00".into()),
        })
        .unwrap();
        assert_eq!(m.rfc3339, "1970-01-01T02:00:00+02:00");
        assert_eq!(m.weekday, "Thu");
        let later = add(Add {
            time: "2024-02-28T12:00:00Z".into(),
            days: 1,
            hours: 12,
            minutes: 0,
            seconds: 0,
        })
        .unwrap();
        assert_eq!(later.rfc3339, "2024-03-01T00:00:00+00:00");
        let d = diff(Diff {
            from: "2025-01-01T00:00:00Z".into(),
            to: "2025-01-02T01:02:03Z".into(),
        })
        .unwrap();
        assert_eq!((d.seconds, d.human.as_str()), (90_123, "1d 1h 2m 3s"));
        assert!(convert(Convert {
            time: "yesterday".into(),
            offset: None
        })
        .is_err());
        assert!(offset(Some("+25:00")).is_err());
        assert!(now(Now { offset: None }).unwrap().unix > 1_700_000_000);
    }
}
