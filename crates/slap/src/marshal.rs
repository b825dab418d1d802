//! The `xml_marshaller` codec (`<marshal>` documents), as the Python
//! `xml_marshaller` 1.0.3 library writes and reads them
//! (`slap-protocol.md` §2.1).
//!
//! Encoding is byte-exact: container ids from a counter (the first container
//! of a document is `i2`), dictionary keys sorted by code point, strings
//! escaped twice, non-ASCII as decimal character references, `<long>` for
//! integers of 24 digits or more, floats as Python's `repr`.
//!
//! Decoding is tolerant like the Python SAX decoder (whitespace between
//! elements, an XML declaration, namespaces) and strict about everything
//! else: unknown elements, wrong types, truncated input and bad entities are
//! [`DecodeError`]s that say what and where.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// A marshalled value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    /// `<int>` and `<long>` (Python ints; values beyond i128 are refused).
    Int(i128),
    Float(f64),
    /// `<string>` (and the legacy `<unicode>` on input).
    Str(String),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Set(Vec<Value>),
    /// Dictionaries with text keys, which is all SLAP uses; kept sorted, which
    /// is also the order the encoder must write.
    Dict(BTreeMap<String, Value>),
    Object(Box<Object>),
}

/// `<object module=… class=…>`: a class instance, built by Python from its
/// constructor arguments and then its attribute dictionary.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub module: String,
    pub class: String,
    pub args: Vec<Value>,
    pub state: BTreeMap<String, Value>,
}

/// The module of every object SLAP exchanges.
pub const SLAP_MODULE: &str = "slapos.slap.slap";

impl Value {
    pub fn str(s: impl Into<String>) -> Value {
        Value::Str(s.into())
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_dict(&self) -> Option<&BTreeMap<String, Value>> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }
    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }
    /// Items of a list, tuple or set.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::List(v) | Value::Tuple(v) | Value::Set(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i128> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn is_none(&self) -> bool {
        matches!(self, Value::None)
    }
    /// Python truthiness (used for `shared_xml`, whose default is `{}`).
    pub fn is_truthy(&self) -> bool {
        match self {
            Value::None => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Float(f) => *f != 0.0,
            Value::Str(s) => !s.is_empty(),
            Value::List(v) | Value::Tuple(v) | Value::Set(v) => !v.is_empty(),
            Value::Dict(d) => !d.is_empty(),
            Value::Object(_) => true,
        }
    }
    /// The name of the element this value is written as.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "none",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Set(_) => "set",
            Value::Dict(_) => "dictionary",
            Value::Object(_) => "object",
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i as i128)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(o: Option<T>) -> Value {
        o.map(Into::into).unwrap_or(Value::None)
    }
}
impl From<BTreeMap<String, Value>> for Value {
    fn from(d: BTreeMap<String, Value>) -> Value {
        Value::Dict(d)
    }
}
impl From<Object> for Value {
    fn from(o: Object) -> Value {
        Value::Object(Box::new(o))
    }
}

// ---------------------------------------------------------------------------
// Encoding

/// A value that the Python marshaller cannot write either.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("control character U+{0:04X} cannot be written in XML")]
    ControlCharacter(u32),
}

/// Encodes `value` as a `<marshal>` document, byte for byte as
/// `xml_marshaller.dumps` does.
pub fn encode(value: &Value) -> Result<String, EncodeError> {
    let mut out = String::with_capacity(256);
    out.push_str("<marshal>");
    let mut counter = 1u64;
    write_value(&mut out, value, &mut counter)?;
    out.push_str("</marshal>");
    Ok(out)
}

fn next_id(counter: &mut u64) -> u64 {
    *counter += 1;
    *counter
}

/// Appends a decimal number without going through `fmt` (the encoder's hot path).
fn push_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&buf[i..]).expect("digits"));
}

/// `<tag id="iN"` (without the closing `>`).
fn open_with_id(out: &mut String, tag: &str, id: u64) {
    out.push('<');
    out.push_str(tag);
    out.push_str(" id=\"i");
    push_u64(out, id);
    out.push('"');
}

fn write_value(out: &mut String, value: &Value, counter: &mut u64) -> Result<(), EncodeError> {
    match value {
        Value::None => out.push_str("<none/>"),
        Value::Bool(b) => out.push_str(if *b { "<bool>1</bool>" } else { "<bool>0</bool>" }),
        Value::Int(i) => {
            let tag = if i.unsigned_abs() >= 1_000_000_000_000_000_000_000_000u128 { "long" } else { "int" };
            let _ = write!(out, "<{tag}>{i}</{tag}>");
        }
        Value::Float(f) => {
            out.push_str("<float>");
            out.push_str(&python_float_repr(*f));
            out.push_str("</float>");
        }
        Value::Str(s) => {
            out.push_str("<string>");
            write_text(out, s)?;
            out.push_str("</string>");
        }
        Value::Tuple(items) => {
            if items.is_empty() {
                out.push_str("<tuple/>");
            } else {
                out.push_str("<tuple>");
                for item in items {
                    write_value(out, item, counter)?;
                }
                out.push_str("</tuple>");
            }
        }
        Value::List(items) => write_seq(out, "list", items, counter)?,
        Value::Set(items) => write_seq(out, "set", items, counter)?,
        Value::Dict(map) => write_dict(out, map, counter)?,
        Value::Object(obj) => {
            let id = next_id(counter);
            open_with_id(out, "object", id);
            out.push_str(" module=\"");
            write_attr(out, &obj.module);
            out.push_str("\" class=\"");
            write_attr(out, &obj.class);
            out.push_str("\">");
            if obj.args.is_empty() {
                out.push_str("<tuple/>");
            } else {
                out.push_str("<tuple>");
                for item in &obj.args {
                    write_value(out, item, counter)?;
                }
                out.push_str("</tuple>");
            }
            write_dict(out, &obj.state, counter)?;
            out.push_str("</object>");
        }
    }
    Ok(())
}

fn write_seq(out: &mut String, tag: &str, items: &[Value], counter: &mut u64) -> Result<(), EncodeError> {
    let id = next_id(counter);
    open_with_id(out, tag, id);
    if items.is_empty() {
        out.push_str("/>");
        return Ok(());
    }
    out.push('>');
    for item in items {
        write_value(out, item, counter)?;
    }
    out.push_str("</");
    out.push_str(tag);
    out.push('>');
    Ok(())
}

fn write_dict(out: &mut String, map: &BTreeMap<String, Value>, counter: &mut u64) -> Result<(), EncodeError> {
    let id = next_id(counter);
    open_with_id(out, "dictionary", id);
    if map.is_empty() {
        out.push_str("/>");
        return Ok(());
    }
    out.push('>');
    for (k, v) in map {
        out.push_str("<string>");
        write_text(out, k)?;
        out.push_str("</string>");
        write_value(out, v, counter)?;
    }
    out.push_str("</dictionary>");
    Ok(())
}

/// Text content, escaped twice (once by the marshaller, once as XML), ASCII
/// only (decimal character references), CR as `&#13;`.
fn write_text(out: &mut String, s: &str) -> Result<(), EncodeError> {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        // plain printable ASCII (and tab/newline) is copied in runs
        if (0x20..0x7f).contains(&b) && !matches!(b, b'&' | b'<' | b'>') || b == b'\t' || b == b'\n' {
            continue;
        }
        if b >= 0x80 && !s.is_char_boundary(i) {
            continue;
        }
        out.push_str(&s[start..i]);
        match b {
            b'&' => out.push_str("&amp;amp;"),
            b'<' => out.push_str("&amp;lt;"),
            b'>' => out.push_str("&amp;gt;"),
            b'\r' => out.push_str("&#13;"),
            0x7f => out.push_str("&#127;"),
            b if b < 0x20 => return Err(EncodeError::ControlCharacter(b as u32)),
            _ => {
                let c = s[i..].chars().next().expect("char boundary");
                if c == '\u{fffe}' || c == '\u{ffff}' {
                    return Err(EncodeError::ControlCharacter(c as u32));
                }
                let _ = write!(out, "&#{};", c as u32);
            }
        }
        start = i + if b >= 0x80 { s[i..].chars().next().map(char::len_utf8).unwrap_or(1) } else { 1 };
    }
    out.push_str(&s[start..]);
    Ok(())
}

/// Attribute values (module and class names), escaped once as XML.
fn write_attr(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c if c.is_ascii() => out.push(c),
            c => {
                let _ = write!(out, "&#{};", c as u32);
            }
        }
    }
}

/// Python's `repr(float)`: the shortest text that round-trips, in fixed
/// notation when the decimal exponent is in [-4, 16), scientific otherwise
/// (`1e+16`, `1.5e-05`); `inf`, `-inf`, `nan`.
pub fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.to_string();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "d.ddde-x"
    let sci = format!("{:e}", f);
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("exponent");
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if negative { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let s = if exp >= 0 {
            let int_len = exp + 1;
            if n <= int_len {
                format!("{}{}.0", digits, "0".repeat((int_len - n) as usize))
            } else {
                format!("{}.{}", &digits[..int_len as usize], &digits[int_len as usize..])
            }
        } else {
            format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        };
        format!("{sign}{s}")
    } else {
        let m = if digits.len() > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{esign}{:02}", exp.abs())
    }
}

// ---------------------------------------------------------------------------
// Decoding

/// A document that is not a valid `<marshal>` document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid marshal document at line {line}, column {column} (byte {offset}): {message}")]
pub struct DecodeError {
    pub offset: usize,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl DecodeError {
    fn at(input: &[u8], offset: usize, message: impl Into<String>) -> DecodeError {
        let offset = offset.min(input.len());
        let before = &input[..offset];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = offset - before.iter().rposition(|&b| b == b'\n').map(|p| p + 1).unwrap_or(0) + 1;
        DecodeError { offset, line, column, message: message.into() }
    }
}

/// Decodes a `<marshal>` document (from text).
pub fn decode(input: &str) -> Result<Value, DecodeError> {
    decode_bytes(input.as_bytes())
}

enum Frame {
    Marshal(Option<Value>),
    Scalar { kind: ScalarKind, text: String },
    Tuple(Vec<Value>),
    List { id: Option<String>, items: Vec<Value> },
    Set { id: Option<String>, items: Vec<Value> },
    Dict { id: Option<String>, items: Vec<Value> },
    Object { id: Option<String>, module: String, class: String, items: Vec<Value> },
    Empty(&'static str),
}

#[derive(Clone, Copy)]
enum ScalarKind {
    Str,
    Int,
    Float,
    Bool,
}

const MAX_DEPTH: usize = 256;

/// Decodes a `<marshal>` document from bytes (must be UTF-8).
pub fn decode_bytes(input: &[u8]) -> Result<Value, DecodeError> {
    let mut reader = Reader::from_reader(input);
    reader.config_mut().trim_text(false);
    reader.config_mut().check_end_names = true;
    reader.config_mut().expand_empty_elements = false;
    let mut stack: Vec<Frame> = Vec::new();
    let mut refs: BTreeMap<String, Value> = BTreeMap::new();
    // back-references are rare (the SLAP masters never send them): remember
    // containers by id (a copy each) only when the document has one
    let track_refs = memchr::memmem::find_iter(input, b"reference").any(|i| {
        i > 0 && matches!(input[i - 1], b'<' | b':') && matches!(input.get(i + 9), Some(b' ' | b'/' | b'>' | b'\t' | b'\n' | b'\r'))
    });
    let mut result: Option<Value> = None;
    loop {
        let pos = reader.buffer_position() as usize;
        let event = reader
            .read_event()
            .map_err(|e| DecodeError::at(input, reader.error_position() as usize, e.to_string()))?;
        match event {
            Event::Start(e) => {
                if result.is_some() {
                    return Err(DecodeError::at(input, pos, "content after the end of the document"));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(DecodeError::at(input, pos, "document nested too deeply"));
                }
                let frame = open(input, pos, &e, &stack, &refs, false, track_refs)?;
                stack.push(frame);
            }
            Event::Empty(e) => {
                if result.is_some() {
                    return Err(DecodeError::at(input, pos, "content after the end of the document"));
                }
                let frame = open(input, pos, &e, &stack, &refs, true, track_refs)?;
                let value = close(input, pos, frame, &mut refs, track_refs)?;
                match value {
                    Some(v) => push_child(input, pos, &mut stack, v)?,
                    None => return Err(DecodeError::at(input, pos, "empty <marshal/> document")),
                }
            }
            Event::End(_) => {
                let frame = stack.pop().ok_or_else(|| DecodeError::at(input, pos, "unexpected end tag"))?;
                if let Frame::Marshal(v) = frame {
                    result = Some(v.ok_or_else(|| DecodeError::at(input, pos, "empty <marshal> document"))?);
                    continue;
                }
                if let Some(v) = close(input, pos, frame, &mut refs, track_refs)? {
                    push_child(input, pos, &mut stack, v)?;
                }
            }
            Event::Text(t) => {
                let text = t.unescape().map_err(|e| DecodeError::at(input, pos, format!("bad text: {e}")))?;
                match stack.last_mut() {
                    // the usual case: the whole text of a scalar in one event
                    Some(Frame::Scalar { text: buf, .. }) if buf.is_empty() => *buf = text.into_owned(),
                    _ => add_text(input, pos, &mut stack, &text)?,
                }
            }
            Event::CData(t) => {
                let text = std::str::from_utf8(&t)
                    .map_err(|_| DecodeError::at(input, pos, "invalid UTF-8 in CDATA"))?
                    .to_string();
                add_text(input, pos, &mut stack, &text)?;
            }
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(DecodeError::at(input, input.len(), "truncated document (unclosed elements)"));
    }
    result.ok_or_else(|| DecodeError::at(input, input.len(), "no <marshal> element"))
}

fn attr(input: &[u8], pos: usize, e: &BytesStart, name: &str) -> Result<Option<String>, DecodeError> {
    for a in e.attributes() {
        let a = a.map_err(|err| DecodeError::at(input, pos, format!("bad attribute: {err}")))?;
        if a.key.local_name().as_ref() == name.as_bytes() {
            let v = a
                .unescape_value()
                .map_err(|err| DecodeError::at(input, pos, format!("bad attribute value: {err}")))?;
            return Ok(Some(v.into_owned()));
        }
    }
    Ok(None)
}

fn open(
    input: &[u8],
    pos: usize,
    e: &BytesStart,
    stack: &[Frame],
    refs: &BTreeMap<String, Value>,
    empty: bool,
    track_refs: bool,
) -> Result<Frame, DecodeError> {
    let local = e.local_name();
    let name = std::str::from_utf8(local.as_ref())
        .map_err(|_| DecodeError::at(input, pos, "invalid UTF-8 in element name"))?;
    if stack.is_empty() {
        if name != "marshal" {
            return Err(DecodeError::at(input, pos, format!("expected <marshal>, found <{name}>")));
        }
        return Ok(Frame::Marshal(None));
    }
    if matches!(stack.last(), Some(Frame::Scalar { .. }) | Some(Frame::Empty(_))) {
        return Err(DecodeError::at(input, pos, format!("element <{name}> inside a scalar")));
    }
    let id = || if track_refs { attr(input, pos, e, "id") } else { Ok(None) };
    Ok(match name {
        "string" | "unicode" => Frame::Scalar { kind: ScalarKind::Str, text: String::new() },
        "int" | "long" => Frame::Scalar { kind: ScalarKind::Int, text: String::new() },
        "float" => Frame::Scalar { kind: ScalarKind::Float, text: String::new() },
        "bool" => Frame::Scalar { kind: ScalarKind::Bool, text: String::new() },
        "none" => Frame::Empty("none"),
        "tuple" => Frame::Tuple(Vec::new()),
        "list" => Frame::List { id: id()?, items: Vec::new() },
        "set" => Frame::Set { id: id()?, items: Vec::new() },
        "dictionary" => Frame::Dict { id: id()?, items: Vec::new() },
        "object" => Frame::Object {
            id: id()?,
            module: attr(input, pos, e, "module")?
                .ok_or_else(|| DecodeError::at(input, pos, "<object> without module attribute"))?,
            class: attr(input, pos, e, "class")?
                .ok_or_else(|| DecodeError::at(input, pos, "<object> without class attribute"))?,
            items: Vec::new(),
        },
        "reference" => {
            let id = attr(input, pos, e, "id")?.ok_or_else(|| DecodeError::at(input, pos, "<reference> without id"))?;
            if !empty {
                return Err(DecodeError::at(input, pos, "<reference> must be empty"));
            }
            // a resolved back-reference travels as a finished value
            match refs.get(&id) {
                Some(v) => Frame::Marshal(Some(v.clone())),
                None => return Err(DecodeError::at(input, pos, format!("reference to unknown id '{id}'"))),
            }
        }
        other => return Err(DecodeError::at(input, pos, format!("unknown element <{other}>"))),
    })
}

fn close(
    input: &[u8],
    pos: usize,
    frame: Frame,
    refs: &mut BTreeMap<String, Value>,
    track_refs: bool,
) -> Result<Option<Value>, DecodeError> {
    let remember = |refs: &mut BTreeMap<String, Value>, id: Option<String>, value: Value| match id {
        Some(id) if track_refs => {
            refs.insert(id, value.clone());
            value
        }
        _ => value,
    };
    let value = match frame {
        // a resolved <reference/>
        Frame::Marshal(v) => return Ok(v),
        Frame::Empty(_) => Value::None,
        Frame::Scalar { kind, text } => match kind {
            ScalarKind::Str => Value::Str(if text.contains('&') { unescape_second_level(&text) } else { text }),
            ScalarKind::Int => {
                let t = text.trim();
                Value::Int(t.parse().map_err(|_| DecodeError::at(input, pos, format!("not an integer: '{t}'")))?)
            }
            ScalarKind::Float => {
                let t = text.trim();
                Value::Float(t.parse().map_err(|_| DecodeError::at(input, pos, format!("not a float: '{t}'")))?)
            }
            ScalarKind::Bool => match text.trim() {
                "1" | "True" => Value::Bool(true),
                "0" | "False" => Value::Bool(false),
                t => return Err(DecodeError::at(input, pos, format!("not a boolean: '{t}'"))),
            },
        },
        Frame::Tuple(items) => Value::Tuple(items),
        Frame::List { id, items } => remember(refs, id, Value::List(items)),
        Frame::Set { id, items } => remember(refs, id, Value::Set(items)),
        Frame::Dict { id, items } => remember(refs, id, Value::Dict(pairs(input, pos, items)?)),
        Frame::Object { id, module, class, items } => {
            let mut it = items.into_iter();
            let args = match it.next() {
                Some(Value::Tuple(a)) => a,
                Some(other) => {
                    return Err(DecodeError::at(
                        input,
                        pos,
                        format!("<object> arguments must be a tuple, found <{}>", other.type_name()),
                    ))
                }
                None => Vec::new(),
            };
            let state = match it.next() {
                Some(Value::Dict(d)) => d,
                Some(other) => {
                    return Err(DecodeError::at(
                        input,
                        pos,
                        format!("<object> state must be a dictionary, found <{}>", other.type_name()),
                    ))
                }
                None => BTreeMap::new(),
            };
            if it.next().is_some() {
                return Err(DecodeError::at(input, pos, "<object> has more than two children"));
            }
            remember(refs, id, Value::Object(Box::new(Object { module, class, args, state })))
        }
    };
    Ok(Some(value))
}

fn pairs(input: &[u8], pos: usize, items: Vec<Value>) -> Result<BTreeMap<String, Value>, DecodeError> {
    if !items.len().is_multiple_of(2) {
        return Err(DecodeError::at(input, pos, "<dictionary> has a key without a value"));
    }
    let mut map = BTreeMap::new();
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        match k {
            Value::Str(k) => {
                map.insert(k, v);
            }
            other => {
                return Err(DecodeError::at(
                    input,
                    pos,
                    format!("unsupported dictionary key of type <{}> (SLAP keys are strings)", other.type_name()),
                ))
            }
        }
    }
    Ok(map)
}

fn push_child(input: &[u8], pos: usize, stack: &mut [Frame], value: Value) -> Result<(), DecodeError> {
    match stack.last_mut() {
        Some(Frame::Marshal(slot)) => {
            if slot.is_some() {
                return Err(DecodeError::at(input, pos, "<marshal> holds more than one value"));
            }
            *slot = Some(value);
        }
        Some(Frame::Tuple(items))
        | Some(Frame::List { items, .. })
        | Some(Frame::Set { items, .. })
        | Some(Frame::Dict { items, .. })
        | Some(Frame::Object { items, .. }) => items.push(value),
        Some(Frame::Scalar { .. }) | Some(Frame::Empty(_)) | None => {
            return Err(DecodeError::at(input, pos, "value in an unexpected place"))
        }
    }
    Ok(())
}

fn add_text(input: &[u8], pos: usize, stack: &mut [Frame], text: &str) -> Result<(), DecodeError> {
    match stack.last_mut() {
        Some(Frame::Scalar { text: t, .. }) => t.push_str(text),
        _ if text.trim().is_empty() => {}
        Some(Frame::Empty(name)) => {
            return Err(DecodeError::at(input, pos, format!("text inside <{name}>")));
        }
        _ => return Err(DecodeError::at(input, pos, format!("unexpected text '{}'", text.trim()))),
    }
    Ok(())
}

/// The marshaller's own (second) level of escaping: `&lt;` → `<`, `&gt;` →
/// `>`, then `&amp;` → `&`, in that order, like the Python decoder.
fn unescape_second_level(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        // one left-to-right pass gives the result of Python's three
        // successive replaces: the three patterns cannot overlap, and the `&`
        // that `&amp;` leaves is not looked at again (as Python does it last)
        if let Some(r) = tail.strip_prefix("&lt;") {
            out.push('<');
            rest = r;
        } else if let Some(r) = tail.strip_prefix("&gt;") {
            out.push('>');
            rest = r;
        } else if let Some(r) = tail.strip_prefix("&amp;") {
            out.push('&');
            rest = r;
        } else {
            out.push('&');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dict(pairs: &[(&str, Value)]) -> Value {
        Value::Dict(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
    }

    #[test]
    fn encodes_like_python() {
        assert_eq!(encode(&dict(&[])).unwrap(), "<marshal><dictionary id=\"i2\"/></marshal>");
        assert_eq!(encode(&Value::None).unwrap(), "<marshal><none/></marshal>");
        assert_eq!(encode(&Value::Bool(true)).unwrap(), "<marshal><bool>1</bool></marshal>");
        assert_eq!(
            encode(&Value::str("a&b <x> é\r😀")).unwrap(),
            "<marshal><string>a&amp;amp;b &amp;lt;x&amp;gt; &#233;&#13;&#128512;</string></marshal>"
        );
        let v = Value::List(vec![dict(&[("b", 1i64.into()), ("a", Value::Tuple(vec![]))]), Value::List(vec![])]);
        assert_eq!(
            encode(&v).unwrap(),
            "<marshal><list id=\"i2\"><dictionary id=\"i3\"><string>a</string><tuple/><string>b</string><int>1</int></dictionary><list id=\"i4\"/></list></marshal>"
        );
        assert_eq!(encode(&Value::Int(10i128.pow(24))).unwrap(), "<marshal><long>1000000000000000000000000</long></marshal>");
        assert!(encode(&Value::str("\u{1}")).is_err());
    }

    #[test]
    fn float_repr() {
        for (f, s) in [
            (1.5, "1.5"),
            (1e20, "1e+20"),
            (1e-7, "1e-07"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1795541364.9349186, "1795541364.9349186"),
            (-2.5e-10, "-2.5e-10"),
            (100.0, "100.0"),
            (f64::INFINITY, "inf"),
        ] {
            assert_eq!(python_float_repr(f), s);
        }
    }

    #[test]
    fn decodes_objects_references_and_tolerates_whitespace() {
        let doc = "<?xml version='1.0'?>\n<marshal>\n  <list id=\"i2\">\n <dictionary id=\"i3\"><string>k</string><string> v </string></dictionary>\n <reference id=\"i3\"/>\n </list></marshal>";
        let v = decode(doc).unwrap();
        let d = dict(&[("k", Value::str(" v "))]);
        assert_eq!(v, Value::List(vec![d.clone(), d]));
        let obj = decode("<marshal><object id=\"i2\" module=\"slapos.slap.slap\" class=\"Computer\"><tuple><string>C</string></tuple><dictionary id=\"i3\"/></object></marshal>").unwrap();
        let o = obj.as_object().unwrap();
        assert_eq!((o.module.as_str(), o.class.as_str()), (SLAP_MODULE, "Computer"));
        assert_eq!(o.args, vec![Value::str("C")]);
    }

    #[test]
    fn decodes_both_escaping_levels() {
        assert_eq!(decode("<marshal><string>a&amp;amp;b</string></marshal>").unwrap(), Value::str("a&b"));
        assert_eq!(decode("<marshal><string>a&amp;b</string></marshal>").unwrap(), Value::str("a&b"));
        assert_eq!(decode("<marshal><string>&#233;</string></marshal>").unwrap(), Value::str("é"));
    }

    #[test]
    fn errors_say_where() {
        let e = decode("<marshal>\n<foo/></marshal>").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("unknown element <foo>"), "{e}");
        assert!(decode("<marshal><int>x</int></marshal>").unwrap_err().message.contains("not an integer"));
        assert!(decode("<marshal><list id=\"i2\">").unwrap_err().message.contains("truncated"));
        assert!(decode("").is_err());
        assert!(decode("<marshal><string>&bogus;</string></marshal>").is_err());
        assert!(decode_bytes(b"<marshal><string>\xff</string></marshal>").is_err());
        assert!(decode("<marshal><reference id=\"i9\"/></marshal>").is_err());
        assert!(decode("<marshal><none/><none/></marshal>").is_err());
    }
}
