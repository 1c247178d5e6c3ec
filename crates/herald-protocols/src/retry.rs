//! Retry schedules: a list of delays after the first attempt, optionally with jitter.
//!
//! Owns the named provider schedules (see [`RetryPolicy::named`]), the parser for the API's
//! retry-policy forms ([`RetryPolicy::from_json`]) and the "how long until the next attempt"
//! math ([`RetryPolicy::next_delay`]).
//!
//! Pure math with the randomness injected, so tests are deterministic.
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// A schedule of delays between attempts. The first attempt is immediate; `delays[i]` is the
/// wait before attempt `i + 2`. `jitter` is a fraction (0.2 = ±20%) applied to each delay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// The policy's name when it is a named one (`standard`, `alipay`, ...), else `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Delays in milliseconds.
    pub delays_ms: Vec<u64>,
    /// Jitter fraction in `[0, 1)`.
    #[serde(default)]
    pub jitter: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RetryPolicyError {
    #[error("unknown retry policy {0:?}; expected one of standard, alipay, wechatpay-v2, wechatpay-v3, stripe, or a list of delays")]
    UnknownName(String),
    #[error("invalid delay {0:?}: use seconds as a number, or a string like \"500ms\", \"5s\", \"10m\", \"2h\"")]
    BadDelay(String),
    #[error("jitter must be between 0 and 1 (exclusive), got {0}")]
    BadJitter(f64),
    #[error("a retry policy has at most {max} delays, got {got}")]
    TooLong { max: usize, got: usize },
    #[error(
        "a retry policy is a name, a list of delays, or {{\"delays\": [...], \"jitter\": 0.2}}"
    )]
    BadShape,
}

const SECOND: u64 = 1_000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// `standard`: the Standard Webhooks example schedule, ±20% jitter.
const STANDARD: &[u64] = &[
    5 * SECOND,
    5 * MINUTE,
    30 * MINUTE,
    2 * HOUR,
    5 * HOUR,
    10 * HOUR,
    10 * HOUR,
];
/// `alipay`: 8 notifications in about 25 hours.
const ALIPAY: &[u64] = &[
    4 * MINUTE,
    10 * MINUTE,
    10 * MINUTE,
    HOUR,
    2 * HOUR,
    6 * HOUR,
    15 * HOUR,
];
/// `wechatpay-v2`: the legacy XML notify schedule.
const WECHATPAY_V2: &[u64] = &[
    15 * SECOND,
    15 * SECOND,
    30 * SECOND,
    3 * MINUTE,
    30 * MINUTE,
    30 * MINUTE,
    30 * MINUTE,
    30 * MINUTE,
    HOUR,
];
/// `wechatpay-v3`: about 24 hours in all.
const WECHATPAY_V3: &[u64] = &[
    15 * SECOND,
    15 * SECOND,
    30 * SECOND,
    3 * MINUTE,
    10 * MINUTE,
    20 * MINUTE,
    30 * MINUTE,
    30 * MINUTE,
    30 * MINUTE,
    HOUR,
    3 * HOUR,
    3 * HOUR,
    3 * HOUR,
    6 * HOUR,
    6 * HOUR,
];
/// `stripe`: exponential backoff for up to about 3 days (71 h 36 min in all), ±10% jitter.
const STRIPE: &[u64] = &[
    MINUTE,
    5 * MINUTE,
    30 * MINUTE,
    HOUR,
    2 * HOUR,
    4 * HOUR,
    8 * HOUR,
    16 * HOUR,
    24 * HOUR,
    16 * HOUR,
];

impl RetryPolicy {
    /// Names accepted by [`RetryPolicy::named`].
    pub const NAMES: [&'static str; 5] = [
        "standard",
        "alipay",
        "wechatpay-v2",
        "wechatpay-v3",
        "stripe",
    ];

    /// The most delays a policy may have ([`RetryPolicyError::TooLong`] beyond).
    pub const MAX_DELAYS: usize = 50;

    /// The longest single delay ([`RetryPolicyError::BadDelay`] beyond): 7 days.
    pub const MAX_DELAY: Duration = Duration::from_millis(7 * DAY);

    /// A named provider schedule (values in shared/PROTOCOLS.md). Delays after the first,
    /// immediate attempt:
    ///
    /// | name           | delays                                                                    | jitter |
    /// | -------------- | ------------------------------------------------------------------------- | ------ |
    /// | `standard`     | 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h                                  | ±20%   |
    /// | `alipay`       | 4 min, 10 min, 10 min, 1 h, 2 h, 6 h, 15 h                                | none   |
    /// | `wechatpay-v2` | 15 s, 15 s, 30 s, 3 min, 30 min, 30 min, 30 min, 30 min, 1 h              | none   |
    /// | `wechatpay-v3` | 15 s, 15 s, 30 s, 3 min, 10 min, 20 min, 30 min ×3, 1 h, 3 h ×3, 6 h ×2   | none   |
    /// | `stripe`       | 1 min, 5 min, 30 min, 1 h, 2 h, 4 h, 8 h, 16 h, 24 h, 16 h (≈ 3 days)     | ±10%   |
    ///
    /// Stripe documents only "exponential backoff for up to 3 days"; the values above are
    /// Herald's rendering of that.
    pub fn named(name: &str) -> Option<RetryPolicy> {
        let (delays, jitter) = match name {
            "standard" => (STANDARD, 0.2),
            "alipay" => (ALIPAY, 0.0),
            "wechatpay-v2" => (WECHATPAY_V2, 0.0),
            "wechatpay-v3" => (WECHATPAY_V3, 0.0),
            "stripe" => (STRIPE, 0.1),
            _ => return None,
        };
        Some(RetryPolicy {
            name: Some(name.to_string()),
            delays_ms: delays.to_vec(),
            jitter,
        })
    }

    /// The `standard` schedule (the default of the standard-webhooks profile).
    pub fn standard() -> RetryPolicy {
        RetryPolicy {
            name: Some("standard".to_string()),
            delays_ms: STANDARD.to_vec(),
            jitter: 0.2,
        }
    }

    /// Parses the API's form: `"alipay"`, `[1, 5]` (seconds, may be fractional),
    /// `["500ms", "5s", "10m", "2h"]`, or `{"delays": [...], "jitter": 0.2}`.
    ///
    /// - A number is seconds, non-negative, fractional allowed (`0.05` = 50 ms).
    /// - A string is a non-negative decimal number followed by one unit, `ms`, `s`, `m`, `h`
    ///   or `d`, with no spaces: `"500ms"`, `"5s"`, `"1.5m"` (= 90 s), `"2h"`, `"1d"`.
    ///   A bare number in a string (`"5"`) is rejected: say the unit.
    /// - Delays are rounded to the nearest millisecond; each is at most
    ///   [`RetryPolicy::MAX_DELAY`] (7 days), and there are at most
    ///   [`RetryPolicy::MAX_DELAYS`] (50) of them. An empty list is valid: one attempt only.
    /// - In the object form, `jitter` is optional (default 0) and must be in `[0, 1)`; other
    ///   keys are rejected, so that a typo is not silently ignored.
    pub fn from_json(v: &serde_json::Value) -> Result<RetryPolicy, RetryPolicyError> {
        use serde_json::Value;
        match v {
            Value::String(name) => {
                RetryPolicy::named(name).ok_or_else(|| RetryPolicyError::UnknownName(name.clone()))
            }
            Value::Array(items) => Ok(RetryPolicy {
                name: None,
                delays_ms: parse_delays(items)?,
                jitter: 0.0,
            }),
            Value::Object(map) => {
                if map.keys().any(|k| k != "delays" && k != "jitter") {
                    return Err(RetryPolicyError::BadShape);
                }
                let delays_ms = match map.get("delays") {
                    Some(Value::Array(items)) => parse_delays(items)?,
                    _ => return Err(RetryPolicyError::BadShape),
                };
                let jitter = match map.get("jitter") {
                    None | Some(Value::Null) => 0.0,
                    Some(Value::Number(n)) => {
                        let j = n.as_f64().ok_or(RetryPolicyError::BadShape)?;
                        if !(0.0..1.0).contains(&j) {
                            return Err(RetryPolicyError::BadJitter(j));
                        }
                        j
                    }
                    Some(_) => return Err(RetryPolicyError::BadShape),
                };
                Ok(RetryPolicy {
                    name: None,
                    delays_ms,
                    jitter,
                })
            }
            _ => Err(RetryPolicyError::BadShape),
        }
    }

    /// Checks the invariants [`RetryPolicy::from_json`] enforces, for a policy that was built
    /// or deserialized some other way (e.g. read back from the store).
    pub fn validate(&self) -> Result<(), RetryPolicyError> {
        if self.delays_ms.len() > Self::MAX_DELAYS {
            return Err(RetryPolicyError::TooLong {
                max: Self::MAX_DELAYS,
                got: self.delays_ms.len(),
            });
        }
        if let Some(d) = self
            .delays_ms
            .iter()
            .find(|&&d| u128::from(d) > Self::MAX_DELAY.as_millis())
        {
            return Err(RetryPolicyError::BadDelay(format!("{d}ms")));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(RetryPolicyError::BadJitter(self.jitter));
        }
        Ok(())
    }

    /// How many attempts the schedule allows in all (first attempt included).
    pub fn max_attempts(&self) -> u32 {
        self.delays_ms.len() as u32 + 1
    }

    /// The wait before the next attempt, given how many attempts have been made so far
    /// (`attempts_made >= 1`, counting the one that just failed); `None` when the schedule
    /// is spent. Jitter is drawn from `rng`.
    ///
    /// `attempts_made == 0` is treated like 1 (the first delay), so a caller that has not
    /// counted the first attempt yet still gets a sensible wait rather than none. The delay
    /// is drawn uniformly from `delay ± jitter × delay` and is never negative. A jitter
    /// outside `[0, 1)` (only possible by building the struct by hand) is clamped.
    pub fn next_delay(&self, attempts_made: u32, rng: &mut impl Rng) -> Option<Duration> {
        let index = usize::try_from(attempts_made.max(1) - 1).ok()?;
        let base = *self.delays_ms.get(index)?;
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        if jitter == 0.0 || base == 0 {
            return Some(Duration::from_millis(base));
        }
        let factor: f64 = rng.gen_range(-jitter..=jitter);
        let ms = (base as f64 * (1.0 + factor)).round().max(0.0);
        // `ms` is finite and at most 2 × u64::MAX; `as` saturates.
        Some(Duration::from_millis(ms as u64))
    }
}

fn parse_delays(items: &[serde_json::Value]) -> Result<Vec<u64>, RetryPolicyError> {
    if items.len() > RetryPolicy::MAX_DELAYS {
        return Err(RetryPolicyError::TooLong {
            max: RetryPolicy::MAX_DELAYS,
            got: items.len(),
        });
    }
    items.iter().map(parse_delay).collect()
}

/// One delay, in milliseconds: a number of seconds or a string with a unit.
fn parse_delay(v: &serde_json::Value) -> Result<u64, RetryPolicyError> {
    let bad = || {
        RetryPolicyError::BadDelay(match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    };
    let ms = match v {
        serde_json::Value::Number(n) => n.as_f64().ok_or_else(bad)? * 1_000.0,
        serde_json::Value::String(s) => {
            let split = s
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(bad)?;
            let (number, unit) = s.split_at(split);
            let unit_ms = match unit {
                "ms" => 1.0,
                "s" => SECOND as f64,
                "m" => MINUTE as f64,
                "h" => HOUR as f64,
                "d" => DAY as f64,
                _ => return Err(bad()),
            };
            if !is_decimal(number) {
                return Err(bad());
            }
            number.parse::<f64>().map_err(|_| bad())? * unit_ms
        }
        _ => return Err(bad()),
    };
    let ms = ms.round();
    if !ms.is_finite() || ms < 0.0 || ms > RetryPolicy::MAX_DELAY.as_millis() as f64 {
        return Err(bad());
    }
    Ok(ms as u64)
}

/// `digits` or `digits.digits`.
fn is_decimal(s: &str) -> bool {
    let (int, frac) = match s.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (s, None),
    };
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    digits(int)
        && match frac {
            Some(frac) => digits(frac),
            None => true,
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use serde_json::json;

    fn secs(policy: &RetryPolicy) -> Vec<f64> {
        policy
            .delays_ms
            .iter()
            .map(|&ms| ms as f64 / 1000.0)
            .collect()
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    #[test]
    fn every_listed_name_resolves_and_carries_its_name() {
        for name in RetryPolicy::NAMES {
            let p = RetryPolicy::named(name).unwrap();
            assert_eq!(p.name.as_deref(), Some(name));
            assert!(p.validate().is_ok(), "{name}");
        }
        assert_eq!(RetryPolicy::named("nope"), None);
    }

    #[test]
    fn standard_schedule_is_5s_5m_30m_2h_5h_10h_10h_with_20_percent_jitter() {
        let p = RetryPolicy::named("standard").unwrap();
        assert_eq!(
            secs(&p),
            [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
        );
        assert_eq!(p.jitter, 0.2);
        assert_eq!(p.max_attempts(), 8);
        assert_eq!(RetryPolicy::standard(), p);
    }

    #[test]
    fn alipay_schedule_is_8_notifications_in_about_25_hours() {
        let p = RetryPolicy::named("alipay").unwrap();
        assert_eq!(
            secs(&p),
            [240.0, 600.0, 600.0, 3600.0, 7200.0, 21600.0, 54000.0]
        );
        assert_eq!(p.jitter, 0.0);
        assert_eq!(p.max_attempts(), 8);
        let total: u64 = p.delays_ms.iter().sum();
        assert_eq!(total, 24 * HOUR + 24 * MINUTE);
    }

    #[test]
    fn wechatpay_v2_schedule_matches_the_provider() {
        let p = RetryPolicy::named("wechatpay-v2").unwrap();
        assert_eq!(
            secs(&p),
            [15.0, 15.0, 30.0, 180.0, 1800.0, 1800.0, 1800.0, 1800.0, 3600.0]
        );
        assert_eq!(p.jitter, 0.0);
        assert_eq!(p.max_attempts(), 10);
    }

    #[test]
    fn wechatpay_v3_schedule_matches_the_provider_and_spans_about_a_day() {
        let p = RetryPolicy::named("wechatpay-v3").unwrap();
        assert_eq!(
            secs(&p),
            [
                15.0, 15.0, 30.0, 180.0, 600.0, 1200.0, 1800.0, 1800.0, 1800.0, 3600.0, 10800.0,
                10800.0, 10800.0, 21600.0, 21600.0
            ]
        );
        assert_eq!(p.jitter, 0.0);
        assert_eq!(p.max_attempts(), 16);
        let total: u64 = p.delays_ms.iter().sum();
        assert!((23 * HOUR..25 * HOUR).contains(&total));
    }

    #[test]
    fn stripe_schedule_backs_off_for_about_three_days() {
        let p = RetryPolicy::named("stripe").unwrap();
        assert_eq!(
            secs(&p),
            [60.0, 300.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 57600.0, 86400.0, 57600.0]
        );
        assert_eq!(p.jitter, 0.1);
        let total: u64 = p.delays_ms.iter().sum();
        assert!((2 * DAY + 12 * HOUR..=3 * DAY).contains(&total));
    }

    #[test]
    fn a_string_is_a_named_policy() {
        assert_eq!(
            RetryPolicy::from_json(&json!("alipay")).unwrap(),
            RetryPolicy::named("alipay").unwrap()
        );
        assert_eq!(
            RetryPolicy::from_json(&json!("Alipay")),
            Err(RetryPolicyError::UnknownName("Alipay".into()))
        );
    }

    #[test]
    fn numbers_are_seconds_and_may_be_fractional() {
        let p = RetryPolicy::from_json(&json!([0, 1, 0.05, 2.5, 3600])).unwrap();
        assert_eq!(p.delays_ms, [0, 1000, 50, 2500, 3_600_000]);
        assert_eq!(p.name, None);
        assert_eq!(p.jitter, 0.0);
    }

    #[test]
    fn strings_carry_a_unit() {
        let p = RetryPolicy::from_json(&json!(["500ms", "5s", "10m", "2h", "1d", "1.5m"])).unwrap();
        assert_eq!(
            p.delays_ms,
            [500, 5_000, 600_000, 7_200_000, 86_400_000, 90_000]
        );
    }

    #[test]
    fn mixed_numbers_and_strings_are_accepted() {
        let p = RetryPolicy::from_json(&json!([1, "2s"])).unwrap();
        assert_eq!(p.delays_ms, [1000, 2000]);
    }

    #[test]
    fn object_form_carries_delays_and_optional_jitter() {
        let p = RetryPolicy::from_json(&json!({"delays": ["1s", 2], "jitter": 0.2})).unwrap();
        assert_eq!(p.delays_ms, [1000, 2000]);
        assert_eq!(p.jitter, 0.2);
        let p = RetryPolicy::from_json(&json!({"delays": [1]})).unwrap();
        assert_eq!(p.jitter, 0.0);
    }

    #[test]
    fn empty_list_means_a_single_attempt() {
        let p = RetryPolicy::from_json(&json!([])).unwrap();
        assert_eq!(p.max_attempts(), 1);
        assert_eq!(p.next_delay(1, &mut rng()), None);
    }

    #[test]
    fn malformed_delays_are_rejected() {
        for bad in [
            json!(-1),
            json!("-1s"),
            json!("5"),
            json!("5 s"),
            json!(" 5s"),
            json!("5sec"),
            json!("s"),
            json!(".5s"),
            json!("5.s"),
            json!("1.2.3s"),
            json!("5S"),
            json!(""),
            json!(null),
            json!(true),
            json!([1]),
            json!({"s": 1}),
        ] {
            let err = RetryPolicy::from_json(&json!([bad.clone()])).unwrap_err();
            assert!(
                matches!(err, RetryPolicyError::BadDelay(_)),
                "{bad} gave {err:?}"
            );
        }
    }

    #[test]
    fn delays_over_seven_days_are_rejected() {
        assert!(RetryPolicy::from_json(&json!(["7d"])).is_ok());
        assert!(RetryPolicy::from_json(&json!([604_800])).is_ok());
        assert_eq!(
            RetryPolicy::from_json(&json!(["8d"])),
            Err(RetryPolicyError::BadDelay("8d".into()))
        );
        assert!(matches!(
            RetryPolicy::from_json(&json!([604_801])),
            Err(RetryPolicyError::BadDelay(_))
        ));
        assert!(matches!(
            RetryPolicy::from_json(&json!(["99999999999999999999999d"])),
            Err(RetryPolicyError::BadDelay(_))
        ));
        assert!(matches!(
            RetryPolicy::from_json(&json!([1e300])),
            Err(RetryPolicyError::BadDelay(_))
        ));
    }

    #[test]
    fn more_than_fifty_delays_is_too_long() {
        assert!(RetryPolicy::from_json(&json!(vec![1; 50])).is_ok());
        assert_eq!(
            RetryPolicy::from_json(&json!(vec![1; 51])),
            Err(RetryPolicyError::TooLong { max: 50, got: 51 })
        );
        assert_eq!(
            RetryPolicy::from_json(&json!({ "delays": vec![1; 51] })),
            Err(RetryPolicyError::TooLong { max: 50, got: 51 })
        );
    }

    #[test]
    fn jitter_must_be_in_zero_to_one() {
        assert!(RetryPolicy::from_json(&json!({"delays": [], "jitter": 0})).is_ok());
        assert!(RetryPolicy::from_json(&json!({"delays": [], "jitter": 0.99})).is_ok());
        assert_eq!(
            RetryPolicy::from_json(&json!({"delays": [], "jitter": 1})),
            Err(RetryPolicyError::BadJitter(1.0))
        );
        assert_eq!(
            RetryPolicy::from_json(&json!({"delays": [], "jitter": -0.1})),
            Err(RetryPolicyError::BadJitter(-0.1))
        );
        assert_eq!(
            RetryPolicy::from_json(&json!({"delays": [], "jitter": "0.2"})),
            Err(RetryPolicyError::BadShape)
        );
    }

    #[test]
    fn other_shapes_are_rejected() {
        for bad in [
            json!(null),
            json!(5),
            json!(true),
            json!({}),
            json!({"delays": "5s"}),
            json!({"delays": [1], "jiter": 0.2}),
        ] {
            assert_eq!(
                RetryPolicy::from_json(&bad),
                Err(RetryPolicyError::BadShape),
                "{bad}"
            );
        }
    }

    #[test]
    fn error_messages_say_what_is_expected() {
        let msg = RetryPolicy::from_json(&json!(["5x"]))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("\"5x\"") && msg.contains("\"500ms\""), "{msg}");
    }

    #[test]
    fn next_delay_walks_the_schedule_then_is_spent() {
        let p = RetryPolicy::named("alipay").unwrap();
        let mut r = rng();
        let got: Vec<_> = (1..=7).map(|n| p.next_delay(n, &mut r).unwrap()).collect();
        assert_eq!(got[0], Duration::from_secs(240));
        assert_eq!(got[6], Duration::from_secs(15 * 3600));
        assert_eq!(p.next_delay(8, &mut r), None);
        assert_eq!(p.next_delay(u32::MAX, &mut r), None);
    }

    #[test]
    fn zero_attempts_made_is_treated_as_one() {
        let p = RetryPolicy::named("wechatpay-v2").unwrap();
        assert_eq!(p.next_delay(0, &mut rng()), Some(Duration::from_secs(15)));
    }

    #[test]
    fn jitter_stays_within_bounds_and_varies() {
        let p = RetryPolicy::named("standard").unwrap();
        let mut r = rng();
        let base = 7200.0;
        let mut seen = std::collections::HashSet::new();
        let (mut below, mut above) = (false, false);
        for _ in 0..10_000 {
            let d = p.next_delay(4, &mut r).unwrap().as_secs_f64();
            assert!(d >= base * 0.8 && d <= base * 1.2, "{d}");
            below |= d < base * 0.9;
            above |= d > base * 1.1;
            seen.insert(d.to_bits());
        }
        assert!(below && above, "jitter should spread both ways");
        assert!(seen.len() > 1000);
    }

    #[test]
    fn jitter_never_makes_a_delay_negative_or_moves_a_zero_delay() {
        let p = RetryPolicy {
            name: None,
            delays_ms: vec![0, 1],
            jitter: 0.99,
        };
        let mut r = rng();
        for _ in 0..1000 {
            assert_eq!(p.next_delay(1, &mut r), Some(Duration::ZERO));
            assert!(p.next_delay(2, &mut r).unwrap() <= Duration::from_millis(2));
        }
    }

    #[test]
    fn out_of_range_jitter_built_by_hand_does_not_panic() {
        let mut r = rng();
        for jitter in [f64::NAN, f64::INFINITY, -3.0, 5.0] {
            let p = RetryPolicy {
                name: None,
                delays_ms: vec![1000],
                jitter,
            };
            let d = p.next_delay(1, &mut r).unwrap();
            assert!(d <= Duration::from_millis(2000));
            assert!(p.validate().is_err());
        }
    }

    #[test]
    fn serde_shape_is_name_delays_ms_and_jitter() {
        let p = RetryPolicy::named("alipay").unwrap();
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["name"], "alipay");
        assert_eq!(v["delays_ms"][0], 240_000);
        assert_eq!(v["jitter"], 0.0);
        let back: RetryPolicy = serde_json::from_value(v).unwrap();
        assert_eq!(back, p);
        let custom = RetryPolicy::from_json(&json!([1])).unwrap();
        let v = serde_json::to_value(&custom).unwrap();
        assert!(v.get("name").is_none());
    }
}
