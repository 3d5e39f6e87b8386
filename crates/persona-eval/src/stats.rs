//! Means with 95 % bootstrap intervals.
//!
//! The protocol averages per (identity, prompt) first and then over those groups, so the interval comes from a
//! two-stage (cluster) bootstrap: each replicate draws groups with replacement and, inside each drawn group,
//! its values with replacement. The generator is seeded from the group keys, not from the order work finished
//! in, so a sharded run and a single run report the same intervals.

use rand::{Rng, SeedableRng};

/// Bootstrap replicates per interval.
pub const REPLICATES: usize = 1000;

/// A mean and its 95 % percentile interval; `n` is the number of values behind it.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Interval {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
    pub n: usize,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// The mean of the group means; `None` when no group has a value (e.g. no face was found anywhere).
fn mean_of_means(groups: &[Vec<f64>]) -> Option<f64> {
    let means: Vec<f64> = groups
        .iter()
        .filter(|g| !g.is_empty())
        .map(|g| mean(g))
        .collect();
    (!means.is_empty()).then(|| mean(&means))
}

/// Mean of group means with its two-stage bootstrap interval (empty groups are left out).
pub fn bootstrap(groups: &[Vec<f64>], seed: u64) -> Option<Interval> {
    let point = mean_of_means(groups)?;
    let groups: Vec<&Vec<f64>> = groups.iter().filter(|g| !g.is_empty()).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut reps: Vec<f64> = (0..REPLICATES)
        .map(|_| replicate(&groups, &mut rng))
        .collect();
    reps.sort_by(f64::total_cmp);
    let at = |q: f64| reps[((q * (REPLICATES - 1) as f64).round() as usize).min(REPLICATES - 1)];
    Some(Interval {
        mean: point,
        lo: at(0.025),
        hi: at(0.975),
        n: groups.iter().map(|g| g.len()).sum(),
    })
}

fn replicate(groups: &[&Vec<f64>], rng: &mut rand::rngs::StdRng) -> f64 {
    let mut total = 0.0;
    for _ in 0..groups.len() {
        let g = groups[rng.random_range(0..groups.len())];
        total += (0..g.len())
            .map(|_| g[rng.random_range(0..g.len())])
            .sum::<f64>()
            / g.len() as f64;
    }
    total / groups.len() as f64
}

/// A seed from a text key (FNV-1a): stable across runs, platforms and the order results arrive in.
pub fn seed_for(key: &str, base: u64) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325u64 ^ base, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_holds_the_mean_and_is_reproducible() {
        let groups = vec![vec![0.1, 0.2, 0.3], vec![0.5, 0.6], vec![]];
        let a = bootstrap(&groups, 7).unwrap();
        assert!((a.mean - (0.2 + 0.55) / 2.0).abs() < 1e-12);
        assert!(a.lo <= a.mean && a.mean <= a.hi && a.lo < a.hi);
        assert_eq!(a.n, 5);
        assert_eq!(bootstrap(&groups, 7), Some(a));
        assert_eq!(bootstrap(&[vec![], vec![]], 7), None);
    }

    #[test]
    fn constant_values_give_a_point_interval() {
        let i = bootstrap(&[vec![0.4; 4]], 1).unwrap();
        assert_eq!((i.lo, i.hi), (0.4, 0.4));
        assert_ne!(seed_for("a", 0), seed_for("b", 0));
    }
}
