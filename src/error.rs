//! The library's error type. Every variant names what it is about (file, tensor, field or flag),
//! because a user facing a 7B checkpoint needs to know *which* of its 300 tensors is wrong.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its content is not what its format promises.
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// A tensor is missing, or its dtype / shape is not what the model needs.
    #[error("tensor '{name}': {msg}")]
    Tensor { name: String, msg: String },
    /// A configuration field (config.json, GGUF metadata, YAML) is missing or invalid.
    #[error("config field '{field}': {msg}")]
    Config { field: String, msg: String },
    /// A user-supplied option or request value is out of range.
    #[error("invalid {name}: {msg}")]
    Invalid { name: String, msg: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Msg(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn tensor(name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Tensor {
            name: name.into(),
            msg: msg.into(),
        }
    }
    pub fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            msg: msg.into(),
        }
    }
    pub fn invalid(name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Invalid {
            name: name.into(),
            msg: msg.into(),
        }
    }
    pub fn msg(msg: impl Into<String>) -> Self {
        Error::Msg(msg.into())
    }
}
