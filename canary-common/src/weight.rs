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
        match self {
            WeightError::OutOfRange(p) => write!(f, "{p} is out of range (0 to 100 percent)"),
            WeightError::TooPrecise(p) => write!(f, "{p} has more than two decimals"),
        }
    }
}

impl core::error::Error for WeightError {}

impl WeightBp {
    pub const ZERO: WeightBp = WeightBp(0);
    /// 100 %.
    pub const FULL: WeightBp = WeightBp(10_000);

    /// Percent (0..=100, at most two decimals) to basis points.
    pub fn from_percent(percent: f64) -> Result<WeightBp, WeightError> {
        if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
            return Err(WeightError::OutOfRange(percent));
        }
        let scaled = percent * 100.0;
        // `f64::round` needs std; the value is finite and within 0..=10000.
        let bp = (scaled + 0.5) as u32 as f64;
        let diff = scaled - bp;
        if !(-1e-6..=1e-6).contains(&diff) {
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
    fn display() {
        assert_eq!(format!("{}", WeightBp::from_bp(1250)), "12.50%");
        assert_eq!(format!("{}", WeightBp::from_bp(5)), "0.05%");
        assert_eq!(format!("{}", WeightBp::FULL), "100.00%");
    }
}
