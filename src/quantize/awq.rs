//! AutoAWQ checkpoint format: `quantization_config` parsing, GEMM/GEMV int4 pack/unpack, loading
//! a module's `qweight`/`qzeros`/`scales` into an [`AwqLinear`], and writing checkpoints.
//!
//! Packing (verified against AutoAWQ 0.2.9, see tests/fixtures/awq): every int32 is read as u32,
//! nibble j = bits 4j..4j+3.
//! * GEMM: `qweight` [in, out/8], packed along the *output* dim with the interleave
//!   [`GEMM_ORDER`]; `qzeros` [in/gs, out/8] likewise; `scales` f16 [in/gs, out].
//! * GEMV: `qweight` [out, in/8] packed along the *input* dim in natural order; `qzeros`
//!   [out, width] and `scales` [out, 8*width], width from [`gemv_zeros_width`], padding zero.
use super::awq_linear::AwqLinear;
use super::rtn::{check_group_size, GroupQuant};
use crate::error::{Error, Result};
use crate::fsutil;
use half::f16;
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

/// Nibble j of a GEMM int32 holds output `8c + GEMM_ORDER[j]`.
pub const GEMM_ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwqVersion {
    Gemm,
    Gemv,
}

/// The `quantization_config` block of an AutoAWQ checkpoint's config.json.
#[derive(Debug, Clone, PartialEq)]
pub struct AwqConfig {
    pub bits: u32,
    pub group_size: usize,
    pub zero_point: bool,
    pub version: AwqVersion,
    pub modules_to_not_convert: Vec<String>,
}

impl Default for AwqConfig {
    fn default() -> Self {
        AwqConfig {
            bits: 4,
            group_size: 128,
            zero_point: true,
            version: AwqVersion::Gemm,
            modules_to_not_convert: Vec::new(),
        }
    }
}

const QC: &str = "quantization_config";

impl AwqConfig {
    /// Parse from a whole config.json (reads its `quantization_config`) or from the block itself.
    /// Accepts both transformers' keys (`bits`, `group_size`) and AutoAWQ's (`w_bit`, `q_group_size`).
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let q = v.get(QC).unwrap_or(v);
        let field = |k: &str| format!("{QC}.{k}");
        let get = |keys: &[&str]| keys.iter().find_map(|k| q.get(*k).filter(|x| !x.is_null()));
        if let Some(m) = get(&["quant_method"]) {
            let m = m.as_str().unwrap_or("");
            if !m.eq_ignore_ascii_case("awq") {
                return Err(Error::config(field("quant_method"), format!("'{m}' is not 'awq'")));
            }
        }
        let bits = get(&["bits", "w_bit"])
            .ok_or_else(|| Error::config(field("bits"), "missing"))?
            .as_u64()
            .ok_or_else(|| Error::config(field("bits"), "not a non-negative integer"))?;
        if bits != 4 {
            return Err(Error::config(
                field("bits"),
                format!("{bits} bits; only 4-bit AWQ is supported"),
            ));
        }
        let gs = get(&["group_size", "q_group_size"])
            .ok_or_else(|| Error::config(field("group_size"), "missing"))?
            .as_i64()
            .ok_or_else(|| Error::config(field("group_size"), "not an integer"))?;
        if gs <= 0 || gs % 8 != 0 {
            return Err(Error::config(
                field("group_size"),
                format!("{gs}; must be a positive multiple of 8"),
            ));
        }
        let zero_point = match get(&["zero_point"]) {
            None => true,
            Some(z) => z
                .as_bool()
                .ok_or_else(|| Error::config(field("zero_point"), "not a boolean"))?,
        };
        if !zero_point {
            return Err(Error::config(
                field("zero_point"),
                "only zero_point = true is supported",
            ));
        }
        let version = match get(&["version"]).map(|v| v.as_str().unwrap_or("").to_ascii_lowercase()) {
            None => AwqVersion::Gemm,
            Some(s) if s == "gemm" => AwqVersion::Gemm,
            Some(s) if s == "gemv" => AwqVersion::Gemv,
            Some(s) => return Err(Error::config(field("version"), format!("'{s}'; supported: gemm, gemv"))),
        };
        let modules_to_not_convert = match get(&["modules_to_not_convert"]) {
            None => Vec::new(),
            Some(a) => a
                .as_array()
                .ok_or_else(|| Error::config(field("modules_to_not_convert"), "not an array"))?
                .iter()
                .map(|s| s.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| Error::config(field("modules_to_not_convert"), "entries must be strings"))?,
        };
        Ok(AwqConfig {
            bits: bits as u32,
            group_size: gs as usize,
            zero_point,
            version,
            modules_to_not_convert,
        })
    }

    /// The block as transformers / AutoAWQ write it into config.json.
    pub fn to_json(&self) -> serde_json::Value {
        let not_convert = if self.modules_to_not_convert.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::json!(self.modules_to_not_convert)
        };
        serde_json::json!({
            "quant_method": "awq",
            "bits": self.bits,
            "group_size": self.group_size,
            "zero_point": self.zero_point,
            "version": match self.version { AwqVersion::Gemm => "gemm", AwqVersion::Gemv => "gemv" },
            "modules_to_not_convert": not_convert,
        })
    }

    /// Whether a module (e.g. `model.layers.0.mlp.gate_proj`) stays unquantized.
    pub fn skips(&self, module: &str) -> bool {
        self.modules_to_not_convert.iter().any(|m| module.contains(m.as_str()))
    }
}

/// AutoAWQ's `calculate_zeros_width` for GEMV: int32 columns of `qzeros`.
pub fn gemv_zeros_width(in_features: usize, group_size: usize) -> Result<usize> {
    let mult = match group_size {
        g if g >= 128 => 1,
        64 => 2,
        32 => 4,
        g => {
            return Err(Error::invalid(
                "group_size",
                format!("{g}: AutoAWQ GEMV supports 32, 64 or >= 128"),
            ))
        }
    };
    Ok((in_features / group_size).div_ceil(8).div_ceil(mult) * mult)
}

/// Packed int32 buffers of one module, row-major, with their shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct AwqPacked {
    pub qweight: Vec<i32>,
    pub qweight_shape: [usize; 2],
    pub qzeros: Vec<i32>,
    pub qzeros_shape: [usize; 2],
    pub scales: Vec<f16>,
    pub scales_shape: [usize; 2],
}

pub(crate) fn nib(word: u32, j: usize) -> u8 {
    ((word >> (4 * j)) & 0xF) as u8
}

/// Pack `gq` in AutoAWQ's GEMM layout.
pub fn pack_gemm(gq: &GroupQuant) -> Result<AwqPacked> {
    gq.validate("pack_gemm")?;
    let (o, i, ng) = (gq.out_features, gq.in_features, gq.n_groups());
    if !o.is_multiple_of(8) {
        return Err(Error::invalid(
            "out_features",
            format!("{o} is not a multiple of 8 (GEMM packing)"),
        ));
    }
    let pack = |get: &dyn Fn(usize) -> u8, c: usize| -> i32 {
        let mut w = 0u32;
        for (j, &m) in GEMM_ORDER.iter().enumerate() {
            w |= (get(8 * c + m) as u32) << (4 * j);
        }
        w as i32
    };
    let mut qweight = Vec::with_capacity(i * o / 8);
    for r in 0..i {
        for c in 0..o / 8 {
            qweight.push(pack(&|out| gq.q[out * i + r], c));
        }
    }
    let mut qzeros = Vec::with_capacity(ng * o / 8);
    let mut scales = Vec::with_capacity(ng * o);
    for g in 0..ng {
        for c in 0..o / 8 {
            qzeros.push(pack(&|out| gq.zeros[out * ng + g], c));
        }
        scales.extend((0..o).map(|out| gq.scales[out * ng + g]));
    }
    Ok(AwqPacked {
        qweight,
        qweight_shape: [i, o / 8],
        qzeros,
        qzeros_shape: [ng, o / 8],
        scales,
        scales_shape: [ng, o],
    })
}

/// Pack `gq` in AutoAWQ's GEMV layout.
pub fn pack_gemv(gq: &GroupQuant) -> Result<AwqPacked> {
    gq.validate("pack_gemv")?;
    let (o, i, ng) = (gq.out_features, gq.in_features, gq.n_groups());
    if !i.is_multiple_of(8) {
        return Err(Error::invalid(
            "in_features",
            format!("{i} is not a multiple of 8 (GEMV packing)"),
        ));
    }
    let width = gemv_zeros_width(i, gq.group_size)?;
    let pack8 = |vals: &[u8]| -> i32 {
        let w = vals
            .iter()
            .enumerate()
            .fold(0u32, |w, (j, &v)| w | ((v as u32) << (4 * j)));
        w as i32
    };
    let qweight: Vec<i32> = gq.q.chunks_exact(8).map(pack8).collect();
    let mut qzeros = vec![0i32; o * width];
    let mut scales = vec![f16::ZERO; o * width * 8];
    for r in 0..o {
        let z = &gq.zeros[r * ng..(r + 1) * ng];
        for (c, chunk) in z.chunks(8).enumerate() {
            qzeros[r * width + c] = pack8(chunk);
        }
        scales[r * width * 8..r * width * 8 + ng].copy_from_slice(&gq.scales[r * ng..(r + 1) * ng]);
    }
    Ok(AwqPacked {
        qweight,
        qweight_shape: [o, i / 8],
        qzeros,
        qzeros_shape: [o, width],
        scales,
        scales_shape: [o, width * 8],
    })
}

fn shape_err(name: &str, got: &[usize], want: &[usize]) -> Error {
    Error::tensor(name, format!("shape {got:?}, expected {want:?}"))
}

/// Shapes and element counts of one module's `qweight`, `qzeros` and `scales`.
#[derive(Clone, Copy)]
pub(crate) struct Dims {
    shapes: [[usize; 2]; 3],
    lens: [usize; 3],
}

impl AwqPacked {
    fn dims(&self) -> Dims {
        Dims {
            shapes: [self.qweight_shape, self.qzeros_shape, self.scales_shape],
            lens: [self.qweight.len(), self.qzeros.len(), self.scales.len()],
        }
    }
}

/// GEMM shapes checked against the group size: `(in, out, groups)`.
pub(crate) fn gemm_dims(prefix: &str, d: Dims, group_size: usize) -> Result<(usize, usize, usize)> {
    let [i, oc] = d.shapes[0];
    check_group_size(&format!("{prefix}.qweight"), i, group_size)?;
    let ng = i / group_size;
    check_packed(prefix, d, [[i, oc], [ng, oc], [ng, oc * 8]])?;
    Ok((i, oc * 8, ng))
}

/// GEMV shapes checked against the group size: `(out, in, groups, qzeros width)`.
pub(crate) fn gemv_dims(prefix: &str, d: Dims, group_size: usize) -> Result<(usize, usize, usize, usize)> {
    let [o, ic] = d.shapes[0];
    let i = ic * 8;
    check_group_size(&format!("{prefix}.qweight"), i, group_size)?;
    let ng = i / group_size;
    let width = d.shapes[1][1];
    if width * 8 < ng {
        return Err(Error::tensor(
            format!("{prefix}.qzeros"),
            format!("{width} int32 columns cannot hold {ng} group zero points"),
        ));
    }
    check_packed(prefix, d, [[o, ic], [o, width], [o, width * 8]])?;
    Ok((o, i, ng, width))
}

/// GEMM zero points and scales as `[out, groups]`, from word and scale accessors of `qzeros`
/// `[groups, out / 8]` and `scales` `[groups, out]`.
pub(crate) fn gemm_zeros_scales(
    o: usize,
    ng: usize,
    qzeros: impl Fn(usize) -> u32,
    scales: impl Fn(usize) -> f16,
) -> (Vec<u8>, Vec<f16>) {
    let oc = o / 8;
    let mut zeros = vec![0u8; o * ng];
    let mut sc = vec![f16::ZERO; o * ng];
    for g in 0..ng {
        for c in 0..oc {
            let w = qzeros(g * oc + c);
            for (j, &m) in GEMM_ORDER.iter().enumerate() {
                zeros[(8 * c + m) * ng + g] = nib(w, j);
            }
        }
        for out in 0..o {
            sc[out * ng + g] = scales(g * o + out);
        }
    }
    (zeros, sc)
}

/// GEMV zero points and scales as `[out, groups]`, from accessors of `qzeros` `[out, width]`
/// and `scales` `[out, 8 * width]` (the padding left out).
pub(crate) fn gemv_zeros_scales(
    o: usize,
    ng: usize,
    width: usize,
    qzeros: impl Fn(usize) -> u32,
    scales: impl Fn(usize) -> f16,
) -> (Vec<u8>, Vec<f16>) {
    let mut zeros = Vec::with_capacity(o * ng);
    let mut sc = Vec::with_capacity(o * ng);
    for r in 0..o {
        zeros.extend((0..ng).map(|g| nib(qzeros(r * width + g / 8), g % 8)));
        sc.extend((0..ng).map(|g| scales(r * width * 8 + g)));
    }
    (zeros, sc)
}

/// Unpack AutoAWQ GEMM buffers. `prefix` names the module in errors.
pub fn unpack_gemm(prefix: &str, p: &AwqPacked, group_size: usize) -> Result<GroupQuant> {
    let (i, o, ng) = gemm_dims(prefix, p.dims(), group_size)?;
    let oc = o / 8;
    let mut q = vec![0u8; o * i];
    // Tiled by 16 words (128 outputs, one 64-byte line of each `qweight` row) per task, and 64
    // inputs at a time through a small buffer: writing straight to `q` touched `o` rows per
    // input, 4 KiB-multiple apart, so every store fell in the same cache set, and unpacking
    // took most of the load time of an AWQ checkpoint.
    const WORDS: usize = 16;
    const INPUTS: usize = 64;
    q.par_chunks_mut(8 * WORDS * i).enumerate().for_each(|(t, dst)| {
        let (c0, cw) = (t * WORDS, dst.len() / (8 * i));
        let mut tile = [[0u8; INPUTS]; 8 * WORDS];
        for r0 in (0..i).step_by(INPUTS) {
            let n = INPUTS.min(i - r0);
            for (dr, words) in p.qweight.chunks_exact(oc).skip(r0).take(n).enumerate() {
                for (c, &w) in words[c0..c0 + cw].iter().enumerate() {
                    for (j, &m) in GEMM_ORDER.iter().enumerate() {
                        tile[8 * c + m][dr] = nib(w as u32, j);
                    }
                }
            }
            for (out, row) in tile.iter().enumerate().take(8 * cw) {
                dst[out * i + r0..out * i + r0 + n].copy_from_slice(&row[..n]);
            }
        }
    });
    let (zeros, scales) = gemm_zeros_scales(o, ng, |k| p.qzeros[k] as u32, |k| p.scales[k]);
    Ok(GroupQuant {
        out_features: o,
        in_features: i,
        group_size,
        q,
        zeros,
        scales,
    })
}

/// Unpack AutoAWQ GEMV buffers.
pub fn unpack_gemv(prefix: &str, p: &AwqPacked, group_size: usize) -> Result<GroupQuant> {
    let (o, i, ng, width) = gemv_dims(prefix, p.dims(), group_size)?;
    let q: Vec<u8> = p
        .qweight
        .iter()
        .flat_map(|&w| (0..8).map(move |j| nib(w as u32, j)))
        .collect();
    let (zeros, scales) = gemv_zeros_scales(o, ng, width, |k| p.qzeros[k] as u32, |k| p.scales[k]);
    Ok(GroupQuant {
        out_features: o,
        in_features: i,
        group_size,
        q,
        zeros,
        scales,
    })
}

fn check_packed(prefix: &str, d: Dims, want: [[usize; 2]; 3]) -> Result<()> {
    for (k, suffix) in ["qweight", "qzeros", "scales"].iter().enumerate() {
        let (shape, w) = (d.shapes[k], want[k]);
        if shape != w || d.lens[k] != w[0] * w[1] {
            return Err(shape_err(&format!("{prefix}.{suffix}"), &shape, &w));
        }
    }
    Ok(())
}

/// A 2-D tensor of the given dtype as its stored little-endian bytes.
fn view_2d<'a>(st: &SafeTensors<'a>, name: &str, dtype: Dtype) -> Result<(&'a [u8], [usize; 2])> {
    let t = st
        .tensor(name)
        .map_err(|_| Error::tensor(name, "missing from the checkpoint"))?;
    if t.dtype() != dtype {
        return Err(Error::tensor(
            name,
            format!("dtype {:?}, expected {dtype:?}", t.dtype()),
        ));
    }
    match t.shape() {
        &[r, c] => Ok((t.data(), [r, c])),
        s => Err(Error::tensor(name, format!("shape {s:?} is not 2-D"))),
    }
}

/// One module's `qweight`, `qzeros` (int32) and `scales` (f16) as stored: little-endian bytes
/// borrowed from the mapped checkpoint, dtypes checked, shapes not yet.
pub struct AwqBytes<'a> {
    pub qweight: &'a [u8],
    pub qzeros: &'a [u8],
    pub scales: &'a [u8],
    pub shapes: [[usize; 2]; 3],
}

impl<'a> AwqBytes<'a> {
    /// Read `<prefix>.qweight/.qzeros/.scales`.
    pub fn read(st: &SafeTensors<'a>, prefix: &str) -> Result<Self> {
        let (qweight, qw) = view_2d(st, &format!("{prefix}.qweight"), Dtype::I32)?;
        let (qzeros, qz) = view_2d(st, &format!("{prefix}.qzeros"), Dtype::I32)?;
        let (scales, sc) = view_2d(st, &format!("{prefix}.scales"), Dtype::F16)?;
        Ok(AwqBytes {
            qweight,
            qzeros,
            scales,
            shapes: [qw, qz, sc],
        })
    }

    pub(crate) fn dims(&self) -> Dims {
        Dims {
            shapes: self.shapes,
            lens: [self.qweight.len() / 4, self.qzeros.len() / 4, self.scales.len() / 2],
        }
    }

    /// Int32 `k` of a buffer, as u32.
    pub(crate) fn word(b: &[u8], k: usize) -> u32 {
        u32::from_le_bytes([b[4 * k], b[4 * k + 1], b[4 * k + 2], b[4 * k + 3]])
    }

    pub(crate) fn scale(&self, k: usize) -> f16 {
        f16::from_le_bytes([self.scales[2 * k], self.scales[2 * k + 1]])
    }

    /// An owned copy as int32 words.
    pub fn packed(&self) -> AwqPacked {
        let words = |b: &[u8]| (0..b.len() / 4).map(|k| Self::word(b, k) as i32).collect();
        AwqPacked {
            qweight: words(self.qweight),
            qweight_shape: self.shapes[0],
            qzeros: words(self.qzeros),
            qzeros_shape: self.shapes[1],
            scales: (0..self.scales.len() / 2).map(|k| self.scale(k)).collect(),
            scales_shape: self.shapes[2],
        }
    }
}

/// Read any float tensor (f16, bf16, f32) as f32.
pub(crate) fn floats(name: &str, dtype: Dtype, b: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        d => return Err(Error::tensor(name, format!("dtype {d:?} is not a float type"))),
    })
}

/// Read `<prefix>.qweight/.qzeros/.scales` (dtypes checked) as owned words.
pub fn load_awq_packed(st: &SafeTensors, prefix: &str, _cfg: &AwqConfig) -> Result<AwqPacked> {
    Ok(AwqBytes::read(st, prefix)?.packed())
}

/// Load and unpack one module's codes, scales and zeros in the plain layout.
pub fn load_awq_quant(st: &SafeTensors, prefix: &str, cfg: &AwqConfig) -> Result<GroupQuant> {
    let p = load_awq_packed(st, prefix, cfg)?;
    match cfg.version {
        AwqVersion::Gemm => unpack_gemm(prefix, &p, cfg.group_size),
        AwqVersion::Gemv => unpack_gemv(prefix, &p, cfg.group_size),
    }
}

/// Load one AWQ module (`prefix` = e.g. `model.layers.0.self_attn.q_proj`) as a packed int4
/// linear layer, with its optional `<prefix>.bias`. Where the kernels take it, the codes go
/// straight from the mapped `qweight` into their layout ([`super::awq_panels`]).
pub fn load_awq_linear(st: &SafeTensors, prefix: &str, cfg: &AwqConfig) -> Result<AwqLinear> {
    let v = AwqBytes::read(st, prefix)?;
    let gs = cfg.group_size;
    let out = match cfg.version {
        AwqVersion::Gemm => gemm_dims(prefix, v.dims(), gs)?.1,
        AwqVersion::Gemv => gemv_dims(prefix, v.dims(), gs)?.0,
    };
    let bias_name = format!("{prefix}.bias");
    let bias = match st.tensor(&bias_name) {
        Err(_) => None,
        Ok(t) => {
            if t.shape() != [out] {
                return Err(shape_err(&bias_name, t.shape(), &[out]));
            }
            Some(floats(&bias_name, t.dtype(), t.data())?)
        }
    };
    if super::awq_panels::applies(gs) {
        return super::awq_panels::load(prefix, &v, cfg, bias);
    }
    let p = v.packed();
    let gq = match cfg.version {
        AwqVersion::Gemm => unpack_gemm(prefix, &p, gs)?,
        AwqVersion::Gemv => unpack_gemv(prefix, &p, gs)?,
    };
    AwqLinear::new(&gq, bias)
}

/// Module prefixes that carry a `.qweight` (sorted), i.e. the AWQ linears of a checkpoint.
pub fn awq_modules(st: &SafeTensors) -> Vec<String> {
    let mut v: Vec<String> = st
        .names()
        .into_iter()
        .filter_map(|n| n.strip_suffix(".qweight").map(str::to_string))
        .collect();
    v.sort();
    v
}

/// A tensor to store as is (embeddings, norms, biases): safetensors dtype, shape, LE bytes.
#[derive(Debug, Clone)]
pub struct RawTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

fn le<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    v.iter().flat_map(|&x| f(x)).collect()
}

/// The checkpoint tensors of one quantized module, named `<prefix>.qweight` etc.
pub fn awq_module_tensors(prefix: &str, gq: &GroupQuant, cfg: &AwqConfig) -> Result<Vec<(String, RawTensor)>> {
    if gq.group_size != cfg.group_size {
        return Err(Error::tensor(
            prefix,
            format!("quantized with group {}, config says {}", gq.group_size, cfg.group_size),
        ));
    }
    let p = match cfg.version {
        AwqVersion::Gemm => pack_gemm(gq)?,
        AwqVersion::Gemv => pack_gemv(gq)?,
    };
    let raw = |dtype, shape: [usize; 2], data| RawTensor {
        dtype,
        shape: shape.to_vec(),
        data,
    };
    Ok(vec![
        (
            format!("{prefix}.qweight"),
            raw(Dtype::I32, p.qweight_shape, le(&p.qweight, i32::to_le_bytes)),
        ),
        (
            format!("{prefix}.qzeros"),
            raw(Dtype::I32, p.qzeros_shape, le(&p.qzeros, i32::to_le_bytes)),
        ),
        (
            format!("{prefix}.scales"),
            raw(Dtype::F16, p.scales_shape, le(&p.scales, f16::to_le_bytes)),
        ),
    ])
}

/// Write an AutoAWQ-format checkpoint into `dir`: `model.safetensors` with every quantized module
/// (`modules`: prefix and codes) plus `others` stored as is, and `config.json` = `base_config`
/// with `quantization_config` set from `cfg`. Loadable by transformers/AutoAWQ and by
/// [`load_awq_linear`].
pub fn write_awq_checkpoint(
    dir: &Path,
    cfg: &AwqConfig,
    modules: &[(String, GroupQuant)],
    others: &[(String, RawTensor)],
    base_config: &serde_json::Value,
) -> Result<()> {
    let mut all: Vec<(String, RawTensor)> = others.to_vec();
    for (prefix, gq) in modules {
        all.extend(awq_module_tensors(prefix, gq, cfg)?);
    }
    write_awq_tensors(dir, cfg, &all, base_config)
}

/// [`write_awq_checkpoint`] for tensors already in checkpoint form. The safetensors file is
/// streamed to a temporary sibling and renamed: a 7B checkpoint is never held twice in memory.
pub fn write_awq_tensors(
    dir: &Path,
    cfg: &AwqConfig,
    all: &[(String, RawTensor)],
    base_config: &serde_json::Value,
) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for (n, _) in all {
        if !seen.insert(n.as_str()) {
            return Err(Error::tensor(n, "appears twice in the checkpoint"));
        }
    }
    let views = all
        .iter()
        .map(|(n, t)| {
            safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::tensor(n, format!("{e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let st_path = dir.join("model.safetensors");
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = fsutil::temp_path(&st_path);
    let written = safetensors::serialize_to_file(views, None, &tmp)
        .map_err(|e| Error::format(&st_path, format!("{e}")))
        .and_then(|()| {
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(&tmp, e))
        })
        .and_then(|()| std::fs::rename(&tmp, &st_path).map_err(|e| Error::io(&st_path, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    let mut config = base_config.clone();
    let obj = config
        .as_object_mut()
        .ok_or_else(|| Error::config("config.json", "base config is not a JSON object"))?;
    obj.insert(QC.to_string(), cfg.to_json());
    obj.insert("torch_dtype".to_string(), "float16".into());
    let text = serde_json::to_string_pretty(&config).map_err(|e| Error::msg(format!("config.json: {e}")))?;
    fsutil::write_bytes_atomic(&dir.join("config.json"), text.as_bytes())
}
