//! The merge methods mergekit 0.1.5 offers that we support, and the parameters each one accepts.
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Linear,
    Slerp,
    TaskArithmetic,
    Ties,
    DareLinear,
    DareTies,
    Breadcrumbs,
    BreadcrumbsTies,
    ModelStock,
    Passthrough,
}

/// How a task vector is thinned before mixing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sparsify {
    /// Keep the `density` fraction of largest magnitudes (TIES).
    Magnitude,
    /// Keep each element with probability `density` (DARE).
    Random,
    /// Drop the `gamma` fraction of largest and enough of the smallest to keep `density` (breadcrumbs).
    MagnitudeOutliers,
}

/// A parameter a method reads; `default: None` means the user must give it.
#[derive(Clone, Copy, Debug)]
pub struct ParamDef {
    pub name: &'static str,
    pub default: Option<f64>,
}

const fn p(name: &'static str, default: Option<f64>) -> ParamDef {
    ParamDef { name, default }
}

const LINEAR_MODEL: &[ParamDef] = &[p("weight", None)];
const LINEAR_GLOBAL: &[ParamDef] = &[p("normalize", Some(1.0))];
const SLERP_GLOBAL: &[ParamDef] = &[p("t", None)];
const TA_MODEL: &[ParamDef] = &[p("weight", None)];
const SPARSE_MODEL: &[ParamDef] = &[p("weight", None), p("density", Some(1.0))];
const BREAD_MODEL: &[ParamDef] = &[p("weight", None), p("density", Some(1.0)), p("gamma", Some(0.01))];
// Defaults as in mergekit 0.1.5 (see the module docs for how other versions differ).
const TA_GLOBAL: &[ParamDef] = &[
    p("normalize", Some(0.0)),
    p("lambda", Some(1.0)),
    p("int8_mask", Some(0.0)),
    p("rescale", Some(0.0)),
];
const TIES_GLOBAL: &[ParamDef] = &[
    p("normalize", Some(1.0)),
    p("lambda", Some(1.0)),
    p("int8_mask", Some(0.0)),
    p("rescale", Some(0.0)),
];
const DARE_GLOBAL: &[ParamDef] = &[
    p("normalize", Some(0.0)),
    p("lambda", Some(1.0)),
    p("int8_mask", Some(0.0)),
    p("rescale", Some(1.0)),
];
const STOCK_GLOBAL: &[ParamDef] = &[p("filter_wise", Some(0.0))];
const PASS_MODEL: &[ParamDef] = &[p("scale", Some(1.0))];

impl Method {
    pub const ALL: [Method; 10] = [
        Method::Linear,
        Method::Slerp,
        Method::TaskArithmetic,
        Method::Ties,
        Method::DareLinear,
        Method::DareTies,
        Method::Breadcrumbs,
        Method::BreadcrumbsTies,
        Method::ModelStock,
        Method::Passthrough,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::Linear => "linear",
            Method::Slerp => "slerp",
            Method::TaskArithmetic => "task_arithmetic",
            Method::Ties => "ties",
            Method::DareLinear => "dare_linear",
            Method::DareTies => "dare_ties",
            Method::Breadcrumbs => "breadcrumbs",
            Method::BreadcrumbsTies => "breadcrumbs_ties",
            Method::ModelStock => "model_stock",
            Method::Passthrough => "passthrough",
        }
    }

    pub fn parse(s: &str) -> Result<Method> {
        Method::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| {
            let known: Vec<_> = Method::ALL.iter().map(|m| m.name()).collect();
            Error::config(
                "merge_method",
                format!("unknown method '{s}' (supported: {})", known.join(", ")),
            )
        })
    }

    /// Parameters looked up per input model.
    pub fn model_params(self) -> &'static [ParamDef] {
        match self {
            Method::Linear => LINEAR_MODEL,
            Method::TaskArithmetic => TA_MODEL,
            Method::Ties | Method::DareLinear | Method::DareTies => SPARSE_MODEL,
            Method::Breadcrumbs | Method::BreadcrumbsTies => BREAD_MODEL,
            Method::Passthrough => PASS_MODEL,
            Method::Slerp | Method::ModelStock => &[],
        }
    }

    /// Parameters looked up once per tensor (slice and top-level scopes).
    pub fn global_params(self) -> &'static [ParamDef] {
        match self {
            Method::Linear => LINEAR_GLOBAL,
            Method::Slerp => SLERP_GLOBAL,
            Method::TaskArithmetic => TA_GLOBAL,
            Method::Ties => TIES_GLOBAL,
            Method::DareLinear | Method::DareTies | Method::Breadcrumbs | Method::BreadcrumbsTies => {
                if matches!(self, Method::Breadcrumbs | Method::BreadcrumbsTies) {
                    TA_GLOBAL
                } else {
                    DARE_GLOBAL
                }
            }
            Method::ModelStock => STOCK_GLOBAL,
            Method::Passthrough => &[],
        }
    }

    pub fn knows_param(self, name: &str) -> bool {
        self.model_params()
            .iter()
            .chain(self.global_params())
            .any(|d| d.name == name)
    }

    /// Methods that compute relative to `base_model` and need one.
    pub fn needs_base(self) -> bool {
        matches!(
            self,
            Method::Slerp
                | Method::TaskArithmetic
                | Method::Ties
                | Method::DareLinear
                | Method::DareTies
                | Method::Breadcrumbs
                | Method::BreadcrumbsTies
                | Method::ModelStock
        )
    }

    pub fn is_task_arithmetic(self) -> bool {
        self.needs_base() && !matches!(self, Method::Slerp | Method::ModelStock)
    }

    pub fn sparsification(self) -> Option<Sparsify> {
        match self {
            Method::Ties => Some(Sparsify::Magnitude),
            Method::DareLinear | Method::DareTies => Some(Sparsify::Random),
            Method::Breadcrumbs | Method::BreadcrumbsTies => Some(Sparsify::MagnitudeOutliers),
            _ => None,
        }
    }

    /// Whether deltas are mixed with TIES sign consensus.
    pub fn consensus(self) -> bool {
        matches!(self, Method::Ties | Method::DareTies | Method::BreadcrumbsTies)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_defaults() {
        for m in Method::ALL {
            assert_eq!(Method::parse(m.name()).unwrap(), m);
        }
        let e = Method::parse("frankenmerge").unwrap_err().to_string();
        assert!(e.contains("merge_method") && e.contains("frankenmerge"), "{e}");
        let d = |m: Method, n: &str| m.global_params().iter().find(|p| p.name == n).and_then(|p| p.default);
        assert_eq!(d(Method::Ties, "normalize"), Some(1.0));
        assert_eq!(d(Method::DareTies, "normalize"), Some(0.0));
        assert_eq!(d(Method::DareTies, "rescale"), Some(1.0));
        assert_eq!(d(Method::Breadcrumbs, "rescale"), Some(0.0));
        assert!(Method::Slerp.knows_param("t") && !Method::Slerp.knows_param("weight"));
    }
}
