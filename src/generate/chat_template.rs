//! Chat templates: the model's own Jinja `chat_template`, rendered with minijinja the way
//! transformers renders it (trim_blocks, lstrip_blocks, Python string methods).
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Mistral-Instruct v0.1's format, used when a model ships no template. User and assistant
/// turns must alternate, starting with the user; a system message is prepended to the first
/// user turn.
pub const MISTRAL_FALLBACK: &str = "{{ bos_token }}\
{%- set ns = namespace(sys='') -%}\
{%- for message in messages -%}\
{%- if message['role'] == 'system' -%}{%- set ns.sys = message['content'] + '\n\n' -%}\
{%- elif message['role'] == 'user' -%}[INST] {{ ns.sys }}{{ message['content'] }} [/INST]{%- set ns.sys = '' -%}\
{%- elif message['role'] == 'assistant' -%}{{ message['content'] }}{{ eos_token }}\
{%- else -%}{{ raise_exception('unknown role ' ~ message['role']) }}\
{%- endif -%}\
{%- endfor -%}";

pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    pub fn new(template: Option<&str>, bos_token: Option<&str>, eos_token: Option<&str>) -> Self {
        ChatTemplate {
            source: template.unwrap_or(MISTRAL_FALLBACK).to_string(),
            bos_token: bos_token.unwrap_or("<s>").to_string(),
            eos_token: eos_token.unwrap_or("</s>").to_string(),
        }
    }

    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        if messages.is_empty() {
            return Err(Error::invalid("messages", "the conversation is empty"));
        }
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template("chat", &self.source)
            .map_err(|e| Error::config("chat_template", format!("invalid template: {e}")))?;
        let tmpl = env
            .get_template("chat")
            .map_err(|e| Error::config("chat_template", e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| Error::invalid("messages", format!("chat template: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mistral_fallback() {
        let t = ChatTemplate::new(None, None, None);
        let s = t
            .render(
                &[
                    Message::new("user", "Hi"),
                    Message::new("assistant", "Hello"),
                    Message::new("user", "Dose?"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(s, "<s>[INST] Hi [/INST]Hello</s>[INST] Dose? [/INST]");
    }

    #[test]
    fn chatml_template_with_default_system() {
        let src = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        let t = ChatTemplate::new(Some(src), None, None);
        let s = t.render(&[Message::new("user", "Hi")], true).unwrap();
        assert_eq!(
            s,
            "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new(Some("{{ raise_exception('roles must alternate') }}"), None, None);
        let e = t.render(&[Message::new("user", "x")], true).unwrap_err().to_string();
        assert!(e.contains("roles must alternate"), "{e}");
    }
}
