//! The instance parameter XML (`slap-protocol.md` §2.2) and its `_` JSON
//! variant (`slap-protocol.md` §2.3).
//!
//! The master stores instance parameters and connection parameters as
//!
//! ```text
//! <?xml version='1.0' encoding='utf-8'?>
//! <instance>
//!   <parameter id="password">s3cr&amp;t</parameter>
//! </instance>
//! ```
//!
//! Everything is text there: [`dict_to_xml`] converts values with Python's
//! `str()` ([`python_str`]), and [`xml_to_dict`] gives `None` for an empty
//! element, joins repeated ids with a space, and `{}` for empty input — like
//! `slapos.util.dict2xml`/`xml2dict`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use quick_xml::events::Event;
use quick_xml::Reader;

use crate::marshal::{python_float_repr, Value};

/// Instance XML that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid instance XML at byte {offset}: {message}")]
pub struct InstanceXmlError {
    /// Byte offset of the error.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

/// Writes `dict` as instance XML, byte for byte like `slapos.util.dict2xml`.
pub fn dict_to_xml(dict: &BTreeMap<String, Value>) -> String {
    let mut out = String::from("<?xml version='1.0' encoding='utf-8'?>\n");
    if dict.is_empty() {
        out.push_str("<instance/>\n");
        return out;
    }
    out.push_str("<instance>\n");
    for (k, v) in dict {
        out.push_str("  <parameter id=\"");
        escape(&mut out, k, true);
        out.push_str("\">");
        let text = match v {
            Value::Str(s) => s.clone(),
            other => python_str(other),
        };
        escape(&mut out, &text, false);
        out.push_str("</parameter>\n");
    }
    out.push_str("</instance>\n");
    out
}

/// Same as [`dict_to_xml`] for text values (None writes `None`, as Python's `str(None)`).
pub fn text_dict_to_xml(dict: &BTreeMap<String, Option<String>>) -> String {
    let d: BTreeMap<String, Value> = dict.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect();
    dict_to_xml(&d)
}

/// lxml's escaping: `&`, `<`, `>` (and `"`, tab, newline in attributes), CR
/// as `&#13;`; non-ASCII written as UTF-8.
fn escape(out: &mut String, s: &str, attribute: bool) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            '"' if attribute => out.push_str("&quot;"),
            '\t' if attribute => out.push_str("&#9;"),
            '\n' if attribute => out.push_str("&#10;"),
            c => out.push(c),
        }
    }
}

/// Reads instance XML like `slapos.util.xml2dict`: empty or blank input is
/// `{}`, an empty `parameter` element is None, a repeated id joins the texts
/// with one space.
pub fn xml_to_dict(xml: &str) -> Result<BTreeMap<String, Option<String>>, InstanceXmlError> {
    let mut result: BTreeMap<String, Option<String>> = BTreeMap::new();
    if xml.trim().is_empty() {
        return Ok(result);
    }
    let mut reader = Reader::from_str(xml);
    reader.config_mut().trim_text(false);
    reader.config_mut().check_end_names = true;
    let err = |offset: u64, message: String| InstanceXmlError { offset: offset as usize, message };
    let mut depth = 0usize;
    let mut root_seen = false;
    // (id, text) of the parameter being read
    let mut current: Option<(String, String)> = None;
    loop {
        let pos = reader.buffer_position();
        let event = reader.read_event().map_err(|e| err(reader.error_position(), e.to_string()))?;
        match event {
            Event::Start(_) | Event::Empty(_) if depth == 0 => {
                // the root element (lxml accepts any name); parameters are its children
                if root_seen {
                    return Err(err(pos, "more than one root element".into()));
                }
                root_seen = true;
                if matches!(event, Event::Start(_)) {
                    depth = 1;
                }
            }
            Event::Start(e) => {
                if depth == 1 && e.local_name().as_ref() == b"parameter" {
                    let id = parameter_id(&e).map_err(|m| err(pos, m))?;
                    current = Some((id, String::new()));
                }
                depth += 1;
            }
            Event::Empty(e) => {
                if depth == 1 && e.local_name().as_ref() == b"parameter" {
                    let id = parameter_id(&e).map_err(|m| err(pos, m))?;
                    add(&mut result, id, None);
                }
            }
            Event::End(_) => {
                if depth == 0 {
                    return Err(err(pos, "unexpected end tag".into()));
                }
                depth -= 1;
                if depth == 1 {
                    if let Some((id, text)) = current.take() {
                        add(&mut result, id, if text.is_empty() { None } else { Some(text) });
                    }
                }
            }
            Event::Text(t) => {
                let text = t.unescape().map_err(|e| err(pos, e.to_string()))?;
                if depth == 2 {
                    if let Some((_, buf)) = current.as_mut() {
                        buf.push_str(&text);
                    }
                } else if depth == 0 && !text.trim().is_empty() {
                    return Err(err(pos, format!("unexpected text '{}'", text.trim())));
                }
            }
            Event::CData(t) => {
                if depth == 2 {
                    if let Some((_, buf)) = current.as_mut() {
                        buf.push_str(&String::from_utf8_lossy(&t));
                    }
                }
            }
            Event::Eof => {
                if depth != 0 {
                    return Err(err(pos, "truncated document (unclosed elements)".into()));
                }
                if !root_seen {
                    return Err(err(pos, "no root element".into()));
                }
                return Ok(result);
            }
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
}

fn parameter_id(e: &quick_xml::events::BytesStart) -> Result<String, String> {
    for a in e.attributes() {
        let a = a.map_err(|x| format!("bad attribute: {x}"))?;
        if a.key.local_name().as_ref() == b"id" {
            return a.unescape_value().map(|v| v.into_owned()).map_err(|x| format!("bad attribute value: {x}"));
        }
    }
    Err("<parameter> without id attribute".into())
}

fn add(result: &mut BTreeMap<String, Option<String>>, id: String, text: Option<String>) {
    let joined = match result.get(&id) {
        Some(Some(prev)) => Some(format!("{prev} {}", text.unwrap_or_default())),
        _ => text,
    };
    result.insert(id, joined);
}

/// Python's `str(value)`.
pub fn python_str(v: &Value) -> String {
    match v {
        Value::Str(s) => s.clone(),
        other => python_repr(other),
    }
}

/// Python's `repr(value)` (objects as `<module.Class object>`).
pub fn python_repr(v: &Value) -> String {
    let mut out = String::new();
    write_repr(&mut out, v);
    out
}

fn write_repr(out: &mut String, v: &Value) {
    match v {
        Value::None => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) => out.push_str(&python_float_repr(*f)),
        Value::Str(s) => write_str_repr(out, s),
        Value::List(items) => write_items(out, "[", "]", items),
        Value::Tuple(items) => {
            if items.len() == 1 {
                out.push('(');
                write_repr(out, &items[0]);
                out.push_str(",)");
            } else {
                write_items(out, "(", ")", items);
            }
        }
        Value::Set(items) => {
            if items.is_empty() {
                out.push_str("set()");
            } else {
                write_items(out, "{", "}", items);
            }
        }
        Value::Dict(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_str_repr(out, k);
                out.push_str(": ");
                write_repr(out, v);
            }
            out.push('}');
        }
        Value::Object(o) => {
            let _ = write!(out, "<{}.{} object>", o.module, o.class);
        }
    }
}

fn write_items(out: &mut String, open: &str, close: &str, items: &[Value]) {
    out.push_str(open);
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_repr(out, item);
    }
    out.push_str(close);
}

fn write_str_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Wraps parameters for a software release whose schema says
/// `"serialisation": "json-in-xml"`: `{"_": json.dumps(params, indent=2)}`,
/// unless they already are exactly `{"_": …}`.
pub fn wrap_json(params: &serde_json::Map<String, serde_json::Value>) -> BTreeMap<String, Value> {
    if params.len() == 1 {
        if let Some(serde_json::Value::String(s)) = params.get("_") {
            return BTreeMap::from([("_".to_string(), Value::str(s))]);
        }
    }
    let text = crate::pyjson::dumps(&serde_json::Value::Object(params.clone()), &crate::pyjson::Options::indent(2));
    BTreeMap::from([("_".to_string(), Value::str(text))])
}

/// Unwraps `{"_": "<json>"}` into the JSON value; None when the dict is not of
/// that shape or the text is not JSON.
pub fn unwrap_json(dict: &BTreeMap<String, Option<String>>) -> Option<serde_json::Value> {
    if dict.len() != 1 {
        return None;
    }
    let text = dict.get("_")?.as_deref()?;
    serde_json::from_str(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_like_dict2xml() {
        // the output of slapos.util.dict2xml for the same dict
        let mut d = BTreeMap::new();
        d.insert("b".to_string(), Value::str("x&<>\"\r\t\né"));
        d.insert("a".to_string(), Value::str(""));
        d.insert("c".to_string(), Value::None);
        d.insert("d".to_string(), Value::Bool(true));
        d.insert("e".to_string(), Value::List(vec![Value::Int(1), Value::str("a")]));
        d.insert("f".to_string(), Value::Dict(BTreeMap::from([("k".to_string(), Value::Float(1.5))])));
        d.insert("g".to_string(), Value::Int(3));
        assert_eq!(
            dict_to_xml(&d),
            "<?xml version='1.0' encoding='utf-8'?>\n<instance>\n  <parameter id=\"a\"></parameter>\n  <parameter id=\"b\">x&amp;&lt;&gt;\"&#13;\t\né</parameter>\n  <parameter id=\"c\">None</parameter>\n  <parameter id=\"d\">True</parameter>\n  <parameter id=\"e\">[1, 'a']</parameter>\n  <parameter id=\"f\">{'k': 1.5}</parameter>\n  <parameter id=\"g\">3</parameter>\n</instance>\n"
        );
        assert_eq!(dict_to_xml(&BTreeMap::new()), "<?xml version='1.0' encoding='utf-8'?>\n<instance/>\n");
    }

    #[test]
    fn reads_like_xml2dict() {
        let xml = "<?xml version='1.0' encoding='utf-8'?>\n<instance>\n  <parameter id=\"a\"></parameter>\n  <parameter id=\"b\"> x &amp; y </parameter>\n  <parameter id=\"c\"/>\n  <parameter id=\"r\">1</parameter><parameter id=\"r\">2</parameter>\n</instance>\n";
        let d = xml_to_dict(xml).unwrap();
        assert_eq!(d["a"], None);
        assert_eq!(d["b"].as_deref(), Some(" x & y "));
        assert_eq!(d["c"], None);
        assert_eq!(d["r"].as_deref(), Some("1 2"));
        assert!(xml_to_dict("").unwrap().is_empty());
        assert!(xml_to_dict("<?xml version='1.0' encoding='utf-8'?>\n<instance/>\n").unwrap().is_empty());
    }

    #[test]
    fn bad_instance_xml_is_an_error() {
        assert!(xml_to_dict("<instance><parameter id=\"a\">x</instance>").is_err());
        assert!(xml_to_dict("<instance><parameter>x</parameter></instance>").is_err());
        assert!(xml_to_dict("<instance>").is_err());
        assert!(xml_to_dict("not xml").is_err());
    }

    #[test]
    fn python_reprs() {
        assert_eq!(python_repr(&Value::str("it's")), "\"it's\"");
        assert_eq!(python_repr(&Value::Tuple(vec![Value::Int(1)])), "(1,)");
        assert_eq!(python_repr(&Value::Set(vec![])), "set()");
        assert_eq!(python_repr(&Value::str("a\nb\\")), "'a\\nb\\\\'");
    }

    #[test]
    fn json_in_xml() {
        let params: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"size": 2, "name": "chïld", "l": [1, {}]}"#).unwrap();
        let w = wrap_json(&params);
        assert_eq!(w["_"].as_str().unwrap(), "{\n  \"size\": 2,\n  \"name\": \"ch\\u00efld\",\n  \"l\": [\n    1,\n    {}\n  ]\n}");
        let d = BTreeMap::from([("_".to_string(), Some(w["_"].as_str().unwrap().to_string()))]);
        assert_eq!(unwrap_json(&d).unwrap(), serde_json::Value::Object(params));
    }
}
