//! The merge plan: which input tensors feed each output tensor, with every parameter resolved.
//! Building it opens all models (headers only) and validates names, shapes, layer ranges,
//! vocabulary sizes and parameter values, so `--dry-run` catches every config error up front.
use super::config::MergeConfig;
use super::input::InputModel;
use super::methods::Method;
use super::params::{lookup, ParamMap};
use super::slices::{build_slices, Slice};
use super::tensor::Dtype;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// One input tensor of an output tensor, with its per-model parameters resolved.
#[derive(Clone, Debug)]
pub struct SourceRef {
    pub model: usize,
    pub tensor: String,
    pub params: BTreeMap<&'static str, f64>,
}

#[derive(Clone, Debug)]
pub struct TensorTask {
    pub name: String,
    pub shape: Vec<usize>,
    pub sources: Vec<SourceRef>,
    /// Position of the base model in `sources`, for methods that need one.
    pub base: Option<usize>,
    pub globals: BTreeMap<&'static str, f64>,
    pub merge_dtype: Dtype,
    pub out_dtype: Dtype,
}

impl TensorTask {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn out_bytes(&self) -> u64 {
        (self.numel() * self.out_dtype.size()) as u64
    }
    pub fn global(&self, name: &str) -> f64 {
        self.globals.get(name).copied().unwrap_or(0.0)
    }
}

pub struct Plan {
    pub method: Method,
    pub models: Vec<InputModel>,
    pub base: Option<usize>,
    pub tensors: Vec<TensorTask>,
    pub num_layers: usize,
    /// dtype recorded in config.json (the output dtype of the weight tensors).
    pub out_dtype: Dtype,
    /// Model whose config.json and generation config the output inherits.
    pub reference: usize,
    /// Model whose tokenizer files are copied when asked to (tokenizer_source, --copy-tokenizer).
    pub tokenizer_model: usize,
    pub config: MergeConfig,
}

/// Split `model.layers.7.mlp.up_proj.weight` into (7, `mlp.up_proj.weight`).
pub fn split_layer(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (idx, tail) = rest.split_once('.')?;
    Some((idx.parse().ok()?, tail))
}

pub(crate) fn check_names(method: Method, scope: &str, map: &ParamMap) -> Result<()> {
    for name in map.names() {
        if !method.knows_param(name) {
            let known: Vec<_> = method
                .model_params()
                .iter()
                .chain(method.global_params())
                .map(|d| d.name)
                .collect();
            return Err(Error::config(
                format!("{scope}.{name}"),
                format!(
                    "unknown parameter for merge_method {} (accepted: {})",
                    method.name(),
                    known.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn check_range(name: &str, v: f64, tensor: &str, who: &str) -> Result<()> {
    let (ok, range) = match name {
        "t" => ((0.0..=1.0).contains(&v), "[0, 1]"),
        "density" => (v > 0.0 && v <= 1.0, "(0, 1]"),
        "gamma" => ((0.0..1.0).contains(&v), "[0, 1)"),
        _ => (true, ""),
    };
    let bad = (!ok).then_some(range);
    match bad {
        Some(range) => Err(Error::config(
            format!("parameters.{name}"),
            format!("value {v} for tensor '{tensor}'{who} is outside {range}"),
        )),
        None => Ok(()),
    }
}

fn has_vocab_dim(name: &str) -> bool {
    name.contains("embed_tokens") || name.starts_with("lm_head")
}

pub fn build(config: MergeConfig, config_dir: Option<&Path>, out_override: Option<Dtype>) -> Result<Plan> {
    let method = Method::parse(&config.merge_method)?;
    let global = ParamMap::parse("parameters", config.parameters.as_ref())?;
    check_names(method, "parameters", &global)?;
    let merge_dtype = config.dtype.as_deref().map(|d| Dtype::parse("dtype", d)).transpose()?;
    let cfg_out = config
        .out_dtype
        .as_deref()
        .map(|d| Dtype::parse("out_dtype", d))
        .transpose()?;

    // Open each distinct model once, in order of appearance.
    let mut specs: Vec<String> = Vec::new();
    let mut add = |s: &str| {
        if !specs.iter().any(|x| x == s) {
            specs.push(s.to_string());
        }
    };
    for m in config.models.iter().flatten() {
        add(&m.model);
    }
    for s in config.slices.iter().flatten() {
        s.sources.iter().for_each(|src| add(&src.model));
    }
    if let Some(b) = &config.base_model {
        add(b);
    }
    let models: Vec<InputModel> = specs
        .iter()
        .map(|s| InputModel::open(s, config_dir))
        .collect::<Result<_>>()?;
    let idx_of = |spec: &str| specs.iter().position(|s| s == spec);
    let base = config.base_model.as_deref().and_then(idx_of);
    if method.needs_base() && base.is_none() {
        return Err(Error::config(
            "base_model",
            format!("merge_method {} needs a base_model", method.name()),
        ));
    }

    // Per-model parameters given in the `models:` list.
    let mut model_scope: Vec<ParamMap> = vec![ParamMap::default(); models.len()];
    let mut seen = Vec::new();
    for (k, m) in config.models.iter().flatten().enumerate() {
        if seen.contains(&&m.model) {
            return Err(Error::config(
                format!("models[{k}].model"),
                format!("'{}' is listed twice", m.model),
            ));
        }
        seen.push(&m.model);
        let scope = format!("models[{k}].parameters");
        let map = ParamMap::parse(&scope, m.parameters.as_ref())?;
        check_names(method, &scope, &map)?;
        if let Some(i) = idx_of(&m.model) {
            model_scope[i] = map;
        }
    }

    let slices = build_slices(&config, method, &models, &idx_of, base)?;
    let reference_of = |s: &Slice| s.sources.iter().position(|src| Some(src.model) == base).unwrap_or(0);
    let first = &slices[0];
    let last = &slices[slices.len() - 1];
    let reference = first.sources[reference_of(first)].model;

    let mut tensors = Vec::new();
    let empty = ParamMap::default();
    let resolve =
        |name: &str, srcs: Vec<(usize, String, &ParamMap)>, slice_params: &ParamMap, t: f64| -> Result<TensorTask> {
            let ref_pos = srcs.iter().position(|s| Some(s.0) == base).unwrap_or(0);
            let (ref_model, ref_tensor) = (&models[srcs[ref_pos].0], &srcs[ref_pos].1);
            let ref_entry = ref_model
                .tensors
                .get(ref_tensor)
                .ok_or_else(|| Error::tensor(ref_tensor, format!("missing from model '{}'", ref_model.spec)))?;
            let mut sources = Vec::new();
            for (model, tensor, src_params) in &srcs {
                let m = &models[*model];
                let entry = m
                    .tensors
                    .get(tensor)
                    .ok_or_else(|| Error::tensor(tensor, format!("missing from model '{}'", m.spec)))?;
                if entry.shape != ref_entry.shape {
                    return Err(shape_error(
                        tensor,
                        &config,
                        ref_model,
                        &ref_entry.shape,
                        m,
                        &entry.shape,
                    ));
                }
                let mut params = BTreeMap::new();
                let is_base = Some(*model) == base && method.is_task_arithmetic();
                for def in method.model_params().iter().filter(|_| !is_base) {
                    let scopes = [*src_params, &model_scope[*model], slice_params, &global];
                    let v = lookup(&scopes, def.name, name, t).or(def.default).ok_or_else(|| {
                        Error::config(
                            format!("parameters.{}", def.name),
                            format!("required by {} but not given for model '{}'", method.name(), m.spec),
                        )
                    })?;
                    check_range(def.name, v, name, &format!(" (model '{}')", m.spec))?;
                    params.insert(def.name, v);
                }
                sources.push(SourceRef {
                    model: *model,
                    tensor: tensor.clone(),
                    params,
                });
            }
            let mut globals = BTreeMap::new();
            for def in method.global_params() {
                let v = lookup(&[slice_params, &global], def.name, name, t)
                    .or(def.default)
                    .ok_or_else(|| {
                        Error::config(
                            format!("parameters.{}", def.name),
                            format!("required by {} but not given", method.name()),
                        )
                    })?;
                check_range(def.name, v, name, "")?;
                globals.insert(def.name, v);
            }
            if method == Method::Linear && globals.get("normalize").is_some_and(|n| *n != 0.0) {
                let total: f64 = sources.iter().filter_map(|s| s.params.get("weight")).sum();
                if total.abs() < 1e-8 {
                    return Err(Error::config(
                        "parameters.weight",
                        format!("weights sum to zero for tensor '{name}' and normalize is on (set normalize: false?)"),
                    ));
                }
            }
            let md = merge_dtype.unwrap_or(ref_entry.dtype);
            Ok(TensorTask {
                name: name.to_string(),
                shape: ref_entry.shape.clone(),
                base: if method.needs_base() { Some(ref_pos) } else { None },
                sources,
                globals,
                merge_dtype: md,
                out_dtype: out_override.or(cfg_out).unwrap_or(md),
            })
        };

    // Non-layer tensors: embeddings come from the first slice's models, the rest (final norm,
    // lm_head) from the last slice's, as in mergekit. They see `models:` and top-level parameters (no slice scopes), at t = 0.
    let ref_model = &models[reference];
    let non_layer: Vec<&String> = ref_model.tensors.keys().filter(|n| split_layer(n).is_none()).collect();
    let (pre, post): (Vec<&String>, Vec<&String>) = non_layer.into_iter().partition(|n| n.contains("embed"));
    let whole = |s: &Slice, name: &str| -> Vec<(usize, String, &ParamMap)> {
        s.sources
            .iter()
            .map(|src| (src.model, name.to_string(), &empty))
            .collect()
    };
    for name in pre {
        tensors.push(resolve(name, whole(first, name), &empty, 0.0)?);
    }
    let mut out_layer = 0;
    for slice in &slices {
        let r = &slice.sources[reference_of(slice)];
        for j in 0..slice.len {
            let t = if slice.len > 1 {
                j as f64 / (slice.len - 1) as f64
            } else {
                1.0
            };
            let src_layer = r.start + j;
            let suffixes: Vec<&str> = models[r.model]
                .tensors
                .keys()
                .filter_map(|n| split_layer(n).filter(|(l, _)| *l == src_layer).map(|(_, s)| s))
                .collect();
            if suffixes.is_empty() {
                return Err(Error::tensor(
                    format!("model.layers.{src_layer}.*"),
                    format!("no tensors for this layer in model '{}'", models[r.model].spec),
                ));
            }
            for suffix in suffixes {
                let srcs = slice
                    .sources
                    .iter()
                    .map(|s| (s.model, format!("model.layers.{}.{suffix}", s.start + j), &s.params))
                    .collect();
                tensors.push(resolve(
                    &format!("model.layers.{out_layer}.{suffix}"),
                    srcs,
                    &slice.params,
                    t,
                )?);
            }
            out_layer += 1;
        }
    }
    for name in post {
        tensors.push(resolve(name, whole(last, name), &empty, 0.0)?);
    }

    let tokenizer_model = match config.tokenizer_source.as_deref() {
        None | Some("base") => {
            if config.tokenizer_source.is_some() && base.is_none() {
                return Err(Error::config(
                    "tokenizer_source",
                    "'base' given but the config has no base_model",
                ));
            }
            base.unwrap_or(reference)
        }
        Some("union") => union_tokenizer(&models, base.unwrap_or(reference))?,
        Some(other) => {
            let spec = other.strip_prefix("model:").unwrap_or(other);
            idx_of(spec).ok_or_else(|| {
                Error::config(
                    "tokenizer_source",
                    format!("'{other}' is not base, union, or one of the merged models"),
                )
            })?
        }
    };
    let out_dtype = out_override
        .or(cfg_out)
        .or(merge_dtype)
        .or_else(|| tensors.first().map(|t| t.out_dtype))
        .unwrap_or(Dtype::BF16);
    Ok(Plan {
        method,
        models,
        base,
        tensors,
        num_layers: out_layer,
        out_dtype,
        reference,
        tokenizer_model,
        config,
    })
}

fn shape_error(
    tensor: &str,
    config: &MergeConfig,
    a: &InputModel,
    sa: &[usize],
    b: &InputModel,
    sb: &[usize],
) -> Error {
    if has_vocab_dim(tensor) && sa.len() == 2 && sb.len() == 2 && sa[1] == sb[1] {
        let asked = match config.tokenizer_source.as_deref() {
            Some("union") => "tokenizer_source: union is set, but building a union vocabulary is not implemented",
            _ => "this needs tokenizer_source: union (not implemented; the config does not ask for it either)",
        };
        return Error::tensor(
            tensor,
            format!(
                "vocabulary sizes differ: model '{}' has {} rows, model '{}' has {}; {asked}",
                a.spec, sa[0], b.spec, sb[0]
            ),
        );
    }
    Error::tensor(
        tensor,
        format!("shape {sa:?} in model '{}' but {sb:?} in model '{}'", a.spec, b.spec),
    )
}

/// A union vocabulary is only trivial when every model has the same tokenizer; building a real
/// union (and re-indexing embeddings) is not implemented.
fn union_tokenizer(models: &[InputModel], fallback: usize) -> Result<usize> {
    let read = |m: &InputModel| std::fs::read(m.path.join("tokenizer.json")).ok();
    let first = read(&models[fallback]);
    if models.iter().all(|m| read(m) == first) {
        return Ok(fallback);
    }
    Err(Error::config(
        "tokenizer_source",
        "union: the models' tokenizers differ and building a union vocabulary is not implemented; \
         use tokenizer_source: base or a model whose tokenizer all models share",
    ))
}

impl Plan {
    /// Human-readable plan for `--dry-run`.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "merge_method: {}", self.method.name());
        for (i, m) in self.models.iter().enumerate() {
            let role = if Some(i) == self.base { " (base)" } else { "" };
            let layers = m.num_layers().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
            let _ = writeln!(
                s,
                "model {i}: {}{role} -> {} ({} tensors, {layers} layers)",
                m.spec,
                m.path.display(),
                m.tensors.len()
            );
        }
        let _ = writeln!(
            s,
            "output: {} tensors, {} layers, dtype {}",
            self.tensors.len(),
            self.num_layers,
            self.out_dtype.torch_name()
        );
        let _ = writeln!(s, "tokenizer from: {}", self.models[self.tokenizer_model].spec);
        for t in &self.tensors {
            let srcs: Vec<String> = t
                .sources
                .iter()
                .map(|src| {
                    let p: Vec<String> = src.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    let p = if p.is_empty() {
                        String::new()
                    } else {
                        format!(" [{}]", p.join(" "))
                    };
                    format!("{}:{}{p}", self.models[src.model].spec, src.tensor)
                })
                .collect();
            let g: Vec<String> = t.globals.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(
                s,
                "{} {:?} {}->{} {{{}}} <- {}",
                t.name,
                t.shape,
                t.merge_dtype.torch_name(),
                t.out_dtype.torch_name(),
                g.join(" "),
                srcs.join(", ")
            );
        }
        s
    }

    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.out_bytes()).sum()
    }
}
