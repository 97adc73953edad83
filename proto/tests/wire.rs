//! Every `buildbarn.*` message and field we declare has Buildbarn's
//! number, name, label and type, as `buildbarn-wire.json` beside this file
//! lists them (a copy of the farm's reference, checked against the
//! original when `../shared/` is there): so that bb_worker and bb_runner
//! can work with Corral's scheduler, and Corral's worker and runner with
//! bb_scheduler and bb_worker. Our own extension fields are numbered from
//! 1000 and are not Buildbarn's.

#![allow(clippy::unwrap_used)] // a test: a malformed file should fail loudly

use std::collections::BTreeMap;

use bazel_remote_apis::google::protobuf::field_descriptor_proto::{Label, Type};
use bazel_remote_apis::google::protobuf::{DescriptorProto, FileDescriptorSet};
use prost::Message as _;
use serde_json::Value;

const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));
const WIRE: &str = include_str!("buildbarn-wire.json");

/// Number → (name, label, type), as the JSON writes them.
type Fields = BTreeMap<i32, (String, String, String)>;

/// Our messages of `package`, by name relative to it ("CurrentState.Executing").
fn ours(package: &str) -> BTreeMap<String, Fields> {
    let set = FileDescriptorSet::decode(DESCRIPTORS).unwrap();
    let mut messages = BTreeMap::new();
    for file in set.file.iter().filter(|f| f.package() == package) {
        for message in &file.message_type {
            collect(package, "", message, &mut messages);
        }
    }
    messages
}

fn collect(
    package: &str,
    prefix: &str,
    message: &DescriptorProto,
    out: &mut BTreeMap<String, Fields>,
) {
    let name = format!("{prefix}{}", message.name());
    if message.options.as_ref().is_some_and(|o| o.map_entry()) {
        return;
    }
    let mut fields = Fields::new();
    for field in &message.field {
        let map_entry = message.nested_type.iter().find(|n| {
            n.options.as_ref().is_some_and(|o| o.map_entry())
                && field.type_name().ends_with(&format!(".{}", n.name()))
        });
        let (label, ty) = if let Some(entry) = map_entry {
            let kv: Vec<String> = entry
                .field
                .iter()
                .map(|f| type_name(package, f.r#type(), f.type_name()))
                .collect();
            ("map".to_owned(), format!("map<{},{}>", kv[0], kv[1]))
        } else {
            let label = match (field.oneof_index, field.label()) {
                (Some(i), _) if !field.proto3_optional() => {
                    format!("oneof:{}", message.oneof_decl[i as usize].name())
                }
                (_, Label::Repeated) => "repeated".to_owned(),
                _ => String::new(),
            };
            (label, type_name(package, field.r#type(), field.type_name()))
        };
        fields.insert(field.number(), (field.name().to_owned(), label, ty));
    }
    out.insert(name.clone(), fields);
    for nested in &message.nested_type {
        collect(package, &format!("{name}."), nested, out);
    }
}

/// A field's type as the JSON writes it: scalars by name, this package's
/// types by their last name, others in full.
fn type_name(package: &str, ty: Type, name: &str) -> String {
    match ty {
        Type::Message | Type::Enum => {
            let full = name.trim_start_matches('.');
            match full.strip_prefix(&format!("{package}.")) {
                Some(local) => local.rsplit('.').next().unwrap().to_owned(),
                None => full.to_owned(),
            }
        }
        Type::Double => "double".into(),
        Type::Float => "float".into(),
        Type::Int64 => "int64".into(),
        Type::Uint64 => "uint64".into(),
        Type::Int32 => "int32".into(),
        Type::Fixed64 => "fixed64".into(),
        Type::Fixed32 => "fixed32".into(),
        Type::Bool => "bool".into(),
        Type::String => "string".into(),
        Type::Bytes => "bytes".into(),
        Type::Uint32 => "uint32".into(),
        Type::Sfixed32 => "sfixed32".into(),
        Type::Sfixed64 => "sfixed64".into(),
        Type::Sint32 => "sint32".into(),
        Type::Sint64 => "sint64".into(),
        Type::Group => "group".into(),
    }
}

/// Buildbarn's messages of `package`.
fn theirs(package: &str) -> BTreeMap<String, Fields> {
    let wire: Value = serde_json::from_str(WIRE).unwrap();
    let messages = wire[package]["messages"].as_object().unwrap();
    messages
        .iter()
        .map(|(name, message)| {
            let fields = message["fields"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(number, f)| {
                    let text = |k: &str| f[k].as_str().unwrap().to_owned();
                    (
                        number.parse().unwrap(),
                        (text("name"), text("label"), text("type")),
                    )
                })
                .collect();
            (name.clone(), fields)
        })
        .collect()
}

/// What differs between our declarations and Buildbarn's, one line each.
fn differences(package: &str) -> Vec<String> {
    differences_from(package, &theirs(package))
}

fn differences_from(package: &str, theirs: &BTreeMap<String, Fields>) -> Vec<String> {
    let mut found = Vec::new();
    for (message, fields) in ours(package) {
        let Some(reference) = theirs.get(&message) else {
            found.push(format!("{package}.{message} is not Buildbarn's"));
            continue;
        };
        for (number, field) in &fields {
            if *number >= 1000 {
                continue; // ours
            }
            match reference.get(number) {
                None => found.push(format!(
                    "{package}.{message} field {number} {field:?} is not Buildbarn's"
                )),
                Some(want) if want != field => found.push(format!(
                    "{package}.{message} field {number}: ours {field:?}, Buildbarn's {want:?}"
                )),
                Some(_) => {}
            }
        }
        for (number, want) in reference {
            if !fields.contains_key(number) {
                found.push(format!(
                    "{package}.{message} lacks Buildbarn's field {number} {want:?}"
                ));
            }
        }
    }
    found
}

#[test]
fn the_runner_and_worker_protocols_are_buildbarns_field_by_field() {
    let mut found = Vec::new();
    for package in [
        "buildbarn.runner",
        "buildbarn.remoteworker",
        "buildbarn.resourceusage",
    ] {
        found.extend(differences(package));
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_build_queue_state_package_is_buildbarns_whole() {
    let package = "buildbarn.buildqueuestate";
    let mut found = differences(package);
    // Whole: every message of Buildbarn's package is declared here too,
    // so a tool built on any of them finds it.
    let ours = ours(package);
    for message in theirs(package).keys() {
        if !ours.contains_key(message) {
            found.push(format!("{package}.{message} is not declared"));
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// Service → method → (request, response), as the JSON writes them.
type Services = BTreeMap<String, BTreeMap<String, (String, String)>>;

fn our_services(package: &str) -> Services {
    let set = FileDescriptorSet::decode(DESCRIPTORS).unwrap();
    let mut services = Services::new();
    for file in set.file.iter().filter(|f| f.package() == package) {
        for service in &file.service {
            let methods = service
                .method
                .iter()
                .map(|m| {
                    let ty = |name: &str| type_name(package, Type::Message, name);
                    (
                        m.name().to_owned(),
                        (ty(m.input_type()), ty(m.output_type())),
                    )
                })
                .collect();
            services.insert(service.name().to_owned(), methods);
        }
    }
    services
}

fn their_services(package: &str) -> Services {
    let wire: Value = serde_json::from_str(WIRE).unwrap();
    wire[package]["services"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(service, methods)| {
            let methods = methods
                .as_object()
                .unwrap()
                .iter()
                .map(|(method, types)| {
                    let ty = |i: usize| types[i].as_str().unwrap().to_owned();
                    (method.clone(), (ty(0), ty(1)))
                })
                .collect();
            (service.clone(), methods)
        })
        .collect()
}

/// Enum (by name relative to the package) → value name → number.
type Enums = BTreeMap<String, BTreeMap<String, i32>>;

fn our_enums(package: &str) -> Enums {
    fn walk(prefix: &str, message: &DescriptorProto, out: &mut Enums) {
        let name = format!("{prefix}{}", message.name());
        for e in &message.enum_type {
            out.insert(format!("{name}.{}", e.name()), values(&e.value));
        }
        for nested in &message.nested_type {
            walk(&format!("{name}."), nested, out);
        }
    }
    fn values(
        values: &[bazel_remote_apis::google::protobuf::EnumValueDescriptorProto],
    ) -> BTreeMap<String, i32> {
        values
            .iter()
            .map(|v| (v.name().to_owned(), v.number()))
            .collect()
    }
    let set = FileDescriptorSet::decode(DESCRIPTORS).unwrap();
    let mut enums = Enums::new();
    for file in set.file.iter().filter(|f| f.package() == package) {
        for e in &file.enum_type {
            enums.insert(e.name().to_owned(), values(&e.value));
        }
        for message in &file.message_type {
            walk("", message, &mut enums);
        }
    }
    enums
}

fn their_enums(package: &str) -> Enums {
    let wire: Value = serde_json::from_str(WIRE).unwrap();
    serde_json::from_value(wire[package]["enums"].clone()).unwrap()
}

const PACKAGES: [&str; 4] = [
    "buildbarn.runner",
    "buildbarn.remoteworker",
    "buildbarn.resourceusage",
    "buildbarn.buildqueuestate",
];

#[test]
fn every_service_has_buildbarns_methods_with_their_request_and_response() {
    for package in PACKAGES {
        assert_eq!(our_services(package), their_services(package), "{package}");
    }
    // Not vacuous: the admin service has its eleven calls.
    assert_eq!(
        our_services("buildbarn.buildqueuestate")["BuildQueueState"].len(),
        11
    );
}

#[test]
fn every_enum_we_declare_has_buildbarns_values() {
    for package in PACKAGES {
        let theirs = their_enums(package);
        for (name, values) in our_enums(package) {
            assert_eq!(
                Some(&values),
                theirs.get(&name),
                "{package}.{name}: ours, then Buildbarn's"
            );
        }
    }
    assert_eq!(
        our_enums("buildbarn.buildqueuestate"),
        their_enums("buildbarn.buildqueuestate")
    );
}

#[test]
fn the_reference_is_the_farms() {
    // The farm's copy sits beside the repository in CI and development;
    // a clone elsewhere has only ours.
    let shared =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/buildbarn-wire.json");
    match std::fs::read_to_string(&shared) {
        Ok(text) => assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            serde_json::from_str::<Value>(WIRE).unwrap(),
            "proto/tests/buildbarn-wire.json differs from {}",
            shared.display()
        ),
        Err(_) => eprintln!(
            "{} not found: checked against the copy only",
            shared.display()
        ),
    }
}

#[test]
fn the_check_itself_sees_a_difference() {
    // A reference where a field has another type, another number, or one
    // more field must give differences, or the tests above prove nothing.
    let package = "buildbarn.runner";
    assert!(differences(package).is_empty());
    let mut reference = theirs(package);
    let response = reference.get_mut("RunResponse").unwrap();
    response.get_mut(&1).unwrap().2 = "int32".to_owned();
    let moved = response.remove(&2).unwrap();
    response.insert(3, moved);
    let found = differences_from(package, &reference);
    assert_eq!(found.len(), 3, "{found:#?}");
}
