//! Medical benchmark harness: BioMistral's 10 tasks (MMLU medical subsets, MedQA 4/5 options, PubMedQA,
//! MedMCQA), its few-shot prompt and scoring, an lm-eval-style log-likelihood protocol, calibration,
//! ensembles and reports. The model sits behind [`backend::Backend`].
//!
//! Data layout under `--data-dir`: the raw English files at the paths of [`tasks::TaskId::raw_path`];
//! translated sets at `<lang>/<task>.json` (BioInstructQA rows, see [`tasks::item_from_json`]).
pub mod backend;
pub mod csv;
pub mod engine;
pub mod metrics;
pub mod prompt;
pub mod report;
pub mod run;
pub mod scorer;
pub mod tasks;
pub mod translate;

pub use backend::Backend;
pub use run::{run_eval, EvalConfig};
pub use scorer::{Protocol, Sample};
pub use tasks::{Item, OnBadRow, TaskId};
