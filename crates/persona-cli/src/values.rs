//! Parsers of numeric flag values shared by the commands, so that a value no run can use is refused by clap
//! with the flag's name (`error: invalid value '0' for '--num-images <N>': …`, exit 2) before any model loads
//! or any memory is allocated.

/// The largest image side accepted, in pixels: 8192² images are already 4× what SDXL renders; a larger
/// request is a typo, and its latents and activations would not fit in memory anyway.
pub const MAX_SIDE: usize = 8192;

/// A whole number ≥ 1.
pub fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("expected a whole number ≥ 1, got {s:?}")),
    }
}

/// A finite number ≥ 0 (guidance scales, weights).
pub fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("expected a finite number ≥ 0, got {s:?}")),
    }
}

/// A finite number > 0 (learning rates, Adam's ε).
pub fn positive_real(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("expected a finite number > 0, got {s:?}")),
    }
}

/// An image side in pixels: 1 ..= [`MAX_SIDE`] (the model checks the multiple it needs).
pub fn image_side(s: &str) -> Result<usize, String> {
    let n = positive(s)?;
    if n > MAX_SIDE {
        return Err(format!("at most {MAX_SIDE} pixels"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_no_run_can_use_are_refused() {
        assert!(positive("0").is_err() && positive("-1").is_err() && positive("x").is_err());
        assert_eq!(positive("3"), Ok(3));
        for bad in ["nan", "inf", "-1", "x"] {
            assert!(non_negative(bad).is_err(), "{bad}");
        }
        assert_eq!(non_negative("7.5"), Ok(7.5));
        for bad in ["nan", "inf", "0", "-0.1", "x"] {
            assert!(positive_real(bad).is_err(), "{bad}");
        }
        assert_eq!(positive_real("5e-3"), Ok(5e-3));
        assert!(image_side("4000000").is_err() && image_side("0").is_err());
        assert_eq!(image_side("512"), Ok(512));
    }
}
