//! The OpenAPI documents of the JSON-RPC API (vendored from slapos.core
//! 1.26.1, see `README.md` here) and the validation of request bodies
//! against them, with the messages of Python's `jsonschema`.
//!
//! Python validates with `Draft7Validator(schema).validate(body)`, which
//! raises the *first* error of `iter_errors`: keywords in the order the
//! schema writes them, properties in the order of `properties`, array items
//! in order. The `jsonschema` crate finds the same errors in its own order,
//! so every error is ranked by where Python would meet it and the first is
//! reported, worded as Python words it (`'x' is a required property`,
//! `12 is not of type 'string'`, …).

use std::collections::HashMap;
use std::sync::LazyLock;

use jsonschema::error::ValidationErrorKind;
use serde_json::Value as J;
use slap::marshal::{python_float_repr, Value};

/// The main document (`json_rpc.json`), as shipped by slapos.core 1.26.1.
pub const JSON_RPC: &str = include_str!("json_rpc.json");
/// The experimental document (`json_rpc_experimental.json`).
pub const JSON_RPC_EXPERIMENTAL: &str = include_str!("json_rpc_experimental.json");

/// A schema and its compiled validator.
struct Compiled {
    schema: J,
    validator: jsonschema::Validator,
}

impl Compiled {
    fn new(schema: &J) -> Compiled {
        let validator = jsonschema::draft7::new(schema).expect("the vendored schemas compile");
        Compiled { schema: schema.clone(), validator }
    }
}

/// One route's request and answer schemas.
struct Endpoint {
    input: Compiled,
    output: Compiled,
}

/// Every route of both documents, compiled once.
static ENDPOINTS: LazyLock<HashMap<String, Endpoint>> = LazyLock::new(|| {
    let mut all = HashMap::new();
    for doc in [JSON_RPC, JSON_RPC_EXPERIMENTAL] {
        let doc: J = serde_json::from_str(doc).expect("the vendored OpenAPI documents are JSON");
        for (path, item) in doc["paths"].as_object().expect("the documents have paths") {
            let post = &item["post"];
            let input = Compiled::new(&post["requestBody"]["content"]["application/json"]["schema"]);
            let output = Compiled::new(&post["responses"]["200"]["content"]["application/json"]["schema"]);
            all.insert(path.clone(), Endpoint { input, output });
        }
    }
    all
});

/// The routes of both documents (`/slapos.<verb>.<version>.<object>`).
pub fn routes() -> Vec<String> {
    let mut routes: Vec<String> = ENDPOINTS.keys().cloned().collect();
    routes.sort();
    routes
}

/// Checks `body` against the request schema of `route`: Ok, or the
/// message Python's `jsonschema` gives for the first error it meets.
/// A route of neither document is refused with Python's message.
pub fn check(route: &str, body: &J) -> Result<(), String> {
    match ENDPOINTS.get(route) {
        Some(endpoint) => first_error(&endpoint.input, body),
        None => Err(format!("{route} is not part of the open api definition")),
    }
}

/// Checks an answer against the answer schema of `route`, as the Python
/// proxy does before sending it (a 500 with the message otherwise).
pub fn check_answer(route: &str, doc: &J) -> Result<(), String> {
    match ENDPOINTS.get(route) {
        Some(endpoint) => first_error(&endpoint.output, doc),
        None => Ok(()),
    }
}

/// The first error Python would meet validating `body` with `compiled`.
fn first_error(compiled: &Compiled, body: &J) -> Result<(), String> {
    let first = compiled
        .validator
        .iter_errors(body)
        .map(|e| {
            let schema_path = tokens(e.schema_path().as_str());
            let instance_path = tokens(e.instance_path().as_str());
            let rank = rank(&compiled.schema, &schema_path, &instance_path, e.kind());
            // the crate reports a property refused by a false schema at its
            // object's place (0.61), or at its own: the object is one of them
            let holder = match at(body, &instance_path) {
                J::Object(_) => at(body, &instance_path),
                _ => instance_path.split_last().map(|(_, p)| at(body, p)).unwrap_or(&J::Null),
            };
            (rank, message(&compiled.schema, &schema_path, e.kind(), e.instance(), holder))
        })
        .min_by(|a, b| a.0.cmp(&b.0));
    match first {
        None => Ok(()),
        Some((_, m)) => Err(m),
    }
}

/// The unescaped tokens of a JSON pointer.
fn tokens(pointer: &str) -> Vec<String> {
    pointer.split('/').skip(1).map(|t| t.replace("~1", "/").replace("~0", "~")).collect()
}

fn key_index(node: &J, key: &str) -> usize {
    node.as_object().and_then(|o| o.keys().position(|k| k == key)).unwrap_or(usize::MAX)
}

/// Where Python's `iter_errors` meets an error: at each schema level the
/// keyword's place in the schema, then the property's place in
/// `properties`, the item's index or the required property's place.
fn rank(schema: &J, schema_path: &[String], instance_path: &[String], kind: &ValidationErrorKind) -> Vec<usize> {
    let mut out = Vec::new();
    let (mut node, mut i, mut depth) = (schema, 0, 0);
    while let Some(keyword) = schema_path.get(i) {
        out.push(key_index(node, keyword));
        match keyword.as_str() {
            "properties" => {
                let name = schema_path.get(i + 1).map(String::as_str).unwrap_or("");
                out.push(key_index(&node["properties"], name));
                node = &node["properties"][name];
                (i, depth) = (i + 2, depth + 1);
            }
            "items" | "additionalProperties" if i + 1 < schema_path.len() => {
                let index = instance_path.get(depth).and_then(|t| t.parse().ok()).unwrap_or(0);
                out.push(if keyword == "items" { index } else { 0 });
                node = &node[keyword.as_str()];
                (i, depth) = (i + 1, depth + 1);
            }
            "required" => {
                if let ValidationErrorKind::Required { property } = kind {
                    let list = node["required"].as_array();
                    out.push(list.and_then(|l| l.iter().position(|p| p == property)).unwrap_or(usize::MAX));
                }
                break;
            }
            _ => break,
        }
    }
    out
}

/// The value at `path` (of a schema or a body).
fn at<'a>(schema: &'a J, path: &[String]) -> &'a J {
    path.iter().fold(schema, |node, t| match node {
        J::Array(items) => t.parse::<usize>().ok().and_then(|i| items.get(i)).unwrap_or(&J::Null),
        _ => &node[t.as_str()],
    })
}

/// Python's message for properties `additionalProperties: false` refuses.
fn additional(mut extras: Vec<String>) -> String {
    extras.sort();
    let verb = if extras.len() == 1 { "was" } else { "were" };
    let list: Vec<String> = extras.iter().map(|e| repr(&J::String(e.clone()))).collect();
    format!("Additional properties are not allowed ({} {verb} unexpected)", list.join(", "))
}

/// The message of Python's `jsonschema` 4.26 for an error (`parent`: the
/// value holding the instance, for a property refused by a false schema).
fn message(schema: &J, schema_path: &[String], kind: &ValidationErrorKind, instance: &J, parent: &J) -> String {
    let value = repr(instance);
    match kind {
        ValidationErrorKind::Required { property } => format!("{} is a required property", repr(property)),
        ValidationErrorKind::AdditionalProperties { unexpected } => additional(unexpected.clone()),
        // a schema without `properties`: the crate refuses each property
        // with a false schema, Python names them all at once
        ValidationErrorKind::FalseSchema if schema_path.last().is_some_and(|k| k == "additionalProperties") => {
            let node = at(schema, &schema_path[..schema_path.len() - 1]);
            let known = |k: &String| node["properties"].get(k.as_str()).is_some();
            additional(parent.as_object().map(|o| o.keys().filter(|k| !known(k)).cloned().collect()).unwrap_or_default())
        }
        ValidationErrorKind::Type { .. } => {
            let types = match at(schema, schema_path) {
                J::Array(types) => types.iter().map(repr).collect::<Vec<_>>().join(", "),
                one => repr(one),
            };
            format!("{value} is not of type {types}")
        }
        ValidationErrorKind::Enum { .. } => format!("{value} is not one of {}", repr(at(schema, schema_path))),
        ValidationErrorKind::Constant { .. } => format!("{} was expected", repr(at(schema, schema_path))),
        ValidationErrorKind::OneOfNotValid { .. } => format!("{value} is not valid under any of the given schemas"),
        ValidationErrorKind::OneOfMultipleValid { .. } => format!("{value} is valid under each of the given schemas"),
        ValidationErrorKind::MaxLength { limit: 0 } => format!("{value} is expected to be empty"),
        ValidationErrorKind::MaxLength { .. } => format!("{value} is too long"),
        ValidationErrorKind::FalseSchema => format!("False schema does not allow {value}"),
        other => format!("{value}: {}", other.keyword()),
    }
}

/// Python's `repr` of what `json.loads` makes of a JSON value.
pub fn repr(v: &J) -> String {
    match v {
        J::Null => "None".into(),
        J::Bool(true) => "True".into(),
        J::Bool(false) => "False".into(),
        J::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (None, Some(u), _) => u.to_string(),
            (None, None, Some(f)) => python_float_repr(f),
            _ => n.to_string(),
        },
        J::String(s) => slap::instance_xml::python_repr(&Value::str(s)),
        J::Array(items) => format!("[{}]", items.iter().map(repr).collect::<Vec<_>>().join(", ")),
        J::Object(map) => {
            let items: Vec<String> = map.iter().map(|(k, v)| format!("{}: {}", repr(&J::String(k.clone())), repr(v))).collect();
            format!("{{{}}}", items.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_route_of_both_documents_compiles() {
        let routes = routes();
        assert_eq!(routes.len(), 25, "{routes:?}");
        assert!(routes.contains(&"/slapos.allDocs.WIP.compute_node_list".to_string()));
    }

    #[test]
    fn the_first_error_is_the_one_python_meets_first() {
        // `required` comes before `additionalProperties` in the schema
        let e = check("/slapos.post.v0.software_installation", &json!({"other": 1})).unwrap_err();
        assert_eq!(e, "'software_release_uri' is a required property");
        let e = check("/slapos.put.v0.software_instance_bang", &json!({"instance_guid": 1})).unwrap_err();
        assert_eq!(e, "'message' is a required property");
        let e = check("/slapos.get.v0.software_instance", &json!({"instance_guid": "x", "more": 1, "extra": 2})).unwrap_err();
        assert_eq!(e, "Additional properties are not allowed ('extra', 'more' were unexpected)");
        // a schema with no `properties` at all
        let e = check("/slapos.allDocs.v0.instance_tree_list", &json!({"b": 1, "a": 2})).unwrap_err();
        assert_eq!(e, "Additional properties are not allowed ('a', 'b' were unexpected)");
    }

    #[test]
    fn answers_are_checked_against_their_schema() {
        assert_eq!(check_answer("/slapos.get.v0.compute_node_status", &json!({"text": "x"})), Ok(()));
        let e = check_answer("/slapos.get.v0.compute_node_status", &json!({})).unwrap_err();
        assert_eq!(e, "'text' is a required property");
        let e = check_answer("/slapos.post.v0.compute_node_usage", &json!({"type": "failure", "title": "x"})).unwrap_err();
        // as Python's jsonschema words it
        assert_eq!(e, "'success' was expected");
    }

    #[test]
    fn values_are_shown_as_python_repr() {
        assert_eq!(repr(&json!({"a": [1, 2.5, null, true], "b": "it's"})), "{'a': [1, 2.5, None, True], 'b': \"it's\"}");
        assert_eq!(repr(&json!(1.0)), "1.0");
        let e = check("/slapos.put.v0.software_instance_reported_state", &json!({"instance_guid": "x", "reported_state": "e"}));
        assert_eq!(e.unwrap_err(), "'e' is not one of ['started', 'destroyed', 'stopped']");
    }
}
