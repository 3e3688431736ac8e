pub mod gguf;
pub mod tokenizer;
