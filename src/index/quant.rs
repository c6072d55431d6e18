//! Scalar quantisation of unit vectors to int8, for the graphs: a quarter of the bytes of f32
//! and a cheaper distance. Each vector has its own scale (its largest |component| / 127), so
//! a vector with one large component does not crush the resolution of the others. The
//! similarities a graph returns through these codes are approximate (error ~1e-3); callers
//! re-rank the best candidates with the exact vectors.

use hnsw_rs::prelude::Distance;

/// Largest code magnitude: symmetric, so that negation is exact.
const LEVELS: f32 = 127.0;

/// `v` as int8 codes and the scale that maps them back (`v[i] ≈ codes[i] * scale`).
pub fn quantize(v: &[f32], codes: &mut Vec<i8>) -> f32 {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = if max > 0.0 { max / LEVELS } else { 1.0 };
    codes.extend(v.iter().map(|x| (x / scale).round().clamp(-LEVELS, LEVELS) as i8));
    scale
}

/// Integer dot product of two code rows, in sixteen independent i32 lanes so the compiler can
/// vectorise it (no reassociation is needed: integer sums are exact).
pub fn dot_codes(a: &[i8], b: &[i8]) -> i32 {
    let mut acc = [0i32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: i32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| i32::from(*x) * i32::from(*y)).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += i32::from(x[i]) * i32::from(y[i]);
        }
    }
    acc.iter().sum::<i32>() + tail
}

/// A vector's codes followed by its scale's four bytes, as one row of `i8`: the element type
/// hnsw_rs builds graphs over (it stores one `Vec<T>` per point and has no side channel).
pub fn packed(v: &[f32]) -> Vec<i8> {
    let mut row = Vec::with_capacity(v.len() + 4);
    let scale = quantize(v, &mut row);
    row.extend(scale.to_le_bytes().map(|b| b as i8));
    row
}

/// Splits a packed row into its codes and scale.
pub fn unpack(row: &[i8]) -> (&[i8], f32) {
    let (codes, scale) = row.split_at(row.len() - 4);
    let bytes: [u8; 4] = std::array::from_fn(|i| scale[i] as u8);
    (codes, f32::from_le_bytes(bytes))
}

/// hnsw_rs's distance over packed rows: 1 - the approximate cosine, floored at 0 (hnsw_rs
/// expects distances that are not negative; two codes of one vector can overshoot 1).
#[derive(Debug, Clone, Copy, Default)]
pub struct DistQ8;

impl Distance<i8> for DistQ8 {
    fn eval(&self, a: &[i8], b: &[i8]) -> f32 {
        let ((ca, sa), (cb, sb)) = (unpack(a), unpack(b));
        (1.0 - sa * sb * dot_codes(ca, cb) as f32).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::dot;

    #[test]
    fn codes_keep_cosines_within_a_few_thousandths() {
        let mut worst = 0f32;
        for seed in 0..200 {
            let (a, b) = (crate::rng::unit_vector(seed, 384), crate::rng::unit_vector(seed + 1000, 384));
            // A near pair too, where a cache's decisions are made.
            let near: Vec<f32> = {
                let mut n: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + 0.3 * y).collect();
                let norm = dot(&n, &n).sqrt();
                n.iter_mut().for_each(|x| *x /= norm);
                n
            };
            for other in [&b, &near] {
                let (pa, po) = (packed(&a), packed(other));
                let approx = 1.0 - DistQ8.eval(&pa, &po);
                worst = worst.max((approx - dot(&a, other)).abs());
            }
        }
        assert!(worst < 4e-3, "worst error {worst}");
    }

    #[test]
    fn packing_round_trips_and_handles_zero() {
        let v = [0.5f32, -1.0, 0.25, 0.0];
        let row = packed(&v);
        let (codes, scale) = unpack(&row);
        assert_eq!(codes, &[64, -127, 32, 0]);
        assert!((scale - 1.0 / 127.0).abs() < 1e-9);
        let zero = packed(&[0.0; 4]);
        assert_eq!(unpack(&zero).0, &[0; 4]);
        assert_eq!(dot_codes(&[1; 37], &[-2; 37]), -74);
    }
}
