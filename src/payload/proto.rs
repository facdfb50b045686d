//! Protobuf messages from a rendered template: the message type comes from
//! a `.proto` file compiled at start-up (protox, no `protoc` needed) or a
//! descriptor set (`protoc --descriptor_set_out`), the JSON document is read
//! with the proto3 JSON mapping, and a field that does not fit is named.

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use serde_json::Value as Json;
use std::path::Path;

pub struct Encoder {
    desc: MessageDescriptor,
}

impl Encoder {
    /// `file` is a `.proto` (compiled with its directory as the include
    /// path) or a descriptor set; `message` the full name of the type.
    /// `bytes` are the file's contents (read by the caller, size-checked).
    pub fn new(file: &str, bytes: &[u8], message: &str) -> Result<Encoder, (&'static str, String)> {
        let path = Path::new(file);
        let pool = if path.extension().is_some_and(|e| e == "proto") {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let mut compiler =
                protox::Compiler::new([dir]).map_err(|e| ("schema_file", e.to_string()))?;
            compiler.include_imports(true);
            let name = path.file_name().map(Path::new).unwrap_or(path);
            compiler
                .open_file(name)
                .map_err(|e| ("schema_file", format!("`{file}` does not compile: {e}")))?;
            compiler.descriptor_pool()
        } else {
            DescriptorPool::decode(bytes).map_err(|e| {
                (
                    "schema_file",
                    format!("`{file}` is neither a .proto file nor a descriptor set: {e}"),
                )
            })?
        };
        let desc = pool.get_message_by_name(message).ok_or_else(|| {
            let known: Vec<String> = pool
                .all_messages()
                .map(|m| m.full_name().to_owned())
                .take(20)
                .collect();
            (
                "message",
                format!(
                    "no message `{message}` in `{file}` (it has: {})",
                    known.join(", ")
                ),
            )
        })?;
        Ok(Encoder { desc })
    }

    pub fn encode(&self, doc: &Json) -> Result<Vec<u8>, String> {
        let mut track = serde_path_to_error::Track::new();
        let de = serde_path_to_error::Deserializer::new(doc, &mut track);
        match DynamicMessage::deserialize(self.desc.clone(), de) {
            Ok(m) => Ok(m.encode_to_vec()),
            Err(e) => {
                let path = track.path().to_string();
                Err(if path.is_empty() || path == "." {
                    format!("message `{}`: {e}", self.desc.full_name())
                } else {
                    format!("field `{path}`: {e}")
                })
            }
        }
    }

    /// A message this encoder made, for tests.
    #[cfg(test)]
    pub fn decode(&self, bytes: &[u8]) -> Result<DynamicMessage, prost::DecodeError> {
        DynamicMessage::decode(self.desc.clone(), bytes)
    }
}
