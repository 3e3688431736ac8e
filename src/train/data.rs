//! Pre-training data: documents from plain text, JSONL (`text` field), PubTator files, PubMed
//! (MEDLINE) XML and PMC NXML; tokenized, joined with EOS between documents and packed into
//! fixed-length blocks; split into train and held-out sets by document.
use crate::error::{Error, Result};
use crate::source::tokenizer::Tokenizer;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::xml;

/// One training sequence: token ids and which of them are prediction targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    /// `target[i]`: the loss includes predicting `ids[i]` from `ids[..i]` (never true at 0).
    pub target: Vec<bool>,
}

impl Example {
    pub fn n_targets(&self) -> usize {
        self.target.iter().skip(1).filter(|&&t| t).count()
    }
}

#[derive(Debug, Clone, Default)]
pub struct Split {
    pub train: Vec<Example>,
    pub eval: Vec<Example>,
}

/// Files under `path` (itself if a file), sorted so runs are reproducible.
fn files_under(path: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))? {
            let p = e.map_err(|e| Error::io(&d, e))?.path();
            if p.is_dir() {
                stack.push(p);
            } else if doc_kind(&p).is_some() {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Text,
    Jsonl,
    Xml,
}

fn doc_kind(p: &Path) -> Option<Kind> {
    let name = p.file_name()?.to_str()?.to_ascii_lowercase();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    let ext = name.rsplit('.').next()?;
    match ext {
        "txt" | "text" | "md" => Some(Kind::Text),
        "jsonl" | "json" => Some(Kind::Jsonl),
        "xml" | "nxml" => Some(Kind::Xml),
        _ => None,
    }
}

fn read_maybe_gz(p: &Path) -> Result<String> {
    let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
    let bytes = if p.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::format(p, format!("not valid gzip: {e}")))?;
        out
    } else {
        bytes
    };
    String::from_utf8(bytes).map_err(|_| Error::format(p, "not UTF-8 text"))
}

/// Documents in one file. Plain text: blocks separated by blank lines, unless the file is in
/// PubTator form (`PMID|t|title`, `PMID|a|abstract`), which gives one document per PMID.
pub fn read_documents(p: &Path) -> Result<Vec<String>> {
    let kind = doc_kind(p).ok_or_else(|| {
        Error::format(
            p,
            "unknown data format (expected .txt, .jsonl, .xml, .nxml, optionally .gz)",
        )
    })?;
    let text = read_maybe_gz(p)?;
    let docs = match kind {
        Kind::Text => text_documents(&text),
        Kind::Jsonl => jsonl_documents(&text, p)?,
        Kind::Xml => xml::documents(&text).map_err(|m| Error::format(p, m))?,
    };
    Ok(docs.into_iter().filter(|d| !d.trim().is_empty()).collect())
}

fn text_documents(text: &str) -> Vec<String> {
    let is_pubtator = |l: &str| {
        let mut it = l.splitn(3, '|');
        matches!((it.next(), it.next()), (Some(id), Some("t" | "a")) if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
    };
    if text.lines().take(5).any(is_pubtator) {
        let mut docs: Vec<String> = Vec::new();
        let mut cur = String::new();
        for l in text.lines() {
            if is_pubtator(l) {
                let body = l.splitn(3, '|').nth(2).unwrap_or("");
                if l.split('|').nth(1) == Some("t") && !cur.is_empty() {
                    docs.push(std::mem::take(&mut cur));
                }
                if !cur.is_empty() {
                    cur.push('\n');
                }
                cur.push_str(body.trim());
            }
        }
        if !cur.is_empty() {
            docs.push(cur);
        }
        return docs;
    }
    text.split("\n\n").map(|d| d.trim().to_string()).collect()
}

fn jsonl_documents(text: &str, p: &Path) -> Result<Vec<String>> {
    let mut docs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| Error::format(p, format!("line {}: {e}", i + 1)))?;
        let t = v
            .get("text")
            .and_then(|t| t.as_str())
            .ok_or_else(|| Error::format(p, format!("line {}: no string field 'text'", i + 1)))?;
        docs.push(t.to_string());
    }
    Ok(docs)
}

/// All documents under `path`; an error if there are none.
pub fn load_documents(path: &Path) -> Result<Vec<String>> {
    let files = files_under(path)?;
    if files.is_empty() {
        return Err(Error::format(path, "no data files (.txt, .jsonl, .xml, .nxml) found"));
    }
    let mut docs = Vec::new();
    for f in &files {
        docs.extend(read_documents(f)?);
    }
    if docs.is_empty() {
        return Err(Error::format(path, "the data holds no non-empty documents"));
    }
    Ok(docs)
}

/// Concatenate `doc EOS doc EOS ...` and cut into blocks of `seq_len` tokens (the tail that
/// does not fill a block is dropped, as in transformers' run_clm).
pub fn pack(docs: &[Vec<u32>], eos: u32, seq_len: usize) -> Vec<Example> {
    let mut stream = Vec::new();
    for d in docs {
        stream.extend_from_slice(d);
        stream.push(eos);
    }
    stream
        .chunks_exact(seq_len)
        .map(|c| Example {
            ids: c.to_vec(),
            target: std::iter::once(false)
                .chain(std::iter::repeat_n(true, seq_len - 1))
                .collect(),
        })
        .collect()
}

/// Tokenize, shuffle documents with `seed`, hold out `eval_frac` of them (at least one when
/// there are two or more), and pack each side.
pub fn pretraining_split(
    docs: &[String],
    tok: &Tokenizer,
    eos: u32,
    seq_len: usize,
    eval_frac: f64,
    seed: u64,
) -> Result<Split> {
    if seq_len < 2 {
        return Err(Error::invalid("--seq-len", "must be >= 2"));
    }
    let mut ids: Vec<Vec<u32>> = docs.iter().map(|d| tok.encode(d, false)).collect::<Result<_>>()?;
    ids.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let n_eval = if ids.len() >= 2 && eval_frac > 0.0 {
        ((ids.len() as f64 * eval_frac).round() as usize).clamp(1, ids.len() - 1)
    } else {
        0
    };
    let eval = pack(&ids[..n_eval], eos, seq_len);
    let train = pack(&ids[n_eval..], eos, seq_len);
    if train.is_empty() {
        let n: usize = ids[n_eval..].iter().map(|d| d.len() + 1).sum();
        return Err(Error::invalid(
            "data",
            format!("{n} training tokens do not fill one block of --seq-len {seq_len}"),
        ));
    }
    Ok(Split { train, eval })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_joins_with_eos_and_drops_tail() {
        let ex = pack(&[vec![1, 2, 3], vec![4, 5]], 9, 3);
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].ids, vec![1, 2, 3]);
        assert_eq!(ex[1].ids, vec![9, 4, 5]);
        assert_eq!(ex[0].target, vec![false, true, true]);
    }

    #[test]
    fn pubtator_is_one_document_per_pmid() {
        let t = "1|t|Title one\n1|a|Abstract one.\n1\t0\t5\tx\tDisease\n\n2|t|Title two\n2|a|Abstract two.\n";
        let d = text_documents(t);
        assert_eq!(d, vec!["Title one\nAbstract one.", "Title two\nAbstract two."]);
    }

    #[test]
    fn plain_text_splits_on_blank_lines() {
        assert_eq!(text_documents("a b\nc\n\nd\n"), vec!["a b\nc", "d"]);
    }
}
