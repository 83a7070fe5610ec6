//! A small seeded generator (SplitMix64) for what kvprobe draws at random:
//! scattered KV block ids, load-generator arrivals and prompts. Reproducible
//! from its seed; not for anything secret.

/// SplitMix64 (Steele, Lea, Flood 2014): one 64-bit state, full period.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in (0, 1]: safe under `ln`.
    pub fn next_f64_open0(&mut self) -> f64 {
        1.0 - self.next_f64()
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.next_f64_open0(), self.next_f64());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// Gamma(shape, scale) by Marsaglia and Tsang (2000); shape < 1 through
    /// the boost Gamma(shape + 1) x U^(1/shape). `shape` and `scale` must be > 0.
    pub fn gamma(&mut self, shape: f64, scale: f64) -> f64 {
        if shape < 1.0 {
            let u = self.next_f64_open0();
            return self.gamma(shape + 1.0, scale) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = self.next_f64_open0();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v * scale;
            }
        }
    }

    /// `n` distinct values out of `0..pool`, in random order (partial Fisher-Yates).
    pub fn sample(&mut self, n: u64, pool: u64) -> Vec<u64> {
        let mut all: Vec<u64> = (0..pool).collect();
        for i in 0..n.min(pool) as usize {
            let j = i + (self.next_u64() % (pool - i as u64)) as usize;
            all.swap(i, j);
        }
        all.truncate(n.min(pool) as usize);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_var(v: &[f64]) -> (f64, f64) {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        (m, v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64)
    }

    #[test]
    fn gamma_has_its_mean_and_variance() {
        let mut r = SplitMix64::new(7);
        for (shape, scale) in [(1.0, 2.0), (0.5, 1.0), (4.0, 0.25)] {
            let v: Vec<f64> = (0..200_000).map(|_| r.gamma(shape, scale)).collect();
            let (m, var) = mean_var(&v);
            // Gamma: mean k*theta, variance k*theta^2
            assert!((m / (shape * scale) - 1.0).abs() < 0.02, "mean {m} for k={shape}");
            assert!((var / (shape * scale * scale) - 1.0).abs() < 0.05, "var {var} for k={shape}");
        }
    }

    #[test]
    fn samples_are_distinct_and_in_range() {
        let mut r = SplitMix64::new(1);
        let s = r.sample(50, 60);
        let mut d = s.clone();
        d.sort_unstable();
        d.dedup();
        assert_eq!(d.len(), 50);
        assert!(s.iter().all(|&x| x < 60));
        assert_eq!(r.sample(10, 3).len(), 3);
        let u: Vec<f64> = (0..1000).map(|_| r.next_f64()).collect();
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
    }
}
