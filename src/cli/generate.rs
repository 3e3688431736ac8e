//! `biomistral generate`: one completion, streamed to the terminal or printed as JSON.
use super::common::ModelArgs;
use anyhow::Context;
use biomistral::generate::{encode_chat, generate, GenerateRequest, Message, SamplingParams, ADVISORY};
use clap::Args;
use std::io::Write;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text.
    #[arg(long, short = 'p')]
    pub prompt: Option<String>,
    /// Send the prompt as one user message through the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// A JSON file holding a conversation: a list of {role, content}.
    #[arg(long)]
    pub messages: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Stop when this string appears (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Print {"prompt_ids","new_ids","text","stopped_at_eos"} instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Do not print the research-use advisory.
    #[arg(long)]
    pub no_advisory: bool,
}

#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Maximum number of new tokens.
    #[arg(long, short = 'n', default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub temperature: f32,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub repetition_penalty: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    pub fn params(&self) -> anyhow::Result<SamplingParams> {
        let p = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
        };
        p.validate()
            .map_err(|e| anyhow::anyhow!("{}", e.to_string().replacen("invalid ", "invalid --", 1)))?;
        Ok(p)
    }
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let sampling = args.sampling.params()?;
    let messages: Option<Vec<Message>> = match (&args.messages, &args.prompt, args.chat) {
        (Some(path), _, _) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let msgs: Vec<Message> = serde_json::from_str(&text)
                .with_context(|| format!("{}: expected a JSON list of {{\"role\", \"content\"}}", path.display()))?;
            if msgs.is_empty() {
                anyhow::bail!("{}: the conversation is empty", path.display());
            }
            Some(msgs)
        }
        (None, Some(p), true) => Some(vec![Message::new("user", p)]),
        (None, Some(_), false) => None,
        (None, None, _) => anyhow::bail!("give a prompt with --prompt (or a conversation with --messages)"),
    };
    if let (Some(p), None) = (&args.prompt, &messages) {
        if p.is_empty() {
            anyhow::bail!("invalid --prompt: it is empty");
        }
    }
    let m = args.model.load()?;
    let prompt_ids = match &messages {
        Some(msgs) => encode_chat(&m, msgs)?,
        None => m.tokenizer.encode(args.prompt.as_deref().unwrap_or_default(), true)?,
    };
    if messages.is_some() && !args.no_advisory && !args.json {
        eprintln!("{ADVISORY}");
    }
    let req = GenerateRequest {
        prompt_ids,
        max_new_tokens: args.sampling.max_new_tokens,
        sampling,
        stop_strings: args.stop.clone(),
        eos_ids: m.eos_ids.clone(),
    };
    let stdout = std::io::stdout();
    let out = if args.json {
        generate(&m, &req, None, |_| {})?
    } else {
        let mut lock = stdout.lock();
        let o = generate(&m, &req, None, |piece| {
            let _ = lock.write_all(piece.as_bytes());
            let _ = lock.flush();
        })?;
        let _ = writeln!(lock);
        o
    };
    if args.json {
        let v = serde_json::json!({
            "prompt_ids": out.prompt_ids,
            "new_ids": out.new_ids,
            "text": out.text,
            "stopped_at_eos": out.stopped_at_eos,
            "stop_reason": out.stop_reason,
        });
        println!("{}", serde_json::to_string(&v)?);
    }
    Ok(())
}
