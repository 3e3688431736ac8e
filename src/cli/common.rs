//! Options shared by every command that loads a model.
use anyhow::Context;
use biomistral::quantize::LoadQuant;
use biomistral::source::{self, LoadOptions, LoadedModel, ModelSource};
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model: a Hugging Face folder, a .gguf file or a hub id (e.g. BioMistral/BioMistral-7B).
    #[arg(long, short = 'm')]
    pub model: String,
    /// Compute dtype: f32, bf16, f16 or auto (f32 below 3B parameters, else bf16).
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Device: cpu or cuda (needs the `cuda` cargo feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Threads for CPU kernels (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// A PEFT LoRA adapter folder to apply on top of the model.
    #[arg(long)]
    pub adapter: Option<std::path::PathBuf>,
    /// Quantize the decoder's projection weights while loading a float checkpoint:
    /// int8 (LLM.int8), nf4, fp4 (bitsandbytes, block 64), or a GGUF type (q8_0, q4_0, q4_1,
    /// q5_0, q5_1, q4_k, q5_k, q6_k).
    #[arg(long)]
    pub quant: Option<String>,
    /// Quantize the LM head (`lm_head.weight`, untied models) while loading, with any --quant
    /// type: e.g. q8_0 for an AutoAWQ checkpoint, whose head is f16.
    #[arg(long)]
    pub quant_head: Option<String>,
}

impl ModelArgs {
    pub fn open(&self) -> anyhow::Result<ModelSource> {
        set_threads(self.threads)?;
        ModelSource::open(&self.model).with_context(|| format!("opening model '{}'", self.model))
    }

    pub fn load(&self) -> anyhow::Result<LoadedModel> {
        self.load_source(self.open()?)
    }

    /// Load an already opened source with these options (dtype, device, quant, adapter).
    pub fn load_source(&self, src: ModelSource) -> anyhow::Result<LoadedModel> {
        let opts = LoadOptions {
            dtype: source::parse_dtype(&self.dtype)?,
            device: source::parse_device(&self.device)?,
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            quant: self.quant.as_deref().map(LoadQuant::parse).transpose()?,
            quant_head: self
                .quant_head
                .as_deref()
                .map(|s| LoadQuant::parse_flag(s, "--quant-head"))
                .transpose()?,
        };
        let mut m = src
            .load(&opts)
            .with_context(|| format!("loading model '{}'", self.model))?;
        if let Some(dir) = &self.adapter {
            biomistral::train::apply_adapter(&mut m.model, dir)
                .with_context(|| format!("applying adapter '{}'", dir.display()))?;
        }
        Ok(m)
    }
}

/// Run `f` on a worker of the global thread pool (sized by `threads`). Parallel kernels called
/// from a thread outside the pool hand each loop to the workers and sleep until it ends: a
/// context switch per matmul, which made small-model decoding 2.5x slower (fixture tg at 1
/// thread: 60 -> 162 tok/s once inside the pool).
pub fn in_pool<T: Send>(threads: Option<usize>, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    set_threads(threads)?;
    let mut out = None;
    rayon::scope(|_| out = Some(f()));
    out.unwrap_or_else(|| Err(anyhow::anyhow!("the thread pool did not run the command")))
}

/// Size the global thread pool once, before any kernel runs.
pub fn set_threads(threads: Option<usize>) -> anyhow::Result<()> {
    if let Some(t) = threads {
        if t == 0 {
            anyhow::bail!("invalid --threads: 0 (must be >= 1)");
        }
        // candle's matmul reads RAYON_NUM_THREADS; the quantized kernels use rayon's global pool.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
        let _ = rayon::ThreadPoolBuilder::new().num_threads(t).build_global();
    }
    Ok(())
}

/// Peak resident memory of this process (Linux), in bytes.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}
