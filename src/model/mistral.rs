//! The Mistral / Llama decoder in one readable file: RMSNorm, rotary embeddings, grouped-query
//! attention with an optional sliding window, SwiGLU MLP, and a KV cache.
//!
//! One `forward` serves generation, scoring, evaluation, serving and training. Training needs
//! gradients, so `differentiable` switches the fused no-backward kernels (rope, softmax,
//! rms-norm) for their composed equivalents.
use super::config::ModelConfig;
use super::embedding::Embedding;
use super::kv_cache::KvCache;
use super::linear::{Linear, LinearKind, Weight};
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor, D};

/// Where a source's tensors come from, by Hugging Face name.
pub trait WeightSource {
    fn get(&self, name: &str) -> Result<Weight>;
    fn contains(&self, name: &str) -> bool;
    /// Name, storage type, shape and bytes of every stored tensor (for `inspect`).
    fn summaries(&self) -> Vec<TensorSummary>;
    /// The files holding the weights.
    fn files(&self) -> Vec<std::path::PathBuf>;
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TensorSummary {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub bytes: u64,
}

/// Which positions' logits `forward` returns.
#[derive(Debug, Clone)]
pub enum Logits {
    /// Every position: `[B, T, V]`.
    All,
    /// The last position of every row: `[B, V]`.
    Last,
    /// Row `b`'s logits at position `at[b]` (right-padded batches): `[B, V]`.
    At(Vec<usize>),
}

/// Optional inputs for batched or offset forwards.
#[derive(Default, Clone)]
pub struct ForwardOpts<'a> {
    /// `[B, cached + T]` with 1 for real tokens and 0 for padding (left-padded batches).
    pub key_mask: Option<&'a Tensor>,
    /// `[B, T]` explicit positions (u32); default: cached + 0..T.
    pub positions: Option<&'a Tensor>,
    /// Use ops with backward passes (training).
    pub differentiable: bool,
    /// Each layer adds its attention only and skips the MLP: AWQ's q/k/v scale search inspects
    /// the attention block's output, and the MLP would be most of the cost of every grid step.
    pub attention_only: bool,
}

struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn forward(&self, x: &Tensor, differentiable: bool) -> Result<Tensor> {
        if differentiable {
            let dt = x.dtype();
            // f32 keeps bf16/f16 training stable; f64 stays f64 so gradient checks are exact.
            let xf = x.to_dtype(if dt == DType::F64 { DType::F64 } else { DType::F32 })?;
            let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
            let y = xf.broadcast_div(&(var + self.eps)?.sqrt()?)?.to_dtype(dt)?;
            Ok(y.broadcast_mul(&self.weight)?)
        } else {
            Ok(candle_nn::ops::rms_norm(x, &self.weight, self.eps as f32)?)
        }
    }
}

struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    fn new(cfg: &ModelConfig, dtype: DType, device: &Device) -> Result<Self> {
        let half = cfg.head_dim / 2;
        let max = cfg.max_position_embeddings.clamp(4096, 1 << 17);
        // Frequencies in f32 as transformers computes them (inv_freq = 1 / theta^(2i/d)).
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / (cfg.rope_theta as f32).powf((2 * i) as f32 / cfg.head_dim as f32))
            .collect();
        let inv = Tensor::from_vec(inv, (1, half), device)?;
        let t = Tensor::arange(0u32, max as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max, 1))?;
        let freqs = t.broadcast_mul(&inv)?;
        Ok(Rotary {
            cos: freqs.cos()?.to_dtype(dtype)?,
            sin: freqs.sin()?.to_dtype(dtype)?,
        })
    }

    /// cos/sin for the given positions: `[T, D/2]` (shared) or `[B, T, D/2]`.
    fn tables(&self, offset: usize, t: usize, positions: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let max = self.cos.dims()[0];
        match positions {
            None => {
                if offset + t > max {
                    return Err(Error::invalid(
                        "sequence",
                        format!("position {} exceeds the rotary table ({max})", offset + t),
                    ));
                }
                Ok((self.cos.narrow(0, offset, t)?, self.sin.narrow(0, offset, t)?))
            }
            Some(p) => {
                let (b, t) = p.dims2()?;
                let flat = p.flatten_all()?;
                let cos = self.cos.index_select(&flat, 0)?.reshape((b, t, ()))?;
                let sin = self.sin.index_select(&flat, 0)?.reshape((b, t, ()))?;
                Ok((cos, sin))
            }
        }
    }

    fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor, differentiable: bool) -> Result<Tensor> {
        if differentiable {
            Ok(candle_nn::rotary_emb::rope_slow(x, cos, sin)?)
        } else {
            Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin)?)
        }
    }
}

pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

pub struct Block {
    input_layernorm: RmsNorm,
    pub self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

pub struct Model {
    pub cfg: ModelConfig,
    embed_tokens: Embedding,
    /// `lm_head` was built from the embedding table (no `lm_head.weight` in the checkpoint).
    head_tied: bool,
    pub layers: Vec<Block>,
    norm: RmsNorm,
    pub lm_head: Linear,
    rotary: Rotary,
    pub dtype: DType,
    pub device: Device,
}

fn expect_shape(name: &str, w: &Weight, want: &[usize]) -> Result<()> {
    let got = w.dims();
    if got != want {
        return Err(Error::tensor(
            name,
            format!("shape {got:?} does not match the config's {want:?}"),
        ));
    }
    Ok(())
}

impl Model {
    /// Build the decoder from a weight source (names as in Hugging Face checkpoints).
    pub fn new(
        cfg: &ModelConfig,
        src: &dyn WeightSource,
        dtype: DType,
        device: &Device,
        mut progress: impl FnMut(&str),
    ) -> Result<Self> {
        let (h, kvd, qd, f) = (
            cfg.hidden_size,
            cfg.num_key_value_heads * cfg.head_dim,
            cfg.num_attention_heads * cfg.head_dim,
            cfg.intermediate_size,
        );
        let mut get = |name: &str, shape: &[usize]| -> Result<Weight> {
            progress(name);
            let w = src.get(name)?;
            expect_shape(name, &w, shape)?;
            Ok(match w {
                Weight::Dense(t) => Weight::Dense(t.to_device(device)?),
                q => q,
            })
        };
        let linear = |w: Weight| Linear::new(w, dtype);
        let norm = |w: Weight| -> Result<RmsNorm> {
            Ok(RmsNorm {
                weight: w.to_dense(dtype)?,
                eps: cfg.rms_norm_eps,
            })
        };

        let embed_w = get("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let embed_tokens = Embedding::new(embed_w, dtype, device)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let self_attn = Attention {
                q_proj: linear(get(&format!("{p}.self_attn.q_proj.weight"), &[qd, h])?)?,
                k_proj: linear(get(&format!("{p}.self_attn.k_proj.weight"), &[kvd, h])?)?,
                v_proj: linear(get(&format!("{p}.self_attn.v_proj.weight"), &[kvd, h])?)?,
                o_proj: linear(get(&format!("{p}.self_attn.o_proj.weight"), &[h, qd])?)?,
                n_heads: cfg.num_attention_heads,
                n_kv_heads: cfg.num_key_value_heads,
                head_dim: cfg.head_dim,
            };
            let mlp = Mlp {
                gate_proj: linear(get(&format!("{p}.mlp.gate_proj.weight"), &[f, h])?)?,
                up_proj: linear(get(&format!("{p}.mlp.up_proj.weight"), &[f, h])?)?,
                down_proj: linear(get(&format!("{p}.mlp.down_proj.weight"), &[h, f])?)?,
            };
            layers.push(Block {
                input_layernorm: norm(get(&format!("{p}.input_layernorm.weight"), &[h])?)?,
                self_attn,
                post_attention_layernorm: norm(get(&format!("{p}.post_attention_layernorm.weight"), &[h])?)?,
                mlp,
            });
        }
        let norm_w = norm(get("model.norm.weight", &[h])?)?;
        let head_tied = cfg.tie_word_embeddings && !src.contains("lm_head.weight");
        let lm_head = if !head_tied {
            linear(get("lm_head.weight", &[cfg.vocab_size, h])?)?
        } else {
            // Tied: a table in the compute dtype is shared; GGUF blocks stay quantized for the
            // fast path, and an f16 / bf16 table becomes a 2-byte head of its own.
            match embed_tokens.dense_tensor() {
                Some(t) if t.dtype() == dtype => Linear::dense(t.clone()),
                _ => Linear::new(embed_tokens.weight(), dtype)?,
            }
        };
        Ok(Model {
            cfg: cfg.clone(),
            embed_tokens,
            head_tied,
            layers,
            norm: norm_w,
            lm_head,
            rotary: Rotary::new(cfg, dtype, device)?,
            dtype,
            device: device.clone(),
        })
    }

    /// Every decoder projection with its Hugging Face module name
    /// (`model.layers.N.self_attn.q_proj`, ...), for attaching adapters.
    pub fn projections_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            let (a, m) = (&mut l.self_attn, &mut l.mlp);
            out.push((format!("{p}.self_attn.q_proj"), &mut a.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), &mut a.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), &mut a.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), &mut a.o_proj));
            out.push((format!("{p}.mlp.gate_proj"), &mut m.gate_proj));
            out.push((format!("{p}.mlp.up_proj"), &mut m.up_proj));
            out.push((format!("{p}.mlp.down_proj"), &mut m.down_proj));
        }
        out
    }

    /// Replace every weight by `f(hf_name, dense weight)` (full fine-tuning turns them into
    /// variables this way). Block-quantized projections are dequantized first. A tied `lm_head`
    /// keeps sharing the (new) embedding tensor and is not visited separately.
    pub fn map_weights(&mut self, mut f: impl FnMut(&str, &Tensor) -> Result<Tensor>) -> Result<()> {
        // A GGUF keeps a tied head as its own quantized copy of the embedding.
        let tied = self.head_tied || (self.cfg.tie_word_embeddings && self.lm_head.is_block_quant());
        let embed = f("model.embed_tokens.weight", &self.embed_tokens.to_dense()?)?;
        self.embed_tokens = Embedding::dense(embed.clone());
        let dtype = self.dtype;
        for (name, l) in self.projections_mut() {
            l.kind = LinearKind::Dense(f(&format!("{name}.weight"), &l.base_dense(dtype)?)?);
        }
        for (i, l) in self.layers.iter_mut().enumerate() {
            for (n, norm) in [
                ("input_layernorm", &mut l.input_layernorm),
                ("post_attention_layernorm", &mut l.post_attention_layernorm),
            ] {
                norm.weight = f(&format!("model.layers.{i}.{n}.weight"), &norm.weight)?;
            }
        }
        self.norm.weight = f("model.norm.weight", &self.norm.weight)?;
        if tied {
            self.lm_head.kind = LinearKind::Dense(embed);
        } else {
            self.lm_head.kind = LinearKind::Dense(f("lm_head.weight", &self.lm_head.base_dense(dtype)?)?);
        }
        Ok(())
    }

    /// Whether `lm_head` shares the embedding matrix.
    pub fn lm_head_tied(&self) -> bool {
        let table = self.embed_tokens.dense_tensor().map(|t| t.id());
        matches!(&self.lm_head.kind, LinearKind::Dense(w) if Some(w.id()) == table)
    }

    /// Bytes the weights take in memory, in whatever format each is held (adapters included; a
    /// tied head counted once).
    pub fn weight_bytes(&self) -> usize {
        let t = crate::model::linear::tensor_bytes;
        let mut n = self.embed_tokens.bytes() + t(&self.norm.weight);
        for l in &self.layers {
            n += t(&l.input_layernorm.weight) + t(&l.post_attention_layernorm.weight);
            let (a, m) = (&l.self_attn, &l.mlp);
            for p in [
                &a.q_proj,
                &a.k_proj,
                &a.v_proj,
                &a.o_proj,
                &m.gate_proj,
                &m.up_proj,
                &m.down_proj,
            ] {
                n += p.storage_bytes();
            }
        }
        if !self.lm_head_tied() {
            n += self.lm_head.storage_bytes();
        }
        n
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Logits for `tokens` (`[B, T]`, u32) following whatever `cache` already holds.
    pub fn forward(&self, tokens: &Tensor, cache: &mut KvCache, logits: Logits, opts: &ForwardOpts) -> Result<Tensor> {
        let h = self.embed(tokens)?;
        let (_, t, _) = h.dims3()?;
        let n = self.layers.len();
        let last_row_only = matches!(logits, Logits::Last)
            && t > 1
            && n > 1
            && opts.key_mask.is_none()
            && opts.positions.is_none()
            && !opts.differentiable
            && !opts.attention_only;
        if !last_row_only {
            let h = self.forward_layers(h, 0..n, cache, opts)?;
            return self.head(&h, logits, opts.differentiable);
        }
        // Only the last position's logits are wanted, so the last layer needs every position's
        // keys and values (for the cache) but its query, attention output and MLP for the last
        // position alone, as llama.cpp does for rows it does not output. That layer then costs
        // its k/v projections, not a whole layer: a quarter of a prompt on a 4-layer model,
        // 3% on a 32-layer one. The result is the same up to how that one row's products are
        // summed (on int8-activation formats it takes the decode kernels, as generated tokens do).
        let h = self.forward_layers(h, 0..n - 1, cache, opts)?;
        let offset = cache.layer_len(n - 1);
        let (cos, sin) = self.rotary.tables(offset, t - 1, None)?;
        let last = &self.layers[n - 1];
        let x = last.input_layernorm.forward(&h.narrow(1, 0, t - 1)?, false)?;
        last.self_attn.append_keys_values(&x, n - 1, &cos, &sin, cache)?;
        let h = self.forward_layers(h.narrow(1, t - 1, 1)?, n - 1..n, cache, opts)?;
        self.head(&h, Logits::Last, false)
    }

    pub fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        let ids = tokens.flatten_all()?;
        if let Some(&max) = ids.to_vec1::<u32>()?.iter().max() {
            if max as usize >= self.cfg.vocab_size {
                return Err(Error::invalid(
                    "token id",
                    format!("{max} is outside the vocabulary ({})", self.cfg.vocab_size),
                ));
            }
        }
        Ok(self.embed_tokens.lookup(&ids)?.reshape((b, t, ()))?)
    }

    /// Run decoder layers `range` over hidden states `[B, T, H]`.
    pub fn forward_layers(
        &self,
        mut h: Tensor,
        range: std::ops::Range<usize>,
        cache: &mut KvCache,
        opts: &ForwardOpts,
    ) -> Result<Tensor> {
        let (b, t, _) = h.dims3()?;
        let offset = cache.layer_len(range.start);
        let s = offset + t;
        let (cos, sin) = self.rotary.tables(offset, t, opts.positions)?;
        // Without a key mask, inference in f32 on the CPU masks inside the fused kernel.
        let fused = opts.key_mask.is_none() && !opts.differentiable && h.dtype() == DType::F32 && h.device().is_cpu();
        let mask = if fused {
            None
        } else {
            self.attention_bias(b, t, offset, opts.key_mask)?
        };
        let pads = left_pads(opts.key_mask)?;
        let last = range.end.saturating_sub(1);
        for i in range {
            let ctx = AttnCtx {
                cos: &cos,
                sin: &sin,
                mask: mask.as_ref(),
                pads: pads.as_deref(),
                causal_only: fused,
                window: self.cfg.sliding_window.unwrap_or(usize::MAX),
                attention_only: opts.attention_only,
            };
            h = self.layers[i].forward(&h, i, &ctx, cache, opts.differentiable)?;
        }
        debug_assert_eq!(cache.layer_len(last), s);
        Ok(h)
    }

    pub fn head(&self, h: &Tensor, logits: Logits, differentiable: bool) -> Result<Tensor> {
        let (b, t, _) = h.dims3()?;
        let h = match &logits {
            Logits::All => h.clone(),
            Logits::Last => h.narrow(1, t - 1, 1)?,
            Logits::At(at) => {
                if at.len() != b || at.iter().any(|&p| p >= t) {
                    return Err(Error::invalid(
                        "logits positions",
                        format!("{at:?} for a batch of {b}x{t}"),
                    ));
                }
                let rows: Vec<Tensor> = at
                    .iter()
                    .enumerate()
                    .map(|(i, &p)| h.narrow(0, i, 1)?.narrow(1, p, 1))
                    .collect::<candle_core::Result<_>>()?;
                Tensor::cat(&rows, 0)?
            }
        };
        let all = matches!(logits, Logits::All);
        let h = self.norm.forward(&h, differentiable)?;
        let out = self.lm_head.forward(&h)?;
        let out = out.to_dtype(if out.dtype() == DType::F64 {
            DType::F64
        } else {
            DType::F32
        })?;
        Ok(if all { out } else { out.squeeze(1)? })
    }

    /// Additive attention bias `[B|1, 1, T, S]`: causal, sliding window, padding. None when no
    /// position needs masking (single-token decode without padding).
    fn attention_bias(&self, b: usize, t: usize, offset: usize, key_mask: Option<&Tensor>) -> Result<Option<Tensor>> {
        let s = offset + t;
        let window = self.cfg.sliding_window.unwrap_or(usize::MAX);
        let needs_window = s > window;
        if t == 1 && key_mask.is_none() && !needs_window {
            return Ok(None);
        }
        let km: Option<Vec<u32>> = match key_mask {
            Some(m) => {
                let (mb, ms) = m.dims2()?;
                if mb != b || ms != s {
                    return Err(Error::invalid(
                        "attention mask",
                        format!("shape [{mb}, {ms}], expected [{b}, {s}]"),
                    ));
                }
                Some(m.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?)
            }
            None => None,
        };
        let rows = if km.is_some() { b } else { 1 };
        let mut bias = vec![0f32; rows * t * s];
        for r in 0..rows {
            for q in 0..t {
                let qp = offset + q;
                for k in 0..s {
                    let visible = k <= qp && qp - k < window && km.as_ref().is_none_or(|m| m[r * s + k] != 0);
                    if !visible {
                        bias[(r * t + q) * s + k] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        Ok(Some(Tensor::from_vec(bias, (rows, 1, t, s), &self.device)?))
    }
}

/// Per-forward inputs every attention layer shares.
struct AttnCtx<'a> {
    cos: &'a Tensor,
    sin: &'a Tensor,
    mask: Option<&'a Tensor>,
    /// Left-padding length of each row, when padding is a prefix of every row.
    pads: Option<&'a [usize]>,
    /// The mask is causal plus the sliding window only and this is f32 inference on the CPU:
    /// [`crate::kernels::attention`] applies, and `mask` is not built.
    causal_only: bool,
    window: usize,
    attention_only: bool,
}

/// Leading zeros of each row of a `[B, S]` key mask, if every row is zeros-then-ones.
fn left_pads(key_mask: Option<&Tensor>) -> Result<Option<Vec<usize>>> {
    let Some(m) = key_mask else { return Ok(None) };
    let rows: Vec<Vec<u32>> = m.to_dtype(DType::U32)?.to_vec2()?;
    let mut pads = Vec::with_capacity(rows.len());
    for r in rows {
        let p = r.iter().take_while(|&&x| x == 0).count();
        if r[p..].contains(&0) {
            return Ok(None);
        }
        pads.push(p);
    }
    Ok(Some(pads))
}

impl Block {
    fn forward(
        &self,
        x: &Tensor,
        layer: usize,
        ctx: &AttnCtx,
        cache: &mut KvCache,
        differentiable: bool,
    ) -> Result<Tensor> {
        let a = self.self_attn.forward(
            &self.input_layernorm.forward(x, differentiable)?,
            layer,
            ctx,
            cache,
            differentiable,
        )?;
        let x = (x + a)?;
        if ctx.attention_only {
            return Ok(x);
        }
        let m = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&x, differentiable)?)?;
        Ok((x + m)?)
    }
}

impl Mlp {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let g = candle_nn::ops::silu(&self.gate_proj.forward(x)?)?;
        let u = self.up_proj.forward(x)?;
        self.down_proj.forward(&(g * u)?)
    }
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        layer: usize,
        ctx: &AttnCtx,
        cache: &mut KvCache,
        differentiable: bool,
    ) -> Result<Tensor> {
        let (cos, sin) = (ctx.cos, ctx.sin);
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let q = self.q_proj.forward(x)?.reshape((b, t, nh, hd))?.transpose(1, 2)?;
        let q = Rotary::apply(&q.contiguous()?, cos, sin, differentiable)?;
        let (k, v) = self.keys_values(x, cos, sin, differentiable)?;
        let (k, v) = cache.append(layer, &k, &v)?;
        let rep = nh / nkv;
        let q = q.reshape((b, nkv, rep * t, hd))?;
        let out = match ctx.pads {
            // Left-padded rows attend over their own keys only, so that a row's result does not
            // depend on its batch (reductions over extra zeros change SIMD summation order).
            Some(pads) if b > 1 && pads.iter().any(|&p| p > 0) => {
                let s = k.dims()[2];
                let mut rows = Vec::with_capacity(b);
                for (i, &p) in pads.iter().enumerate() {
                    let n = s - p;
                    let m = match ctx.mask {
                        Some(m) if m.dims()[0] == b => Some(m.narrow(0, i, 1)?.narrow(3, p, n)?),
                        Some(m) => Some(m.narrow(3, p, n)?),
                        None => None,
                    };
                    let kr = k.narrow(0, i, 1)?.narrow(2, p, n)?.contiguous()?;
                    let vr = v.narrow(0, i, 1)?.narrow(2, p, n)?.contiguous()?;
                    rows.push(self.attend(&q.narrow(0, i, 1)?, &kr, &vr, m.as_ref(), t, differentiable)?);
                }
                Tensor::cat(&rows, 0)?
            }
            _ if ctx.causal_only => {
                let s = k.dims()[2];
                let sh = crate::kernels::attention::CausalShape {
                    batch: b,
                    kv_heads: nkv,
                    rep,
                    t,
                    s,
                    head_dim: hd,
                    window: ctx.window,
                    scale: 1.0 / (hd as f32).sqrt(),
                };
                let flat = |x: &Tensor| -> Result<Vec<f32>> { Ok(x.contiguous()?.flatten_all()?.to_vec1::<f32>()?) };
                let o = crate::kernels::attention::causal_attention(&flat(&q)?, &flat(&k)?, &flat(&v)?, sh);
                Tensor::from_vec(o, (b, nkv, rep * t, hd), q.device())?
            }
            _ => self.attend(&q, &k, &v, ctx.mask, t, differentiable)?,
        };
        let out = out.reshape((b, nh, t, hd))?.transpose(1, 2)?.reshape((b, t, nh * hd))?;
        self.o_proj.forward(&out)
    }

    /// This step's keys (rotated) and values, `[B, nkv, T, D]` each.
    fn keys_values(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, differentiable: bool) -> Result<(Tensor, Tensor)> {
        let (b, t, _) = x.dims3()?;
        let (nkv, hd) = (self.n_kv_heads, self.head_dim);
        let k = self.k_proj.forward(x)?.reshape((b, t, nkv, hd))?.transpose(1, 2)?;
        let v = self.v_proj.forward(x)?.reshape((b, t, nkv, hd))?.transpose(1, 2)?;
        let k = Rotary::apply(&k.contiguous()?, cos, sin, differentiable)?;
        Ok((k, v.contiguous()?))
    }

    /// Put the keys and values of normed inputs `x` (`[B, T, H]`, at the rotary positions of
    /// `cos` / `sin`) into the cache without attending: positions whose outputs are not needed.
    fn append_keys_values(
        &self,
        x: &Tensor,
        layer: usize,
        cos: &Tensor,
        sin: &Tensor,
        cache: &mut KvCache,
    ) -> Result<()> {
        let (k, v) = self.keys_values(x, cos, sin, false)?;
        cache.append(layer, &k, &v)?;
        Ok(())
    }

    /// softmax(q k^T / sqrt(d) + mask) v for q `[B, nkv, rep*T, D]`, k/v `[B, nkv, S, D]`.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        t: usize,
        differentiable: bool,
    ) -> Result<Tensor> {
        let (b, nkv, _, hd) = q.dims4()?;
        let rep = self.n_heads / self.n_kv_heads;
        let s = k.dims()[2];
        let scale = 1.0 / (hd as f64).sqrt();
        let sdt = if q.dtype() == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let scores = (super::linear::matmul(q, &k.t()?)? * scale)?.to_dtype(sdt)?;
        let scores = match mask {
            Some(m) => {
                let sc = scores.reshape((b, nkv, rep, t, s))?;
                let m = m.unsqueeze(1)?.to_dtype(sdt)?; // [B|1, 1, 1, T, S]
                sc.broadcast_add(&m)?.reshape((b, nkv, rep * t, s))?
            }
            None => scores,
        };
        let probs = if differentiable {
            candle_nn::ops::softmax(&scores, D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        super::linear::matmul(&probs.to_dtype(v.dtype())?, v)
    }
}
