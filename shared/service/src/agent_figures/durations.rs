//! Task durations as a histogram of logarithmic buckets, each 5% wider
//! than the one before: small enough to report and add up across
//! replicas, and a median within 5% of the true one.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

const GROWTH: f64 = 1.05;

/// Counts by bucket; bucket `b` holds durations up to `1.05^b` µs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Durations(BTreeMap<u16, u64>);

impl Durations {
    pub fn record(&mut self, duration: Duration) {
        *self.0.entry(bucket(duration)).or_default() += 1;
    }

    pub fn add(&mut self, other: &Durations) {
        for (bucket, count) in &other.0 {
            *self.0.entry(*bucket).or_default() += count;
        }
    }

    pub fn count(&self) -> u64 {
        self.0.values().sum()
    }

    /// The median, as its bucket's upper bound in milliseconds.
    pub fn median_ms(&self) -> Option<f64> {
        let total = self.count();
        let half = total.div_ceil(2);
        let mut seen = 0;
        for (bucket, count) in &self.0 {
            seen += count;
            if seen >= half && total > 0 {
                return Some(upper_bound_ms(*bucket));
            }
        }
        None
    }
}

fn bucket(duration: Duration) -> u16 {
    let micros = duration.as_secs_f64() * 1e6;
    if micros <= 1.0 {
        return 0;
    }
    // Truncation is the bucketing; a duration past u16::MAX buckets (about
    // 10^1382 µs) cannot occur.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let bucket = (micros.ln() / GROWTH.ln()).ceil().min(f64::from(u16::MAX)) as u16;
    bucket
}

fn upper_bound_ms(bucket: u16) -> f64 {
    let ms = GROWTH.powi(i32::from(bucket)) / 1e3;
    // Three significant figures: the bucket is no finer than that.
    let scale = 10f64.powi(2 - ms.log10().floor() as i32);
    (ms * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_within_five_percent_and_adds_up_across_replicas() {
        let mut one = Durations::default();
        for ms in [1, 2, 3, 40, 50] {
            one.record(Duration::from_millis(ms));
        }
        let median = one.median_ms().unwrap();
        assert!((3.0..=3.15).contains(&median), "{median}");

        let mut two = Durations::default();
        for _ in 0..6 {
            two.record(Duration::from_millis(100));
        }
        one.add(&two);
        assert_eq!(one.count(), 11);
        let median = one.median_ms().unwrap();
        assert!((100.0..=105.0).contains(&median), "{median}");
    }

    #[test]
    fn no_durations_have_no_median_and_tiny_ones_count() {
        assert_eq!(Durations::default().median_ms(), None);
        let mut tiny = Durations::default();
        tiny.record(Duration::ZERO);
        assert_eq!(tiny.median_ms(), Some(0.001));
    }

    #[test]
    fn the_report_is_a_small_map_of_buckets() {
        let mut d = Durations::default();
        d.record(Duration::from_millis(1));
        d.record(Duration::from_millis(1));
        let text = serde_json::to_string(&d).unwrap();
        assert_eq!(text, r#"{"142":2}"#);
        assert_eq!(serde_json::from_str::<Durations>(&text).unwrap(), d);
    }
}
