//! Parsers of flag values that several subcommands take, so that a bad value is refused by clap
//! (exit code 2, with the flag's name) before anything connects.

/// A share in [0, 1] (`--hit-ratio`, `--target-precision`).
pub fn ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a ratio between 0 and 1")),
    }
}

/// A similarity threshold in (0, 1], the range the server accepts.
pub fn threshold(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(t) if t > 0.0 && t <= 1.0 => Ok(t),
        _ => Err(format!("{s:?} is not a similarity threshold in (0, 1]")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_thresholds_keep_to_their_ranges() {
        assert_eq!(ratio("0.5"), Ok(0.5));
        assert!(ratio("1.5").unwrap_err().contains("not a ratio between 0 and 1"));
        assert_eq!(threshold("1"), Ok(1.0));
        assert!(threshold("0").is_err() && threshold("x").is_err());
    }
}
