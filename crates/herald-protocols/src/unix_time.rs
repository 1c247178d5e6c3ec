//! Unix times as types: [`UnixMillis`] (what the store, the engine and the API keep) and
//! [`UnixSeconds`] (what the wire profiles sign: Standard Webhooks' `webhook-timestamp`,
//! Stripe's `t=`, Alipay's `notify_time`, WeChat Pay's times).
//!
//! Both are `i64`s underneath, so nothing stops a bare `i64` from meaning either; these types
//! do. A value crosses between them only by a named conversion ([`UnixMillis::to_seconds`],
//! [`UnixSeconds::to_millis`]), and a bare number becomes one only through `new` and leaves
//! through `get`, which the database and wire boundaries use. There is no `From<i64>` and no
//! `Deref`, so the compiler refuses a seconds value where milliseconds are expected:
//!
//! ```compile_fail,E0308
//! use herald_protocols::{UnixMillis, UnixSeconds};
//! fn due(_at: UnixMillis) {}
//! due(UnixSeconds::new(1_700_000_000)); // seconds are not milliseconds
//! ```
//!
//! ```compile_fail,E0308
//! use herald_protocols::UnixMillis;
//! let _t: UnixMillis = 1_700_000_000_000; // a bare number is not a time
//! ```
//!
//! The arithmetic is what the code needs, typed: a time plus or minus a [`Duration`], and the
//! distance between two times as a [`Duration`] (or signed milliseconds). Serde sees the
//! number itself (`#[serde(transparent)]`), so JSON shapes are those of the plain `i64`.
//!
//! The drivers read and bind these types directly: the `rusqlite` and `postgres` features
//! (enabled by `herald-store-sqlite` and `herald-store-postgres`) implement their `ToSql`
//! and `FromSql` as the `i64` (`BIGINT`/`INTEGER`) underneath.
use std::fmt;
use std::ops::{Add, AddAssign, Sub};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A point in time as milliseconds since the Unix epoch (negative before it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UnixMillis(i64);

/// A point in time as whole seconds since the Unix epoch (negative before it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UnixSeconds(i64);

/// A duration's milliseconds as an `i64`, saturating (a duration of 292 million years).
fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl UnixMillis {
    /// The epoch itself.
    pub const EPOCH: UnixMillis = UnixMillis(0);

    /// A time from its milliseconds since the epoch (a database column, a wire field).
    pub const fn new(ms: i64) -> UnixMillis {
        UnixMillis(ms)
    }

    /// The milliseconds since the epoch, for a database column or a wire field.
    pub const fn get(self) -> i64 {
        self.0
    }

    /// The system clock, now.
    pub fn now() -> UnixMillis {
        UnixMillis::from_system_time(SystemTime::now())
    }

    /// A system time, truncated to the millisecond towards the past (also before the epoch).
    pub fn from_system_time(t: SystemTime) -> UnixMillis {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => UnixMillis(duration_ms(d)),
            Err(e) => {
                // Before the epoch: round away from zero so the result is never later than `t`.
                let d = e.duration();
                let ms = duration_ms(d);
                let exact = d.subsec_nanos() % 1_000_000 == 0;
                UnixMillis(-ms - i64::from(!exact))
            }
        }
    }

    /// The whole second this millisecond falls in: floored, like `div_euclid(1000)`, so
    /// `-1` ms is second `-1`, not `0`.
    pub const fn to_seconds(self) -> UnixSeconds {
        UnixSeconds(self.0.div_euclid(1000))
    }

    /// How long after `earlier` this is; zero when `earlier` is not earlier.
    pub fn saturating_sub(self, earlier: UnixMillis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0).max(0) as u64)
    }

    /// Signed milliseconds from `earlier` to this (negative when `earlier` is later).
    pub const fn ms_since(self, earlier: UnixMillis) -> i64 {
        self.0.saturating_sub(earlier.0)
    }

    /// This time floored to a multiple of `step` since the epoch (a chart's minute).
    pub fn floor_to(self, step: Duration) -> UnixMillis {
        let step = duration_ms(step).max(1);
        UnixMillis(self.0 - self.0.rem_euclid(step))
    }
}

impl UnixSeconds {
    /// A time from its seconds since the epoch (a signature header's timestamp).
    pub const fn new(s: i64) -> UnixSeconds {
        UnixSeconds(s)
    }

    /// The seconds since the epoch, for a wire field.
    pub const fn get(self) -> i64 {
        self.0
    }

    /// The system clock, now.
    pub fn now() -> UnixSeconds {
        UnixSeconds::from_system_time(SystemTime::now())
    }

    /// A system time, floored to the second (also before the epoch).
    pub fn from_system_time(t: SystemTime) -> UnixSeconds {
        UnixMillis::from_system_time(t).to_seconds()
    }

    /// The first millisecond of this second (saturating at the ends of `i64`).
    pub const fn to_millis(self) -> UnixMillis {
        UnixMillis(self.0.saturating_mul(1000))
    }
}

impl Add<Duration> for UnixMillis {
    type Output = UnixMillis;
    /// Saturating at the end of time.
    fn add(self, d: Duration) -> UnixMillis {
        UnixMillis(self.0.saturating_add(duration_ms(d)))
    }
}

impl AddAssign<Duration> for UnixMillis {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl Sub<Duration> for UnixMillis {
    type Output = UnixMillis;
    /// Saturating at the start of time.
    fn sub(self, d: Duration) -> UnixMillis {
        UnixMillis(self.0.saturating_sub(duration_ms(d)))
    }
}

impl fmt::Display for UnixMillis {
    /// The number of milliseconds, as in the JSON.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for UnixSeconds {
    /// The number of seconds, as the wire profiles write it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(feature = "rusqlite")]
mod sqlite {
    use rusqlite::types::{FromSql, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

    use super::UnixMillis;

    impl ToSql for UnixMillis {
        fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
            Ok(ToSqlOutput::from(self.0))
        }
    }

    impl FromSql for UnixMillis {
        fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
            i64::column_result(value).map(UnixMillis)
        }
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use std::error::Error;

    use postgres_types::{accepts, to_sql_checked, FromSql, IsNull, ToSql, Type};

    use super::UnixMillis;

    impl ToSql for UnixMillis {
        fn to_sql(
            &self,
            ty: &Type,
            out: &mut bytes::BytesMut,
        ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
            self.0.to_sql(ty, out)
        }

        accepts!(INT8);
        to_sql_checked!();
    }

    impl<'a> FromSql<'a> for UnixMillis {
        fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
            i64::from_sql(ty, raw).map(UnixMillis)
        }

        accepts!(INT8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_floor_to_seconds_like_div_euclid_also_before_the_epoch() {
        for (ms, s) in [
            (0, 0),
            (999, 0),
            (1000, 1),
            (1_700_000_000_999, 1_700_000_000),
            (-1, -1),
            (-999, -1),
            (-1000, -1),
            (-1001, -2),
        ] {
            assert_eq!(
                UnixMillis::new(ms).to_seconds(),
                UnixSeconds::new(s),
                "{ms}"
            );
            assert_eq!(UnixMillis::new(ms).to_seconds().get(), ms.div_euclid(1000));
        }
        assert_eq!(
            UnixSeconds::new(-2).to_millis(),
            UnixMillis::new(-2000),
            "seconds to milliseconds is exact"
        );
        assert_eq!(UnixSeconds::new(i64::MAX).to_millis().get(), i64::MAX);
    }

    #[test]
    fn system_times_floor_to_the_millisecond_and_second_on_both_sides_of_the_epoch() {
        let after = UNIX_EPOCH + Duration::from_micros(1_500_700);
        assert_eq!(UnixMillis::from_system_time(after), UnixMillis::new(1_500));
        assert_eq!(UnixSeconds::from_system_time(after), UnixSeconds::new(1));
        let before = UNIX_EPOCH - Duration::from_micros(1_500_700);
        assert_eq!(
            UnixMillis::from_system_time(before),
            UnixMillis::new(-1_501)
        );
        assert_eq!(UnixSeconds::from_system_time(before), UnixSeconds::new(-2));
        let exact = UNIX_EPOCH - Duration::from_millis(2_000);
        assert_eq!(UnixMillis::from_system_time(exact), UnixMillis::new(-2_000));
        assert_eq!(UnixSeconds::from_system_time(exact), UnixSeconds::new(-2));
    }

    #[test]
    fn arithmetic_takes_durations_and_gives_durations() {
        let t = UnixMillis::new(1_700_000_000_000);
        assert_eq!(
            t + Duration::from_secs(30),
            UnixMillis::new(1_700_000_030_000)
        );
        assert_eq!(
            t - Duration::from_millis(1),
            UnixMillis::new(1_699_999_999_999)
        );
        let mut u = t;
        u += Duration::from_millis(250);
        assert_eq!(u.saturating_sub(t), Duration::from_millis(250));
        assert_eq!(t.saturating_sub(u), Duration::ZERO, "never negative");
        assert_eq!(t.ms_since(u), -250);
        assert_eq!(
            UnixMillis::new(i64::MAX) + Duration::from_secs(1),
            UnixMillis::new(i64::MAX)
        );
        assert!(t < u);
        assert_eq!(
            UnixMillis::new(-1).floor_to(Duration::from_secs(60)),
            UnixMillis::new(-60_000)
        );
        assert_eq!(
            UnixMillis::new(125_000).floor_to(Duration::from_secs(60)),
            UnixMillis::new(120_000)
        );
    }

    #[test]
    fn serde_sees_the_plain_number_so_json_is_unchanged() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Row {
            at: UnixMillis,
            t: UnixSeconds,
            next: Option<UnixMillis>,
        }
        let text = r#"{"at":1700000000123,"t":-5,"next":null}"#;
        let row: Row = serde_json::from_str(text).unwrap();
        assert_eq!(
            row,
            Row {
                at: UnixMillis::new(1_700_000_000_123),
                t: UnixSeconds::new(-5),
                next: None
            }
        );
        assert_eq!(serde_json::to_string(&row).unwrap(), text);
        assert!(serde_json::from_str::<Row>(r#"{"at":"1","t":1,"next":null}"#).is_err());
        assert_eq!(UnixSeconds::new(1_614_265_330).to_string(), "1614265330");
    }
}
