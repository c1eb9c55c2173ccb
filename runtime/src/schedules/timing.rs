//! When a schedule fires: a cron expression in an IANA time zone, a fixed
//! interval, or a single time; and [`plan`], what a node does with a
//! schedule that is due (pure, so the daylight-saving cases are unit
//! tests).

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use croner::parser::{CronParser, Seconds};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// When a schedule fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Timing {
    /// A cron expression: five fields, or six with seconds first
    /// (`*/10 * * * * *`); names (`MON-FRI`, `JAN`), `L`, `#` and `W` as
    /// croner reads them. Evaluated in `timezone` (an IANA name, UTC when
    /// absent). A time that a daylight-saving change skips fires once, at
    /// the end of the gap; a time that happens twice fires once, at its
    /// first occurrence. Expressions with wildcard or stepped hours,
    /// minutes or seconds fire at each real time that matches.
    Cron {
        /// The expression.
        cron: String,
        /// IANA time zone (`Europe/Berlin`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timezone: Option<String>,
    },
    /// Every `every_secs` seconds, counted from `start_at` (or from the
    /// schedule's creation).
    Interval {
        /// Seconds between firings.
        every_secs: i64,
        /// The first firing (defaults to one interval after creation).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start_at: Option<DateTime<Utc>>,
    },
    /// Once, at `at`.
    Once {
        /// When.
        at: DateTime<Utc>,
    },
}

/// A [`Timing`] checked and ready to compute occurrences.
#[derive(Debug, Clone)]
pub enum Compiled {
    /// A cron expression in a zone.
    Cron(Box<croner::Cron>, chrono_tz::Tz),
    /// Every `every_ms` from `anchor_ms`.
    Interval {
        /// The first occurrence.
        anchor_ms: i64,
        /// The period.
        every_ms: i64,
    },
    /// One occurrence.
    Once(i64),
}

impl Timing {
    /// Checks the timing; `created_ms` anchors intervals without a start.
    pub fn compile(&self, created_ms: i64) -> Result<Compiled, String> {
        match self {
            Timing::Cron { cron, timezone } => {
                let tz = match timezone.as_deref() {
                    None => chrono_tz::UTC,
                    Some(name) => chrono_tz::Tz::from_str(name)
                        .map_err(|_| format!("{name:?} is not an IANA time zone"))?,
                };
                if cron.len() > 200 {
                    return Err("the cron expression is longer than 200 characters".into());
                }
                let parsed = CronParser::builder()
                    .seconds(Seconds::Optional)
                    .build()
                    .parse(cron)
                    .map_err(|e| format!("not a cron expression: {e}"))?;
                Ok(Compiled::Cron(Box::new(parsed), tz))
            }
            Timing::Interval {
                every_secs,
                start_at,
            } => {
                if *every_secs <= 0 || *every_secs > 366 * 86_400 {
                    return Err("every_secs must be 1 to 31622400 (a year)".into());
                }
                let every_ms = every_secs * 1000;
                Ok(Compiled::Interval {
                    anchor_ms: start_at
                        .map(|t| t.timestamp_millis())
                        .unwrap_or(created_ms + every_ms),
                    every_ms,
                })
            }
            Timing::Once { at } => Ok(Compiled::Once(at.timestamp_millis())),
        }
    }
}

impl Compiled {
    /// The first occurrence strictly after `after_ms`.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        match self {
            Compiled::Cron(cron, tz) => {
                // croner works in whole seconds and keeps a fraction it is
                // given: search from the start of `after_ms`'s second (an
                // occurrence at that second is not after it).
                let second = after_ms.div_euclid(1000) * 1000;
                let after = Utc.timestamp_millis_opt(second).single()?;
                let next = cron
                    .find_next_occurrence(&after.with_timezone(tz), false)
                    .ok()?
                    .with_timezone(&Utc);
                Some(
                    repeated_hour(cron, tz, after, next)
                        .unwrap_or(next)
                        .timestamp_millis(),
                )
            }
            Compiled::Interval {
                anchor_ms,
                every_ms,
            } => {
                if after_ms < *anchor_ms {
                    return Some(*anchor_ms);
                }
                let periods = (after_ms - anchor_ms) / every_ms + 1;
                anchor_ms.checked_add(periods.checked_mul(*every_ms)?)
            }
            Compiled::Once(at) => (*at > after_ms).then_some(*at),
        }
    }

    /// The first occurrence at or after `from_ms`.
    pub fn first_from(&self, from_ms: i64) -> Option<i64> {
        self.next_after(from_ms - 1)
    }

    /// The shortest gap between the next `n` occurrences after `from_ms`
    /// (None when fewer than two occur).
    pub fn shortest_gap_ms(&self, from_ms: i64, n: usize) -> Option<i64> {
        let mut previous = self.next_after(from_ms)?;
        let mut shortest: Option<i64> = None;
        for _ in 1..n {
            let Some(next) = self.next_after(previous) else {
                break;
            };
            shortest = Some(shortest.map_or(next - previous, |s| s.min(next - previous)));
            previous = next;
        }
        shortest
    }
}

/// croner walks local wall-clock time, so from the first pass of an hour
/// that the autumn change repeats it steps over the second pass. For
/// expressions that fire at each real time that matches (wildcard or
/// stepped time fields), this finds an occurrence in that second pass,
/// between `after` and croner's `next`, by searching at the offset that
/// holds after the change.
fn repeated_hour(
    cron: &croner::Cron,
    tz: &chrono_tz::Tz,
    after: DateTime<Utc>,
    next: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    use chrono::Offset;
    if cron.determine_job_type() == croner::JobType::FixedTime {
        return None;
    }
    let offset_at = |t: DateTime<Utc>| tz.offset_from_utc_datetime(&t.naive_utc()).fix();
    let later = offset_at(next);
    if offset_at(after) == later {
        return None;
    }
    let candidate = cron
        .find_next_occurrence(&after.with_timezone(&later), false)
        .ok()?
        .with_timezone(&Utc);
    (candidate > after && candidate < next && offset_at(candidate) == later).then_some(candidate)
}

/// What to do about occurrences missed while no node ran (more than the
/// grace period late).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Fire once for the whole missed window (default).
    #[default]
    Once,
    /// Record the missed window and fire at the next occurrence only.
    Skip,
}

/// A firing a plan asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    /// The occurrence it stands for.
    pub due_ms: i64,
    /// How many occurrences it stands for beyond itself (missed ones).
    pub missed: i64,
    /// Whether it is recorded as skipped rather than fired.
    pub skipped: bool,
}

/// What a due schedule does now: the firings to record and the next
/// occurrence (None: the schedule is over).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Firings in order of their occurrences.
    pub firings: Vec<Planned>,
    /// The next occurrence after them.
    pub next_ms: Option<i64>,
}

/// Most occurrences a plan walks through (a schedule every second that was
/// missed for a long time is counted up to this).
const MAX_WALK: usize = 100_000;

/// Plans a schedule whose next occurrence `next_ms` is due at `now_ms`:
/// every occurrence up to now at most `grace_ms` late fires (at most
/// `max_firings` of them; the rest wait for the next plan); occurrences
/// later than that were missed, and `catch_up` says whether the latest of
/// them fires for all (counting the others as missed) or is recorded as
/// skipped.
pub fn plan(
    timing: &Compiled,
    next_ms: i64,
    now_ms: i64,
    grace_ms: i64,
    catch_up: CatchUp,
    max_firings: usize,
) -> Plan {
    let mut firings = Vec::new();
    let mut due = Some(next_ms);
    // Missed occurrences: due before the grace window.
    let mut missed_last = None;
    let mut missed_count = 0i64;
    let mut walked = 0;
    while let Some(at) = due {
        if at >= now_ms - grace_ms || walked >= MAX_WALK {
            break;
        }
        missed_last = Some(at);
        missed_count += 1;
        walked += 1;
        due = timing.next_after(at);
    }
    if walked >= MAX_WALK {
        // Too many to walk: jump to the window.
        due = timing.first_from(now_ms - grace_ms);
    }
    if let Some(last) = missed_last {
        firings.push(Planned {
            due_ms: last,
            missed: missed_count - 1,
            skipped: catch_up == CatchUp::Skip,
        });
    }
    while let Some(at) = due {
        if at > now_ms || firings.len() >= max_firings {
            break;
        }
        firings.push(Planned {
            due_ms: at,
            missed: 0,
            skipped: false,
        });
        due = timing.next_after(at);
    }
    Plan {
        firings,
        next_ms: due,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    fn ms(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    fn cron(expr: &str, tz: &str) -> Compiled {
        Timing::Cron {
            cron: expr.into(),
            timezone: Some(tz.into()),
        }
        .compile(0)
        .unwrap()
    }

    /// Drives `timing` with a clock moving `step_ms` at a time from
    /// `from` to `to`, as the scheduler does, and returns the firings.
    fn live_through(timing: &Compiled, from: &str, to: &str, step_ms: i64) -> Vec<i64> {
        let clock = ManualClock::at(ms(from));
        let mut next = timing.next_after(clock.now_ms());
        let mut fired = Vec::new();
        while clock.now_ms() <= ms(to) {
            if let Some(due) = next.filter(|&n| n <= clock.now_ms()) {
                let plan = plan(timing, due, clock.now_ms(), 60_000, CatchUp::Once, 100);
                fired.extend(plan.firings.iter().map(|f| f.due_ms));
                next = plan.next_ms;
            }
            clock.advance(step_ms);
        }
        fired
    }

    #[test]
    fn a_time_skipped_by_the_spring_change_fires_once() {
        // Europe/Berlin skips 02:00-03:00 on 29 March 2026.
        let timing = cron("30 2 * * *", "Europe/Berlin");
        let fired = live_through(
            &timing,
            "2026-03-27T12:00:00Z",
            "2026-03-31T12:00:00Z",
            60_000,
        );
        let expected = [
            "2026-03-28T01:30:00Z", // 02:30 CET
            "2026-03-29T01:00:00Z", // the gap's end, 03:00 CEST
            "2026-03-30T00:30:00Z", // 02:30 CEST
            "2026-03-31T00:30:00Z",
        ];
        assert_eq!(fired, expected.map(ms));
    }

    #[test]
    fn a_time_repeated_by_the_autumn_change_fires_once() {
        // Europe/Berlin repeats 02:00-03:00 on 25 October 2026.
        let timing = cron("30 2 * * *", "Europe/Berlin");
        let fired = live_through(
            &timing,
            "2026-10-23T12:00:00Z",
            "2026-10-26T12:00:00Z",
            60_000,
        );
        let expected = [
            "2026-10-24T00:30:00Z", // 02:30 CEST
            "2026-10-25T00:30:00Z", // the first 02:30, CEST; not the second
            "2026-10-26T01:30:00Z", // 02:30 CET
        ];
        assert_eq!(fired, expected.map(ms));
    }

    #[test]
    fn an_hourly_schedule_follows_real_hours_across_both_changes() {
        let timing = cron("0 * * * *", "America/New_York");
        // 8 March 2026: the day has 23 hours in New York.
        let spring = live_through(
            &timing,
            "2026-03-08T04:59:00Z",
            "2026-03-09T03:59:00Z",
            60_000,
        );
        assert_eq!(spring.len(), 23);
        // 1 November 2026: 25 hours, each fired once.
        let autumn = live_through(
            &timing,
            "2026-11-01T03:59:00Z",
            "2026-11-02T04:59:00Z",
            60_000,
        );
        assert_eq!(autumn.len(), 25);
        let mut sorted = autumn.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), 25, "no hour fires twice");
    }

    #[test]
    fn seconds_are_optional() {
        let timing = cron("*/10 * * * * *", "UTC");
        assert_eq!(
            timing.next_after(ms("2026-01-01T00:00:01Z")),
            Some(ms("2026-01-01T00:00:10Z"))
        );
        assert_eq!(timing.shortest_gap_ms(0, 5), Some(10_000));
        let minutes = cron("*/5 * * * *", "UTC");
        assert_eq!(
            minutes.next_after(ms("2026-01-01T00:00:00.500Z")),
            Some(ms("2026-01-01T00:05:00Z"))
        );
    }

    #[test]
    fn bad_timings_are_refused() {
        for bad in [
            Timing::Cron {
                cron: "61 * * * *".into(),
                timezone: None,
            },
            Timing::Cron {
                cron: "* * * * *".into(),
                timezone: Some("Mars/Olympus".into()),
            },
            Timing::Interval {
                every_secs: 0,
                start_at: None,
            },
        ] {
            assert!(bad.compile(0).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn intervals_count_from_their_anchor() {
        let timing = Timing::Interval {
            every_secs: 60,
            start_at: None,
        }
        .compile(1_000)
        .unwrap();
        assert_eq!(timing.next_after(0), Some(61_000));
        assert_eq!(timing.next_after(61_000), Some(121_000));
        assert_eq!(timing.next_after(150_000), Some(181_000));
    }

    #[test]
    fn downtime_fires_once_or_is_skipped_and_the_plan_resumes_on_time() {
        let timing = Timing::Interval {
            every_secs: 60,
            start_at: Some(DateTime::from_timestamp_millis(0).unwrap()),
        }
        .compile(0)
        .unwrap();
        // Down from 0 to 10 minutes; one minute of grace.
        let once = plan(&timing, 0, 600_000, 60_000, CatchUp::Once, 100);
        assert_eq!(
            once.firings,
            vec![
                Planned {
                    due_ms: 480_000,
                    missed: 8,
                    skipped: false
                },
                Planned {
                    due_ms: 540_000,
                    missed: 0,
                    skipped: false
                },
                Planned {
                    due_ms: 600_000,
                    missed: 0,
                    skipped: false
                },
            ]
        );
        assert_eq!(once.next_ms, Some(660_000));
        let skip = plan(&timing, 0, 600_000, 60_000, CatchUp::Skip, 100);
        assert!(skip.firings[0].skipped);
        assert_eq!(skip.firings.iter().filter(|f| !f.skipped).count(), 2);
        let single = Timing::Once {
            at: DateTime::from_timestamp_millis(5).unwrap(),
        }
        .compile(0)
        .unwrap();
        let done = plan(&single, 5, 10, 60_000, CatchUp::Once, 100);
        assert_eq!(done.firings.len(), 1);
        assert_eq!(done.next_ms, None);
    }
}
