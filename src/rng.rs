//! The one small deterministic generator the crate uses (samples of pair files, seeded test and
//! benchmark vectors): reproducible from a seed, no `rand` dependency.

/// Steele, Lea and Flood's SplitMix64: tiny, fast, and statistically good enough for samples
/// and synthetic vectors (not for anything secret: tokens come from the OS).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform draw in `0..span` (Lemire's multiply-shift, no modulo bias worth counting).
    pub fn below(&mut self, span: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(span)) >> 64) as u64
    }

    /// A uniform draw in [-1, 1).
    pub fn signed_unit(&mut self) -> f32 {
        // The top 24 bits: exactly representable in an f32.
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Shuffles `items` in place (Fisher-Yates, front to back): the first n items after it are a
/// uniform sample whose picks do not depend on how many are kept.
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut rng = SplitMix64::new(seed);
    let len = items.len();
    for i in 0..len {
        let j = i + rng.below((len - i) as u64) as usize;
        items.swap(i, j);
    }
}

/// A deterministic pseudo-random unit vector, for tests and benchmarks of the index.
pub fn unit_vector(seed: u64, dim: usize) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    let mut v: Vec<f32> = (0..dim).map(|_| rng.signed_unit()).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_reproducible_and_in_range() {
        let (mut a, mut b) = (SplitMix64::new(7), SplitMix64::new(7));
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
            let x = a.signed_unit();
            assert!((-1.0..1.0).contains(&x));
            assert!(a.below(10) < 10);
            b.signed_unit();
            b.below(10);
        }
        let v = unit_vector(3, 384);
        assert!((v.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5);
        assert_eq!(v, unit_vector(3, 384));
        assert_ne!(v, unit_vector(4, 384));
    }
}
