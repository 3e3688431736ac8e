//! Where models come from: Hugging Face folders, hub ids (through the hub cache) and GGUF files.
pub mod awq_store;
pub mod convert;
pub mod gguf;
pub mod gguf_store;
pub mod gguf_tokenizer;
pub mod gguf_vocab;
pub mod hub;
pub mod random;
pub mod safetensors_store;
pub mod safetensors_writer;
pub mod spm_model;
pub mod tokenizer;

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::mistral::{Model, WeightSource};
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};
use tokenizer::Tokenizer;

/// The kind of checkpoint a model spec resolved to.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    HfFolder,
    Gguf,
}

/// Everything read from a model spec before the weights are turned into a `Model`.
pub struct ModelSource {
    pub spec: String,
    pub path: PathBuf,
    pub format: Format,
    pub config: ModelConfig,
    pub weights: Box<dyn WeightSource + Send + Sync>,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
    /// EOS ids from generation_config.json, the config and the tokenizer, merged.
    pub eos_ids: Vec<u32>,
}

/// A model ready to run.
pub struct LoadedModel {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
    pub eos_ids: Vec<u32>,
    pub spec: String,
    pub format: Format,
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub dtype: Option<DType>,
    pub device: Device,
    /// Show a progress bar while loading.
    pub progress: bool,
    /// Quantize the projection weights as they load (`--quant`).
    pub quant: Option<crate::quantize::LoadQuant>,
    /// Quantize `lm_head.weight` as it loads (`--quant-head`).
    pub quant_head: Option<crate::quantize::LoadQuant>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: None,
            device: Device::Cpu,
            progress: false,
            quant: None,
            quant_head: None,
        }
    }
}

pub fn parse_dtype(s: &str) -> Result<Option<DType>> {
    Ok(match s {
        "auto" => None,
        "f32" | "float32" => Some(DType::F32),
        "bf16" | "bfloat16" => Some(DType::BF16),
        "f16" | "float16" => Some(DType::F16),
        other => {
            return Err(Error::invalid(
                "--dtype",
                format!("'{other}' (expected f32, bf16, f16 or auto)"),
            ))
        }
    })
}

pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).map_err(|e| Error::invalid("--device", format!("cuda is not available: {e}"))),
        other => Err(Error::invalid("--device", format!("'{other}' (expected cpu or cuda)"))),
    }
}

fn chat_template_from_config(v: &serde_json::Value) -> Option<String> {
    match v.get("chat_template")? {
        serde_json::Value::String(s) => Some(s.clone()),
        // A list of named templates: take "default".
        serde_json::Value::Array(a) => a
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .or_else(|| a.first())
            .and_then(|t| t.get("template"))
            .and_then(|t| t.as_str())
            .map(String::from),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = crate::fsutil::read_to_string(path)?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::format(path, format!("invalid JSON: {e}")))
}

fn eos_from_generation_config(dir: &Path) -> Result<Vec<u32>> {
    let Some(v) = read_json(&dir.join("generation_config.json"))? else {
        return Ok(vec![]);
    };
    Ok(match v.get("eos_token_id") {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
        _ => vec![],
    })
}

impl ModelSource {
    /// Resolve `spec` (folder, `.gguf` file or hub id) and read config, tokenizer and template.
    pub fn open(spec: &str) -> Result<Self> {
        let path = PathBuf::from(spec);
        if path.is_dir() {
            Self::open_hf_dir(spec, &path)
        } else if path.is_file() {
            Self::open_gguf(spec, &path)
        } else if hub::looks_like_hub_id(spec.split('@').next().unwrap_or(spec)) {
            let dir = hub::resolve(spec)?;
            Self::open_hf_dir(spec, &dir)
        } else {
            Err(Error::io(
                &path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such model file or folder"),
            ))
        }
    }

    fn open_hf_dir(spec: &str, dir: &Path) -> Result<Self> {
        let config = ModelConfig::from_json_file(&dir.join("config.json"))?;
        let weights = safetensors_store::SafetensorsStore::open_dir(dir)?;
        let raw_config = read_json(&dir.join("config.json"))?.unwrap_or_default();
        let weights: Box<dyn WeightSource + Send + Sync> = if awq_store::is_awq(&raw_config) {
            Box::new(
                awq_store::AwqStore::new(weights, &raw_config)
                    .map_err(|e| Error::format(dir.join("config.json"), e.to_string()))?,
            )
        } else {
            Box::new(weights)
        };
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.exists() {
            return Err(Error::format(dir, "no tokenizer.json in the model folder"));
        }
        let tokenizer = Tokenizer::from_file(&tok_path)?;
        let chat_template = read_json(&dir.join("tokenizer_config.json"))?
            .as_ref()
            .and_then(chat_template_from_config);
        let mut eos_ids = eos_from_generation_config(dir)?;
        eos_ids.extend(config.eos_token_ids.iter().copied());
        eos_ids.extend(tokenizer.eos_id());
        eos_ids.sort();
        eos_ids.dedup();
        Ok(ModelSource {
            spec: spec.to_string(),
            path: dir.to_path_buf(),
            format: Format::HfFolder,
            config,
            weights,
            tokenizer,
            chat_template,
            eos_ids,
        })
    }

    fn open_gguf(spec: &str, path: &Path) -> Result<Self> {
        let file = gguf::GgufFile::open(path)?;
        let config = ModelConfig::from_gguf(&file)?;
        let beside = path.with_file_name("tokenizer.json");
        let tokenizer = if beside.exists() {
            Tokenizer::from_file(&beside)?
        } else {
            tokenizer_from_gguf(&file)?
        };
        let chat_template = file.get_str("tokenizer.chat_template").map(String::from);
        let mut eos_ids = config.eos_token_ids.clone();
        eos_ids.extend(tokenizer.eos_id());
        eos_ids.sort();
        eos_ids.dedup();
        let store = gguf_store::GgufStore::new(file, &config);
        Ok(ModelSource {
            spec: spec.to_string(),
            path: path.to_path_buf(),
            format: Format::Gguf,
            config,
            weights: Box::new(store),
            tokenizer,
            chat_template,
            eos_ids,
        })
    }

    /// The compute dtype `auto` picks: f32 for small models, bf16 from 3B parameters up.
    pub fn default_dtype(&self) -> DType {
        if self.config.n_params() < 3_000_000_000 {
            DType::F32
        } else {
            DType::BF16
        }
    }

    pub fn load(mut self, opts: &LoadOptions) -> Result<LoadedModel> {
        if opts.quant_head.is_some() && !self.weights.contains(crate::quantize::at_load::HEAD) {
            return Err(Error::invalid(
                "--quant-head",
                "this model has no lm_head.weight (its head is tied to the embedding)",
            ));
        }
        if opts.quant.is_some() || opts.quant_head.is_some() {
            self.weights = Box::new(crate::quantize::at_load::QuantizingStore {
                inner: self.weights,
                quant: opts.quant,
                head: opts.quant_head,
            });
        }
        let dtype = opts.dtype.unwrap_or_else(|| self.default_dtype());
        let n = 3 + 9 * self.config.num_hidden_layers as u64;
        let bar = if opts.progress {
            let b = indicatif::ProgressBar::new(n);
            b.set_style(
                indicatif::ProgressStyle::with_template("loading {bar:30} {pos}/{len} tensors {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        } else {
            indicatif::ProgressBar::hidden()
        };
        let model = Model::new(&self.config, self.weights.as_ref(), dtype, &opts.device, |name| {
            bar.inc(1);
            bar.set_message(name.to_string());
        })?;
        bar.finish_and_clear();
        Ok(LoadedModel {
            model,
            tokenizer: self.tokenizer,
            chat_template: self.chat_template,
            eos_ids: self.eos_ids,
            spec: self.spec,
            format: self.format,
        })
    }
}

/// Build the tokenizer from `tokenizer.ggml.*` metadata.
pub use gguf_tokenizer::tokenizer_from_gguf;

/// Open and load in one step.
pub fn load(spec: &str, opts: &LoadOptions) -> Result<LoadedModel> {
    ModelSource::open(spec)?.load(opts)
}
