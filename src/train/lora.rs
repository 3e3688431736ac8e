//! LoRA adapters: attach to the decoder's projections, save and load in PEFT's format
//! (`adapter_config.json` + `adapter_model.safetensors`), and merge into the base weights.
use crate::error::{Error, Result};
use crate::model::linear::{LinearKind, LoraAdapter, LoraDropout};
use crate::model::Model;
use crate::source::convert::write_json;
use crate::source::safetensors_writer::write_tensors;
use candle_core::{DType, Tensor, Var};
use rand::{Rng, SeedableRng};
use std::path::Path;

use super::optim::Param;

/// The seven projections of a Mistral/Llama block (the paper adapts all of them).
pub const ALL_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];
pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const PREFIX: &str = "base_model.model.";

#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: 16,
            alpha: 16.0,
            dropout: 0.05,
            targets: ALL_TARGETS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }

    /// Reject what cannot train: rank 0, dropout outside [0, 1), unknown or no targets.
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(Error::invalid("--lora-r", "must be >= 1"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::invalid(
                "--lora-dropout",
                format!("{} is not in [0, 1)", self.dropout),
            ));
        }
        if self.targets.is_empty() {
            return Err(Error::invalid("--lora-targets", "no target modules given"));
        }
        for t in &self.targets {
            if !ALL_TARGETS.contains(&t.as_str()) {
                return Err(Error::invalid(
                    "--lora-targets",
                    format!(
                        "'{t}' is not a projection of this model (known: {})",
                        ALL_TARGETS.join(",")
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn to_peft_json(&self, base_model: &str) -> serde_json::Value {
        // PEFT declares lora_alpha an int; keep whole values integral.
        let alpha: serde_json::Value = if self.alpha.fract() == 0.0 && self.alpha.abs() < 1e15 {
            (self.alpha as i64).into()
        } else {
            self.alpha.into()
        };
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.r,
            "lora_alpha": alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.targets,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "use_rslora": false,
            "use_dora": false,
            "modules_to_save": null,
        })
    }

    pub fn from_peft_json(v: &serde_json::Value, path: &Path) -> Result<Self> {
        let bad = |m: &str| Error::format(path, m.to_string());
        if let Some(t) = v.get("peft_type").and_then(|t| t.as_str()) {
            if t != "LORA" {
                return Err(bad(&format!("peft_type {t} is not supported (only LORA)")));
            }
        }
        for (k, ok) in [("use_rslora", false), ("use_dora", false), ("fan_in_fan_out", false)] {
            if v.get(k).and_then(|x| x.as_bool()).is_some_and(|x| x != ok) {
                return Err(bad(&format!("{k}=true is not supported")));
            }
        }
        let r = v
            .get("r")
            .and_then(|x| x.as_u64())
            .ok_or_else(|| bad("missing integer 'r'"))? as usize;
        let alpha = v
            .get("lora_alpha")
            .and_then(|x| x.as_f64())
            .ok_or_else(|| bad("missing 'lora_alpha'"))?;
        let dropout = v.get("lora_dropout").and_then(|x| x.as_f64()).unwrap_or(0.0);
        let targets: Vec<String> = match v.get("target_modules") {
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
            Some(serde_json::Value::String(s)) if s == "all-linear" => {
                ALL_TARGETS.iter().map(|s| s.to_string()).collect()
            }
            _ => return Err(bad("missing 'target_modules' list")),
        };
        let cfg = LoraConfig {
            r,
            alpha,
            dropout,
            targets,
        };
        cfg.validate().map_err(|e| bad(&e.to_string()))?;
        Ok(cfg)
    }
}

/// The dtype adapters train in: f32, or f64 for f64 models (gradient checks).
fn adapter_dtype(model: &Model) -> DType {
    if model.dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

fn is_target(module: &str, cfg: &LoraConfig) -> bool {
    let leaf = module.rsplit('.').next().unwrap_or(module);
    cfg.targets.iter().any(|t| t == leaf)
}

/// Attach fresh adapters as PEFT initializes them: A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming
/// uniform with a=sqrt(5)), B = 0, so the model is unchanged until the first update. Returns
/// the dropout switch shared by all adapters.
pub fn attach(model: &mut Model, cfg: &LoraConfig, seed: u64) -> Result<LoraDropout> {
    cfg.validate()?;
    let dt = adapter_dtype(model);
    let device = model.device.clone();
    let drop = LoraDropout::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for (_, lin) in model.projections_mut() {
        if lin.lora.is_some() {
            return Err(Error::msg("the model already has an adapter attached"));
        }
    }
    for (name, lin) in model.projections_mut() {
        if !is_target(&name, cfg) {
            continue;
        }
        let (out, inp) = lin.dims();
        let bound = 1.0 / (inp as f64).sqrt();
        let a: Vec<f64> = (0..cfg.r * inp).map(|_| rng.gen_range(-bound..bound)).collect();
        let a = Tensor::from_vec(a, (cfg.r, inp), &device)?.to_dtype(dt)?;
        let b = Tensor::zeros((out, cfg.r), dt, &device)?;
        lin.lora = Some(LoraAdapter {
            a: Var::from_tensor(&a)?,
            b: Var::from_tensor(&b)?,
            scale: cfg.scale(),
            dropout: cfg.dropout,
            dropout_state: drop.clone(),
        });
    }
    Ok(drop)
}

/// The adapters' variables under PEFT names, in model order.
pub fn params(model: &mut Model) -> Vec<Param> {
    let mut out = Vec::new();
    for (name, lin) in model.projections_mut() {
        if let Some(l) = &lin.lora {
            for (which, v) in [("lora_A", &l.a), ("lora_B", &l.b)] {
                out.push(Param {
                    name: format!("{PREFIX}{name}.{which}.weight"),
                    var: v.clone(),
                    decay: true,
                });
            }
        }
    }
    out
}

/// Write `adapter_config.json` and `adapter_model.safetensors` (f32) into `dir`.
pub fn save(model: &mut Model, cfg: &LoraConfig, dir: &Path, base_model: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tensors: Vec<(String, Tensor)> = params(model)
        .into_iter()
        .map(|p| {
            Ok((
                p.name,
                p.var
                    .as_tensor()
                    .to_dtype(DType::F32)?
                    .to_device(&candle_core::Device::Cpu)?,
            ))
        })
        .collect::<Result<_>>()?;
    if tensors.is_empty() {
        return Err(Error::msg("the model has no adapter to save"));
    }
    write_tensors(&dir.join(WEIGHTS_FILE), &tensors)?;
    write_json(&dir.join(CONFIG_FILE), &cfg.to_peft_json(base_model))
}

pub fn read_config(dir: &Path) -> Result<LoraConfig> {
    let p = dir.join(CONFIG_FILE);
    let text = crate::fsutil::read_to_string(&p)?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::format(&p, e.to_string()))?;
    LoraConfig::from_peft_json(&v, &p)
}

/// Load a PEFT adapter from `dir` onto `model` (inference: no dropout). Every tensor in the
/// file must land on a projection of the model, with the right shapes.
pub fn apply_adapter(model: &mut Model, dir: &Path) -> Result<LoraConfig> {
    let cfg = read_config(dir)?;
    let wpath = dir.join(WEIGHTS_FILE);
    let device = model.device.clone();
    let mut tensors =
        candle_core::safetensors::load(&wpath, &device).map_err(|e| Error::format(&wpath, e.to_string()))?;
    let dt = adapter_dtype(model);
    let drop = LoraDropout::default();
    for (name, lin) in model.projections_mut() {
        let key = |w: &str| format!("{PREFIX}{name}.{w}.weight");
        let (a, b) = (tensors.remove(&key("lora_A")), tensors.remove(&key("lora_B")));
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) => (a, b),
            (None, None) => continue,
            _ => {
                return Err(Error::format(
                    &wpath,
                    format!("{name}: lora_A and lora_B must come together"),
                ))
            }
        };
        let (out, inp) = lin.dims();
        if a.dims() != [cfg.r, inp] || b.dims() != [out, cfg.r] {
            return Err(Error::format(
                &wpath,
                format!(
                    "{name}: lora_A {:?} / lora_B {:?} do not fit a [{out}, {inp}] projection with r={}",
                    a.dims(),
                    b.dims(),
                    cfg.r
                ),
            ));
        }
        if lin.lora.is_some() {
            return Err(Error::msg(format!("{name} already has an adapter")));
        }
        lin.lora = Some(LoraAdapter {
            a: Var::from_tensor(&a.to_dtype(dt)?)?,
            b: Var::from_tensor(&b.to_dtype(dt)?)?,
            scale: cfg.scale(),
            dropout: cfg.dropout,
            dropout_state: drop.clone(),
        });
    }
    if let Some(k) = tensors.keys().next() {
        return Err(Error::format(
            &wpath,
            format!("tensor '{k}' matches no projection of this model"),
        ));
    }
    Ok(cfg)
}

/// Fold every adapter into its base weight (`W + scale * B @ A`) and drop it. Quantized bases
/// become dense in the model's dtype.
pub fn merge(model: &mut Model) -> Result<()> {
    let dtype = model.dtype;
    for (_, lin) in model.projections_mut() {
        if let Some(l) = lin.lora.take() {
            let w = lin.base_dense(DType::F32)?;
            let merged = (w + l.delta()?.to_dtype(DType::F32)?)?.to_dtype(dtype)?;
            lin.kind = LinearKind::Dense(merged);
        }
    }
    Ok(())
}

/// Load the adapter in `dir` (if any) onto `model`: the hook every model-loading command uses.
pub fn apply_optional(model: &mut Model, dir: Option<&Path>) -> Result<()> {
    if let Some(d) = dir {
        apply_adapter(model, d)?;
    }
    Ok(())
}
