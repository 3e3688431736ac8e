//! Reads a SentencePiece `tokenizer.model` (a protobuf `ModelProto`) into the same [`GgufVocab`]
//! a GGUF's `tokenizer.ggml.*` keys give, which is how llama.cpp's converter fills those keys.
//! A few dozen lines of wire-format reading spare us a protobuf dependency; only the fields
//! the tokenizer needs are decoded and everything else is skipped.
use crate::error::{Error, Result};
use crate::source::gguf_tokenizer::{GgufVocab, TOKEN_NORMAL};

/// A cursor over protobuf wire format; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::Tokenizer(format!("tokenizer.model: {}", msg.into()))
}

enum Field<'a> {
    Varint(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
    Other,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or_else(|| bad("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| bad("field runs past the end of the file"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Next (field number, value), or `None` at the end of the message.
    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Other
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| bad("length too large"))?;
                Field::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Field::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            t => return Err(bad(format!("unsupported wire type {t}"))),
        };
        Ok(Some((key >> 3, field)))
    }
}

/// `ModelProto.pieces` is field 1, `trainer_spec` 2, `normalizer_spec` 3.
pub fn vocab_from_sentencepiece(bytes: &[u8]) -> Result<GgufVocab> {
    let mut v = GgufVocab {
        model: "llama".into(),
        ..Default::default()
    };
    // SentencePiece defaults when a field is absent.
    let (mut model_type, mut unk, mut bos, mut eos, mut pad) = (1u64, 0i64, 1i64, 2i64, -1i64);
    let (mut dummy_prefix, mut remove_extra_ws) = (true, true);
    let mut r = Reader::new(bytes);
    while let Some((num, field)) = r.next()? {
        match (num, field) {
            (1, Field::Bytes(b)) => read_piece(b, &mut v)?,
            (2, Field::Bytes(b)) => {
                let mut t = Reader::new(b);
                while let Some((n, f)) = t.next()? {
                    // int32 fields are sign-extended varints; -1 means "none".
                    if let Field::Varint(x) = f {
                        match n {
                            3 => model_type = x,
                            40 => unk = x as i64,
                            41 => bos = x as i64,
                            42 => eos = x as i64,
                            43 => pad = x as i64,
                            _ => {}
                        }
                    }
                }
            }
            (3, Field::Bytes(b)) => {
                let mut t = Reader::new(b);
                while let Some((n, f)) = t.next()? {
                    match (n, f) {
                        (3, Field::Varint(x)) => dummy_prefix = x != 0,
                        (4, Field::Varint(x)) => remove_extra_ws = x != 0,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if model_type != 2 {
        return Err(bad(format!(
            "model type {model_type} is not BPE (2); only BPE models are supported"
        )));
    }
    if remove_extra_ws {
        // Llama/Mistral models keep whitespace as is; collapsing it is a normalizer we do not build.
        return Err(bad(
            "normalizer_spec.remove_extra_whitespaces is set, which is not supported",
        ));
    }
    let n = v.tokens.len();
    let id = |x: i64| u32::try_from(x).ok().filter(|&i| (i as usize) < n);
    (v.unk_id, v.bos_id, v.eos_id, v.pad_id) = (id(unk), id(bos), id(eos), id(pad));
    v.add_space_prefix = Some(dummy_prefix);
    v.add_bos = Some(true);
    v.add_eos = Some(false);
    Ok(v)
}

/// `SentencePiece { string piece = 1; float score = 2; Type type = 3 [default NORMAL]; }`
fn read_piece(b: &[u8], v: &mut GgufVocab) -> Result<()> {
    let (mut piece, mut score, mut ty) = (None, 0f32, TOKEN_NORMAL);
    let mut r = Reader::new(b);
    while let Some((n, f)) = r.next()? {
        match (n, f) {
            (1, Field::Bytes(s)) => {
                piece = Some(String::from_utf8(s.to_vec()).map_err(|_| bad("piece is not UTF-8"))?);
            }
            (2, Field::Fixed32(x)) => score = f32::from_bits(x),
            (3, Field::Varint(x)) => ty = i32::try_from(x).map_err(|_| bad("bad piece type"))?,
            _ => {}
        }
    }
    let piece = piece.ok_or_else(|| bad(format!("piece {} has no text", v.tokens.len())))?;
    v.tokens.push(piece);
    v.scores.push(score);
    v.token_types.push(ty);
    Ok(())
}
