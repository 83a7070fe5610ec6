//! When `kvprobe bench --request-rate R` sends each request, as vLLM's bench
//! does (`../shared/reference/pipeline.md` section 3): inter-arrival times are
//! Gamma(shape = burstiness, scale = 1 / (rate x burstiness)), so burstiness 1
//! is a Poisson process, below 1 burstier, above 1 more even; the mean gap is
//! 1/rate whatever the burstiness. Like current vLLM, the gaps are rescaled so
//! that N requests span exactly N / rate seconds, which keeps short runs at
//! the asked rate. An infinite rate sends everything at once.

use crate::rng::SplitMix64;

/// Send times, seconds from the start of the point, for `n` requests.
/// `rate` in requests/s (`f64::INFINITY`: all at 0); `burstiness` > 0.
pub fn schedule(n: usize, rate: f64, burstiness: f64, seed: u64) -> Result<Vec<f64>, String> {
    if rate.is_nan() || rate <= 0.0 {
        return Err(format!("request rate must be positive (got {rate})"));
    }
    if !(burstiness > 0.0 && burstiness.is_finite()) {
        return Err(format!("burstiness must be a positive number (got {burstiness}); 1 = Poisson"));
    }
    if rate.is_infinite() {
        return Ok(vec![0.0; n]);
    }
    let mut rng = SplitMix64::new(seed);
    let gaps: Vec<f64> = (0..n).map(|_| rng.gamma(burstiness, 1.0 / (rate * burstiness))).collect();
    let total: f64 = gaps.iter().sum();
    let want = n as f64 / rate;
    let k = if total > 0.0 { want / total } else { 1.0 };
    let mut t = 0.0;
    Ok(gaps
        .iter()
        .map(|g| {
            // the first request leaves after its gap, as vLLM's generator sleeps before yielding
            t += g * k;
            t
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Index of dispersion (variance / mean) of counts per `window` seconds.
    fn dispersion(times: &[f64], window: f64) -> f64 {
        let end = times.last().copied().unwrap_or(0.0);
        let bins = (end / window).floor() as usize;
        let mut counts = vec![0f64; bins];
        for &t in times {
            let b = (t / window) as usize;
            if b < bins {
                counts[b] += 1.0;
            }
        }
        let m = counts.iter().sum::<f64>() / bins as f64;
        let v = counts.iter().map(|c| (c - m).powi(2)).sum::<f64>() / (bins - 1) as f64;
        v / m
    }

    #[test]
    fn poisson_arrivals_pass_a_dispersion_check() {
        // 20,000 arrivals at 50/s in 1 s windows: 400 windows of mean 50. For a
        // Poisson process (variance = mean) the index of dispersion times
        // (windows - 1) is chi-square with 399 degrees of freedom: its 0.1% and
        // 99.9% points are about 317 and 492 (Wilson-Hilferty), an index in 0.79..1.24.
        let t = schedule(20_000, 50.0, 1.0, 11).unwrap();
        let d = dispersion(&t, 1.0);
        assert!((0.79..1.24).contains(&d), "index of dispersion {d}");
        assert!((t.last().unwrap() - 400.0).abs() < 1e-6, "N requests span N / rate");
        assert!(t.windows(2).all(|w| w[1] >= w[0]));
    }

    #[test]
    fn burstiness_moves_dispersion_the_right_way() {
        let bursty = dispersion(&schedule(20_000, 50.0, 0.25, 3).unwrap(), 1.0);
        let even = dispersion(&schedule(20_000, 50.0, 4.0, 3).unwrap(), 1.0);
        assert!(bursty > 2.0, "burstiness 0.25: clumps ({bursty})");
        assert!(even < 0.5, "burstiness 4: more even than Poisson ({even})");
    }

    #[test]
    fn infinite_rate_and_bad_input() {
        assert_eq!(schedule(3, f64::INFINITY, 1.0, 0).unwrap(), vec![0.0; 3]);
        assert!(schedule(3, 0.0, 1.0, 0).is_err());
        assert!(schedule(3, f64::NAN, 1.0, 0).is_err());
        assert!(schedule(3, 1.0, 0.0, 0).is_err());
        assert!(schedule(0, 1.0, 1.0, 0).unwrap().is_empty());
    }
}
