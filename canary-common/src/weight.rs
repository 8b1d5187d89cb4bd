//! The canary weight, in basis points (0..=10000 = 0..=100 %): the unit the
//! `SERVICES` map and the split decision use. Operators, the config file and
//! the control API speak percent with at most two decimals; this type is the
//! one place that converts between the two, so no caller divides by 100.

use core::fmt;

/// A canary weight in basis points, always within `0..=10000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct WeightBp(u16);

/// Why a percent is not a weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WeightError {
    /// Not finite, below 0 or above 100.
    OutOfRange(f64),
    /// More than two decimals (not a whole number of basis points).
    TooPrecise(f64),
}

impl fmt::Display for WeightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WeightError::OutOfRange(p) => {
                write!(f, "{} is out of range (0 to 100 percent)", Short(p))
            }
            WeightError::TooPrecise(p) => write!(
                f,
                "{} has more than two decimals (0 to 100 percent, e.g. 12.5 or 0.01)",
                Short(p)
            ),
        }
    }
}

/// A number for a message: as written for ordinary values, in exponent
/// form (`1e308`, `1e-300`) for huge or tiny ones, never hundreds of digits.
struct Short(f64);

impl fmt::Display for Short {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = self.0.abs();
        if self.0.is_finite() && a != 0.0 && !(1e-4..1e6).contains(&a) {
            write!(f, "{:e}", self.0)
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl core::error::Error for WeightError {}

impl WeightBp {
    pub const ZERO: WeightBp = WeightBp(0);
    /// 100 %.
    pub const FULL: WeightBp = WeightBp(10_000);

    /// Percent (0..=100, at most two decimals) to basis points.
    ///
    /// "Two decimals" is judged on the number as written: the shortest
    /// decimal form that reads back as the same `f64` (what `{}` prints,
    /// what serde_json and YAML parsers produce from `12.34`) may have at
    /// most two digits after the point. That is the case exactly when the
    /// number is the `f64` nearest some whole number of basis points over
    /// 100, which is what is checked: that number, scaled and rounded,
    /// divides back to it. So `1e-300` and `33.333` are both too precise,
    /// and `0.29` (`28.999...` once scaled) is 29 bp. `-0` is 0.
    pub fn from_percent(percent: f64) -> Result<WeightBp, WeightError> {
        if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
            return Err(WeightError::OutOfRange(percent));
        }
        // Rounded by hand (`f64::round` needs std): finite and within
        // 0..=10000 once scaled.
        let bp = (percent * 100.0 + 0.5) as u32;
        if bp as f64 / 100.0 != percent {
            return Err(WeightError::TooPrecise(percent));
        }
        Ok(WeightBp(bp as u16))
    }

    /// Basis points as stored in the maps; values above 10000 are clamped.
    pub const fn from_bp(bp: u32) -> WeightBp {
        WeightBp(if bp > 10_000 { 10_000 } else { bp as u16 })
    }

    /// Basis points, the map and split-decision unit.
    pub const fn bp(self) -> u32 {
        self.0 as u32
    }

    /// Percent, exact to two decimals.
    pub fn percent(self) -> f64 {
        self.0 as f64 / 100.0
    }
}

/// "12.50%".
impl fmt::Display for WeightBp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}%", self.0 / 100, self.0 % 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    #[test]
    fn percent_round_trip() {
        assert_eq!(WeightBp::from_percent(0.0).unwrap().bp(), 0);
        assert_eq!(WeightBp::from_percent(12.34).unwrap().bp(), 1234);
        assert_eq!(WeightBp::from_percent(100.0).unwrap(), WeightBp::FULL);
        assert_eq!(WeightBp::from_percent(0.29).unwrap().bp(), 29);
        assert_eq!(WeightBp::from_bp(1250).percent(), 12.5);
        assert!(matches!(
            WeightBp::from_percent(150.0),
            Err(WeightError::OutOfRange(_))
        ));
        assert!(WeightBp::from_percent(-0.01).is_err());
        assert!(WeightBp::from_percent(f64::NAN).is_err());
        assert!(matches!(
            WeightBp::from_percent(1.234),
            Err(WeightError::TooPrecise(_))
        ));
        assert_eq!(WeightBp::from_bp(20_000), WeightBp::FULL);
    }

    #[test]
    fn two_decimals_as_written_and_short_messages() {
        let ok = |p: f64| WeightBp::from_percent(p).map(WeightBp::bp);
        assert_eq!(ok(12.5), Ok(1250));
        assert_eq!(ok(0.01), Ok(1));
        assert_eq!(ok(100.0), Ok(10_000));
        assert_eq!(ok(-0.0), Ok(0));
        assert_eq!(ok(33.33), Ok(3333));
        assert_eq!(ok(99.99), Ok(9999));
        // Every whole number of basis points reads back as itself.
        for bp in 0..=10_000u32 {
            assert_eq!(ok(bp as f64 / 100.0), Ok(bp), "{bp}");
        }
        for p in [1e-300, 33.333, 0.001, 0.1 + 0.2, 5e-324] {
            assert_eq!(ok(p), Err(WeightError::TooPrecise(p)), "{p}");
        }
        for p in [100.001, 1e308, -0.01, 150.0, f64::INFINITY, -1e-300] {
            assert_eq!(ok(p), Err(WeightError::OutOfRange(p)), "{p}");
        }
        assert!(matches!(ok(f64::NAN), Err(WeightError::OutOfRange(_))));
        let msg = |p: f64| format!("{}", WeightBp::from_percent(p).unwrap_err());
        assert_eq!(msg(1e308), "1e308 is out of range (0 to 100 percent)");
        assert_eq!(msg(-1e308), "-1e308 is out of range (0 to 100 percent)");
        assert_eq!(msg(100.001), "100.001 is out of range (0 to 100 percent)");
        assert_eq!(msg(f64::NAN), "NaN is out of range (0 to 100 percent)");
        assert_eq!(
            msg(f64::NEG_INFINITY),
            "-inf is out of range (0 to 100 percent)"
        );
        assert!(msg(1e-300).starts_with("1e-300 has more than two decimals"));
        assert!(msg(33.333).starts_with("33.333 has more than two decimals"));
        for p in [1e308, 1e-300, 5e-324, 1e200, -1e-300, 123456789.123] {
            let m = msg(p);
            assert!(m.len() < 100, "{m}");
        }
    }

    #[test]
    fn display() {
        assert_eq!(format!("{}", WeightBp::from_bp(1250)), "12.50%");
        assert_eq!(format!("{}", WeightBp::from_bp(5)), "0.05%");
        assert_eq!(format!("{}", WeightBp::FULL), "100.00%");
    }
}
