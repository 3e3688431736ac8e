//! The OpenAPI 3.1 description served at /openapi.json.
use serde_json::{json, Value};

/// Every route the server answers; the test suite checks the document lists them all.
pub const ROUTES: [(&str, &str); 10] = [
    ("get", "/"),
    ("get", "/health"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/v1/models"),
    ("get", "/v1/models/{id}"),
    ("post", "/v1/chat/completions"),
    ("post", "/v1/completions"),
    ("get", "/app.js"),
    ("get", "/style.css"),
];

fn json_response(desc: &str, schema: Value) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": schema}}})
}

fn errors() -> Value {
    let e = json!({"$ref": "#/components/schemas/Error"});
    json!({
        "400": json_response("Invalid request (bad JSON, wrong types, out-of-range values, prompt too long)", e.clone()),
        "401": json_response("Missing or wrong API key (only with --api-key)", e.clone()),
        "404": json_response("Unknown model", e.clone()),
        "429": json_response("Queue full; see the Retry-After header", e.clone()),
        "503": json_response("Shutting down", e),
    })
}

fn sampling_props() -> Value {
    json!({
        "model": {"type": "string", "description": "Must be the served model's id, or omitted."},
        "max_tokens": {"type": "integer", "minimum": 0},
        "max_completion_tokens": {"type": "integer", "minimum": 0},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2, "default": 1},
        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 1},
        "top_k": {"type": "integer", "description": "Extension: keep the k likeliest tokens."},
        "min_p": {"type": "number"},
        "repetition_penalty": {"type": "number"},
        "seed": {"type": "integer"},
        "ignore_eos": {"type": "boolean", "description": "Extension: generate past end-of-sequence."},
        "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "n": {"type": "integer", "minimum": 1, "maximum": super::openai::MAX_N},
        "stream": {"type": "boolean", "description": "Server-sent events ending with `data: [DONE]`."},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
    })
}

fn with(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    base
}

pub fn document() -> Value {
    let auth = json!([{"bearer": []}, {}]);
    let chat_req = json!({"type": "object", "required": ["messages"], "properties": with(sampling_props(), json!({
        "messages": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["role"], "properties": {
            "role": {"type": "string"},
            "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]}}}},
        "logprobs": {"type": "boolean"},
        "top_logprobs": {"type": "integer", "minimum": 0, "maximum": super::openai::MAX_TOP_LOGPROBS},
    }))});
    let cmpl_req = json!({"type": "object", "required": ["prompt"], "properties": with(sampling_props(), json!({
        "prompt": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}},
                             {"type": "array", "items": {"type": "integer"}},
                             {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}]},
        "echo": {"type": "boolean", "description": "Prepend the prompt; with logprobs, score it (first token null)."},
        "logprobs": {"type": "integer", "minimum": 0, "maximum": super::openai::MAX_TOP_LOGPROBS},
    }))});
    let generation = |req: Value, summary: &str| {
        let mut responses = errors();
        responses["200"] = json!({"description": "The completion, or an event stream when stream is true",
            "content": {"application/json": {"schema": {"type": "object"}},
                        "text/event-stream": {"schema": {"type": "string"}}}});
        json!({"post": {"summary": summary, "security": auth,
            "requestBody": {"required": true, "content": {"application/json": {"schema": req}}},
            "responses": responses}})
    };
    let text = |desc: &str, mime: &str| json!({"description": desc, "content": {mime: {"schema": {"type": "string"}}}});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "biomistral serve", "version": crate::version(),
                 "description": format!("OpenAI-compatible API for a locally served model. {}", crate::generate::ADVISORY)},
        "paths": {
            "/v1/chat/completions": generation(chat_req, "Chat completion through the model's chat template"),
            "/v1/completions": generation(cmpl_req, "Text completion; echo + logprobs scores a prompt"),
            "/v1/models": {"get": {"summary": "The served model", "security": auth,
                "responses": {"200": json_response("Model list", json!({"type": "object"})), "401": errors()["401"]}}},
            "/v1/models/{id}": {"get": {"summary": "One model", "security": auth,
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": json_response("Model", json!({"type": "object"})), "404": errors()["404"]}}},
            "/health": {"get": {"summary": "Liveness (never needs a key)",
                "responses": {"200": json_response("ok", json!({"type": "object"}))}}},
            "/metrics": {"get": {"summary": "Prometheus metrics",
                "responses": {"200": text("Prometheus text format", "text/plain")}}},
            "/openapi.json": {"get": {"summary": "This document",
                "responses": {"200": json_response("OpenAPI document", json!({"type": "object"}))}}},
            "/": {"get": {"summary": "Chat page", "responses": {"200": text("HTML", "text/html")}}},
            "/app.js": {"get": {"summary": "Chat page script",
                "responses": {"200": text("JavaScript", "text/javascript")}}},
            "/style.css": {"get": {"summary": "Chat page style sheet",
                "responses": {"200": text("CSS", "text/css")}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}},
        },
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_is_described() {
        let d = super::document();
        for (method, path) in super::ROUTES {
            assert!(d["paths"][path][method].is_object(), "{method} {path}");
        }
    }
}
