//! Amounts: integer minor units with a currency, parsed from the API's decimal strings
//! (`"88.00"`) or minor units, and formatted for the wire and the checkout page. Never floats.

/// Currencies without minor units (ISO 4217 exponent 0); every other one has two decimals.
const ZERO_DECIMAL: &[&str] = &[
    "BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV",
    "XAF", "XOF", "XPF",
];

/// The largest amount the sandbox accepts, in minor units (one billion major units).
pub const MAX_MINOR: i64 = 100_000_000_000;

/// Decimal places of `currency` (an upper-case ISO 4217 code).
pub fn exponent(currency: &str) -> u32 {
    if ZERO_DECIMAL.contains(&currency) {
        0
    } else {
        2
    }
}

/// A three-letter currency code, upper-cased.
pub fn parse_currency(s: &str) -> Result<String, String> {
    if s.len() == 3 && s.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(s.to_ascii_uppercase())
    } else {
        Err(format!(
            "currency must be a three-letter ISO 4217 code such as CNY or USD, not {s:?}"
        ))
    }
}

/// `"88.00"`, `"88.5"` or `"88"` in `currency` to minor units; more decimals than the
/// currency has, signs, exponents and spaces are refused.
pub fn parse_decimal(field: &str, s: &str, currency: &str) -> Result<i64, String> {
    let exp = exponent(currency);
    let bad = || {
        format!(
            "{field} must be a positive decimal string with at most {exp} decimals for {currency}, such as \"88.00\"; got {s:?}"
        )
    };
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty()
        || whole.len() > 12
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > exp as usize
        || (s.contains('.') && frac.is_empty())
    {
        return Err(bad());
    }
    let mut minor: i64 = whole.parse().map_err(|_| bad())?;
    for i in 0..exp as usize {
        let d = frac.as_bytes().get(i).map_or(0, |b| i64::from(b - b'0'));
        minor = minor.checked_mul(10).ok_or_else(bad)? + d;
    }
    check_range(field, minor)
}

/// A minor-unit amount must be at least 1 and at most [`MAX_MINOR`].
pub fn check_range(field: &str, minor: i64) -> Result<i64, String> {
    if (1..=MAX_MINOR).contains(&minor) {
        Ok(minor)
    } else {
        Err(format!(
            "{field} must be between 1 and {MAX_MINOR} minor units, got {minor}"
        ))
    }
}

/// Minor units as the decimal string the currency uses: `8800` CNY is `"88.00"`.
pub fn format(minor: i64, currency: &str) -> String {
    let exp = exponent(currency);
    if exp == 0 {
        return minor.to_string();
    }
    let scale = 10i64.pow(exp);
    format!(
        "{}.{:0width$}",
        minor / scale,
        minor % scale,
        width = exp as usize
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_strings_parse_to_minor_units_exactly() {
        assert_eq!(parse_decimal("a", "88.00", "CNY"), Ok(8800));
        assert_eq!(parse_decimal("a", "0.1", "CNY"), Ok(10));
        assert_eq!(parse_decimal("a", "7", "USD"), Ok(700));
        assert_eq!(parse_decimal("a", "500", "JPY"), Ok(500));
        for bad in [
            "", "-1", "1.234", "1.", ".5", "1e3", " 1", "0", "0.00", "1,00",
        ] {
            assert!(parse_decimal("a", bad, "CNY").is_err(), "{bad}");
        }
        assert!(parse_decimal("a", "1.5", "JPY").is_err());
    }

    #[test]
    fn minor_units_format_with_the_currency_decimals() {
        assert_eq!(format(8800, "CNY"), "88.00");
        assert_eq!(format(5, "USD"), "0.05");
        assert_eq!(format(500, "JPY"), "500");
        assert_eq!(parse_currency("usd"), Ok("USD".into()));
        assert!(parse_currency("US").is_err());
    }
}
