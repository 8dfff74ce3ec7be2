//! Token sampling without allocation: greedy, temperature, and nucleus
//! (top-p) with a seeded xorshift RNG.
//!
//! Top-p finds the probability threshold θ of the nucleus by bisection
//! (the largest θ whose tokens with p ≥ θ hold at least `top_p` of the mass),
//! then samples among those tokens in index order: the same distribution as
//! sorting, with no scratch buffer.

#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SamplerConfig {
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// In (0, 1]; 1 (or ≥ 1) disables nucleus filtering.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.0,
            top_p: 0.9,
            seed: 42,
        }
    }
}

pub struct Sampler {
    cfg: SamplerConfig,
    state: u64,
}

/// Index of the largest value (the first on ties; 0 for an empty slice).
pub fn argmax(x: &[f32]) -> u32 {
    let (mut best, mut top) = (0, f32::NAN);
    for (i, &v) in x.iter().enumerate() {
        if i == 0 || v > top {
            (best, top) = (i, v);
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Sampler {
        Sampler {
            cfg,
            state: cfg.seed.max(1),
        }
    }

    /// xorshift64* (as llama2.c), 32 random bits.
    fn next_u32(&mut self) -> u32 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        (self.state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }
    /// Uniform in [0, 1).
    fn next_f32(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / 16_777_216.0
    }

    /// Picks the next token; `logits` is overwritten with probabilities
    /// unless sampling is greedy.
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        let t = self.cfg.temperature;
        if logits.is_empty() {
            return 0;
        }
        if t.is_nan() || t <= 0.0 {
            return argmax(logits);
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for v in logits.iter_mut() {
            *v = crate::exp::exp((*v - max) / t);
        }
        let sum: f32 = logits.iter().sum();
        for v in logits.iter_mut() {
            *v /= sum;
        }
        let p = self.cfg.top_p;
        let theta = if p > 0.0 && p < 1.0 { nucleus_threshold(logits, p) } else { 0.0 };
        let mass: f32 = logits.iter().filter(|&&v| v >= theta).sum();
        let r = self.next_f32() * mass;
        let mut cdf = 0.0;
        let mut last = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v >= theta {
                cdf += v;
                last = i;
                if r < cdf {
                    return i as u32;
                }
            }
        }
        last as u32 // rounding: fall back to the last eligible token
    }
}

/// Largest θ with Σ_{p ≥ θ} p ≥ top_p, by bisection on θ ∈ [0, max p].
fn nucleus_threshold(probs: &[f32], top_p: f32) -> f32 {
    let (mut lo, mut hi) = (0.0f32, probs.iter().copied().fold(0.0, f32::max));
    // hi itself always qualifies when its mass ≥ top_p; check the invariant
    let mass = |th: f32| probs.iter().filter(|&&v| v >= th).sum::<f32>();
    if mass(hi) >= top_p {
        return hi;
    }
    for _ in 0..40 {
        let mid = 0.5 * (lo + hi);
        if mass(mid) >= top_p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplerConfig::default());
        assert_eq!(s.sample(&mut [0.1, 3.0, -1.0, 3.0]), 1);
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // probabilities ~ [0.6, 0.3, 0.05, 0.05]: top_p 0.8 keeps tokens 0 and 1
        let logits = [0.6f32.ln(), 0.3f32.ln(), 0.05f32.ln(), 0.05f32.ln()];
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_p: 0.8,
            seed: 7,
        });
        let mut seen = [0u32; 4];
        for _ in 0..2000 {
            let mut l = logits;
            seen[s.sample(&mut l) as usize] += 1;
        }
        assert_eq!(seen[2] + seen[3], 0);
        assert!(seen[0] > seen[1] && seen[1] > 400, "{seen:?}");
    }

    #[test]
    fn seeded_runs_repeat() {
        let run = |seed| {
            let mut s = Sampler::new(SamplerConfig {
                temperature: 0.9,
                top_p: 0.95,
                seed,
            });
            (0..50)
                .map(|i| s.sample(&mut [0.0, 0.5, 1.0, (i % 3) as f32]))
                .collect::<heapless::Vec<u32, 64>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }
}
