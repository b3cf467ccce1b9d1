//! Choosing the next token from logits: greedy, or temperature with top-k / top-p (nucleus).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1.0 = all).
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.0, top_p: 1.0, top_k: 0, seed: 0 }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self::default()
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

/// Index of the largest value; the first one on ties (as llama.cpp's greedy sampler).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Sampler { params, rng: StdRng::seed_from_u64(params.seed) }
    }

    pub fn params(&self) -> SamplingParams {
        self.params
    }

    /// The next uniform number in [0, 1) of this sampler's stream — what [`Sampler::sample`] draws
    /// once per non-greedy call, for a backend that samples on the device.
    pub fn uniform(&mut self) -> f32 {
        self.rng.random::<f32>()
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = self.params;
        if p.temperature <= 0.0 || p.top_k == 1 {
            return argmax(logits);
        }
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, &v)| (i as u32, v / p.temperature))
            .collect();
        if cand.is_empty() {
            return argmax(logits);
        }
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 && cand.len() > p.top_k {
            cand.truncate(p.top_k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|c| (c.1 - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, q) in probs.iter().enumerate() {
                acc += q;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut x = self.rng.random::<f32>() * total;
        for (i, q) in probs.iter().enumerate() {
            x -= q;
            if x <= 0.0 {
                return cand[i].0;
            }
        }
        cand[probs.len() - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.1, 3.0, 3.0, -1.0]), 1);
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&[0.0, -1.0, 5.0]), 2);
    }

    #[test]
    fn top_p_and_top_k_restrict_the_choice_and_seeds_repeat() {
        let logits = [10.0, 9.5, 0.0, -5.0, 1.0];
        let params = SamplingParams { temperature: 1.0, top_p: 0.9, top_k: 0, seed: 7 };
        let draws: Vec<u32> = {
            let mut s = Sampler::new(params);
            (0..200).map(|_| s.sample(&logits)).collect()
        };
        assert!(draws.iter().all(|&t| t == 0 || t == 1), "top-p 0.9 keeps only the two heavy tokens");
        assert!(draws.contains(&0) && draws.contains(&1));
        let again: Vec<u32> = {
            let mut s = Sampler::new(params);
            (0..200).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(draws, again, "same seed, same draws");
        let mut k1 = Sampler::new(SamplingParams { top_k: 1, temperature: 2.0, ..params });
        assert!((0..50).all(|_| k1.sample(&logits) == 0));
    }

    #[test]
    fn temperature_spreads_probability() {
        let logits = [1.0, 0.0];
        let count = |t: f32| {
            let mut s = Sampler::new(SamplingParams { temperature: t, top_p: 1.0, top_k: 0, seed: 1 });
            (0..2000).filter(|_| s.sample(&logits) == 1).count()
        };
        let (cold, hot) = (count(0.25), count(4.0));
        assert!(cold < 100 && hot > 700, "cold {cold}, hot {hot}");
    }
}
