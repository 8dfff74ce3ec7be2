//! `edgeq calib prepare`: plain text or JSONL (`{"text": ...}`, or
//! `{"messages": [...]}` rendered with the model's chat template) into a
//! calibration set: cleaning, exact-duplicate removal, length filters,
//! stratified sampling by a JSON field, a fixed seed, truncation to
//! `max_tokens`; prints the statistics a user would quote.
use super::data::SplitMix;
use anyhow::{bail, Context, Result};
use edgeq_runtime::tokenizer::Tokenizer;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// JSON field holding the text (JSONL input).
    pub field: String,
    /// JSON field to stratify by (proportional allocation per value).
    pub stratify_by: Option<String>,
    /// Instances to keep (all when None).
    pub samples: Option<usize>,
    /// Truncate each instance to this many tokens.
    pub max_tokens: usize,
    pub min_tokens: usize,
    pub seed: u64,
    /// Chat template (Jinja) for `messages` records.
    pub chat_template: Option<String>,
    /// Skip malformed JSONL lines with a warning instead of failing.
    pub skip_bad_lines: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Instance {
    pub text: String,
    pub tokens: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stratum: Option<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct PrepareStats {
    pub read: usize,
    pub bad_lines: usize,
    pub empty: usize,
    pub duplicates: usize,
    pub too_short: usize,
    pub truncated: usize,
    pub instances: usize,
    pub total_tokens: usize,
    pub mean_tokens: f64,
    pub max_tokens: usize,
    pub per_stratum: BTreeMap<String, usize>,
}

/// Removes control characters (keeping newlines and tabs), collapses runs
/// of spaces/tabs, trims lines and the whole text, and at most two
/// consecutive newlines.
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut blank_run = 0;
    for line in s.replace("\r\n", "\n").split('\n') {
        let mut l = String::new();
        let mut space = false;
        for ch in line.chars() {
            if ch == '\t' || ch == ' ' || ch == '\u{a0}' {
                space = true;
                continue;
            }
            if ch.is_control() {
                continue;
            }
            if space && !l.is_empty() {
                l.push(' ');
            }
            space = false;
            l.push(ch);
        }
        if l.is_empty() {
            blank_run += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank_run > 0 { "\n\n" } else { "\n" });
        }
        blank_run = 0;
        out.push_str(&l);
    }
    out
}

/// Renders chat `messages` with a Jinja chat template (HF semantics:
/// `messages`, `add_generation_prompt=false`, `bos_token`, `eos_token`).
pub fn render_chat(template: &str, messages: &serde_json::Value, bos: &str, eos: &str) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.add_template("chat", template).context("chat template does not parse")?;
    let t = env.get_template("chat")?;
    Ok(t.render(minijinja::context! { messages => messages, add_generation_prompt => false, bos_token => bos, eos_token => eos })?)
}

/// Reads records from `path`: JSONL (one object per line) or plain text
/// (paragraphs separated by blank lines are instances).
fn records(path: &Path, opts: &PrepareOptions, stats: &mut PrepareStats) -> Result<Vec<(String, Option<String>)>> {
    let raw = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let jsonl = path.extension().is_some_and(|e| e == "jsonl" || e == "json");
    let mut out = Vec::new();
    if !jsonl {
        for para in raw.split("\n\n") {
            stats.read += 1;
            out.push((para.to_string(), None));
        }
        return Ok(out);
    }
    for (i, line) in raw.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        stats.read += 1;
        let bad = |why: String| -> Result<()> {
            let msg = format!("{}:{}: {why}", path.display(), i + 1);
            if opts.skip_bad_lines {
                eprintln!("warning: {msg} (skipped)");
                Ok(())
            } else {
                bail!("{msg} (fix the line, or pass --skip-bad-lines)")
            }
        };
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                bad(format!("not valid JSON: {e}"))?;
                stats.bad_lines += 1;
                continue;
            }
        };
        let text = if let Some(t) = v.get(&opts.field).and_then(|t| t.as_str()) {
            t.to_string()
        } else if let Some(m) = v.get("messages") {
            let Some(tpl) = &opts.chat_template else {
                bad("has \"messages\" but the model has no chat template (pass --chat-template FILE)".into())?;
                stats.bad_lines += 1;
                continue;
            };
            match render_chat(tpl, m, "", "") {
                Ok(t) => t,
                Err(e) => {
                    bad(format!("chat template failed: {e:#}"))?;
                    stats.bad_lines += 1;
                    continue;
                }
            }
        } else {
            bad(format!("no \"{}\" string and no \"messages\"", opts.field))?;
            stats.bad_lines += 1;
            continue;
        };
        let stratum = opts.stratify_by.as_ref().map(|k| match v.get(k) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => "<none>".to_string(),
        });
        out.push((text, stratum));
    }
    Ok(out)
}

/// Cut a token sequence back to text: decode the first `max` tokens.
fn truncate_text(tok: &Tokenizer<'_>, text: &str, max: usize) -> Result<(String, usize, bool)> {
    let ids = crate::text::encode(tok, text, false)?;
    if ids.len() <= max {
        return Ok((text.to_string(), ids.len(), false));
    }
    let bytes = crate::text::decode(tok, &ids[..max]);
    let mut t = String::from_utf8_lossy(&bytes).into_owned();
    if tok.flags() & edgeq_runtime::tokenizer::FLAG_ADD_DUMMY_PREFIX != 0 && t.starts_with(' ') {
        t.remove(0); // the dummy prefix comes back on the next encode
    }
    Ok((t, max, true))
}

pub fn prepare(inputs: &[&Path], tok: &Tokenizer<'_>, opts: &PrepareOptions) -> Result<(Vec<Instance>, PrepareStats)> {
    let mut stats = PrepareStats::default();
    let mut seen = HashSet::new();
    let mut pool: Vec<Instance> = Vec::new();
    for p in inputs {
        for (text, stratum) in records(p, opts, &mut stats)? {
            let c = clean(&text);
            if c.is_empty() {
                stats.empty += 1;
                continue;
            }
            if !seen.insert(c.clone()) {
                stats.duplicates += 1;
                continue;
            }
            let (t, n, cut) = truncate_text(tok, &c, opts.max_tokens)?;
            if n < opts.min_tokens {
                stats.too_short += 1;
                continue;
            }
            stats.truncated += usize::from(cut);
            pool.push(Instance {
                text: t,
                tokens: n,
                stratum,
            });
        }
    }
    // Seeded shuffle, then (stratified) selection.
    let mut rng = SplitMix(opts.seed);
    for i in (1..pool.len()).rev() {
        pool.swap(i, rng.below(i + 1));
    }
    let want = opts.samples.unwrap_or(pool.len()).min(pool.len());
    let chosen: Vec<Instance> = if opts.stratify_by.is_some() && want < pool.len() {
        // Proportional allocation (largest remainder), each stratum in shuffled order.
        let mut groups: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
        for inst in pool {
            groups.entry(inst.stratum.clone().unwrap_or_default()).or_default().push(inst);
        }
        let total: usize = groups.values().map(|g| g.len()).sum();
        let mut alloc: Vec<(String, usize, f64)> = groups
            .iter()
            .map(|(k, g)| {
                let exact = want as f64 * g.len() as f64 / total as f64;
                (k.clone(), exact.floor() as usize, exact - exact.floor())
            })
            .collect();
        let mut left = want - alloc.iter().map(|a| a.1).sum::<usize>();
        let mut order: Vec<usize> = (0..alloc.len()).collect();
        order.sort_by(|&a, &b| alloc[b].2.total_cmp(&alloc[a].2).then(a.cmp(&b)));
        for i in order {
            if left == 0 {
                break;
            }
            alloc[i].1 += 1;
            left -= 1;
        }
        let mut out = Vec::new();
        for (k, n, _) in alloc {
            out.extend(groups.remove(&k).unwrap_or_default().into_iter().take(n));
        }
        out
    } else {
        pool.into_iter().take(want).collect()
    };
    stats.instances = chosen.len();
    stats.total_tokens = chosen.iter().map(|i| i.tokens).sum();
    stats.max_tokens = chosen.iter().map(|i| i.tokens).max().unwrap_or(0);
    stats.mean_tokens = stats.total_tokens as f64 / stats.instances.max(1) as f64;
    for i in &chosen {
        if let Some(s) = &i.stratum {
            *stats.per_stratum.entry(s.clone()).or_default() += 1;
        }
    }
    Ok((chosen, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning() {
        assert_eq!(clean("  a\u{7}b \t c  \r\n\n\n\nd  "), "ab c\n\nd");
        assert_eq!(clean("\u{0}\u{1b}"), "");
    }

    #[test]
    fn chat_template_renders() {
        let tpl = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}";
        let msgs = serde_json::json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]);
        assert_eq!(render_chat(tpl, &msgs, "", "").unwrap(), "<|user|>hi\n<|assistant|>yo\n");
    }
}
