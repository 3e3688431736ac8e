//! BioMistral's few-shot prompt and shot selection. The bytes matter: a one-character difference changes
//! tokens and therefore results, so the separators (space-newline-space) are spelled out once here.
use super::tasks::{letter, Item};

pub const INSTRUCTION: &str = "The following are multiple choice questions (with answers) about medical knowledge. \n ";
/// Between shots, between an example's lines and between options.
pub const SEP: &str = " \n ";

/// One example: `[context SEP] **Question:** q SEP (A) a SEP (B) b ... SEP **Answer:**(` + gold letter for shots.
pub fn format_example(item: &Item, with_answer: bool) -> String {
    let mut s = String::new();
    if let Some(ctx) = &item.context {
        s.push_str(ctx);
        s.push_str(SEP);
    }
    s.push_str("**Question:** ");
    s.push_str(&item.question);
    s.push_str(SEP);
    let opts: Vec<String> = item
        .options
        .iter()
        .enumerate()
        .map(|(i, o)| format!("({}) {o}", letter(i)))
        .collect();
    s.push_str(&opts.join(SEP));
    s.push_str(SEP);
    s.push_str("**Answer:**(");
    if with_answer {
        s.push(item.gold_letter());
    }
    s
}

/// Instruction + shots (joined by SEP) + SEP + test item, ending in `**Answer:**(`.
/// Zero-shot is instruction + test item: the instruction already ends in SEP, so no second separator.
pub fn build_prompt(shots: &[&Item], item: &Item) -> String {
    let mut s = String::from(INSTRUCTION);
    let shots: Vec<String> = shots.iter().map(|sh| format_example(sh, true)).collect();
    if !shots.is_empty() {
        s.push_str(&shots.join(SEP));
        s.push_str(SEP);
    }
    s.push_str(&format_example(item, false));
    s
}

/// Where shots come from.
#[derive(Debug, Clone, Copy)]
pub enum ShotSource {
    /// The task's own pool: shot set `k` of item `i` uses items `(i + 1 + shots*k + j) mod n`, j < shots
    /// (with 3 shots this is the protocol's `(i + 1 + 3k + j) mod n`).
    Rotating,
    /// A separate training pool of `len` items, sampled without replacement with a seed per (item, set).
    Drawn { len: usize, seed: u64 },
}

/// Pool indices of the shots for item `i` of a pool of `n`, shot set `k`.
pub fn shot_indices(source: ShotSource, i: usize, n: usize, k: usize, shots: usize) -> Vec<usize> {
    match source {
        ShotSource::Rotating => (0..shots).map(|j| (i + 1 + shots * k + j) % n.max(1)).collect(),
        ShotSource::Drawn { len, seed } => {
            // splitmix64 rather than `rand::StdRng`: its output is fixed forever, so a resumed or re-run
            // evaluation with the same seed picks the same shots whatever the rand version.
            let mut state =
                seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (k as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
            let mut pool: Vec<usize> = (0..len).collect();
            let take = shots.min(len);
            for j in 0..take {
                let r = splitmix64(&mut state);
                let pick = j + (r % (len - j) as u64) as usize;
                pool.swap(j, pick);
            }
            pool.truncate(take);
            pool
        }
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(q: &str, opts: &[&str], gold: usize, ctx: Option<&str>) -> Item {
        Item {
            id: q.into(),
            context: ctx.map(String::from),
            question: q.into(),
            options: opts.iter().map(|s| s.to_string()).collect(),
            gold,
        }
    }

    #[test]
    fn mmlu_style_prompt_bytes() {
        let a = item("Q1?", &["a", "b", "c", "d"], 2, None);
        let b = item("Q2?", &["w", "x", "y", "z"], 0, None);
        let t = item("T?", &["1", "2", "3", "4"], 1, None);
        let p = build_prompt(&[&a, &b], &t);
        assert_eq!(
            p,
            "The following are multiple choice questions (with answers) about medical knowledge. \n \
**Question:** Q1? \n (A) a \n (B) b \n (C) c \n (D) d \n **Answer:**(C \n \
**Question:** Q2? \n (A) w \n (B) x \n (C) y \n (D) z \n **Answer:**(A \n \
**Question:** T? \n (A) 1 \n (B) 2 \n (C) 3 \n (D) 4 \n **Answer:**("
        );
    }

    #[test]
    fn five_options_and_zero_shot() {
        let t = item("T?", &["1", "2", "3", "4", "5"], 4, None);
        assert_eq!(
            build_prompt(&[], &t),
            "The following are multiple choice questions (with answers) about medical knowledge. \n \
**Question:** T? \n (A) 1 \n (B) 2 \n (C) 3 \n (D) 4 \n (E) 5 \n **Answer:**("
        );
    }

    #[test]
    fn pubmedqa_context_in_shots_and_item() {
        let s = item("Does it?", &["yes", "no", "maybe"], 0, Some("Background. Results."));
        let t = item("Is it?", &["yes", "no", "maybe"], 2, Some("Ctx."));
        assert_eq!(
            build_prompt(&[&s], &t),
            "The following are multiple choice questions (with answers) about medical knowledge. \n \
Background. Results. \n **Question:** Does it? \n (A) yes \n (B) no \n (C) maybe \n **Answer:**(A \n \
Ctx. \n **Question:** Is it? \n (A) yes \n (B) no \n (C) maybe \n **Answer:**("
        );
    }

    #[test]
    fn rotating_shot_rule_wraps() {
        let r = ShotSource::Rotating;
        assert_eq!(shot_indices(r, 0, 100, 0, 3), vec![1, 2, 3]);
        assert_eq!(shot_indices(r, 0, 100, 2, 3), vec![7, 8, 9]);
        assert_eq!(shot_indices(r, 98, 100, 1, 3), vec![2, 3, 4]);
        assert!(shot_indices(r, 5, 10, 0, 0).is_empty());
    }

    #[test]
    fn drawn_shots_are_distinct_and_deterministic() {
        let d = ShotSource::Drawn { len: 50, seed: 7 };
        let a = shot_indices(d, 3, 10, 1, 3);
        assert_eq!(a, shot_indices(d, 3, 10, 1, 3));
        assert_ne!(a, shot_indices(d, 3, 10, 2, 3));
        let mut s = a.clone();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 3);
        assert!(a.iter().all(|&x| x < 50));
    }
}
