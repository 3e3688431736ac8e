//! Benchmark tasks: ids, where their raw files live, and one loader per raw format.
//!
//! Every loader yields [`Item`]s in file order (the order fixes the shot rule, so it must never be
//! re-sorted except where the protocol says so: PubMedQA by numeric PMID). A malformed row is reported as a
//! [`BadRow`] naming file, line and field; the caller decides (`--on-bad-row`) whether it is fatal.
use crate::error::{Error, Result};
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// One multiple-choice question, normalised across formats.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Stable id from the file (MedMCQA uuid, PubMedQA PMID) or `file:line` when the format has none.
    pub id: String,
    /// Text before the question (PubMedQA abstract); `None` for the other tasks.
    pub context: Option<String>,
    pub question: String,
    /// Option texts; option `i` has letter `letter(i)`.
    pub options: Vec<String>,
    /// Index of the gold option.
    pub gold: usize,
}

impl Item {
    pub fn gold_letter(&self) -> char {
        letter(self.gold)
    }
    pub fn letters(&self) -> Vec<char> {
        (0..self.options.len()).map(letter).collect()
    }
}

/// Option letter of index `i` (0 → 'A').
pub fn letter(i: usize) -> char {
    (b'A' + i as u8) as char
}

/// Index of an option letter, if it is one of `A..=Z`.
pub fn letter_index(s: &str) -> Option<usize> {
    let mut c = s.trim().chars();
    match (c.next(), c.next()) {
        (Some(l @ 'A'..='Z'), None) => Some(l as usize - 'A' as usize),
        _ => None,
    }
}

/// A row that could not become an item.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRow {
    pub path: PathBuf,
    pub line: usize,
    pub msg: String,
}

impl std::fmt::Display for BadRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.msg)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnBadRow {
    /// Report the row on stderr and the results, and leave it out of the pool.
    Skip,
    /// Stop at the first malformed row.
    Fail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskId {
    MmluClinicalKnowledge,
    MmluMedicalGenetics,
    MmluAnatomy,
    MmluProfessionalMedicine,
    MmluCollegeBiology,
    MmluCollegeMedicine,
    MedQa4,
    MedQa5,
    PubMedQa,
    MedMcQa,
}

impl TaskId {
    /// The ten tasks in the paper's column order.
    pub const ALL: [TaskId; 10] = [
        TaskId::MmluClinicalKnowledge,
        TaskId::MmluMedicalGenetics,
        TaskId::MmluAnatomy,
        TaskId::MmluProfessionalMedicine,
        TaskId::MmluCollegeBiology,
        TaskId::MmluCollegeMedicine,
        TaskId::MedQa4,
        TaskId::MedQa5,
        TaskId::PubMedQa,
        TaskId::MedMcQa,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TaskId::MmluClinicalKnowledge => "mmlu_clinical_knowledge",
            TaskId::MmluMedicalGenetics => "mmlu_medical_genetics",
            TaskId::MmluAnatomy => "mmlu_anatomy",
            TaskId::MmluProfessionalMedicine => "mmlu_professional_medicine",
            TaskId::MmluCollegeBiology => "mmlu_college_biology",
            TaskId::MmluCollegeMedicine => "mmlu_college_medicine",
            TaskId::MedQa4 => "medqa_4",
            TaskId::MedQa5 => "medqa_5",
            TaskId::PubMedQa => "pubmedqa",
            TaskId::MedMcQa => "medmcqa",
        }
    }

    /// Short column header for report tables (the paper's abbreviations).
    pub fn short(self) -> &'static str {
        match self {
            TaskId::MmluClinicalKnowledge => "Clinical KG",
            TaskId::MmluMedicalGenetics => "Medical Genetics",
            TaskId::MmluAnatomy => "Anatomy",
            TaskId::MmluProfessionalMedicine => "Pro Medicine",
            TaskId::MmluCollegeBiology => "College Biology",
            TaskId::MmluCollegeMedicine => "College Medicine",
            TaskId::MedQa4 => "MedQA",
            TaskId::MedQa5 => "MedQA 5 opts",
            TaskId::PubMedQa => "PubMedQA",
            TaskId::MedMcQa => "MedMCQA",
        }
    }

    pub fn parse(s: &str) -> Result<TaskId> {
        TaskId::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| Error::invalid("task", format!("unknown task '{s}' (known: all, {})", names_list())))
    }

    /// Parse a comma-separated list; `all` expands to the ten tasks. Order is kept, duplicates dropped.
    pub fn parse_list(s: &str) -> Result<Vec<TaskId>> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let ids = if part == "all" {
                TaskId::ALL.to_vec()
            } else {
                vec![TaskId::parse(part)?]
            };
            for id in ids {
                if !out.contains(&id) {
                    out.push(id);
                }
            }
        }
        if out.is_empty() {
            return Err(Error::invalid("tasks", "empty task list"));
        }
        Ok(out)
    }

    /// Raw English file, relative to the data directory.
    pub fn raw_path(self) -> &'static str {
        match self {
            TaskId::MmluClinicalKnowledge => "mmlu/test/clinical_knowledge_test.csv",
            TaskId::MmluMedicalGenetics => "mmlu/test/medical_genetics_test.csv",
            TaskId::MmluAnatomy => "mmlu/test/anatomy_test.csv",
            TaskId::MmluProfessionalMedicine => "mmlu/test/professional_medicine_test.csv",
            TaskId::MmluCollegeBiology => "mmlu/test/college_biology_test.csv",
            TaskId::MmluCollegeMedicine => "mmlu/test/college_medicine_test.csv",
            TaskId::MedQa4 => "medqa/4_options/phrases_no_exclude_test.jsonl",
            TaskId::MedQa5 => "medqa/5_options/test.jsonl",
            TaskId::PubMedQa => "pubmedqa/test_set.json",
            TaskId::MedMcQa => "medmcqa/dev.json",
        }
    }

    /// Translated file for `lang` (BioInstructQA JSON): `<data-dir>/<lang>/<task>.json`.
    pub fn translated_path(self, lang: &str) -> String {
        format!("{lang}/{}.json", self.name())
    }
}

fn names_list() -> String {
    TaskId::ALL.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
}

/// The items of a task plus the rows that were left out.
#[derive(Debug, Default)]
pub struct Loaded {
    pub items: Vec<Item>,
    /// Translated sets only: the English side of each item (same order), used for shots.
    pub english: Vec<Item>,
    pub bad: Vec<BadRow>,
}

/// Load a task's pool from `data_dir`, in English (`lang == "en"`) or from its translated BioInstructQA file
/// (then `english` holds the English side of each row, for the shots).
pub fn load_task(task: TaskId, data_dir: &Path, lang: &str, on_bad: OnBadRow) -> Result<Loaded> {
    if lang != "en" {
        return load_bioinstructqa(&data_dir.join(task.translated_path(lang)), on_bad);
    }
    let path = data_dir.join(task.raw_path());
    match task {
        TaskId::PubMedQa => load_pubmedqa(&path, on_bad),
        TaskId::MmluClinicalKnowledge
        | TaskId::MmluMedicalGenetics
        | TaskId::MmluAnatomy
        | TaskId::MmluProfessionalMedicine
        | TaskId::MmluCollegeBiology
        | TaskId::MmluCollegeMedicine => load_mmlu_csv(&path, on_bad),
        TaskId::MedQa4 | TaskId::MedQa5 | TaskId::MedMcQa => load_jsonl(&path, on_bad),
    }
}

/// Load any supported file by extension: `.csv` (MMLU layout) or JSON lines / a JSON array of rows in any
/// of the row shapes [`item_from_json`] accepts. Used for `--shots-from` and user-provided sets.
pub fn load_file(path: &Path, on_bad: OnBadRow) -> Result<Loaded> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => load_mmlu_csv(path, on_bad),
        _ => load_jsonl(path, on_bad),
    }
}

/// Collects items and bad rows, enforcing unique ids and the skip/fail policy in one place.
struct Collector<'a> {
    path: &'a Path,
    on_bad: OnBadRow,
    seen: HashSet<String>,
    out: Loaded,
}

impl<'a> Collector<'a> {
    fn new(path: &'a Path, on_bad: OnBadRow) -> Self {
        Collector {
            path,
            on_bad,
            seen: HashSet::new(),
            out: Loaded::default(),
        }
    }

    fn push(&mut self, line: usize, row: std::result::Result<Item, String>) -> Result<()> {
        self.push_pair(line, row.map(|i| (i, None)))
    }

    /// An item and, for translated sets, its English side: both are kept or both left out.
    fn push_pair(&mut self, line: usize, row: std::result::Result<(Item, Option<Item>), String>) -> Result<()> {
        let row = row.and_then(|pair| {
            if self.seen.insert(pair.0.id.clone()) {
                Ok(pair)
            } else {
                Err(format!("duplicate id '{}'", pair.0.id))
            }
        });
        match row {
            Ok((item, english)) => {
                self.out.items.push(item);
                self.out.english.extend(english);
            }
            Err(msg) => {
                let bad = BadRow {
                    path: self.path.to_path_buf(),
                    line,
                    msg,
                };
                if self.on_bad == OnBadRow::Fail {
                    return Err(Error::format(
                        self.path,
                        format!(
                            "line {line}: {} (use --on-bad-row skip to leave such rows out)",
                            bad.msg
                        ),
                    ));
                }
                tracing::warn!("skipping malformed row {bad}");
                self.out.bad.push(bad);
            }
        }
        Ok(())
    }
}

/// Check options and gold, then build the item (shared by every format).
fn make_item(
    id: String,
    context: Option<String>,
    question: String,
    options: Vec<String>,
    gold: &str,
) -> std::result::Result<Item, String> {
    if question.trim().is_empty() {
        return Err("field 'question' is empty".into());
    }
    if !(2..=26).contains(&options.len()) {
        return Err(format!("needs 2 to 26 options (letters A-Z), found {}", options.len()));
    }
    if let Some(i) = options.iter().position(|o| o.trim().is_empty()) {
        return Err(format!("option {} is empty", letter(i)));
    }
    let gold_idx = letter_index(gold).ok_or_else(|| format!("gold answer '{gold}' is not an option letter"))?;
    if gold_idx >= options.len() {
        return Err(format!(
            "gold letter '{gold}' is outside the options A-{}",
            letter(options.len() - 1)
        ));
    }
    Ok(Item {
        id,
        context,
        question,
        options,
        gold: gold_idx,
    })
}

/// MMLU: `question,A,B,C,D,answer`, no header, RFC 4180 quoting (fields may hold commas and newlines).
pub fn load_mmlu_csv(path: &Path, on_bad: OnBadRow) -> Result<Loaded> {
    let text = crate::fsutil::read_to_string(path)?;
    let mut c = Collector::new(path, on_bad);
    for rec in super::csv::parse_csv(&text).map_err(|(line, msg)| Error::format(path, format!("line {line}: {msg}")))? {
        let (line, mut fields) = rec;
        let row = if fields.len() < 3 {
            Err(format!(
                "expected question, options and answer columns, found {} field(s)",
                fields.len()
            ))
        } else {
            let gold = fields.pop().unwrap_or_default();
            let question = fields.remove(0);
            make_item(format!("{}:{line}", file_name(path)), None, question, fields, &gold)
        };
        c.push(line, row)?;
    }
    Ok(c.out)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One JSON object per line (MedQA, MedMCQA, our JSONL), or a JSON array of such rows.
pub fn load_jsonl(path: &Path, on_bad: OnBadRow) -> Result<Loaded> {
    load_json_rows(path, on_bad, Fields::Source)
}

/// Which side of a row to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fields {
    /// `question`, `options`, `context`.
    Source,
    /// `question_translated`, `options_translated`, `context_translated` (the latter required when the
    /// row has a context).
    Translated,
}

/// Rows of a JSON-lines file or JSON array, with 1-based line numbers (array: row index).
fn json_rows(path: &Path) -> Result<Vec<(usize, std::result::Result<Value, String>)>> {
    let text = crate::fsutil::read_to_string(path)?;
    if text.trim_start().starts_with('[') {
        let rows: Vec<Value> =
            serde_json::from_str(&text).map_err(|e| Error::format(path, format!("invalid JSON array: {e}")))?;
        return Ok(rows.into_iter().enumerate().map(|(i, v)| (i + 1, Ok(v))).collect());
    }
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, serde_json::from_str(l).map_err(|e| format!("invalid JSON: {e}"))))
        .collect())
}

/// Load JSON rows; with [`Fields::Translated`] each item is the translated side and `english` keeps the
/// English side for shots (a row missing either is a bad row).
pub fn load_json_rows(path: &Path, on_bad: OnBadRow, fields: Fields) -> Result<Loaded> {
    let mut c = Collector::new(path, on_bad);
    for (line, row) in json_rows(path)? {
        let id = format!("{}:{line}", file_name(path));
        let pair = row.and_then(|v| {
            let source = item_from_json(&v, &id, Fields::Source)?;
            match fields {
                Fields::Source => Ok((source, None)),
                Fields::Translated => Ok((item_from_json(&v, &id, Fields::Translated)?, Some(source))),
            }
        });
        c.push_pair(line, pair)?;
    }
    Ok(c.out)
}

/// A BioInstructQA file (JSON array or lines) read on its translated side.
pub fn load_bioinstructqa(path: &Path, on_bad: OnBadRow) -> Result<Loaded> {
    load_json_rows(path, on_bad, Fields::Translated)
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Options as a `{letter: text}` object (in letter order) or a list.
fn options_field(v: &Value) -> std::result::Result<Vec<String>, String> {
    match v {
        Value::Object(map) => {
            let mut pairs: Vec<(usize, String)> = Vec::new();
            for (k, t) in map {
                let idx = letter_index(k).ok_or_else(|| format!("option key '{k}' is not a letter"))?;
                let t = t.as_str().ok_or_else(|| format!("option {k} is not a string"))?;
                pairs.push((idx, t.to_string()));
            }
            pairs.sort_by_key(|p| p.0);
            if pairs.iter().enumerate().any(|(i, p)| p.0 != i) {
                return Err("option letters are not contiguous from A".into());
            }
            Ok(pairs.into_iter().map(|p| p.1).collect())
        }
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, t)| {
                t.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("option {} is not a string", letter(i)))
            })
            .collect(),
        _ => Err("field 'options' must be an object or a list".into()),
    }
}

/// Normalise one JSON row. Accepted shapes (first match wins):
/// - MedMCQA: `question`, `opa`..`opd`, `cop` (1-based index of the correct option), `id`;
/// - MedQA, BioInstructQA and our JSONL: `question`, `options` (`{"A": ..}` or a list), optional `context`,
///   gold letter in `correct_answer_letter`, `answer_idx` or `answer`, id in `identifier` or `id`.
///   With [`Fields::Translated`] the `*_translated` fields are read instead; the gold letter is shared.
pub fn item_from_json(v: &Value, default_id: &str, fields: Fields) -> std::result::Result<Item, String> {
    if !v.is_object() {
        return Err("row is not a JSON object".into());
    }
    if v.get("opa").is_some() && fields == Fields::Source {
        let question = str_field(v, "question").ok_or("missing field 'question'")?;
        let mut options = Vec::new();
        for key in ["opa", "opb", "opc", "opd"] {
            options.push(str_field(v, key).ok_or_else(|| format!("missing field '{key}'"))?);
        }
        let cop = v
            .get("cop")
            .and_then(Value::as_u64)
            .ok_or("missing or non-integer field 'cop'")?;
        if !(1..=4).contains(&cop) {
            return Err(format!("field 'cop' = {cop} is outside 1..=4"));
        }
        let id = str_field(v, "id").unwrap_or_else(|| default_id.to_string());
        return make_item(id, None, question, options, &letter(cop as usize - 1).to_string());
    }
    if let (Fields::Translated, Some(e)) = (fields, v.get("translation_error").and_then(Value::as_str)) {
        return Err(format!("translation flagged broken by translate-benchmark: {e}"));
    }
    let suffix = if fields == Fields::Translated {
        "_translated"
    } else {
        ""
    };
    let get = |k: &str| v.get(format!("{k}{suffix}")).filter(|x| !x.is_null());
    let question = get("question")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing field 'question{suffix}'"))?
        .to_string();
    let options = options_field(get("options").ok_or_else(|| format!("missing field 'options{suffix}'"))?)?;
    let context = get("context").and_then(Value::as_str).map(str::to_string);
    if fields == Fields::Translated && context.is_none() && v.get("context").is_some_and(|c| !c.is_null()) {
        return Err("missing field 'context_translated'".into());
    }
    let gold = ["correct_answer_letter", "answer_idx", "answer"]
        .iter()
        .find_map(|k| str_field(v, k).filter(|s| letter_index(s).is_some()))
        .ok_or("missing gold letter (field 'answer_idx', 'correct_answer_letter' or 'answer')")?;
    let id = ["identifier", "id"]
        .iter()
        .find_map(|k| str_field(v, k))
        .unwrap_or_else(|| default_id.to_string());
    make_item(id, context, question, options, &gold)
}

/// PubMedQA PQA-L test split: `{PMID: {QUESTION, CONTEXTS, final_decision}}`, ordered by numeric PMID
/// (a string sort picks a different order: PMIDs have 7 and 8 digits). Options (A) yes (B) no (C) maybe.
pub fn load_pubmedqa(path: &Path, on_bad: OnBadRow) -> Result<Loaded> {
    let text = crate::fsutil::read_to_string(path)?;
    let map: serde_json::Map<String, Value> =
        serde_json::from_str(&text).map_err(|e| Error::format(path, format!("invalid JSON object: {e}")))?;
    let mut keys: Vec<(u64, &String)> = Vec::new();
    let mut c = Collector::new(path, on_bad);
    for (i, k) in map.keys().enumerate() {
        match k.parse::<u64>() {
            Ok(n) => keys.push((n, k)),
            Err(_) => c.push(i + 1, Err(format!("PMID '{k}' is not a number")))?,
        }
    }
    keys.sort();
    for (rank, (_, pmid)) in keys.into_iter().enumerate() {
        let v = &map[pmid];
        let row = (|| {
            let question = str_field(v, "QUESTION").ok_or("missing field 'QUESTION'")?;
            let contexts = v
                .get("CONTEXTS")
                .and_then(Value::as_array)
                .ok_or("missing field 'CONTEXTS'")?;
            let parts: Option<Vec<&str>> = contexts.iter().map(Value::as_str).collect();
            let context = parts.ok_or("field 'CONTEXTS' holds a non-string")?.join(" ");
            let decision = str_field(v, "final_decision").ok_or("missing field 'final_decision'")?;
            let gold = match decision.as_str() {
                "yes" => "A",
                "no" => "B",
                "maybe" => "C",
                other => return Err(format!("field 'final_decision' = '{other}' is not yes/no/maybe")),
            };
            let options = ["yes", "no", "maybe"].map(String::from).to_vec();
            make_item(pmid.clone(), Some(context), question, options, gold)
        })();
        // "line" for a JSON object is the item's rank in PMID order, which is also its pool index.
        c.push(rank + 1, row.map_err(|m| format!("PMID {pmid}: {m}")))?;
    }
    Ok(c.out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_list_parses_all_and_rejects_unknown() {
        assert_eq!(TaskId::parse_list("all").unwrap().len(), 10);
        assert_eq!(
            TaskId::parse_list("pubmedqa,medqa_4,pubmedqa").unwrap(),
            vec![TaskId::PubMedQa, TaskId::MedQa4]
        );
        assert!(TaskId::parse_list("mmlu_foo").is_err());
    }

    #[test]
    fn bad_rows_are_named_skipped_or_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.csv");
        std::fs::write(&p, "q1,a,b,c,d,A\nq2,a,b,c,d,E\nq3,a,,c,d,B\nq4\nq5,a,b,c,d,B\n").unwrap();
        let l = load_mmlu_csv(&p, OnBadRow::Skip).unwrap();
        assert_eq!(l.items.len(), 2);
        assert_eq!(l.bad.iter().map(|b| b.line).collect::<Vec<_>>(), vec![2, 3, 4]);
        assert!(l.bad[0].msg.contains("outside the options"), "{}", l.bad[0]);
        let e = load_mmlu_csv(&p, OnBadRow::Fail).unwrap_err().to_string();
        assert!(e.contains("t.csv") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn json_shapes_and_duplicate_ids() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        let rows = [
            r#"{"question":"q","options":{"A":"x","B":"y","C":"z"},"answer_idx":"C"}"#,
            r#"{"question":"q","opa":"1","opb":"2","opc":"3","opd":"4","cop":2,"id":"u1"}"#,
            r#"{"question":"q","opa":"1","opb":"2","opc":"3","opd":"4","cop":3,"id":"u1"}"#,
            r#"{"question":"q","options":["x","y"],"answer":"B","context":"c","id":"k"}"#,
            r#"{"question":"q","options":{"A":"x"},"answer_idx":"A"}"#,
            r#"not json"#,
        ];
        std::fs::write(&p, rows.join("\n")).unwrap();
        let l = load_jsonl(&p, OnBadRow::Skip).unwrap();
        assert_eq!(l.items.len(), 3);
        assert_eq!(l.items[0].gold_letter(), 'C');
        assert_eq!(l.items[1].gold_letter(), 'B');
        assert_eq!(l.items[2].context.as_deref(), Some("c"));
        let lines: Vec<usize> = l.bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![3, 5, 6]);
        assert!(l.bad[0].msg.contains("duplicate id 'u1'"));
    }

    #[test]
    fn bioinstructqa_prefers_translations() {
        let v: Value = serde_json::from_str(
            r#"{"identifier":"x1","question":"What?","question_translated":"Quoi ?",
                "options":{"A":"yes","B":"no"},"options_translated":{"A":"oui","B":"non"},
                "context":"ctx","context_translated":"contexte","correct_answer_letter":"B"}"#,
        )
        .unwrap();
        let it = item_from_json(&v, "f:1", Fields::Translated).unwrap();
        assert_eq!((it.id.as_str(), it.question.as_str()), ("x1", "Quoi ?"));
        assert_eq!(it.options, vec!["oui", "non"]);
        assert_eq!((it.context.as_deref(), it.gold), (Some("contexte"), 1));
        let en = item_from_json(&v, "f:1", Fields::Source).unwrap();
        assert_eq!(
            (en.question.as_str(), en.context.as_deref(), en.gold),
            ("What?", Some("ctx"), 1)
        );
        let mut untranslated = v.clone();
        untranslated["context_translated"] = Value::Null;
        let e = item_from_json(&untranslated, "f:1", Fields::Translated).unwrap_err();
        assert!(e.contains("context_translated"), "{e}");
    }

    #[test]
    fn pubmedqa_numeric_pmid_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.json");
        let row = |d: &str| format!(r#"{{"QUESTION":"q","CONTEXTS":["a","b"],"final_decision":"{d}"}}"#);
        std::fs::write(
            &p,
            format!(r#"{{"10000000":{},"9000000":{}}}"#, row("maybe"), row("no")),
        )
        .unwrap();
        let l = load_pubmedqa(&p, OnBadRow::Fail).unwrap();
        assert_eq!(l.items[0].id, "9000000");
        assert_eq!((l.items[0].gold_letter(), l.items[1].gold_letter()), ('B', 'C'));
        assert_eq!(l.items[0].context.as_deref(), Some("a b"));
    }
}
