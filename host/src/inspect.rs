//! `edgeq inspect`: config, tensors, schemes, sizes and bits per weight.
use crate::quantize::spec_name;
use edgeq_core::format::record_spec;
use edgeq_runtime::Model;
use serde_json::json;
use std::collections::BTreeMap;

pub fn report(model: &Model<'_>, file_size: u64) -> serde_json::Value {
    let c = &model.cfg;
    let mut tensors = Vec::new();
    let mut by_scheme: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let (mut params, mut bytes) = (0u64, 0u64);
    // linear layers per activation mode (W8A8 records of the ACT_QUANT section)
    let mut activations: BTreeMap<String, u64> = BTreeMap::new();
    for t in model.eqf.tensors() {
        let spec = record_spec(t).map(|s| spec_name(&s)).unwrap_or_else(|_| "?".into());
        let n = t.rows as u64 * t.cols as u64;
        params += n;
        bytes += t.size;
        let e = by_scheme.entry(spec.clone()).or_default();
        e.0 += n;
        e.1 += t.size;
        let act = edgeq_core::TensorRole::from_u16(t.role).and_then(|r| model.eqf.act_quant(r, t.layer));
        let acts = act.map(|a| {
            let mut m = a.mode.name().to_string();
            if a.mode == edgeq_core::ActMode::LlmInt8 {
                m += &format!(" ≥{} ({} outliers)", a.threshold, a.outliers.len());
            }
            m
        });
        if edgeq_core::TensorRole::from_u16(t.role).is_some_and(|r| r.is_linear()) {
            let key = act.map_or("f32/session", |a| a.mode.name());
            *activations.entry(key.to_string()).or_default() += 1;
        }
        let permuted = edgeq_core::TensorRole::from_u16(t.role).is_some_and(|r| model.eqf.input_perm(r, t.layer).is_some());
        tensors.push(json!({"name": t.name_str(), "shape": [t.rows, t.cols], "scheme": spec, "bytes": t.size, "bpw": t.size as f64 * 8.0 / n as f64, "activations": acts, "input_perm": permuted}));
    }
    let metadata: serde_json::Value = serde_json::from_slice(model.eqf.metadata()).unwrap_or(serde_json::Value::Null);
    json!({
        "config": {
            "dim": c.dim, "hidden_dim": c.hidden_dim, "n_layers": c.n_layers, "n_heads": c.n_heads,
            "n_kv_heads": c.n_kv_heads, "head_dim": c.head_dim, "vocab_size": c.vocab_size,
            "max_seq_len": c.max_seq_len, "rope_theta": c.rope_theta, "rms_eps": c.rms_eps,
            "rope_layout": format!("{:?}", c.rope_layout()), "rope_scaling": format!("{:?}", c.rope_scaling()),
            "tied_embeddings": c.tied_embeddings(), "qkv_bias": c.qkv_bias(), "bos": c.bos_id, "eos": c.eos_id,
            "online_hadamard": c.online_hadamard(),
        },
        "params": params,
        "tensor_bytes": bytes,
        "file_bytes": file_size,
        "bits_per_weight": bytes as f64 * 8.0 / params as f64,
        "schemes": by_scheme.iter().map(|(k, (n, b))| (k.clone(), json!({"params": n, "bytes": b, "bpw": *b as f64 * 8.0 / *n as f64}))).collect::<serde_json::Map<_, _>>(),
        "metadata": metadata,
        "format_version": format!("{}.{}", model.eqf.header().version_major, model.eqf.header().version_minor),
        "activations": activations,
        "input_perm_layers": model.eqf.perm_section().records().len(),
        "tensors": tensors,
    })
}

pub fn print_human(r: &serde_json::Value) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let c = &r["config"];
    writeln!(
        out,
        "model: dim {} hidden {} layers {} heads {}/{} (kv) head_dim {} vocab {} ctx {}",
        c["dim"], c["hidden_dim"], c["n_layers"], c["n_heads"], c["n_kv_heads"], c["head_dim"], c["vocab_size"], c["max_seq_len"]
    )?;
    writeln!(
        out,
        "       rope theta {} layout {} scaling {} rms_eps {} tied {} qkv_bias {} online_hadamard {}",
        c["rope_theta"],
        c["rope_layout"].as_str().unwrap_or(""),
        c["rope_scaling"].as_str().unwrap_or(""),
        c["rms_eps"],
        c["tied_embeddings"],
        c["qkv_bias"],
        c["online_hadamard"]
    )?;
    writeln!(
        out,
        "size:  {} params, {:.3} MB tensors, {:.3} MB file, {:.3} bits/weight",
        r["params"],
        r["tensor_bytes"].as_f64().unwrap_or(0.0) / 1e6,
        r["file_bytes"].as_f64().unwrap_or(0.0) / 1e6,
        r["bits_per_weight"].as_f64().unwrap_or(0.0)
    )?;
    writeln!(out, "\n{:<16} {:>12} {:>12} {:>8}", "scheme", "params", "bytes", "bpw")?;
    if let Some(m) = r["schemes"].as_object() {
        for (k, v) in m {
            writeln!(
                out,
                "{:<16} {:>12} {:>12} {:>8.3}",
                k,
                v["params"].as_u64().unwrap_or(0),
                v["bytes"].as_u64().unwrap_or(0),
                v["bpw"].as_f64().unwrap_or(0.0)
            )?;
        }
    }
    if let Some(m) = r["activations"].as_object().filter(|m| m.keys().any(|k| k != "f32/session")) {
        let parts: Vec<String> = m.iter().map(|(k, v)| format!("{v} {k}")).collect();
        writeln!(out, "\nlinear-layer activations: {}", parts.join(", "))?;
    }
    if let Some(n) = r["input_perm_layers"].as_u64().filter(|&n| n > 0) {
        writeln!(
            out,
            "act-order layers stored with permuted input columns (GPTQ dynamic groups; the runtime gathers their input): {n}"
        )?;
    }
    writeln!(
        out,
        "\n{:<24} {:>14} {:<14} {:>10} {:>7}  activations",
        "tensor", "shape", "scheme", "bytes", "bpw"
    )?;
    for t in r["tensors"].as_array().into_iter().flatten() {
        let shape = format!("{}x{}", t["shape"][0], t["shape"][1]);
        writeln!(
            out,
            "{:<24} {:>14} {:<14} {:>10} {:>7.3}  {}",
            t["name"].as_str().unwrap_or(""),
            shape,
            t["scheme"].as_str().unwrap_or(""),
            t["bytes"].as_u64().unwrap_or(0),
            t["bpw"].as_f64().unwrap_or(0.0),
            if t["input_perm"] == true {
                format!("{} (input permuted)", t["activations"].as_str().unwrap_or(""))
                    .trim_start()
                    .to_string()
            } else {
                t["activations"].as_str().unwrap_or("").to_string()
            }
        )?;
    }
    Ok(())
}
