//! Parameter values: scalars, gradients interpolated across layers, and filtered lists, plus the
//! precedence in which mergekit looks them up (source > model > slice > top level > default).
use super::config::RawParams;
use crate::error::{Error, Result};
use serde_json::Value;
use std::collections::BTreeMap;

/// A number, or a gradient: a list of numbers interpolated over a slice's layers.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Fixed(f64),
    Gradient(Vec<f64>),
}

impl Scalar {
    /// Value at position `t` in [0,1]: `s = t*(n-1)`, linear interpolation between neighbours.
    pub fn at(&self, t: f64) -> f64 {
        match self {
            Scalar::Fixed(v) => *v,
            Scalar::Gradient(v) => {
                let n = v.len();
                if n == 1 {
                    return v[0];
                }
                let s = t.clamp(0.0, 1.0) * (n - 1) as f64;
                let i = (s.floor() as usize).min(n - 1);
                let f = s - i as f64;
                (1.0 - f) * v[i] + f * v[(i + 1).min(n - 1)]
            }
        }
    }
}

/// One parameter setting: a list of (filter, value) entries scanned in order; the first entry whose
/// filter is absent, `*`, or a substring of the tensor name applies. A plain value is one unfiltered entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    pub entries: Vec<(Option<String>, Scalar)>,
}

impl Setting {
    pub fn parse(field: &str, v: &Value) -> Result<Setting> {
        if let Value::Array(items) = v {
            if !items.is_empty() && items.iter().all(|i| i.is_object()) {
                let mut entries = Vec::new();
                for (k, item) in items.iter().enumerate() {
                    let obj = item
                        .as_object()
                        .ok_or_else(|| Error::config(field, "expected a mapping"))?;
                    let f = format!("{field}[{k}]");
                    if let Some(bad) = obj.keys().find(|key| *key != "filter" && *key != "value") {
                        return Err(Error::config(
                            f,
                            format!("unknown key '{bad}' (expected filter, value)"),
                        ));
                    }
                    let filter = match obj.get("filter") {
                        None | Some(Value::Null) => None,
                        Some(Value::String(s)) => Some(s.clone()),
                        Some(_) => return Err(Error::config(f, "filter must be a string")),
                    };
                    let value = obj
                        .get("value")
                        .ok_or_else(|| Error::config(f.clone(), "missing 'value'"))?;
                    entries.push((filter, scalar(&format!("{f}.value"), value)?));
                }
                return Ok(Setting { entries });
            }
        }
        Ok(Setting {
            entries: vec![(None, scalar(field, v)?)],
        })
    }

    pub fn evaluate(&self, tensor: &str, t: f64) -> Option<f64> {
        self.entries
            .iter()
            .find(|(f, _)| match f {
                None => true,
                Some(f) => f == "*" || tensor.contains(f.as_str()),
            })
            .map(|(_, v)| v.at(t))
    }
}

fn number(field: &str, v: &Value) -> Result<f64> {
    match v {
        Value::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
        Value::Number(n) => n
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| Error::config(field, "not a finite number")),
        other => Err(Error::config(field, format!("expected a number, got {other}"))),
    }
}

fn scalar(field: &str, v: &Value) -> Result<Scalar> {
    match v {
        Value::Array(items) if items.is_empty() => Err(Error::config(field, "empty gradient list")),
        Value::Array(items) => Ok(Scalar::Gradient(
            items
                .iter()
                .enumerate()
                .map(|(i, x)| number(&format!("{field}[{i}]"), x))
                .collect::<Result<_>>()?,
        )),
        _ => Ok(Scalar::Fixed(number(field, v)?)),
    }
}

/// A parsed `parameters:` block.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParamMap(pub BTreeMap<String, Setting>);

impl ParamMap {
    /// Parse a block; `scope` names it in errors (e.g. `models[1].parameters`).
    pub fn parse(scope: &str, raw: Option<&RawParams>) -> Result<ParamMap> {
        let mut out = BTreeMap::new();
        for (k, v) in raw.into_iter().flatten() {
            out.insert(k.clone(), Setting::parse(&format!("{scope}.{k}"), v)?);
        }
        Ok(ParamMap(out))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(|k| k.as_str())
    }
}

/// Look `name` up in `scopes` (highest precedence first); a filtered list with no matching entry
/// falls through to the next scope, as in mergekit.
pub fn lookup(scopes: &[&ParamMap], name: &str, tensor: &str, t: f64) -> Option<f64> {
    scopes
        .iter()
        .filter_map(|s| s.0.get(name))
        .find_map(|setting| setting.evaluate(tensor, t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn gradient_interpolates_like_mergekit() {
        let g = Scalar::Gradient(vec![0.0, 0.5, 0.3, 0.7, 1.0]);
        let at = |j: f64| g.at(j / 3.0);
        assert_eq!(at(0.0), 0.0);
        assert!((at(1.0) - 0.433333333).abs() < 1e-8);
        assert!((at(2.0) - 0.566666667).abs() < 1e-8);
        assert_eq!(at(3.0), 1.0);
        assert_eq!(Scalar::Gradient(vec![0.25]).at(0.7), 0.25);
        assert_eq!(Scalar::Gradient(vec![0.0, 1.0]).at(0.5), 0.5);
    }

    #[test]
    fn filters_first_match_wins() {
        let v = json!([{"filter": "self_attn", "value": 0.1}, {"filter": "mlp", "value": [1, 0]}, {"value": 0.5}]);
        let s = Setting::parse("parameters.t", &v).unwrap();
        assert_eq!(s.evaluate("model.layers.0.self_attn.q_proj.weight", 0.0), Some(0.1));
        assert_eq!(s.evaluate("model.layers.3.mlp.up_proj.weight", 1.0), Some(0.0));
        assert_eq!(s.evaluate("lm_head.weight", 0.0), Some(0.5));
        let only = Setting::parse("p", &json!([{"filter": "mlp", "value": 2}])).unwrap();
        assert_eq!(only.evaluate("lm_head.weight", 0.0), None);
        let star = Setting::parse("p", &json!([{"filter": "*", "value": 3}])).unwrap();
        assert_eq!(star.evaluate("anything", 0.0), Some(3.0));
    }

    #[test]
    fn precedence_and_fallthrough() {
        let model = ParamMap::parse("m", json!({"weight": [{"filter": "mlp", "value": 0.9}]}).as_object()).unwrap();
        let slice = ParamMap::parse("s", json!({"weight": 0.4}).as_object()).unwrap();
        let global = ParamMap::parse("g", json!({"weight": 0.1, "density": 0.5}).as_object()).unwrap();
        let scopes = [&model, &slice, &global];
        assert_eq!(
            lookup(&scopes, "weight", "model.layers.0.mlp.up_proj.weight", 0.0),
            Some(0.9)
        );
        // The model's filter list does not match: the slice value applies.
        assert_eq!(
            lookup(&scopes, "weight", "model.layers.0.self_attn.q_proj.weight", 0.0),
            Some(0.4)
        );
        assert_eq!(lookup(&scopes, "density", "x", 0.0), Some(0.5));
        assert_eq!(lookup(&scopes, "gamma", "x", 0.0), None);
    }

    #[test]
    fn bad_values_name_the_field() {
        let e = Setting::parse("parameters.t", &json!("high")).unwrap_err();
        assert!(e.to_string().contains("parameters.t"), "{e}");
        let e = Setting::parse("parameters.t", &json!([{"filter": "x", "valu": 1}])).unwrap_err();
        assert!(e.to_string().contains("valu"), "{e}");
        assert_eq!(Setting::parse("p", &json!(true)).unwrap().evaluate("x", 0.0), Some(1.0));
    }
}
