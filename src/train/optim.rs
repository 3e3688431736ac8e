//! AdamW with decoupled weight decay (Loshchilov & Hutter), the linear-warmup + cosine learning
//! rate schedule, and clipping by global gradient norm. Written out (rather than candle_nn's
//! AdamW) because checkpoints must save and restore the moment estimates.
use crate::error::{Error, Result};
use candle_core::{DType, Tensor, Var};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 2e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// A named trainable parameter. `decay` is false for norm weights (1-D), as is customary.
#[derive(Clone)]
pub struct Param {
    pub name: String,
    pub var: Var,
    pub decay: bool,
}

pub struct AdamW {
    pub cfg: AdamWConfig,
    /// Optimizer steps taken so far.
    pub t: usize,
    /// First and second moment estimates per parameter name (f32, or f64 for f64 params).
    pub m: HashMap<String, Tensor>,
    pub v: HashMap<String, Tensor>,
}

fn state_dtype(p: &Var) -> DType {
    if p.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

impl AdamW {
    pub fn new(cfg: AdamWConfig) -> Self {
        AdamW {
            cfg,
            t: 0,
            m: HashMap::new(),
            v: HashMap::new(),
        }
    }

    /// One update with learning rate `lr` (already scheduled) and gradients `grads[i]` for
    /// `params[i]`:  p <- p - lr*wd*p;  m,v <- EMAs;  p <- p - lr * m_hat / (sqrt(v_hat) + eps).
    pub fn step(&mut self, params: &[Param], grads: &[Tensor], lr: f64) -> Result<()> {
        self.t += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        for (p, g) in params.iter().zip(grads) {
            let sdt = state_dtype(&p.var);
            let g = g.to_dtype(sdt)?;
            let m_prev = match self.m.get(&p.name) {
                Some(m) => m.clone(),
                None => g.zeros_like()?,
            };
            let v_prev = match self.v.get(&p.name) {
                Some(v) => v.clone(),
                None => g.zeros_like()?,
            };
            let m = ((m_prev * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            let v = ((v_prev * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let mut w = p.var.as_tensor().to_dtype(sdt)?;
            if p.decay && c.weight_decay != 0.0 {
                w = (w * (1.0 - lr * c.weight_decay))?;
            }
            let denom = ((&v / bc2)?.sqrt()? + c.eps)?;
            let upd = ((&m / bc1)? / denom)?;
            let w = (w - (upd * lr)?)?;
            p.var.set(&w.to_dtype(p.var.dtype())?)?;
            self.m.insert(p.name.clone(), m);
            self.v.insert(p.name.clone(), v);
        }
        Ok(())
    }

    /// Moment tensors under `m.NAME` / `v.NAME` for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = Vec::new();
        for (k, t) in &self.m {
            out.push((format!("m.{k}"), t.clone()));
        }
        for (k, t) in &self.v {
            out.push((format!("v.{k}"), t.clone()));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub fn load_state(&mut self, t: usize, tensors: HashMap<String, Tensor>, params: &[Param]) -> Result<()> {
        self.t = t;
        self.m.clear();
        self.v.clear();
        for (k, v) in tensors {
            if let Some(n) = k.strip_prefix("m.") {
                self.m.insert(n.to_string(), v);
            } else if let Some(n) = k.strip_prefix("v.") {
                self.v.insert(n.to_string(), v);
            }
        }
        if t > 0 {
            for p in params {
                if !self.m.contains_key(&p.name) || !self.v.contains_key(&p.name) {
                    return Err(Error::msg(format!(
                        "checkpoint optimizer state has no moments for '{}'",
                        p.name
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Learning rate before optimizer step `step` (0-based): linear warmup from 0, then cosine
/// decay to 0 at `total` (the schedule of transformers' get_cosine_schedule_with_warmup).
pub fn lr_at(base: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return base * step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    base * (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
}

/// Global L2 norm of all gradients (computed in f64).
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut s = 0f64;
    for g in grads {
        s += g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
    }
    Ok(s.sqrt())
}

/// Scale gradients so their global norm is at most `max_norm` (as torch's clip_grad_norm_:
/// coefficient max_norm / (norm + 1e-6), capped at 1). Returns the norm before clipping.
pub fn clip_grads(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    if max_norm > 0.0 {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut() {
                *g = (&*g * coef)?;
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warmup_then_cosine() {
        assert_eq!(lr_at(1.0, 0, 10, 100), 0.0);
        assert!((lr_at(1.0, 5, 10, 100) - 0.5).abs() < 1e-12);
        assert!((lr_at(1.0, 10, 10, 100) - 1.0).abs() < 1e-12);
        assert!((lr_at(1.0, 55, 10, 100) - 0.5).abs() < 1e-12);
        assert!(lr_at(1.0, 100, 10, 100).abs() < 1e-12);
        assert!((lr_at(2e-5, 0, 0, 10) - 2e-5).abs() < 1e-18);
    }

    #[test]
    fn adamw_first_step_matches_closed_form() -> Result<()> {
        // After one step m_hat = g and v_hat = g^2, so the update is lr * sign(g) (up to eps).
        let dev = Device::Cpu;
        let var = Var::from_tensor(&Tensor::new(&[1.0f64, -2.0, 3.0], &dev)?)?;
        let params = vec![Param {
            name: "w".into(),
            var: var.clone(),
            decay: true,
        }];
        let g = Tensor::new(&[0.5f64, -0.25, 0.0], &dev)?;
        let mut opt = AdamW::new(AdamWConfig {
            lr: 0.1,
            weight_decay: 0.1,
            ..Default::default()
        });
        opt.step(&params, &[g], 0.1)?;
        let w: Vec<f64> = var.as_tensor().to_vec1()?;
        let want = [1.0 * 0.99 - 0.1, -2.0 * 0.99 + 0.1, 3.0 * 0.99];
        for (a, b) in w.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{w:?} vs {want:?}");
        }
        Ok(())
    }

    #[test]
    fn clipping_scales_to_max_norm() -> Result<()> {
        let dev = Device::Cpu;
        let mut g = vec![Tensor::new(&[3.0f64], &dev)?, Tensor::new(&[4.0f64], &dev)?];
        let n = clip_grads(&mut g, 1.0)?;
        assert!((n - 5.0).abs() < 1e-12);
        assert!((global_norm(&g)? - 1.0).abs() < 1e-6);
        Ok(())
    }
}
