//! Slices: which layers of which models feed each block of output layers. A `models:` config is
//! one implicit slice spanning every layer of every model.
use super::config::MergeConfig;
use super::input::InputModel;
use super::methods::Method;
use super::params::ParamMap;
use super::plan::check_names;
use crate::error::{Error, Result};

pub(crate) struct Src {
    pub model: usize,
    pub start: usize,
    pub params: ParamMap,
    pub field: String,
}

pub(crate) struct Slice {
    pub len: usize,
    pub params: ParamMap,
    pub sources: Vec<Src>,
}

pub(crate) fn build_slices(
    config: &MergeConfig,
    method: Method,
    models: &[InputModel],
    idx_of: &dyn Fn(&str) -> Option<usize>,
    base: Option<usize>,
) -> Result<Vec<Slice>> {
    let mut slices = Vec::new();
    if let Some(defs) = &config.slices {
        for (i, s) in defs.iter().enumerate() {
            let scope = format!("slices[{i}].parameters");
            let params = ParamMap::parse(&scope, s.parameters.as_ref())?;
            check_names(method, &scope, &params)?;
            let mut sources = Vec::new();
            let mut len = None;
            for (k, src) in s.sources.iter().enumerate() {
                let field = format!("slices[{i}].sources[{k}]");
                let model = idx_of(&src.model).ok_or_else(|| Error::config(&field, "model not loaded"))?;
                if sources.iter().any(|s: &Src| s.model == model) {
                    return Err(Error::config(
                        format!("{field}.model"),
                        format!("'{}' appears twice in this slice", src.model),
                    ));
                }
                let n = models[model].num_layers()?;
                let [a, b] = src
                    .layer_range
                    .ok_or_else(|| Error::config(format!("{field}.layer_range"), "missing"))?;
                if a < 0 || b <= a || b as usize > n {
                    return Err(Error::config(
                        format!("{field}.layer_range"),
                        format!("[{a}, {b}] is out of bounds for model '{}' with {n} layers", src.model),
                    ));
                }
                let l = (b - a) as usize;
                if *len.get_or_insert(l) != l {
                    return Err(Error::config(
                        format!("{field}.layer_range"),
                        "all sources of a slice must span the same number of layers",
                    ));
                }
                let pscope = format!("{field}.parameters");
                let p = ParamMap::parse(&pscope, src.parameters.as_ref())?;
                check_names(method, &pscope, &p)?;
                sources.push(Src {
                    model,
                    start: a as usize,
                    params: p,
                    field,
                });
            }
            slices.push(Slice {
                len: len.unwrap_or(0),
                params,
                sources,
            });
        }
    } else {
        let mut sources = Vec::new();
        let mut n_layers = None;
        let mut listed: Vec<usize> = config
            .models
            .iter()
            .flatten()
            .filter_map(|m| idx_of(&m.model))
            .collect();
        if let Some(b) = base.filter(|b| method.needs_base() && !listed.contains(b)) {
            listed.push(b);
        }
        for (k, model) in listed.into_iter().enumerate() {
            let n = models[model].num_layers()?;
            if *n_layers.get_or_insert(n) != n {
                return Err(Error::config(
                    "models",
                    format!(
                        "model '{}' has {n} layers but '{}' has {}; use slices with layer_range to merge different depths",
                        models[model].spec,
                        models[sources.first().map_or(0, |s: &Src| s.model)].spec,
                        n_layers.unwrap_or(0)
                    ),
                ));
            }
            sources.push(Src {
                model,
                start: 0,
                params: ParamMap::default(),
                field: format!("models[{k}]"),
            });
        }
        slices.push(Slice {
            len: n_layers.unwrap_or(0),
            params: ParamMap::default(),
            sources,
        });
    }
    for (i, s) in slices.iter().enumerate() {
        check_source_count(method, i, s, base, models)?;
    }
    Ok(slices)
}

fn check_source_count(method: Method, i: usize, s: &Slice, base: Option<usize>, models: &[InputModel]) -> Result<()> {
    let n = s.sources.len();
    let has_base = s.sources.iter().any(|src| Some(src.model) == base);
    let field = if s.sources.first().is_some_and(|f| f.field.starts_with("models")) {
        "models".to_string()
    } else {
        format!("slices[{i}].sources")
    };
    let need = |ok: bool, msg: String| if ok { Ok(()) } else { Err(Error::config(&field, msg)) };
    if method.needs_base() && !has_base {
        let spec = base.map_or("?", |b| models[b].spec.as_str());
        return Err(Error::config(
            &field,
            format!("base_model '{spec}' must be one of the sources"),
        ));
    }
    match method {
        Method::Passthrough => need(
            n == 1,
            format!("passthrough takes exactly one source per slice, got {n}"),
        ),
        Method::Slerp => need(
            n == 2,
            format!("slerp merges exactly two models (base and one other), got {n}"),
        ),
        Method::ModelStock => need(
            n >= 3,
            format!("model_stock needs the base plus at least two models, got {n}"),
        ),
        _ => Ok(()),
    }
}
