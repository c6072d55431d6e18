//! The encoder's dense layers in int8 (`--model-precision int8`): weights quantised once at
//! load (symmetric, one scale per output feature), activations quantised per call (symmetric
//! around the u8 midpoint 128, one scale per token row), products by rten-gemm's u8 x i8 -> i32 kernels
//! (AVX512-VNNI / AVX-VNNI `vpdpbusd` where the CPU has them), and the i32 sums scaled back to
//! f32 with the bias added. Everything else in the encoder (attention products, softmax, layer
//! norms, GELU) stays f32: they are a small share of the arithmetic and the sensitive part.

use candle_core::{bail, CpuStorage, Result, Storage, Tensor};
use candle_nn::Linear;
use rten_gemm::{GemmExecutor, GemmInputA, GemmInputB, GemmOptions, PackedBMatrix, QuantParams};
use rten_tensor::NdTensorView;

pub struct Int8Linear {
    gemm: GemmExecutor<u8, i8, i32>,
    /// The weights transposed to (in, out) and packed for the kernel.
    packed: PackedBMatrix<i8>,
    /// Per output feature.
    scales: Vec<f32>,
    bias: Vec<f32>,
    zero_points: Vec<i8>,
    inputs: usize,
}

impl Int8Linear {
    pub fn new(linear: &Linear) -> Result<Self> {
        let gemm = GemmExecutor::<u8, i8, i32>::new();
        // Without VNNI the kernel sums pairs of u8 x i8 products in i16 and can saturate;
        // weights in 7 bits keep every pair sum inside i16 (2 x 255 x 63 < 32767).
        let levels = if gemm.may_saturate() { 63.0 } else { 127.0 };
        let weight = linear.weight().to_vec2::<f32>()?;
        let (outputs, inputs) = (weight.len(), weight.first().map_or(0, Vec::len));
        let scales: Vec<f32> = weight
            .iter()
            .map(|row| {
                let max = row.iter().fold(0f32, |m, x| m.max(x.abs()));
                if max > 0.0 {
                    max / levels
                } else {
                    1.0
                }
            })
            .collect();
        let mut codes = vec![0i8; inputs * outputs];
        for (o, (row, scale)) in weight.iter().zip(&scales).enumerate() {
            for (i, w) in row.iter().enumerate() {
                codes[i * outputs + o] = (w / scale).round().clamp(-levels, levels) as i8;
            }
        }
        let packed = gemm.prepack_b(NdTensorView::from_data([inputs, outputs], codes.as_slice()));
        let bias = match linear.bias() {
            Some(b) => b.to_vec1::<f32>()?,
            None => vec![0.0; outputs],
        };
        Ok(Self { gemm, packed, scales, bias, zero_points: vec![0; outputs], inputs })
    }

    /// `x`: (rows, in) f32 on the CPU; returns (rows, out).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        let (rows, inputs) = x.dims2()?;
        if inputs != self.inputs {
            bail!("int8 linear: {inputs} inputs, the weights take {}", self.inputs);
        }
        let outputs = self.scales.len();
        let (mut codes, mut row_scales, mut row_zeros) = (vec![0u8; rows * inputs], vec![0f32; rows], vec![0u8; rows]);
        {
            let (storage, layout) = x.storage_and_layout();
            let Storage::Cpu(CpuStorage::F32(data)) = &*storage else { bail!("int8 linear: f32 on the CPU only") };
            let data = &data[layout.start_offset()..layout.start_offset() + rows * inputs];
            for (r, row) in data.chunks_exact(inputs).enumerate() {
                (row_scales[r], row_zeros[r]) = quantize_row(row, &mut codes[r * inputs..(r + 1) * inputs]);
            }
        }
        let mut sums = vec![0i32; rows * outputs];
        let options = GemmOptions {
            a_quant: Some(QuantParams { zero_point: &row_zeros }),
            b_quant: Some(QuantParams { zero_point: &self.zero_points }),
            ..Default::default()
        };
        let a = NdTensorView::from_data([rows, inputs], codes.as_slice());
        self.gemm
            .gemm(&mut sums, GemmInputA::Unpacked(a), GemmInputB::Packed(&self.packed), options)
            .map_err(|e| candle_core::Error::Msg(format!("int8 gemm: {e}")))?;
        let out: Vec<f32> = sums
            .chunks_exact(outputs)
            .zip(&row_scales)
            .flat_map(|(row, rs)| {
                row.iter().zip(&self.scales).zip(&self.bias).map(move |((s, ws), b)| *s as f32 * rs * ws + b)
            })
            .collect();
        Tensor::from_vec(out, (rows, outputs), x.device())
    }
}

/// The zero point of every activation row. One value for all rows: rten-gemm 0.27 mixes up
/// per-row zero points of the left-hand matrix past its first tile of rows (sums of rows 8-15
/// came out wrong in a 20-row product; see the test), so rows differ by scale only.
const ZERO: u8 = 128;

/// One row of activations as u8 codes: `x ≈ (code - 128) * scale`, symmetric, so that 0 is
/// exact (padding stays zeros) and every row has the same zero point.
fn quantize_row(row: &[f32], codes: &mut [u8]) -> (f32, u8) {
    let max = row.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
    let inv = 1.0 / scale;
    for (c, x) in codes.iter_mut().zip(row) {
        *c = ((x * inv).round().clamp(-127.0, 127.0) + f32::from(ZERO)) as u8;
    }
    (scale, ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module};

    #[test]
    fn matches_the_f32_layer_to_a_fraction_of_a_percent() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (48, 64), &dev).unwrap();
        let b = Tensor::randn(0f32, 0.1, 48, &dev).unwrap();
        let linear = Linear::new(w, Some(b));
        let x = Tensor::randn(0f32, 1.0, (20, 64), &dev).unwrap();
        let exact = linear.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let q = Int8Linear::new(&linear).unwrap();
        let approx = q.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let dot: f32 = exact.iter().zip(&approx).map(|(a, b)| a * b).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cosine = dot / (norm(&exact) * norm(&approx));
        assert!(cosine > 0.999, "cosine {cosine}");
        assert!(q.forward(&Tensor::zeros((2, 63), candle_core::DType::F32, &dev).unwrap()).is_err());
    }

    #[test]
    fn a_row_quantises_with_zero_exact() {
        let mut codes = [0u8; 4];
        let (scale, zero) = quantize_row(&[-1.0, 0.0, 0.5, 2.0], &mut codes);
        assert_eq!(codes[1], zero);
        assert!((scale - 2.0 / 127.0).abs() < 1e-7);
        assert_eq!((codes[0], codes[2], codes[3]), (128 - 64, 128 + 32, 255));
    }

    /// The kernel's integer sums equal a plain sum for the zero points we give it (one for
    /// all rows), on a product with rows past the first tile.
    #[test]
    fn the_kernel_sums_as_a_plain_loop_does() {
        let gemm = GemmExecutor::<u8, i8, i32>::new();
        let (m, k, n) = (20usize, 64usize, 48usize);
        let a: Vec<u8> = (0..m * k).map(|i| ((i * 37 + 11) % 256) as u8).collect();
        let b: Vec<i8> = (0..k * n).map(|i| (((i * 53 + 7) % 255) as i32 - 127) as i8).collect();
        let (za, zb) = (vec![ZERO; m], vec![0i8; n]);
        let packed = gemm.prepack_b(NdTensorView::from_data([k, n], b.as_slice()));
        let mut out = vec![0i32; m * n];
        let options = GemmOptions {
            a_quant: Some(QuantParams { zero_point: &za }),
            b_quant: Some(QuantParams { zero_point: &zb }),
            ..Default::default()
        };
        let a_view = NdTensorView::from_data([m, k], a.as_slice());
        gemm.gemm(&mut out, GemmInputA::Unpacked(a_view), GemmInputB::Packed(&packed), options).unwrap();
        for r in 0..m {
            for c in 0..n {
                let want: i32 =
                    (0..k).map(|i| (i32::from(a[r * k + i]) - i32::from(ZERO)) * i32::from(b[i * n + c])).sum();
                assert_eq!(out[r * n + c], want, "row {r} column {c}");
            }
        }
    }
}
