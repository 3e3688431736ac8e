//! AWQ on the engine's Mistral decoder: capture each layer's inputs on calibration tokens, run
//! the scale search per group of linears sharing an input, fold the scales, clip, quantize.
//! Also the reverse path for checking: an AWQ checkpoint dequantized into a tensor map that
//! `Model::new` accepts.
//!
//! The engine's decoder layer is used as a black box (its public `forward_layers` on a
//! one-layer `Model` holding layer i's tensors); intermediate inputs are recovered without
//! touching its internals: the MLP contribution is removed by a zero `down_proj`, and o_proj's
//! input by an identity `o_proj` (possible when heads * head_dim == hidden, true for Mistral).
use super::awq::{awq_module_tensors, awq_modules, floats, load_awq_quant, write_awq_tensors, AwqConfig, RawTensor};
use super::awq_search::{
    apply_clip, fold_into_linear, fold_into_norm, quantize_weight, scale_columns, search_best_scale, search_clip,
    AwqSearchOptions, ScaleSearch,
};
use super::rtn::GroupQuant;
use crate::error::{Error, Result};
use crate::model::linear::{Linear, Weight};
use crate::model::mistral::{TensorSummary, WeightSource};
use crate::model::{ForwardOpts, Model, ModelConfig};
use candle_core::{DType, Device, Tensor, D};
use safetensors::SafeTensors;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

/// HF-named tensors as a weight source.
pub struct TensorMap(pub HashMap<String, Tensor>);

impl WeightSource for TensorMap {
    fn get(&self, name: &str) -> Result<Weight> {
        self.0
            .get(name)
            .map(|t| Weight::Dense(t.clone()))
            .ok_or_else(|| Error::tensor(name, "missing"))
    }
    fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
    fn summaries(&self) -> Vec<TensorSummary> {
        let mut v: Vec<TensorSummary> = self
            .0
            .iter()
            .map(|(n, t)| TensorSummary {
                name: n.clone(),
                dtype: format!("{:?}", t.dtype()),
                shape: t.dims().to_vec(),
                bytes: (t.elem_count() * t.dtype().size_in_bytes()) as u64,
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
    /// In memory: no files.
    fn files(&self) -> Vec<std::path::PathBuf> {
        Vec::new()
    }
}

/// Every tensor of an AWQ checkpoint as f32, each quantized module replaced by its dequantized
/// `<module>.weight` (exact fp16 values).
pub fn dequantize_awq_checkpoint(st: &SafeTensors, cfg: &AwqConfig) -> Result<HashMap<String, Tensor>> {
    let dev = Device::Cpu;
    let mut out = HashMap::new();
    let modules = awq_modules(st);
    for m in &modules {
        let gq = load_awq_quant(st, m, cfg)?;
        let w: Vec<f32> = gq.dequantize_f16().iter().map(|v| v.to_f32()).collect();
        out.insert(
            format!("{m}.weight"),
            Tensor::from_vec(w, (gq.out_features, gq.in_features), &dev)?,
        );
    }
    for (name, t) in st.iter() {
        if [".qweight", ".qzeros", ".scales"].iter().any(|s| name.ends_with(s))
            && modules.iter().any(|m| name.starts_with(m.as_str()))
        {
            continue;
        }
        let v = floats(name, t.dtype(), t.data())?;
        out.insert(name.to_string(), Tensor::from_vec(v, t.shape(), &dev)?);
    }
    Ok(out)
}

/// The seven linears AWQ quantizes in every decoder layer.
pub const LAYER_LINEARS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// One scale group's search result, for reporting.
#[derive(Debug, Clone)]
pub struct GroupReport {
    pub layer: usize,
    pub group: &'static str,
    pub ratio: Option<f32>,
    pub loss: f32,
    pub rtn_loss: f32,
}

pub struct AwqModelOutput {
    /// `model.layers.i.<linear>` prefixes and their codes.
    pub modules: Vec<(String, GroupQuant)>,
    /// Every other tensor (embeddings, folded norms, head), f32.
    pub tensors: HashMap<String, Tensor>,
    pub report: Vec<GroupReport>,
}

impl AwqModelOutput {
    /// Write an AutoAWQ-format checkpoint (non-quantized tensors as f16, like AutoAWQ). Each
    /// tensor is converted and each module packed (half a byte a weight, against the codes' one)
    /// as the previous one is dropped, so the peak stays near the output's size.
    pub fn write(self, dir: &Path, cfg: &AwqConfig, base_config: &serde_json::Value) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = self.tensors.into_iter().collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let mut all = Vec::with_capacity(tensors.len() + 3 * self.modules.len());
        for (n, t) in tensors {
            let v = t.to_dtype(DType::F16)?.flatten_all()?.to_vec1::<half::f16>()?;
            let raw = RawTensor {
                dtype: safetensors::Dtype::F16,
                shape: t.dims().to_vec(),
                data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            };
            all.push((n, raw));
        }
        for (prefix, gq) in self.modules {
            all.extend(awq_module_tensors(&prefix, &gq, cfg)?);
        }
        write_awq_tensors(dir, cfg, &all, base_config)
    }
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(x.broadcast_div(&(var + eps)?.sqrt()?)?.broadcast_mul(w)?)
}

/// A one-layer model: the shared tensors (embedding, final norm, head) and one decoder layer's
/// tensors (`layer`, keyed by their name after `model.layers.N.`) as its layer 0.
fn layer_model(cfg: &ModelConfig, shared: &HashMap<String, Tensor>, layer: &HashMap<String, Tensor>) -> Result<Model> {
    let mut c = cfg.clone();
    c.num_hidden_layers = 1;
    let mut m = shared.clone();
    for (k, t) in layer {
        m.insert(format!("model.layers.0.{k}"), t.clone());
    }
    Model::new(&c, &TensorMap(m), DType::F32, &Device::Cpu, |_| {})
}

/// Run a one-layer model over `h` [B, T, H] a few sequences at a time (see
/// [`AwqSearchOptions::chunk_rows`]); `attention_only` skips the MLP.
fn run(m: &Model, h: &Tensor, opts: &AwqSearchOptions, attention_only: bool) -> Result<Tensor> {
    let (b, t, _) = h.dims3()?;
    let fo = ForwardOpts {
        attention_only,
        ..Default::default()
    };
    let per = (opts.chunk_rows / t.max(1)).max(1);
    let parts = (0..b)
        .step_by(per)
        .map(|a| m.forward_layers(h.narrow(0, a, per.min(b - a))?, 0..1, &mut m.new_cache(), &fo))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}

fn dense(t: &Tensor) -> Linear {
    Linear::dense(t.clone())
}

fn flat(t: &Tensor) -> Result<Tensor> {
    let k = t.dims().last().copied().unwrap_or(1);
    Ok(t.reshape(((), k))?)
}

fn div_cols(x: &Tensor, s: &[f32]) -> Result<Tensor> {
    let inv: Vec<f32> = s.iter().map(|v| 1.0 / v).collect();
    scale_columns(x, &inv)
}

/// Plain round-to-nearest into the AWQ format (no calibration): every decoder linear
/// quantized as AutoAWQ's `pseudo_quantize_tensor` on its fp16 weight, the rest kept.
pub fn rtn_quantize_model(
    cfg: &ModelConfig,
    weights: &HashMap<String, Tensor>,
    group_size: usize,
) -> Result<AwqModelOutput> {
    let get = |n: &str| weights.get(n).cloned().ok_or_else(|| Error::tensor(n, "missing"));
    rtn_quantize_lazy(cfg, weights.keys().cloned(), get, group_size)
}

/// [`rtn_quantize_model`] reading one tensor at a time through `get` (e.g. from a memory-mapped
/// checkpoint), so a 7B model never sits in memory whole, let alone widened to f32: only one
/// linear is widened at a time, and the rest stay in their stored dtype until written.
pub fn rtn_quantize_lazy(
    cfg: &ModelConfig,
    names: impl IntoIterator<Item = String>,
    get: impl Fn(&str) -> Result<Tensor>,
    group_size: usize,
) -> Result<AwqModelOutput> {
    let mut modules = Vec::new();
    let mut linears = std::collections::HashSet::new();
    for i in 0..cfg.num_hidden_layers {
        for l in LAYER_LINEARS {
            let prefix = format!("model.layers.{i}.{l}");
            let name = format!("{prefix}.weight");
            let t = get(&name)?;
            modules.push((prefix.clone(), quantize_weight(&prefix, &t, group_size)?));
            linears.insert(name);
        }
    }
    let tensors = names
        .into_iter()
        .filter(|n| !linears.contains(n))
        .map(|n| Ok((n.clone(), get(&n)?)))
        .collect::<Result<_>>()?;
    Ok(AwqModelOutput {
        modules,
        tensors,
        report: Vec::new(),
    })
}

/// Run AWQ over every decoder layer. `weights`: the fp model (HF names, any float dtype);
/// `calib`: calibration token ids `[B, T]` (u32).
pub fn awq_quantize_model(
    cfg: &ModelConfig,
    weights: &HashMap<String, Tensor>,
    calib: &Tensor,
    opts: &AwqSearchOptions,
) -> Result<AwqModelOutput> {
    let get = |n: &str| weights.get(n).cloned().ok_or_else(|| Error::tensor(n, "missing"));
    awq_quantize_lazy(cfg, weights.keys().cloned(), get, calib, opts)
}

/// [`awq_quantize_model`] reading tensors through `get` (e.g. from a memory-mapped checkpoint):
/// only the shared tensors and the current layer are widened to f32, so a 7B model needs a
/// layer's worth of weights (0.9 GB) beside the calibration activations, not 30 GB.
pub fn awq_quantize_lazy(
    cfg: &ModelConfig,
    names: impl IntoIterator<Item = String>,
    get: impl Fn(&str) -> Result<Tensor>,
    calib: &Tensor,
    opts: &AwqSearchOptions,
) -> Result<AwqModelOutput> {
    let names: Vec<String> = names.into_iter().collect();
    let wide = |n: &str| -> Result<Tensor> { Ok(get(n)?.to_dtype(DType::F32)?) };
    let shared: HashMap<String, Tensor> = names
        .iter()
        .filter(|n| !n.starts_with("model.layers."))
        .map(|n| Ok((n.clone(), wide(n)?)))
        .collect::<Result<_>>()?;
    let layer_tensors = |i: usize| -> Result<HashMap<String, Tensor>> {
        let from = format!("model.layers.{i}.");
        names
            .iter()
            .filter_map(|n| n.strip_prefix(&from).map(|rest| (n, rest)))
            .map(|(n, rest)| Ok((rest.to_string(), wide(n)?)))
            .collect()
    };
    let opts = &AwqSearchOptions {
        seq_len: calib.dim(1)?,
        ..opts.clone()
    };
    // Layer 0's model embeds the calibration tokens (so layer 0 is read and widened once).
    let mut h = Tensor::zeros(0, DType::F32, &Device::Cpu)?;
    let (hid, qd) = (cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim);
    let seq = opts.seq_len;
    let mut modules = Vec::new();
    let mut report = Vec::new();
    let mut tensors = shared.clone();
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let layer = layer_tensors(i)?;
        // Taken out of a copy first, so a missing tensor is named with its own layer index.
        let mut rest = layer.clone();
        let mut take = |s: &str| -> Result<Tensor> {
            rest.remove(s)
                .ok_or_else(|| Error::tensor(format!("{p}.{s}"), "missing"))
        };
        let mut lin: Vec<Tensor> = LAYER_LINEARS
            .iter()
            .map(|n| take(&format!("{n}.weight")))
            .collect::<Result<_>>()?;
        let (mut ln1, mut ln2) = (
            take("input_layernorm.weight")?,
            take("post_attention_layernorm.weight")?,
        );
        let model = RefCell::new(layer_model(cfg, &shared, &layer)?);
        drop(layer);
        if i == 0 {
            h = model.borrow().embed(calib)?;
        }
        let h_next = run(&model.borrow(), &h, opts, false)?;

        // Captures: the attention block's output, and o_proj's input through an identity o_proj.
        let attn = (run(&model.borrow(), &h, opts, true)? - &h)?;
        let mut x_attn = flat(&rms_norm(&h, &ln1, cfg.rms_norm_eps)?)?;
        let mut x_o = if qd == hid {
            model.borrow_mut().layers[0].self_attn.o_proj = dense(&Tensor::eye(hid, DType::F32, &Device::Cpu)?);
            let x = flat(&(run(&model.borrow(), &h, opts, true)? - &h)?)?;
            model.borrow_mut().layers[0].self_attn.o_proj = dense(&lin[3]);
            Some(x)
        } else {
            None
        };
        let mut x_mlp = flat(&rms_norm(&(&h + &attn)?, &ln2, cfg.rms_norm_eps)?)?;
        drop(attn);
        let rows = |x: &Tensor, r: &std::ops::Range<usize>| x.narrow(0, r.start, r.len());
        let mlp = |x: &Tensor, g: &Tensor, u: &Tensor, d: &Tensor| -> Result<Tensor> {
            let a = candle_nn::ops::silu(&x.matmul(&g.t()?)?)?;
            Ok((a * x.matmul(&u.t()?)?)?.matmul(&d.t()?)?)
        };
        let mut x_down = {
            let parts = super::awq_search::row_chunks(x_mlp.dim(0)?, opts)
                .iter()
                .map(|r| {
                    let x = rows(&x_mlp, r)?;
                    let a = candle_nn::ops::silu(&x.matmul(&lin[4].t()?)?)?;
                    Ok((a * x.matmul(&lin[5].t()?)?)?)
                })
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&parts, 0)?
        };

        // Scale searches, all on the original layer (as AutoAWQ does), then applied together.
        let mut rep = |group, s: &ScaleSearch| {
            report.push(GroupReport {
                layer: i,
                group,
                ratio: s.ratio,
                loss: s.loss,
                rtn_loss: s.rtn_loss,
            })
        };
        // AutoAWQ inspects self_attn for q/k/v: the attention block alone, on whole sequences.
        let s_qkv = search_best_scale(&lin[0..3], &x_attn, opts, &|ws, r| {
            let mut m = model.borrow_mut();
            let a = &mut m.layers[0].self_attn;
            (a.q_proj, a.k_proj, a.v_proj) = (dense(&ws[0]), dense(&ws[1]), dense(&ws[2]));
            drop(m);
            let hs = h.narrow(0, r.start / seq, r.len() / seq)?;
            run(&model.borrow(), &hs, opts, true)
        })?;
        rep("q,k,v", &s_qkv);
        // AutoAWQ scales o_proj (folding into v_proj) only without grouped-query attention.
        let s_o = match &x_o {
            Some(x) if lin[2].dims() == lin[3].dims() => {
                let s = search_best_scale(&lin[3..4], x, opts, &|ws, r| Ok(rows(x, &r)?.matmul(&ws[0].t()?)?))?;
                rep("o", &s);
                Some(s)
            }
            _ => None,
        };
        let s_gu = search_best_scale(&lin[4..6], &x_mlp, opts, &|ws, r| {
            mlp(&rows(&x_mlp, &r)?, &ws[0], &ws[1], &lin[6])
        })?;
        rep("gate,up", &s_gu);
        let s_d = search_best_scale(&lin[6..7], &x_down, opts, &|ws, r| {
            Ok(rows(&x_down, &r)?.matmul(&ws[0].t()?)?)
        })?;
        rep("down", &s_d);
        drop(model);

        ln1 = fold_into_norm(&ln1, &s_qkv.scales)?;
        for l in &mut lin[0..3] {
            *l = scale_columns(l, &s_qkv.scales)?;
        }
        x_attn = div_cols(&x_attn, &s_qkv.scales)?;
        if let (Some(s), Some(x)) = (&s_o, &mut x_o) {
            lin[2] = fold_into_linear(&lin[2], &s.scales)?;
            lin[3] = scale_columns(&lin[3], &s.scales)?;
            *x = div_cols(x, &s.scales)?;
        }
        ln2 = fold_into_norm(&ln2, &s_gu.scales)?;
        for l in &mut lin[4..6] {
            *l = scale_columns(l, &s_gu.scales)?;
        }
        x_mlp = div_cols(&x_mlp, &s_gu.scales)?;
        lin[5] = fold_into_linear(&lin[5], &s_d.scales)?;
        lin[6] = scale_columns(&lin[6], &s_d.scales)?;
        x_down = div_cols(&x_down, &s_d.scales)?;

        // Clip search (AutoAWQ skips q and k: their error is amplified by the attention
        // softmax, so the output-error proxy misleads), then quantize.
        for (k, name) in LAYER_LINEARS.iter().enumerate() {
            let full = format!("{p}.{name}");
            let input = match k {
                2 => Some(&x_attn),
                3 => x_o.as_ref(),
                4 | 5 => Some(&x_mlp),
                6 => Some(&x_down),
                _ => None,
            };
            if let Some(x) = input {
                let bounds = search_clip(&full, &lin[k], x, opts)?;
                lin[k] = apply_clip(&full, &lin[k], &bounds, opts.group_size)?;
            }
            modules.push((full.clone(), quantize_weight(&full, &lin[k], opts.group_size)?));
        }
        tensors.insert(format!("{p}.input_layernorm.weight"), ln1);
        tensors.insert(format!("{p}.post_attention_layernorm.weight"), ln2);
        // Anything else the layer holds (biases, say) is kept as it was.
        tensors.extend(rest.into_iter().map(|(k, t)| (format!("{p}.{k}"), t)));
        h = h_next;
    }
    Ok(AwqModelOutput {
        modules,
        tensors,
        report,
    })
}
