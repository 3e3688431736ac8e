//! Run outputs: `samples_<task>.jsonl` (append-only, resumable), `results.json` (close to
//! lm-eval-harness's layout, plus a typed `tasks` section we read back), `report.md` (the paper's table)
//! and SVG charts.
use super::metrics::{self, mean_std, TaskResult, ECE_BINS};
use super::scorer::Sample;
use super::tasks::TaskId;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::fmt::Write as _;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

pub fn samples_path(dir: &Path, task: &str) -> PathBuf {
    dir.join(format!("samples_{task}.jsonl"))
}

/// Read a samples file; a missing file is empty. A final line without its newline is the trace of an
/// interrupted write: it is ignored here and cut off by [`SampleWriter::open`].
pub fn read_samples(path: &Path) -> Result<Vec<Sample>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::format(path, format!("line {}: {e}", i + 1))))
        .collect()
}

/// Appends samples, one flushed line each, so an interrupted run loses at most the line being written.
pub struct SampleWriter {
    path: PathBuf,
    file: std::fs::File,
}

impl SampleWriter {
    /// Open for appending, first cutting any incomplete last line.
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if keep < bytes.len() {
            tracing::warn!(
                "{}: dropping an incomplete last line left by an interrupted run",
                path.display()
            );
            file.set_len(keep as u64).map_err(|e| Error::io(path, e))?;
            file.seek(std::io::SeekFrom::End(0)).map_err(|e| Error::io(path, e))?;
        }
        Ok(SampleWriter {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn append(&mut self, samples: &[Sample]) -> Result<()> {
        let mut buf = String::new();
        for s in samples {
            buf.push_str(&serde_json::to_string(s).map_err(|e| Error::msg(e.to_string()))?);
            buf.push('\n');
        }
        self.file
            .write_all(buf.as_bytes())
            .map_err(|e| Error::io(&self.path, e))?;
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }
}

/// How a run was made; stored as `config` in results.json.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    pub model: String,
    pub protocol: String,
    pub shots: usize,
    pub shot_sets: usize,
    pub limit: Option<usize>,
    pub lang: String,
    pub data_dir: String,
    pub shots_from: Option<String>,
    pub seed: u64,
    pub batch_size: usize,
    /// Free-form backend settings (dtype, quant, adapter, endpoint, ...).
    #[serde(default)]
    pub backend: Map<String, Value>,
}

/// A finished run as read back from its folder.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResults {
    pub dir: PathBuf,
    pub meta: RunMeta,
    pub tasks: Vec<TaskResult>,
}

impl RunResults {
    pub fn task(&self, name: &str) -> Option<&TaskResult> {
        self.tasks.iter().find(|t| t.task == name)
    }
}

/// Average over tasks: per shot set the mean across tasks, then mean ± std over shot sets.
pub fn average(tasks: &[TaskResult]) -> (f64, f64) {
    let sets = tasks.iter().map(|t| t.acc_per_shot_set.len()).min().unwrap_or(0);
    let per_set: Vec<f64> = (0..sets)
        .map(|k| tasks.iter().map(|t| t.acc_per_shot_set[k]).sum::<f64>() / tasks.len() as f64)
        .collect();
    mean_std(&per_set)
}

pub fn write_results_json(dir: &Path, meta: &RunMeta, tasks: &[TaskResult], bad_rows: &[String]) -> Result<()> {
    let mut results = Map::new();
    let mut n_shot = Map::new();
    let mut n_samples = Map::new();
    for t in tasks {
        let mut r = Map::new();
        r.insert("alias".into(), json!(t.task));
        for (k, a) in t.acc_per_shot_set.iter().enumerate() {
            r.insert(format!("acc,shot_set_{k}"), json!(a));
        }
        r.insert("acc,mean".into(), json!(t.acc_mean));
        r.insert("acc_std,population".into(), json!(t.acc_std));
        if let Some(norm) = &t.acc_norm_per_shot_set {
            let (m, s) = mean_std(norm);
            r.insert("acc_norm,mean".into(), json!(m));
            r.insert("acc_norm_std,population".into(), json!(s));
        }
        r.insert("ece,mean".into(), json!(t.ece_mean));
        results.insert(t.task.clone(), Value::Object(r));
        n_shot.insert(t.task.clone(), json!(meta.shots));
        n_samples.insert(t.task.clone(), json!({"original": t.n + t.bad_rows, "effective": t.n}));
    }
    let (avg, avg_std) = average(tasks);
    let date = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let doc = json!({
        "results": results,
        "average": {"acc,mean": avg, "acc_std,population": avg_std, "n_tasks": tasks.len()},
        "tasks": tasks,
        "n-shot": n_shot,
        "n-samples": n_samples,
        "config": meta,
        "bad_rows": bad_rows,
        "model_name": meta.model,
        "date": date,
        "biomistral_version": crate::version(),
    });
    let text = serde_json::to_string_pretty(&doc).map_err(|e| Error::msg(e.to_string()))?;
    crate::fsutil::write_bytes_atomic(&dir.join("results.json"), text.as_bytes())
}

pub fn read_results(dir: &Path) -> Result<RunResults> {
    let path = dir.join("results.json");
    let v: Value = serde_json::from_str(&crate::fsutil::read_to_string(&path)?)
        .map_err(|e| Error::format(&path, format!("invalid JSON: {e}")))?;
    let field = |k: &str| {
        v.get(k)
            .cloned()
            .ok_or_else(|| Error::format(&path, format!("missing field '{k}'")))
    };
    let meta =
        serde_json::from_value(field("config")?).map_err(|e| Error::format(&path, format!("field 'config': {e}")))?;
    let tasks =
        serde_json::from_value(field("tasks")?).map_err(|e| Error::format(&path, format!("field 'tasks': {e}")))?;
    Ok(RunResults {
        dir: dir.to_path_buf(),
        meta,
        tasks,
    })
}

/// Task columns across runs: the paper's order first, then any other task names.
fn columns(runs: &[RunResults]) -> Vec<String> {
    let mut cols: Vec<String> = TaskId::ALL
        .iter()
        .map(|t| t.name().to_string())
        .filter(|n| runs.iter().any(|r| r.task(n).is_some()))
        .collect();
    for r in runs {
        for t in &r.tasks {
            if !cols.contains(&t.task) {
                cols.push(t.task.clone());
            }
        }
    }
    cols
}

fn header(name: &str) -> &str {
    TaskId::parse(name).map_or(name, |t| t.short())
}

/// `report.md`: one row per model, one column per task plus Avg., accuracy in % as mean ± std.
pub fn markdown(runs: &[RunResults]) -> String {
    let cols = columns(runs);
    let mut s = String::from("# Medical benchmark results\n\n");
    s.push_str("Accuracy in %, mean ± population std over shot sets; each run's settings are listed under Runs.\n\n");
    let table =
        |s: &mut String, title: &str, cell: &dyn Fn(&TaskResult) -> String, avg: &dyn Fn(&RunResults) -> String| {
            let _ = writeln!(s, "## {title}\n");
            let _ = writeln!(
                s,
                "| Model | {} | Avg. |",
                cols.iter().map(|c| header(c)).collect::<Vec<_>>().join(" | ")
            );
            let _ = writeln!(s, "|---|{}---:|", "---:|".repeat(cols.len()));
            for r in runs {
                let cells: Vec<String> = cols.iter().map(|c| r.task(c).map_or("–".into(), cell)).collect();
                let _ = writeln!(s, "| {} | {} | {} |", r.meta.model, cells.join(" | "), avg(r));
            }
            s.push('\n');
        };
    table(
        &mut s,
        "Accuracy",
        &|t| format!("{:.1} ± {:.1}", 100.0 * t.acc_mean, 100.0 * t.acc_std),
        &|r| {
            let (m, sd) = average(&r.tasks);
            format!("{:.1} ± {:.1}", 100.0 * m, 100.0 * sd)
        },
    );
    table(
        &mut s,
        &format!("Calibration (ECE, {ECE_BINS} equal-width bins, confidence = max normalised letter probability; lower is better)"),
        &|t| format!("{:.3}", t.ece_mean),
        &|r| format!("{:.3}", r.tasks.iter().map(|t| t.ece_mean).sum::<f64>() / r.tasks.len().max(1) as f64),
    );
    let bad: Vec<String> = runs
        .iter()
        .flat_map(|r| {
            r.tasks.iter().filter(|t| t.bad_rows > 0).map(move |t| {
                format!(
                    "- {}: {} — {} malformed row(s) left out",
                    r.meta.model, t.task, t.bad_rows
                )
            })
        })
        .collect();
    if !bad.is_empty() {
        let _ = writeln!(s, "## Left-out rows\n\n{}\n", bad.join("\n"));
    }
    s.push_str("## Runs\n\n");
    for r in runs {
        let m = &r.meta;
        let _ = writeln!(
            s,
            "- {}: protocol `{}`, {} shot(s) × {} set(s), language `{}`, limit {}, `{}`",
            m.model,
            m.protocol,
            m.shots,
            m.shot_sets,
            m.lang,
            m.limit.map_or("none".into(), |l| l.to_string()),
            r.dir.display()
        );
    }
    s.push_str("\nCharts: `accuracy.svg` (per-task accuracy), `reliability.svg` (reliability diagram per model).\n");
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

const COLORS: [&str; 8] = [
    "#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c",
];

/// Grouped bars: one group per task, one bar per model, with ±std whiskers.
pub fn accuracy_svg(runs: &[RunResults]) -> String {
    let cols = columns(runs);
    let (gw, h, top, left) = (40.0 + 14.0 * runs.len() as f64, 260.0, 30.0, 50.0);
    let width = left + gw * cols.len() as f64 + 20.0;
    let height = top + h + 110.0 + 18.0 * runs.len() as f64;
    let y = |acc: f64| top + h * (1.0 - acc);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        s,
        r#"<text x="{left}" y="18" font-size="13">Accuracy per task (%)</text>"#
    );
    for p in (0..=100).step_by(20) {
        let yy = y(p as f64 / 100.0);
        let _ = write!(
            s,
            r##"<line x1="{left}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{p}</text>"##,
            width - 20.0,
            left - 4.0,
            yy + 4.0
        );
    }
    let bw = (gw - 16.0) / runs.len().max(1) as f64;
    for (ci, c) in cols.iter().enumerate() {
        let gx = left + gw * ci as f64 + 8.0;
        for (ri, r) in runs.iter().enumerate() {
            let Some(t) = r.task(c) else { continue };
            let x = gx + bw * ri as f64;
            let _ = write!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {}: {:.1}</title></rect>"#,
                y(t.acc_mean),
                bw - 1.0,
                h * t.acc_mean,
                COLORS[ri % COLORS.len()],
                esc(&r.meta.model),
                esc(c),
                100.0 * t.acc_mean
            );
            let xm = x + bw / 2.0;
            let _ = write!(
                s,
                r#"<line x1="{xm:.1}" x2="{xm:.1}" y1="{:.1}" y2="{:.1}" stroke="black"/>"#,
                y(t.acc_mean + t.acc_std),
                y(t.acc_mean - t.acc_std)
            );
        }
        let lx = gx + (gw - 16.0) / 2.0;
        let _ = write!(
            s,
            r#"<text transform="translate({lx:.1},{:.1}) rotate(-40)" text-anchor="end">{}</text>"#,
            top + h + 12.0,
            esc(header(c))
        );
    }
    for (ri, r) in runs.iter().enumerate() {
        let ly = top + h + 95.0 + 18.0 * ri as f64;
        let _ = write!(
            s,
            r#"<rect x="{left}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{ly:.1}">{}</text>"#,
            ly - 10.0,
            COLORS[ri % COLORS.len()],
            left + 18.0,
            esc(&r.meta.model)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Reliability diagrams, one panel per model: accuracy per confidence bin against the diagonal.
pub fn reliability_svg(models: &[(String, Vec<metrics::Bin>, f64)]) -> String {
    let (pw, ph, pad) = (220.0, 220.0, 45.0);
    let width = (pw + pad * 1.5) * models.len().max(1) as f64 + pad;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{:.0}" font-family="sans-serif" font-size="11">"#,
        ph + 2.5 * pad
    );
    for (mi, (name, bins, ece)) in models.iter().enumerate() {
        let x0 = pad + (pw + pad * 1.5) * mi as f64;
        let y0 = pad;
        let _ = write!(
            s,
            r#"<text x="{x0:.1}" y="{:.1}" font-size="12">{} (ECE {ece:.3})</text>"#,
            y0 - 12.0,
            esc(name)
        );
        let _ = write!(
            s,
            r##"<rect x="{x0:.1}" y="{y0:.1}" width="{pw}" height="{ph}" fill="none" stroke="#999"/><line x1="{x0:.1}" y1="{:.1}" x2="{:.1}" y2="{y0:.1}" stroke="#999" stroke-dasharray="4 3"/>"##,
            y0 + ph,
            x0 + pw
        );
        let bw = pw / bins.len().max(1) as f64;
        for (b, bin) in bins.iter().enumerate() {
            if bin.count == 0 {
                continue;
            }
            let bh = ph * bin.accuracy;
            let _ = write!(
                s,
                r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="#4c72b0" fill-opacity="0.8"><title>conf {:.2}, acc {:.2}, n {}</title></rect>"##,
                x0 + bw * b as f64 + 1.0,
                y0 + ph - bh,
                bw - 2.0,
                bin.mean_confidence,
                bin.accuracy,
                bin.count
            );
        }
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">confidence</text><text transform="translate({:.1},{:.1}) rotate(-90)" text-anchor="middle">accuracy</text>"#,
            x0 + pw / 2.0,
            y0 + ph + 28.0,
            x0 - 12.0,
            y0 + ph / 2.0
        );
        let _ = write!(
            s,
            r#"<text x="{x0:.1}" y="{:.1}" text-anchor="middle">0</text><text x="{:.1}" y="{:.1}" text-anchor="middle">1</text><text x="{:.1}" y="{:.1}" text-anchor="end">1</text>"#,
            y0 + ph + 13.0,
            x0 + pw,
            y0 + ph + 13.0,
            x0 - 3.0,
            y0 + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Write report.md and both charts for `runs` into `out`; each reliability panel pools a run's tasks.
pub fn write_report(out: &Path, runs: &[RunResults]) -> Result<()> {
    crate::fsutil::write_bytes_atomic(&out.join("report.md"), markdown(runs).as_bytes())?;
    crate::fsutil::write_bytes_atomic(&out.join("accuracy.svg"), accuracy_svg(runs).as_bytes())?;
    let mut panels = Vec::new();
    for r in runs {
        let mut points = Vec::new();
        for t in &r.tasks {
            points.extend(
                read_samples(&samples_path(&r.dir, &t.task))?
                    .iter()
                    .filter_map(metrics::letter_confidence),
            );
        }
        panels.push((
            r.meta.model.clone(),
            metrics::reliability(&points, ECE_BINS),
            metrics::ece(&points, ECE_BINS),
        ));
    }
    crate::fsutil::write_bytes_atomic(&out.join("reliability.svg"), reliability_svg(&panels).as_bytes())
}

/// Ensemble finished runs from their samples files into `out` (a run folder of its own, model name
/// `ensemble(a+b)`), over the tasks every run has.
pub fn ensemble_runs(runs: &[RunResults], out: &Path) -> Result<RunResults> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let first = runs
        .first()
        .ok_or_else(|| Error::invalid("ensemble", "no runs given"))?;
    let mut tasks = Vec::new();
    for t in &first.tasks {
        if !runs.iter().all(|r| r.task(&t.task).is_some()) {
            tracing::warn!("ensemble: task {} is missing from some runs; left out", t.task);
            continue;
        }
        let members = runs
            .iter()
            .map(|r| read_samples(&samples_path(&r.dir, &t.task)))
            .collect::<Result<Vec<_>>>()?;
        let samples = metrics::ensemble(&t.task, &members)?;
        let path = samples_path(out, &t.task);
        crate::fsutil::write_atomic(&path, |w| {
            for s in &samples {
                let line = serde_json::to_string(s).map_err(|e| Error::msg(e.to_string()))?;
                writeln!(w, "{line}").map_err(|e| Error::io(&path, e))?;
            }
            Ok(())
        })?;
        tasks.push(metrics::summarize(&t.task, &samples, t.bad_rows));
    }
    let names: Vec<&str> = runs.iter().map(|r| r.meta.model.as_str()).collect();
    let meta = RunMeta {
        model: format!("ensemble({})", names.join("+")),
        ..first.meta.clone()
    };
    write_results_json(out, &meta, &tasks, &[])?;
    Ok(RunResults {
        dir: out.to_path_buf(),
        meta,
        tasks,
    })
}
