//! `keel call ADDR describe SYMBOL`: a service, method, message or enum as proto-like text,
//! with the comments of its `.proto` file when the server's descriptors carry them.

use std::collections::HashSet;
use std::fmt::Write as _;

use prost_reflect::{
    Cardinality, EnumDescriptor, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor,
    MethodDescriptor, ServiceDescriptor, Syntax,
};

/// Something `describe` can show.
#[derive(Debug, Clone)]
pub enum Symbol {
    /// A service with its methods.
    Service(ServiceDescriptor),
    /// One method.
    Method(MethodDescriptor),
    /// A message with its fields and nested types.
    Message(MessageDescriptor),
    /// An enum with its values.
    Enum(EnumDescriptor),
}

/// The description of `symbol`, ending in a newline.
pub fn describe(symbol: &Symbol) -> String {
    let mut out = Text::default();
    match symbol {
        Symbol::Service(service) => {
            out.origin(service.full_name(), &service.parent_file());
            out.service(service);
        }
        Symbol::Method(method) => {
            out.origin(method.full_name(), &method.parent_file());
            out.comments(&method.parent_file(), method.path());
            out.line(&rpc(method));
        }
        Symbol::Message(message) => {
            out.origin(message.full_name(), &message.parent_file());
            out.message(message);
        }
        Symbol::Enum(enumeration) => {
            out.origin(enumeration.full_name(), &enumeration.parent_file());
            out.enumeration(enumeration);
        }
    }
    out.text
}

/// `rpc Name(stream pkg.In) returns (stream pkg.Out);`, with `stream` where it applies.
pub fn rpc(method: &MethodDescriptor) -> String {
    let stream = |yes: bool| if yes { "stream " } else { "" };
    format!(
        "rpc {}({}{}) returns ({}{});",
        method.name(),
        stream(method.is_client_streaming()),
        method.input().full_name(),
        stream(method.is_server_streaming()),
        method.output().full_name()
    )
}

/// Text under construction, indented two spaces per level.
#[derive(Default)]
struct Text {
    text: String,
    depth: usize,
}

impl Text {
    fn line(&mut self, line: &str) {
        for _ in 0..self.depth {
            self.text.push_str("  ");
        }
        self.text.push_str(line);
        self.text.push('\n');
    }

    fn open(&mut self, line: &str) {
        self.line(line);
        self.depth += 1;
    }

    fn close(&mut self) {
        self.depth -= 1;
        self.line("}");
    }

    fn origin(&mut self, full_name: &str, file: &FileDescriptor) {
        let _ = writeln!(self.text, "// {full_name}, from {}", file.name());
    }

    /// The leading comments the `.proto` file has for the element at `path`.
    fn comments(&mut self, file: &FileDescriptor, path: &[i32]) {
        let Some(info) = &file.file_descriptor_proto().source_code_info else {
            return;
        };
        let comments = info
            .location
            .iter()
            .find(|location| location.path == path)
            .and_then(|location| location.leading_comments.as_deref());
        for line in comments.unwrap_or_default().trim_end().lines() {
            self.line(&format!("//{}", line.trim_end()));
        }
    }

    fn service(&mut self, service: &ServiceDescriptor) {
        let file = service.parent_file();
        self.comments(&file, service.path());
        self.open(&format!("service {} {{", service.name()));
        for method in service.methods() {
            self.comments(&file, method.path());
            self.line(&rpc(&method));
        }
        self.close();
    }

    fn message(&mut self, message: &MessageDescriptor) {
        let file = message.parent_file();
        self.comments(&file, message.path());
        self.open(&format!("message {} {{", message.name()));
        let mut oneofs_done = HashSet::new();
        for field in message.fields() {
            match field
                .containing_oneof()
                .filter(|oneof| !oneof.is_synthetic())
            {
                // A oneof appears where its first field is, with all its fields.
                Some(oneof) => {
                    if oneofs_done.insert(oneof.name().to_owned()) {
                        self.comments(&file, oneof.path());
                        self.open(&format!("oneof {} {{", oneof.name()));
                        for member in oneof.fields() {
                            self.comments(&file, member.path());
                            self.line(&field_line(&member));
                        }
                        self.close();
                    }
                }
                None => {
                    self.comments(&file, field.path());
                    self.line(&field_line(&field));
                }
            }
        }
        for nested in message.child_messages().filter(|m| !m.is_map_entry()) {
            self.message(&nested);
        }
        for nested in message.child_enums() {
            self.enumeration(&nested);
        }
        self.close();
    }

    fn enumeration(&mut self, enumeration: &EnumDescriptor) {
        let file = enumeration.parent_file();
        self.comments(&file, enumeration.path());
        self.open(&format!("enum {} {{", enumeration.name()));
        for value in enumeration.values() {
            self.comments(&file, value.path());
            self.line(&format!("{} = {};", value.name(), value.number()));
        }
        self.close();
    }
}

/// `[label ]type name = number;`
fn field_line(field: &FieldDescriptor) -> String {
    let explicit_optional = field.field_descriptor_proto().proto3_optional()
        || (field.parent_file().syntax() == Syntax::Proto2 && field.containing_oneof().is_none());
    let label = match field.cardinality() {
        _ if field.is_map() => "",
        Cardinality::Repeated => "repeated ",
        Cardinality::Required => "required ",
        Cardinality::Optional if explicit_optional => "optional ",
        Cardinality::Optional => "",
    };
    format!(
        "{label}{} {} = {};",
        type_name(field),
        field.name(),
        field.number()
    )
}

fn type_name(field: &FieldDescriptor) -> String {
    match field.kind() {
        Kind::Message(entry) if field.is_map() => format!(
            "map<{}, {}>",
            kind_name(&entry.map_entry_key_field().kind()),
            kind_name(&entry.map_entry_value_field().kind())
        ),
        kind => kind_name(&kind),
    }
}

fn kind_name(kind: &Kind) -> String {
    let scalar = match kind {
        Kind::Message(message) => return message.full_name().to_owned(),
        Kind::Enum(enumeration) => return enumeration.full_name().to_owned(),
        Kind::Double => "double",
        Kind::Float => "float",
        Kind::Int32 => "int32",
        Kind::Int64 => "int64",
        Kind::Uint32 => "uint32",
        Kind::Uint64 => "uint64",
        Kind::Sint32 => "sint32",
        Kind::Sint64 => "sint64",
        Kind::Fixed32 => "fixed32",
        Kind::Fixed64 => "fixed64",
        Kind::Sfixed32 => "sfixed32",
        Kind::Sfixed64 => "sfixed64",
        Kind::Bool => "bool",
        Kind::String => "string",
        Kind::Bytes => "bytes",
    };
    scalar.to_owned()
}

#[cfg(test)]
mod tests {
    use prost_reflect::DescriptorPool;

    use super::*;

    /// A proto2 file and a proto3 file exercising every label, a map, a oneof, nesting.
    fn pool() -> DescriptorPool {
        let mut pool = DescriptorPool::decode(keel_interop::FILE_DESCRIPTOR_SET).unwrap();
        let file = |name: &str, syntax: &str, message: prost_types::DescriptorProto| {
            prost_types::FileDescriptorProto {
                name: Some(name.to_owned()),
                package: Some("t".to_owned()),
                syntax: Some(syntax.to_owned()),
                message_type: vec![message],
                ..Default::default()
            }
        };
        let field =
            |name: &str, number: i32, label: i32, kind: i32| prost_types::FieldDescriptorProto {
                name: Some(name.to_owned()),
                number: Some(number),
                label: Some(label),
                r#type: Some(kind),
                ..Default::default()
            };
        use prost_types::field_descriptor_proto::{Label, Type};
        let mut old = prost_types::DescriptorProto {
            name: Some("Old".to_owned()),
            field: vec![
                field("a", 1, Label::Required as i32, Type::Int32 as i32),
                field("b", 2, Label::Optional as i32, Type::String as i32),
            ],
            ..Default::default()
        };
        old.field[1].default_value = Some("x".to_owned());
        let mut entry = prost_types::DescriptorProto {
            name: Some("LabelsEntry".to_owned()),
            field: vec![
                field("key", 1, Label::Optional as i32, Type::String as i32),
                field("value", 2, Label::Optional as i32, Type::Sint64 as i32),
            ],
            ..Default::default()
        };
        entry.options = Some(prost_types::MessageOptions {
            map_entry: Some(true),
            ..Default::default()
        });
        let mut labels = field("labels", 1, Label::Repeated as i32, Type::Message as i32);
        labels.type_name = Some(".t.New.LabelsEntry".to_owned());
        let mut maybe = field("maybe", 2, Label::Optional as i32, Type::Bool as i32);
        maybe.proto3_optional = Some(true);
        maybe.oneof_index = Some(1);
        let mut left = field("left", 3, Label::Optional as i32, Type::Bytes as i32);
        left.oneof_index = Some(0);
        let mut right = field("right", 4, Label::Optional as i32, Type::Message as i32);
        right.type_name = Some(".t.Old".to_owned());
        right.oneof_index = Some(0);
        let new = prost_types::DescriptorProto {
            name: Some("New".to_owned()),
            field: vec![
                labels,
                maybe,
                left,
                right,
                field("tags", 5, Label::Repeated as i32, Type::Fixed32 as i32),
            ],
            nested_type: vec![entry],
            oneof_decl: vec![
                prost_types::OneofDescriptorProto {
                    name: Some("side".to_owned()),
                    ..Default::default()
                },
                prost_types::OneofDescriptorProto {
                    name: Some("_maybe".to_owned()),
                    ..Default::default()
                },
            ],
            enum_type: vec![prost_types::EnumDescriptorProto {
                name: Some("Mood".to_owned()),
                value: vec![prost_types::EnumValueDescriptorProto {
                    name: Some("MOOD_UNSPECIFIED".to_owned()),
                    number: Some(0),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut new_file = file("new.proto", "proto3", new);
        new_file.dependency = vec!["old.proto".to_owned()];
        pool.add_file_descriptor_protos([file("old.proto", "proto2", old), new_file])
            .unwrap();
        pool
    }

    #[test]
    fn messages_show_labels_maps_oneofs_and_nested_types() {
        let pool = pool();
        let new = pool.get_message_by_name("t.New").unwrap();
        assert_eq!(
            describe(&Symbol::Message(new)),
            "\
// t.New, from new.proto
message New {
  map<string, sint64> labels = 1;
  optional bool maybe = 2;
  oneof side {
    bytes left = 3;
    t.Old right = 4;
  }
  repeated fixed32 tags = 5;
  enum Mood {
    MOOD_UNSPECIFIED = 0;
  }
}
"
        );
        let old = pool.get_message_by_name("t.Old").unwrap();
        assert_eq!(
            describe(&Symbol::Message(old)),
            "// t.Old, from old.proto\nmessage Old {\n  required int32 a = 1;\n  optional string b = 2;\n}\n"
        );
    }

    #[test]
    fn services_and_methods_show_streaming_and_comments() {
        let pool = pool();
        let service = pool
            .get_service_by_name("grpc.testing.TestService")
            .unwrap();
        let text = describe(&Symbol::Service(service.clone()));
        assert!(
            text.starts_with("// grpc.testing.TestService, from grpc/testing/test.proto\n"),
            "{text}"
        );
        assert!(text.contains("\nservice TestService {\n"), "{text}");
        assert!(
            text.contains(
                "\n  rpc FullDuplexCall(stream grpc.testing.StreamingOutputCallRequest) \
                 returns (stream grpc.testing.StreamingOutputCallResponse);\n"
            ),
            "{text}"
        );
        // The .proto's comments come along.
        assert!(
            text.contains("\n  // One empty request followed by one empty response.\n"),
            "{text}"
        );

        let method = service
            .methods()
            .find(|m| m.name() == "StreamingInputCall")
            .unwrap();
        let text = describe(&Symbol::Method(method));
        assert!(
            text.ends_with(
                "rpc StreamingInputCall(stream grpc.testing.StreamingInputCallRequest) \
                 returns (grpc.testing.StreamingInputCallResponse);\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn enums_list_their_values() {
        let pool = pool();
        let mood = pool.get_enum_by_name("t.New.Mood").unwrap();
        assert_eq!(
            describe(&Symbol::Enum(mood)),
            "// t.New.Mood, from new.proto\nenum Mood {\n  MOOD_UNSPECIFIED = 0;\n}\n"
        );
    }
}
