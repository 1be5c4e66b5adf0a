//! The stand-in's clock: real time plus an offset a test can advance, so
//! lock expiry, duplicate-detection windows and `AutoDeleteOnIdle` (at
//! least five minutes on Azure) can be seen without waiting for them.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

#[derive(Default)]
pub(crate) struct Clock {
    offset: Mutex<Duration>,
}

impl Clock {
    fn offset(&self) -> Duration {
        *self.offset.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn now(&self) -> Instant {
        Instant::now() + self.offset()
    }

    pub(crate) fn wall(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc() + self.offset()
    }

    pub(crate) fn advance(&self, by: Duration) {
        *self.offset.lock().unwrap_or_else(|p| p.into_inner()) += by;
    }
}
