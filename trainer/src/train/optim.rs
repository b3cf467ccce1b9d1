//! AdamW over flat f32 parameter vectors, the learning-rate schedule and gradient clipping.
//! States are f32, or 8-bit block-wise (a scale per 256 values) to quarter their memory.
//! Everything here is plain data, so a checkpoint stores it exactly.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

const BLOCK: usize = 256;

/// A moment vector: f32, or 8-bit codes with one f32 absmax scale per block of 256.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    F32(Vec<f32>),
    /// The second moment is non-negative, so it uses the unsigned range and a square-root
    /// companding (small values keep precision); the first uses signed linear codes.
    Q8 {
        codes: Vec<u8>,
        scales: Vec<f32>,
        unsigned: bool,
    },
}

impl State {
    pub fn zeros(n: usize, eight_bit: bool, unsigned: bool) -> Self {
        if eight_bit {
            State::Q8 { codes: vec![if unsigned { 0 } else { 128 }; n], scales: vec![0.0; n.div_ceil(BLOCK)], unsigned }
        } else {
            State::F32(vec![0.0; n])
        }
    }

    /// Runs `f` over each value (read, updated, written back, re-quantized per block).
    fn update(&mut self, mut f: impl FnMut(usize, f32) -> f32) {
        match self {
            State::F32(v) => v.iter_mut().enumerate().for_each(|(i, x)| *x = f(i, *x)),
            State::Q8 { codes, scales, unsigned } => {
                let mut buf = [0f32; BLOCK];
                for (b, (block, scale)) in codes.chunks_mut(BLOCK).zip(scales.iter_mut()).enumerate() {
                    let n = block.len();
                    let mut max = 0f32;
                    for j in 0..n {
                        let old = decode(block[j], *scale, *unsigned);
                        buf[j] = f(b * BLOCK + j, old);
                        max = max.max(buf[j].abs());
                    }
                    *scale = max;
                    for j in 0..n {
                        block[j] = encode(buf[j], max, *unsigned);
                    }
                }
            }
        }
    }

    /// The values as f32 (checkpoints, tests).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            State::F32(v) => v.clone(),
            State::Q8 { codes, scales, unsigned } => {
                codes.iter().enumerate().map(|(i, &c)| decode(c, scales[i / BLOCK], *unsigned)).collect()
            }
        }
    }
}

fn decode(c: u8, scale: f32, unsigned: bool) -> f32 {
    if unsigned {
        let r = c as f32 / 255.0;
        r * r * scale
    } else {
        (c as f32 - 128.0) / 127.0 * scale
    }
}

fn encode(x: f32, scale: f32, unsigned: bool) -> u8 {
    if scale == 0.0 {
        return if unsigned { 0 } else { 128 };
    }
    if unsigned {
        ((x.max(0.0) / scale).sqrt() * 255.0).round().clamp(0.0, 255.0) as u8
    } else {
        (x / scale * 127.0 + 128.0).round().clamp(1.0, 255.0) as u8
    }
}

/// AdamW state for one parameter tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Moments {
    pub m: State,
    pub v: State,
}

impl Moments {
    pub fn new(n: usize, eight_bit: bool) -> Self {
        Moments { m: State::zeros(n, eight_bit, false), v: State::zeros(n, eight_bit, true) }
    }
}

/// One AdamW step (decoupled weight decay) on `param` with gradient `grad`; `t` counts from 1.
pub fn adamw_step(c: &AdamWConfig, lr: f32, t: u64, param: &mut [f32], grad: &[f32], s: &mut Moments) {
    let bc1 = 1.0 - c.beta1.powi(t as i32);
    let bc2 = 1.0 - c.beta2.powi(t as i32);
    s.m.update(|i, m| c.beta1 * m + (1.0 - c.beta1) * grad[i]);
    s.v.update(|i, v| c.beta2 * v + (1.0 - c.beta2) * grad[i] * grad[i]);
    let (m, v) = (s.m.to_f32(), s.v.to_f32());
    for i in 0..param.len() {
        let update = (m[i] / bc1) / ((v[i] / bc2).sqrt() + c.eps);
        param[i] -= lr * (update + c.weight_decay * param[i]);
    }
}

/// Warmup then decay of the learning rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    Constant,
    #[default]
    Linear,
    Cosine,
}

/// The learning rate of optimizer step `step` (0-based) of `total`: linear warmup over `warmup`
/// steps to `peak`, then `decay` down to 0 at `total`.
pub fn lr_at(step: u64, total: u64, warmup: u64, peak: f32, decay: Decay) -> f32 {
    if step < warmup {
        return peak * (step + 1) as f32 / warmup as f32;
    }
    let span = total.saturating_sub(warmup).max(1) as f32;
    let p = ((step - warmup) as f32 / span).min(1.0);
    match decay {
        Decay::Constant => peak,
        Decay::Linear => peak * (1.0 - p),
        Decay::Cosine => peak * 0.5 * (1.0 + (std::f32::consts::PI * p).cos()),
    }
}

/// Scales the gradients so their global L2 norm is at most `max_norm` (0 = no clipping);
/// returns the norm before clipping.
pub fn clip(grads: &mut [Vec<f32>], max_norm: f32) -> f32 {
    let norm = grads.iter().flatten().map(|&g| (g as f64) * (g as f64)).sum::<f64>().sqrt() as f32;
    if max_norm > 0.0 && norm > max_norm {
        let s = max_norm / (norm + 1e-6);
        grads.iter_mut().flatten().for_each(|g| *g *= s);
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adamw_minimises_a_quadratic_in_both_state_formats() {
        for eight_bit in [false, true] {
            let target: Vec<f32> = (0..600).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut p = vec![0f32; 600];
            let mut s = Moments::new(600, eight_bit);
            let c = AdamWConfig::default();
            for t in 1..=400 {
                let g: Vec<f32> = p.iter().zip(&target).map(|(a, b)| 2.0 * (a - b)).collect();
                adamw_step(&c, 0.02, t, &mut p, &g, &mut s);
            }
            let err = p.iter().zip(&target).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err < 0.05, "8-bit {eight_bit}: max error {err}");
        }
    }

    #[test]
    fn the_first_adam_step_moves_each_weight_by_lr() {
        let mut p = vec![1.0f32, -2.0];
        let mut s = Moments::new(2, false);
        adamw_step(&AdamWConfig::default(), 0.1, 1, &mut p, &[0.5, -3.0], &mut s);
        assert!((p[0] - 0.9).abs() < 1e-5 && (p[1] + 1.9).abs() < 1e-5, "{p:?}");
    }

    #[test]
    fn eight_bit_states_round_trip_closely() {
        let mut s = State::zeros(1000, true, false);
        let vals: Vec<f32> = (0..1000).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        s.update(|i, _| vals[i]);
        for (a, b) in s.to_f32().iter().zip(&vals) {
            assert!((a - b).abs() <= 7.2 / 127.0 + 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn schedule_warms_up_then_decays() {
        assert_eq!(lr_at(0, 100, 10, 1.0, Decay::Linear), 0.1);
        assert_eq!(lr_at(9, 100, 10, 1.0, Decay::Linear), 1.0);
        assert_eq!(lr_at(10, 100, 10, 1.0, Decay::Linear), 1.0);
        assert!((lr_at(55, 100, 10, 1.0, Decay::Linear) - 0.5).abs() < 1e-6);
        assert!((lr_at(55, 100, 10, 1.0, Decay::Cosine) - 0.5).abs() < 1e-6);
        assert!(lr_at(99, 100, 10, 1.0, Decay::Cosine) < 0.01);
        assert_eq!(lr_at(50, 100, 0, 2.0, Decay::Constant), 2.0);
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let mut g = vec![vec![3.0f32], vec![4.0]];
        assert_eq!(clip(&mut g, 1.0), 5.0);
        let n = (g[0][0] * g[0][0] + g[1][0] * g[1][0]).sqrt();
        assert!((n - 1.0).abs() < 1e-4);
    }
}
