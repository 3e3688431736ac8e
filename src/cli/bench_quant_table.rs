//! `biomistral bench --quant-table`: BioMistral's table of quantized formats (memory, size,
//! speed, quality) for any model. Each format runs in a child `bench` process, so each row's
//! peak memory is its own and not the high-water mark of the formats before it.
use super::bench::BenchArgs;
use anyhow::Context;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;

/// One row to measure: a label, the model to load and the `--quant` to apply.
struct Row {
    label: String,
    model: String,
    quant: Option<String>,
}

fn rows(args: &BenchArgs) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for f in &args.formats {
        let f = f.trim();
        if f.is_empty() {
            continue;
        }
        let quant = if f == "base" {
            None
        } else {
            // Fail on a bad name before spending minutes on the rows before it.
            biomistral::quantize::LoadQuant::parse(f)?;
            Some(f.to_string())
        };
        rows.push(Row {
            label: f.to_string(),
            model: args.model.model.clone(),
            quant,
        });
    }
    for e in &args.extra {
        let (label, model) = e
            .split_once('=')
            .with_context(|| format!("invalid --extra '{e}' (expected LABEL=MODEL)"))?;
        rows.push(Row {
            label: label.to_string(),
            model: model.to_string(),
            quant: None,
        });
    }
    if rows.is_empty() {
        anyhow::bail!("--quant-table needs at least one format or --extra row");
    }
    Ok(rows)
}

/// `$BIOMISTRAL_DATA/pubmed_calib/ncbi_disease/NCBItestset_corpus.txt`: held-out PubMed abstracts.
fn default_ppl_file() -> Option<PathBuf> {
    let f = super::eval::data_dir(&None).join("pubmed_calib/ncbi_disease/NCBItestset_corpus.txt");
    f.is_file().then_some(f)
}

fn child_args(args: &BenchArgs, row: &Row, ppl: &Option<PathBuf>) -> Vec<String> {
    let m = &args.model;
    let mut a: Vec<String> = vec!["bench".into(), "--json".into(), "--model".into(), row.model.clone()];
    a.extend(["--dtype".into(), m.dtype.clone(), "--device".into(), m.device.clone()]);
    a.extend(["--pp".into(), args.pp.to_string(), "--tg".into(), args.tg.to_string()]);
    a.extend(["--reps".into(), args.reps.to_string()]);
    if let Some(t) = m.threads {
        a.extend(["--threads".into(), t.to_string()]);
    }
    if let Some(ad) = &m.adapter {
        a.extend(["--adapter".into(), ad.display().to_string()]);
    }
    if let Some(q) = &row.quant {
        a.extend(["--quant".into(), q.clone()]);
    }
    if let Some(f) = ppl {
        a.extend(["--ppl-file".into(), f.display().to_string()]);
        a.extend(["--ppl-docs".into(), args.ppl_docs.to_string()]);
    }
    a
}

fn run_row(args: &BenchArgs, row: &Row, ppl: &Option<PathBuf>) -> anyhow::Result<Value> {
    let exe = std::env::current_exe().context("locating the biomistral binary")?;
    let out = Command::new(exe)
        .args(child_args(args, row, ppl))
        .output()
        .with_context(|| format!("running the '{}' row", row.label))?;
    if !out.status.success() {
        anyhow::bail!(
            "the '{}' row failed: {}",
            row.label,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or("");
    let mut v: Value =
        serde_json::from_str(line).with_context(|| format!("the '{}' row printed no JSON result", row.label))?;
    v["label"] = json!(row.label);
    v["quantized_at_load"] = json!(row.quant.is_some());
    Ok(v)
}

fn mib(v: &Value) -> String {
    v.as_f64()
        .map(|b| format!("{:.1}", b / (1u64 << 20) as f64))
        .unwrap_or_else(|| "-".into())
}

fn num(v: &Value, digits: usize) -> String {
    match v.as_f64() {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "-".into(),
    }
}

/// The table as markdown; speeds relative to the first row.
pub fn markdown(rows: &[Value]) -> String {
    let base = rows.first().cloned().unwrap_or(Value::Null);
    let rel = |v: &Value, k: &str| match (v[k].as_f64(), base[k].as_f64()) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() => format!("{:.2}x", a / b),
        _ => "-".into(),
    };
    let pp = base["pp"].as_u64().unwrap_or(0);
    let tg = base["tg"].as_u64().unwrap_or(0);
    let mut s = format!(
        "| format | weights in memory (MiB) | files on disk (MiB) | peak RSS (MiB) | pp{pp} (t/s) | tg{tg} (t/s) | pp vs {b} | tg vs {b} | perplexity |\n|---|---|---|---|---|---|---|---|---|\n",
        b = base["label"].as_str().unwrap_or("first row")
    );
    for v in rows {
        let disk = if v["quantized_at_load"].as_bool() == Some(true) {
            "(quantized at load)".to_string()
        } else {
            mib(&v["disk_bytes"])
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            v["label"].as_str().unwrap_or("?"),
            mib(&v["weight_bytes"]),
            disk,
            mib(&v["peak_rss_bytes"]),
            num(&v["pp_tps"], 1),
            num(&v["tg_tps"], 2),
            rel(v, "pp_tps"),
            rel(v, "tg_tps"),
            num(&v["ppl"], 3),
        ));
    }
    s
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let rows = rows(args)?;
    let ppl = args.ppl_file.clone().or_else(default_ppl_file);
    if ppl.is_none() {
        tracing::warn!("no --ppl-file and no $BIOMISTRAL_DATA/pubmed_calib: the table has no perplexity column");
    }
    let bar = indicatif::ProgressBar::new(rows.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("quant table {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut results = Vec::new();
    for row in &rows {
        bar.set_message(row.label.clone());
        results.push(run_row(args, row, &ppl)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let md = markdown(&results);
    let doc = json!({
        "model": args.model.model,
        "ppl_file": ppl.as_ref().map(|p| p.display().to_string()),
        "ppl_docs": args.ppl_docs,
        "rows": results,
    });
    if let Some(prefix) = &args.table_out {
        let with_ext = |e: &str| PathBuf::from(format!("{}.{e}", prefix.display()));
        biomistral::fsutil::write_bytes_atomic(&with_ext("md"), md.as_bytes())?;
        biomistral::fsutil::write_bytes_atomic(&with_ext("json"), serde_json::to_string_pretty(&doc)?.as_bytes())?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&doc)?);
    } else {
        print!("{md}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_is_relative_to_the_first_row() {
        let rows = vec![
            json!({"label": "base", "pp": 8, "tg": 4, "pp_tps": 100.0, "tg_tps": 10.0, "weight_bytes": 2097152,
                   "disk_bytes": 2097152, "peak_rss_bytes": 4194304, "ppl": 20.0, "quantized_at_load": false}),
            json!({"label": "q8_0", "pp": 8, "tg": 4, "pp_tps": 50.0, "tg_tps": 20.0, "weight_bytes": 1048576,
                   "disk_bytes": 2097152, "peak_rss_bytes": 3145728, "ppl": 20.5, "quantized_at_load": true}),
        ];
        let md = markdown(&rows);
        assert!(
            md.contains("| pp8 (t/s) | tg4 (t/s) | pp vs base | tg vs base |"),
            "{md}"
        );
        assert!(
            md.contains("| base | 2.0 | 2.0 | 4.0 | 100.0 | 10.00 | 1.00x | 1.00x | 20.000 |"),
            "{md}"
        );
        assert!(
            md.contains("| q8_0 | 1.0 | (quantized at load) | 3.0 | 50.0 | 20.00 | 0.50x | 2.00x | 20.500 |"),
            "{md}"
        );
    }
}
