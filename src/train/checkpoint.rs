//! Checkpoints: trainable parameters, optimizer moments and loop state, written into a
//! temporary folder and renamed into place so a crash never leaves a half checkpoint.
use super::optim::{AdamW, Param};
use crate::error::{Error, Result};
use crate::source::safetensors_writer::write_tensors;
use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};

pub const DIR: &str = "checkpoints";
const PARAMS: &str = "params.safetensors";
const OPTIM: &str = "optimizer.safetensors";
const STATE: &str = "state.json";
/// Checkpoints kept on disk (the newest ones).
const KEEP: usize = 2;

/// Loop state besides the tensors. Data order and dropout masks are functions of
/// (seed, step), so `step` is also the data position and RNG state.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct State {
    pub step: usize,
    pub seed: u64,
    pub max_steps: usize,
    /// Training sequences consumed so far (step x grad_accum x batch_size).
    pub examples_seen: usize,
    pub n_params: usize,
}

fn step_dir(out: &Path, step: usize) -> PathBuf {
    out.join(DIR).join(format!("step-{step:07}"))
}

fn cpu(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_device(&Device::Cpu)?)
}

pub fn save(out: &Path, state: &State, params: &[Param], opt: &AdamW) -> Result<PathBuf> {
    let root = out.join(DIR);
    std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    let fin = step_dir(out, state.step);
    let tmp = root.join(format!(".tmp-step-{}-{}", state.step, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let res = (|| -> Result<()> {
        let p: Vec<(String, Tensor)> = params
            .iter()
            .map(|p| Ok((p.name.clone(), cpu(p.var.as_tensor())?)))
            .collect::<Result<_>>()?;
        write_tensors(&tmp.join(PARAMS), &p)?;
        let o: Vec<(String, Tensor)> = opt
            .state_tensors()
            .into_iter()
            .map(|(n, t)| Ok((n, cpu(&t)?)))
            .collect::<Result<_>>()?;
        if !o.is_empty() {
            write_tensors(&tmp.join(OPTIM), &o)?;
        }
        let json = serde_json::to_vec_pretty(state).map_err(|e| Error::msg(e.to_string()))?;
        crate::fsutil::write_bytes_atomic(&tmp.join(STATE), &json)?;
        let _ = std::fs::remove_dir_all(&fin);
        std::fs::rename(&tmp, &fin).map_err(|e| Error::io(&fin, e))
    })();
    if res.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    res?;
    prune(out)?;
    Ok(fin)
}

/// Complete checkpoints (those with a state file), oldest first.
pub fn list(out: &Path) -> Vec<(usize, PathBuf)> {
    let mut v: Vec<(usize, PathBuf)> = std::fs::read_dir(out.join(DIR))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            e.path().join(STATE).exists().then(|| (step, e.path()))
        })
        .collect();
    v.sort();
    v
}

fn prune(out: &Path) -> Result<()> {
    let all = list(out);
    for (_, p) in all.iter().take(all.len().saturating_sub(KEEP)) {
        std::fs::remove_dir_all(p).map_err(|e| Error::io(p, e))?;
    }
    Ok(())
}

/// Restore the newest checkpoint under `out` into `params` and `opt`; None when there is none.
pub fn restore_latest(out: &Path, params: &[Param], opt: &mut AdamW) -> Result<Option<State>> {
    let Some((_, dir)) = list(out).pop() else {
        return Ok(None);
    };
    let sp = dir.join(STATE);
    let state: State =
        serde_json::from_str(&crate::fsutil::read_to_string(&sp)?).map_err(|e| Error::format(&sp, e.to_string()))?;
    let pp = dir.join(PARAMS);
    let device = params.first().map(|p| p.var.device().clone()).unwrap_or(Device::Cpu);
    let mut saved = candle_core::safetensors::load(&pp, &device).map_err(|e| Error::format(&pp, e.to_string()))?;
    if saved.len() != params.len() {
        return Err(Error::format(
            &pp,
            format!(
                "{} tensors, the run trains {} (different --lora or targets?)",
                saved.len(),
                params.len()
            ),
        ));
    }
    for p in params {
        let t = saved
            .remove(&p.name)
            .ok_or_else(|| Error::format(&pp, format!("no tensor for '{}'", p.name)))?;
        if t.dims() != p.var.dims() {
            return Err(Error::format(
                &pp,
                format!("'{}' has shape {:?}, expected {:?}", p.name, t.dims(), p.var.dims()),
            ));
        }
        p.var.set(&t.to_dtype(p.var.dtype())?)?;
    }
    let op = dir.join(OPTIM);
    let moments = if op.exists() {
        candle_core::safetensors::load(&op, &device).map_err(|e| Error::format(&op, e.to_string()))?
    } else {
        Default::default()
    };
    opt.load_state(state.step, moments, params)?;
    Ok(Some(state))
}
