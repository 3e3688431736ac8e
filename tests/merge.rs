//! Integration tests for `biomistral merge` against mergekit 0.1.5 reference outputs
//! (tests/fixtures/mergekit, copied from the project's reference vectors).
use biomistral::merge::{self, tensor::Dtype, MergeOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mergekit")
}

struct T {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<f32>,
}

/// All tensors of a model folder (single file or sharded).
fn load(dir: &Path) -> BTreeMap<String, T> {
    let mut out = BTreeMap::new();
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    assert!(!files.is_empty(), "no safetensors in {}", dir.display());
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            let dtype = Dtype::from_safetensors(view.dtype()).unwrap();
            let data = dtype.decode(&name, view.data()).unwrap();
            out.insert(
                name,
                T {
                    dtype,
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
    }
    out
}

fn run(config: &Path, out: &Path, seed: u64) -> merge::MergeReport {
    let mut o = MergeOptions::new(config, out);
    o.seed = Some(seed);
    o.copy_tokenizer = true;
    merge::run_merge(&o).unwrap_or_else(|e| panic!("merge of {} failed: {e}", config.display()))
}

fn merge_fixture(name: &str, seed: u64) -> (tempfile::TempDir, BTreeMap<String, T>) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    run(&fixtures().join(format!("{name}.yaml")), &out, seed);
    let t = load(&out);
    (tmp, t)
}

/// Spacing of representable values of `dtype` at |x|.
fn ulp(dtype: Dtype, x: f32) -> f32 {
    let mant_bits = match dtype {
        Dtype::F32 => 23,
        Dtype::F16 => 10,
        Dtype::BF16 => 7,
    };
    let a = x.abs().max(f32::MIN_POSITIVE);
    2f32.powi(a.log2().floor() as i32 - mant_bits)
}

fn config_dtype(dir: &Path) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    v["torch_dtype"].as_str().unwrap().to_string()
}

/// Same names, shapes and dtypes; every element within one ulp of the output dtype.
fn assert_close_1ulp(name: &str, ours: &BTreeMap<String, T>, reference: &BTreeMap<String, T>) {
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        reference.keys().collect::<Vec<_>>(),
        "{name}: tensor names"
    );
    let mut off = 0;
    for (k, r) in reference {
        let o = &ours[k];
        assert_eq!(o.shape, r.shape, "{name}: {k} shape");
        assert_eq!(o.dtype, r.dtype, "{name}: {k} dtype");
        for (a, b) in o.data.iter().zip(&r.data) {
            let d = (a - b).abs();
            assert!(d <= ulp(r.dtype, *b), "{name}: {k}: {a} vs mergekit {b}");
            off += (d > 0.0) as usize;
        }
    }
    eprintln!("{name}: {off} elements differ by one ulp");
}

#[test]
fn linear_matches_mergekit() {
    let (tmp, ours) = merge_fixture("01_linear", 0);
    let reference = load(&fixtures().join("outputs/01_linear"));
    assert_close_1ulp("01_linear", &ours, &reference);
    assert_eq!(config_dtype(&tmp.path().join("out")), "float32");
}

#[test]
fn slerp_matches_mergekit() {
    let (tmp, ours) = merge_fixture("02_slerp_biomistral", 0);
    let reference = load(&fixtures().join("outputs/02_slerp_biomistral"));
    assert_close_1ulp("02_slerp", &ours, &reference);
    assert_eq!(config_dtype(&tmp.path().join("out")), "bfloat16");
    // Gradient endpoints: layer-0 attention is the base model, layer-0 MLP is bio.
    let base = load(&fixtures().join("models/base"));
    let bio = load(&fixtures().join("models/bio"));
    let q = "model.layers.0.self_attn.q_proj.weight";
    assert_eq!(ours[q].data, base[q].data);
    let m = "model.layers.0.mlp.up_proj.weight";
    assert_eq!(ours[m].data, bio[m].data);
}

fn bf16_delta(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| Dtype::BF16.round(x - y)).collect()
}

#[test]
fn ties_matches_mergekit_up_to_cutoff_ties() {
    let (tmp, ours) = merge_fixture("03_ties_single", 0);
    let reference = load(&fixtures().join("outputs/03_ties_single"));
    let base = load(&fixtures().join("models/base"));
    let bio = load(&fixtures().join("models/bio"));
    assert_eq!(ours.keys().collect::<Vec<_>>(), reference.keys().collect::<Vec<_>>());
    assert_eq!(config_dtype(&tmp.path().join("out")), "bfloat16");
    let mut total_diff = 0;
    for (k, r) in &reference {
        let o = &ours[k];
        assert_eq!((o.dtype, &o.shape), (r.dtype, &r.shape), "{k}");
        let delta = bf16_delta(&bio[k].data, &base[k].data);
        let mut mags: Vec<f32> = delta.iter().map(|d| d.abs()).collect();
        mags.sort_by(|a, b| b.total_cmp(a));
        let cutoff = mags[(r.data.len() / 2).max(1) - 1];
        let mut n_diff = 0;
        for (e, (a, b)) in o.data.iter().zip(&r.data).enumerate() {
            if a != b {
                assert_eq!(delta[e].abs(), cutoff, "{k}[{e}]: differs away from the cut-off");
                n_diff += 1;
            }
        }
        assert!(n_diff * 200 <= r.data.len(), "{k}: {n_diff} differing elements > 0.5%");
        total_diff += n_diff;
    }
    // Replaying torch's argsort picks the same tied elements as mergekit: in fact nothing differs.
    assert_eq!(total_diff, 0, "tie-class elements differ");
}

#[test]
fn dare_ties_is_reproducible_and_matches_reference_statistics() {
    let (tmp, ours) = merge_fixture("06_dare_ties", 7);
    let (_tmp2, again) = merge_fixture("06_dare_ties", 7);
    let (_tmp3, other_seed) = merge_fixture("06_dare_ties", 8);
    let k0 = "model.embed_tokens.weight";
    assert_eq!(ours[k0].data, again[k0].data);
    assert!(
        ours.iter().all(|(k, t)| t.data == again[k].data),
        "same seed must reproduce"
    );
    assert_ne!(ours[k0].data, other_seed[k0].data, "another seed draws another mask");
    assert_eq!(config_dtype(&tmp.path().join("out")), "bfloat16");

    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("outputs/06_dare_ties_stats.json")).unwrap())
            .unwrap();
    let base = load(&fixtures().join("models/base"));
    let bio = load(&fixtures().join("models/bio"));
    let (mut frac_sum, mut ratio_sum) = (0.0, 0.0);
    for (k, t) in &ours {
        let s = &stats["per_tensor"][k];
        let n = t.data.len() as f64;
        let frac = t.data.iter().zip(&base[k].data).filter(|(a, b)| a == b).count() as f64 / n;
        let norm = |v: Vec<f32>| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let ratio = norm(t.data.iter().zip(&base[k].data).map(|(a, b)| a - b).collect())
            / norm(bio[k].data.iter().zip(&base[k].data).map(|(a, b)| a - b).collect());
        // Kept fraction ~ Bernoulli(0.5): allow 5 sigma of sampling error around mergekit's draw.
        let sigma = (0.25 / n).sqrt();
        let ref_frac = s["frac_equal_to_base"].as_f64().unwrap();
        assert!(
            (frac - ref_frac).abs() <= 5.0 * sigma * 2f64.sqrt() + 1e-3,
            "{k}: frac {frac} vs {ref_frac}"
        );
        let ref_ratio = s["ratio_norm_merged_minus_base_over_bio_minus_base"].as_f64().unwrap();
        let tol = if n >= 4096.0 { 0.03 } else { 0.15 };
        assert!(
            (ratio - ref_ratio).abs() <= tol,
            "{k}: norm ratio {ratio} vs {ref_ratio}"
        );
        // The L1 rescale factor implied by the kept elements (~1/density on large tensors).
        let delta: Vec<f32> = bio[k].data.iter().zip(&base[k].data).map(|(a, b)| a - b).collect();
        let moved: f64 = t
            .data
            .iter()
            .zip(&base[k].data)
            .map(|(a, b)| (a - b).abs() as f64)
            .sum();
        let kept: f64 = t
            .data
            .iter()
            .zip(&base[k].data)
            .zip(&delta)
            .filter(|((a, b), _)| a != b)
            .map(|(_, d)| d.abs() as f64)
            .sum();
        let factor = moved / (0.5 * kept);
        let ref_factor = s["l1_rescale_factor_from_kept_mask"].as_f64().unwrap();
        // Both draws vary (sd of the factor ~2.4/sqrt(n) each): allow ~3.5 sigma of their difference.
        let tol = 12.0 / n.sqrt() + 0.02;
        assert!(
            (factor - ref_factor).abs() <= tol,
            "{k}: L1 rescale {factor} vs {ref_factor}"
        );
        frac_sum += frac;
        ratio_sum += ratio;
    }
    let m = ours.len() as f64;
    let summary = &stats["summary"];
    assert!((frac_sum / m - summary["frac_equal_to_base_mean"].as_f64().unwrap()).abs() < 0.02);
    assert!((ratio_sum / m - summary["norm_ratio_mean"].as_f64().unwrap()).abs() < 0.02);
}

/// Given mergekit's own keep mask (read off its output), our DARE arithmetic (L1 rescale, bf16
/// rounding, weight, no normalize) reproduces its output exactly.
#[test]
fn dare_ties_arithmetic_is_exact_given_mergekits_mask() {
    use biomistral::merge::methods::Sparsify;
    use biomistral::merge::task_arithmetic::{mix, MixOptions, TaskInput};
    let reference = load(&fixtures().join("outputs/06_dare_ties"));
    let base = load(&fixtures().join("models/base"));
    let bio = load(&fixtures().join("models/bio"));
    for (k, r) in &reference {
        let keep: Vec<bool> = r.data.iter().zip(&base[k].data).map(|(a, b)| a != b).collect();
        let opts = MixOptions {
            sparsify: Some(Sparsify::Random),
            consensus: true,
            normalize: false,
            rescale: true,
            lambda: 1.0,
            dtype: Dtype::BF16,
        };
        let input = TaskInput {
            values: &bio[k].data,
            weight: 0.5,
            density: 0.5,
            gamma: 0.0,
        };
        let mut mask = |_: usize, _: usize, _: f64| keep.clone();
        let out = mix(k, &base[k].data, &[input], &opts, &mut mask).unwrap();
        assert_eq!(out, r.data, "{k}");
    }
}

fn write_config(dir: &Path, yaml: &str) -> PathBuf {
    let models = fixtures().join("models");
    let p = dir.join("merge.yml");
    std::fs::write(&p, yaml.replace("MODELS", models.to_str().unwrap())).unwrap();
    p
}

#[test]
fn passthrough_stacks_layers_and_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(
        tmp.path(),
        "slices:\n  - sources:\n      - model: MODELS/base\n        layer_range: [0, 3]\n  - sources:\n      - model: MODELS/bio\n        layer_range: [1, 4]\nmerge_method: passthrough\ndtype: bfloat16\n",
    );
    let out = tmp.path().join("stacked");
    let mut o = MergeOptions::new(&cfg, &out);
    o.shard_size = 100_000;
    o.threads = Some(2);
    let report = merge::run_merge(&o).unwrap();
    assert!(
        report.files.iter().any(|f| f == "model.safetensors.index.json"),
        "{:?}",
        report.files
    );
    assert!(report.files.iter().any(|f| f.starts_with("model-00001-of-")));
    let ours = load(&out);
    let base = load(&fixtures().join("models/base"));
    let bio = load(&fixtures().join("models/bio"));
    assert_eq!(ours.len(), 3 + 6 * 9);
    let n = "mlp.down_proj.weight";
    assert_eq!(
        ours[&format!("model.layers.2.{n}")].data,
        base[&format!("model.layers.2.{n}")].data
    );
    assert_eq!(
        ours[&format!("model.layers.3.{n}")].data,
        bio[&format!("model.layers.1.{n}")].data
    );
    assert_eq!(
        ours[&format!("model.layers.5.{n}")].data,
        bio[&format!("model.layers.3.{n}")].data
    );
    assert_eq!(
        ours["model.embed_tokens.weight"].data,
        base["model.embed_tokens.weight"].data
    );
    assert_eq!(ours["lm_head.weight"].data, bio["lm_head.weight"].data);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["num_hidden_layers"], 6);
    // The index names every tensor, and each named file holds it.
    let idx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap()).unwrap();
    assert_eq!(idx["weight_map"].as_object().unwrap().len(), ours.len());
    for f in ["README.md", "mergekit_config.yml", "generation_config.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // No staging folder is left next to the output.
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
}

#[test]
fn other_methods_run_on_the_fixtures() {
    let methods = [
        ("task_arithmetic", "weight: 1.0", "float32"),
        ("dare_linear", "weight: 0.5\n      density: 0.7", "bfloat16"),
        (
            "breadcrumbs",
            "weight: 0.5\n      density: 0.8\n      gamma: 0.05",
            "bfloat16",
        ),
        ("breadcrumbs_ties", "weight: 0.5\n      density: 0.8", "float16"),
        ("ties", "weight: 0.5\n      density: 0.3", "bfloat16"),
        ("model_stock", "{}", "bfloat16"),
        ("linear", "weight: 1.0", "bfloat16"),
    ];
    let base = load(&fixtures().join("models/base"));
    let bio = load(&fixtures().join("models/bio"));
    for (method, params, dtype) in methods {
        let tmp = tempfile::tempdir().unwrap();
        let yaml = format!(
            "models:\n  - model: MODELS/base\n  - model: MODELS/bio\n    parameters:\n      {params}\n  - model: MODELS/other\n    parameters:\n      {params}\nmerge_method: {method}\nbase_model: MODELS/base\ndtype: {dtype}\n"
        );
        let yaml = if method == "linear" {
            yaml.replace("  - model: MODELS/base\n", "")
        } else {
            yaml
        };
        let cfg = write_config(tmp.path(), &yaml);
        let out = tmp.path().join("o");
        run(&cfg, &out, 1);
        let ours = load(&out);
        assert_eq!(ours.len(), 39, "{method}");
        for (k, t) in &ours {
            assert!(t.data.iter().all(|x| x.is_finite()), "{method}: {k}");
            assert_eq!(t.dtype, Dtype::parse("dtype", dtype).unwrap(), "{method}: {k}");
        }
        assert_eq!(config_dtype(&out), dtype);
        if method == "task_arithmetic" {
            // base + (bio - base) + (other - base) in f32.
            let k = "model.layers.1.self_attn.k_proj.weight";
            let other = load(&fixtures().join("models/other"));
            for e in 0..ours[k].data.len() {
                let expect =
                    base[k].data[e] + (bio[k].data[e] - base[k].data[e]) + (other[k].data[e] - base[k].data[e]);
                assert!((ours[k].data[e] - expect).abs() < 1e-6, "{e}");
            }
        }
        let _ = &bio;
    }
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("never");
    let mut o = MergeOptions::new(fixtures().join("02_slerp_biomistral.yaml"), &out);
    o.dry_run = true;
    let report = merge::run_merge(&o).unwrap();
    assert!(
        report.plan.contains("model.layers.3.self_attn.q_proj.weight"),
        "{}",
        report.plan
    );
    assert!(report.plan.contains("t=0.4333"), "{}", report.plan);
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

/// A copy of the base model with one tensor replaced by `shape` (values 0).
fn altered_model(dir: &Path, tensor: &str, shape: Vec<usize>, vocab: Option<usize>) -> PathBuf {
    let src = fixtures().join("models/base");
    let dst = dir.join("altered");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    if let Some(v) = vocab {
        let mut c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
        c["vocab_size"] = v.into();
        std::fs::write(dst.join("config.json"), c.to_string()).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let zeros = vec![0u8; shape.iter().product::<usize>() * 2];
    let mut views = Vec::new();
    for (name, v) in st.tensors() {
        let view = if name == tensor {
            safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, shape.clone(), &zeros).unwrap()
        } else {
            v
        };
        views.push((name, view));
    }
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(dst.join("model.safetensors"), out).unwrap();
    dst
}

/// Run a config that must fail; check the message mentions every `needles` and nothing was written.
fn assert_fails(yaml: &str, needles: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), yaml);
    let out = tmp.path().join("out");
    let err = merge::run_merge(&MergeOptions::new(&cfg, &out))
        .unwrap_err()
        .to_string();
    for n in needles {
        assert!(err.contains(n), "error '{err}' should mention '{n}'");
    }
    assert!(!out.exists(), "output written despite: {err}");
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        left.iter().all(|n| n == "merge.yml" || n == "altered"),
        "left behind: {left:?}"
    );
}

const SLERP: &str = "slices:\n  - sources:\n      - model: MODELS/base\n        layer_range: [0, 4]\n      - model: MODELS/bio\n        layer_range: [0, 4]\nmerge_method: slerp\nbase_model: MODELS/base\nparameters:\n  t: 0.5\ndtype: bfloat16\n";

#[test]
fn bad_configs_fail_clearly_and_write_nothing() {
    assert_fails(&SLERP.replace("MODELS/bio", "MODELS/nope"), &["nope", "not found"]);
    assert_fails(
        &SLERP.replace("merge_method: slerp", "merge_method: frankenmerge"),
        &["merge_method", "frankenmerge"],
    );
    assert_fails(
        &SLERP.replace("  t: 0.5", "  t: 0.5\n  tt: 1"),
        &["parameters.tt", "unknown parameter"],
    );
    assert_fails(
        &SLERP.replace("[0, 4]\nmerge", "[0, 5]\nmerge"),
        &["slices[0].sources[1].layer_range", "out of bounds", "4 layers"],
    );
    assert_fails(
        &SLERP.replace("  t: 0.5", "  t: [0, 1.5]"),
        &["parameters.t", "outside [0, 1]", "model.layers"],
    );
    assert_fails(
        &SLERP.replace("  t: 0.5", "  t: -0.1"),
        &["parameters.t", "outside [0, 1]"],
    );
    let ties = "models:\n  - model: MODELS/base\n  - model: MODELS/bio\n    parameters:\n      weight: 0.5\n      density: DENSITY\nmerge_method: ties\nbase_model: MODELS/base\ndtype: bfloat16\n";
    assert_fails(
        &ties.replace("DENSITY", "0"),
        &["parameters.density", "(0, 1]", "models/bio"],
    );
    assert_fails(&ties.replace("DENSITY", "1.5"), &["parameters.density", "(0, 1]"]);
    assert_fails(
        &ties.replace("      weight: 0.5\n", "").replace("DENSITY", "0.5"),
        &["parameters.weight", "models/bio"],
    );
    assert_fails(
        &ties.replace("DENSITY", "0.5").replace("base_model: MODELS/base\n", ""),
        &["base_model"],
    );
    assert_fails(
        "merge_method: linear\nmodels:\n  - model: MODELS/bio\n    parameters: {weight: 1}\nbogus: 1\n",
        &["bogus"],
    );
    assert_fails("merge_method: linear\nmodels: [", &["merge.yml"]);
    assert_fails(
        "merge_method: linear\nmodels:\n  - model: MODELS/bio\n    parameters: {weight: 1}\n  - model: MODELS/other\n    parameters: {weight: -1}\n",
        &["parameters.weight", "sum to zero", "model.embed_tokens.weight"],
    );
    assert_fails(
        "merge_method: linear\nmodels:\n  - model: MODELS/bio\n    parameters: {weight: 1}\n  - model: MODELS/bio\n    parameters: {weight: 2}\n",
        &["models[1].model", "twice"],
    );
}

#[test]
fn mismatched_shapes_and_vocab_sizes_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let altered = altered_model(tmp.path(), "model.layers.2.mlp.up_proj.weight", vec![96, 64], None);
    let yaml = SLERP.replace("MODELS/bio", altered.to_str().unwrap());
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = write_config(cfg_dir.path(), &yaml);
    let out = cfg_dir.path().join("out");
    let err = merge::run_merge(&MergeOptions::new(&cfg, &out))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.layers.2.mlp.up_proj.weight") && err.contains("altered"),
        "{err}"
    );
    assert!(!out.exists());

    let tmp = tempfile::tempdir().unwrap();
    let altered = altered_model(tmp.path(), "model.embed_tokens.weight", vec![300, 64], Some(300));
    let cfg = write_config(cfg_dir.path(), &SLERP.replace("MODELS/bio", altered.to_str().unwrap()));
    let err = merge::run_merge(&MergeOptions::new(&cfg, &out))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("vocabulary sizes differ") && err.contains("tokenizer_source: union"),
        "{err}"
    );
    assert!(err.contains("model.embed_tokens.weight"), "{err}");
    assert!(!out.exists());
}

#[test]
fn existing_nonempty_output_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "x").unwrap();
    let err = merge::run_merge(&MergeOptions::new(fixtures().join("01_linear.yaml"), &out)).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
}

#[test]
fn tokenizer_source_and_chat_template() {
    let tmp = tempfile::tempdir().unwrap();
    let yaml = format!("{SLERP}tokenizer_source: union\nchat_template: chatml\n");
    let cfg = write_config(tmp.path(), &yaml);
    let out = tmp.path().join("o");
    merge::run_merge(&MergeOptions::new(&cfg, &out)).unwrap();
    assert!(out.join("tokenizer.json").is_file());
    let tc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap()).unwrap();
    assert!(tc["chat_template"].as_str().unwrap().contains("<|im_start|>"));
    let bad = write_config(tmp.path(), &format!("{SLERP}tokenizer_source: MODELS/other\n"));
    let err = merge::run_merge(&MergeOptions::new(&bad, tmp.path().join("o2"))).unwrap_err();
    assert!(err.to_string().contains("tokenizer_source"), "{err}");
}

#[test]
fn cli_merge_dry_run() {
    let exe = env!("CARGO_BIN_EXE_biomistral");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let res = std::process::Command::new(exe)
        .args([
            "merge",
            fixtures().join("03_ties_single.yaml").to_str().unwrap(),
            "--out",
        ])
        .arg(&out)
        .arg("--dry-run")
        .output()
        .unwrap();
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    assert!(String::from_utf8_lossy(&res.stdout).contains("merge_method: ties"));
    assert!(!out.exists());
    let res = std::process::Command::new(exe)
        .args(["merge", fixtures().join("01_linear.yaml").to_str().unwrap(), "--out"])
        .arg(&out)
        .args(["--shard-size", "200KB", "--dtype", "bfloat16", "--threads", "2"])
        .output()
        .unwrap();
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    assert!(out.join("model.safetensors.index.json").is_file());
    assert_eq!(config_dtype(&out), "bfloat16");
}

#[test]
fn plan_resolves_gradients_filters_and_precedence() {
    let tmp = tempfile::tempdir().unwrap();
    let yaml = "slices:\n  - sources:\n      - model: MODELS/base\n        layer_range: [0, 4]\n      - model: MODELS/bio\n        layer_range: [0, 4]\n        parameters:\n          weight:\n            - filter: mlp\n              value: 0.9\n    parameters:\n      normalize: false\nmerge_method: linear\nparameters:\n  weight: [0.2, 0.8]\n  normalize: true\ndtype: float32\n";
    let cfg = write_config(tmp.path(), yaml);
    let (plan, _) = merge::load_plan(&cfg, None).unwrap();
    let task = |n: &str| plan.tensors.iter().find(|t| t.name == n).unwrap();
    let w = |n: &str, src: usize| task(n).sources[src].params["weight"];
    assert!((w("model.layers.0.self_attn.q_proj.weight", 0) - 0.2).abs() < 1e-12);
    assert!((w("model.layers.1.self_attn.q_proj.weight", 0) - 0.4).abs() < 1e-12);
    assert!((w("model.layers.3.self_attn.q_proj.weight", 1) - 0.8).abs() < 1e-12);
    // The source's filtered value wins for mlp tensors and falls through elsewhere.
    assert_eq!(w("model.layers.2.mlp.up_proj.weight", 1), 0.9);
    assert!((w("model.layers.2.mlp.up_proj.weight", 0) - 0.6).abs() < 1e-12);
    // Slice parameters beat top-level ones inside the slice; outside the layers only top level applies (t = 0).
    assert_eq!(task("model.layers.0.mlp.up_proj.weight").globals["normalize"], 0.0);
    assert_eq!(task("lm_head.weight").globals["normalize"], 1.0);
    assert!((w("model.embed_tokens.weight", 1) - 0.2).abs() < 1e-12);
    assert_eq!(plan.num_layers, 4);
    assert_eq!(plan.out_dtype, Dtype::F32);
}

#[test]
fn sharded_f32_output_reads_back_as_input() {
    // Write the linear merge as f32 shards, then read that sharded folder back through a merge.
    let tmp = tempfile::tempdir().unwrap();
    let sharded = tmp.path().join("sharded");
    let mut o = MergeOptions::new(fixtures().join("01_linear.yaml"), &sharded);
    o.shard_size = 150_000;
    o.copy_tokenizer = true;
    merge::run_merge(&o).unwrap();
    assert!(sharded.join("model.safetensors.index.json").is_file());
    let cfg = tmp.path().join("again.yml");
    let s = sharded.to_str().unwrap();
    std::fs::write(
        &cfg,
        format!("models:\n  - model: {s}\n    parameters: {{weight: 2.0}}\nmerge_method: linear\n"),
    )
    .unwrap();
    let out = tmp.path().join("again");
    let mut o = MergeOptions::new(&cfg, &out);
    o.dtype = Some(Dtype::F16);
    merge::run_merge(&o).unwrap();
    let first = load(&sharded);
    let second = load(&out);
    assert_eq!(config_dtype(&out), "float16");
    for (k, t) in &first {
        assert_eq!(second[k].dtype, Dtype::F16);
        for (a, b) in second[k].data.iter().zip(&t.data) {
            assert_eq!(*a, Dtype::F16.round(*b), "{k}");
        }
    }
}
