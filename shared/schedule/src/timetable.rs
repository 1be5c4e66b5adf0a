//! When a schedule fires: the nominal times of a cron expression in a time
//! zone (croner, which handles daylight-saving gaps and folds) or of a fixed
//! interval.

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use time::OffsetDateTime;

/// A parsed timetable.
#[derive(Debug, Clone)]
pub enum Timetable {
    Cron { cron: Box<Cron>, zone: TimeZone },
    Every { millis: i64 },
}

impl Timetable {
    pub fn every(seconds: u64) -> Result<Self, String> {
        let millis = i64::try_from(seconds)
            .ok()
            .and_then(|s| s.checked_mul(1_000))
            .ok_or_else(|| "too long".to_owned())?;
        Ok(Self::Every { millis })
    }

    /// A cron expression (five fields, or six with seconds first) in
    /// `zone` (UTC when `None`). The error says which part is wrong:
    /// `"cron"` or `"zone"`.
    pub fn cron(expression: &str, zone: Option<&str>) -> Result<Self, (&'static str, String)> {
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expression)
            .map_err(|e| ("cron", e.to_string()))?;
        let zone = match zone {
            None => TimeZone::UTC,
            Some(name) => TimeZone::get(name)
                .map_err(|_| ("zone", format!("{name:?} is not an IANA time zone")))?,
        };
        let timetable = Self::Cron {
            cron: Box::new(cron),
            zone,
        };
        // A pattern that matches no real time (30 February) is refused now
        // rather than never firing.
        if timetable.next_after(OffsetDateTime::UNIX_EPOCH).is_none() {
            return Err(("cron", "matches no time".to_owned()));
        }
        Ok(timetable)
    }

    /// The first nominal time strictly after `after`, to the second.
    pub fn next_after(&self, after: OffsetDateTime) -> Option<OffsetDateTime> {
        match self {
            Self::Every { millis } => {
                let now = millis_of(after);
                let next = now
                    .div_euclid(*millis)
                    .checked_add(1)?
                    .checked_mul(*millis)?;
                from_millis(next)
            }
            Self::Cron { cron, zone } => {
                let start = Timestamp::from_millisecond(millis_of(after))
                    .ok()?
                    .to_zoned(zone.clone());
                let next = cron.find_next_occurrence(&start, false).ok()?;
                from_millis(next.timestamp().as_millisecond())
            }
        }
    }

    /// Nominal times strictly after `after`, at most `limit`.
    pub fn upcoming(&self, after: OffsetDateTime, limit: usize) -> Vec<OffsetDateTime> {
        let mut out = Vec::with_capacity(limit);
        let mut cursor = after;
        while out.len() < limit {
            let Some(next) = self.next_after(cursor) else {
                break;
            };
            out.push(next);
            cursor = next;
        }
        out
    }
}

pub(crate) fn millis_of(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

pub(crate) fn from_millis(millis: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000).ok()
}
