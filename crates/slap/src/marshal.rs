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
//! [`DecodeError`]s that say what and where. Decoding is bounded: a document
//! that would materialise more than its [`Limits`] allow (back-references
//! counted as what they expand to) is refused before it is built.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// A marshalled value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Python `None`.
    None,
    /// A boolean.
    Bool(bool),
    /// `<int>` and `<long>` (Python ints; values beyond i128 are refused).
    Int(i128),
    /// A float.
    Float(f64),
    /// `<string>` (and the legacy `<unicode>` on input).
    Str(String),
    /// A list.
    List(Vec<Value>),
    /// A tuple.
    Tuple(Vec<Value>),
    /// A set.
    Set(Vec<Value>),
    /// Dictionaries with text keys, which is all SLAP uses; kept sorted, which
    /// is also the order the encoder must write.
    Dict(BTreeMap<String, Value>),
    /// A class instance.
    Object(Box<Object>),
}

/// `<object module=… class=…>`: a class instance, built by Python from its
/// constructor arguments and then its attribute dictionary.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// The Python module (`slapos.slap.slap`).
    pub module: String,
    /// The class (`Computer`, `ComputerPartition`, …).
    pub class: String,
    /// Constructor arguments.
    pub args: Vec<Value>,
    /// The attribute dictionary (`__dict__`).
    pub state: BTreeMap<String, Value>,
}

/// The module of every object SLAP exchanges.
pub const SLAP_MODULE: &str = "slapos.slap.slap";

impl Value {
    /// A string value.
    pub fn str(s: impl Into<String>) -> Value {
        Value::Str(s.into())
    }
    /// The text, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    /// The dictionary, if this is one.
    pub fn as_dict(&self) -> Option<&BTreeMap<String, Value>> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }
    /// The object, if this is one.
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
    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i128> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    /// Whether this is `None`.
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
    /// A control character (XML 1.0 has no way to write it).
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

/// What decoding one document may materialise. A document that exceeds one
/// of them is refused with a [`DecodeErrorKind::Limit`] error before the
/// excess is built: back-references (`<reference>`) are counted as the values
/// they stand for, measured before anything is copied, so a small document
/// that would expand to gigabytes costs no more than its own size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Values in the decoded document (every element that stands for a value,
    /// dictionary keys included).
    pub max_nodes: u64,
    /// Nesting: a value directly in `<marshal>` is at depth 1.
    pub max_depth: usize,
    /// Bytes of all strings together (decoded UTF-8).
    pub max_total_bytes: u64,
    /// Bytes of one string (decoded UTF-8).
    pub max_string_bytes: u64,
}

impl Default for Limits {
    /// 1,000,000 values, depth 128, 64 MiB of strings, 16 MiB per string:
    /// far above what SLAP exchanges (a full computer information of 1,000
    /// partitions is ~30,000 values), far below what hurts a host.
    fn default() -> Limits {
        Limits { max_nodes: 1_000_000, max_depth: 128, max_total_bytes: 64 << 20, max_string_bytes: 16 << 20 }
    }
}

/// Which of the [`Limits`] a document exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// More values than [`Limits::max_nodes`].
    Nodes,
    /// Deeper nesting than [`Limits::max_depth`].
    Depth,
    /// More bytes of strings in all than [`Limits::max_total_bytes`].
    TotalBytes,
    /// One string longer than [`Limits::max_string_bytes`].
    StringBytes,
}

impl std::fmt::Display for LimitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LimitKind::Nodes => "values",
            LimitKind::Depth => "levels of nesting",
            LimitKind::TotalBytes => "bytes of strings in all",
            LimitKind::StringBytes => "bytes in one string",
        })
    }
}

/// What kind of failure a [`DecodeError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// Not a valid `<marshal>` document.
    Invalid,
    /// Valid so far, but bigger than the decoder's [`Limits`] allow.
    Limit {
        /// Which limit was exceeded.
        what: LimitKind,
        /// The limit's value (in the unit of `what`).
        limit: u64,
    },
}

/// A document that is not a valid `<marshal>` document, or one beyond the
/// decoder's [`Limits`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid marshal document at line {line}, column {column} (byte {offset}): {message}")]
pub struct DecodeError {
    /// Byte offset of the error.
    pub offset: usize,
    /// Line of the error (from 1).
    pub line: usize,
    /// Column of the error (from 1).
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// Whether the document is malformed or only too big for the [`Limits`].
    pub kind: DecodeErrorKind,
}

impl DecodeError {
    fn at(input: &[u8], offset: usize, message: impl Into<String>) -> DecodeError {
        let offset = offset.min(input.len());
        let before = &input[..offset];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = offset - before.iter().rposition(|&b| b == b'\n').map(|p| p + 1).unwrap_or(0) + 1;
        DecodeError { offset, line, column, message: message.into(), kind: DecodeErrorKind::Invalid }
    }

    fn limit(input: &[u8], offset: usize, what: LimitKind, limit: u64) -> DecodeError {
        let message = format!("document too big: more than {limit} {what}");
        DecodeError { kind: DecodeErrorKind::Limit { what, limit }, ..DecodeError::at(input, offset, message) }
    }

    /// Whether the document was refused for exceeding a limit (as opposed to
    /// being malformed).
    pub fn is_limit(&self) -> bool {
        matches!(self.kind, DecodeErrorKind::Limit { .. })
    }
}

/// Decodes a `<marshal>` document (from text), within the default [`Limits`].
pub fn decode(input: &str) -> Result<Value, DecodeError> {
    decode_bytes(input.as_bytes())
}

/// Decodes a `<marshal>` document (from text) within `limits`.
pub fn decode_with(input: &str, limits: &Limits) -> Result<Value, DecodeError> {
    decode_bytes_with(input.as_bytes(), limits)
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

/// What a document has materialised so far, against its [`Limits`].
struct Budget<'a> {
    input: &'a [u8],
    limits: &'a Limits,
    nodes: u64,
    bytes: u64,
}

impl<'a> Budget<'a> {
    fn new(input: &'a [u8], limits: &'a Limits) -> Budget<'a> {
        Budget { input, limits, nodes: 0, bytes: 0 }
    }
    /// A value whose deepest part sits at `depth`.
    fn depth(&self, pos: usize, depth: usize) -> Result<(), DecodeError> {
        if depth > self.limits.max_depth {
            return Err(DecodeError::limit(self.input, pos, LimitKind::Depth, self.limits.max_depth as u64));
        }
        Ok(())
    }
    /// `nodes` more values holding `bytes` more bytes of strings.
    fn count(&mut self, pos: usize, nodes: u64, bytes: u64) -> Result<(), DecodeError> {
        self.nodes = self.nodes.saturating_add(nodes);
        if self.nodes > self.limits.max_nodes {
            return Err(DecodeError::limit(self.input, pos, LimitKind::Nodes, self.limits.max_nodes));
        }
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > self.limits.max_total_bytes {
            return Err(DecodeError::limit(self.input, pos, LimitKind::TotalBytes, self.limits.max_total_bytes));
        }
        Ok(())
    }
    /// The text of one string (its node is counted when it opens).
    fn string(&mut self, pos: usize, len: usize) -> Result<(), DecodeError> {
        if len as u64 > self.limits.max_string_bytes {
            return Err(DecodeError::limit(self.input, pos, LimitKind::StringBytes, self.limits.max_string_bytes));
        }
        self.count(pos, 0, len as u64)
    }
}

fn reader(input: &[u8]) -> Reader<&[u8]> {
    let mut reader = Reader::from_reader(input);
    reader.config_mut().trim_text(false);
    reader.config_mut().check_end_names = true;
    reader.config_mut().expand_empty_elements = false;
    reader
}

/// Whether the document has a `<reference>` element (a cheap byte search;
/// SLAP masters never send them, so the common path skips their bookkeeping).
fn has_references(input: &[u8]) -> bool {
    memchr::memmem::find_iter(input, b"reference").any(|i| {
        i > 0 && matches!(input[i - 1], b'<' | b':') && matches!(input.get(i + 9), Some(b' ' | b'/' | b'>' | b'\t' | b'\n' | b'\r'))
    })
}

/// Decodes a `<marshal>` document from bytes (must be UTF-8), within the
/// default [`Limits`].
pub fn decode_bytes(input: &[u8]) -> Result<Value, DecodeError> {
    decode_bytes_with(input, &Limits::default())
}

/// Decodes a `<marshal>` document from bytes (must be UTF-8) within `limits`.
pub fn decode_bytes_with(input: &[u8], limits: &Limits) -> Result<Value, DecodeError> {
    let track_refs = has_references(input);
    if track_refs {
        // what back-references expand to is measured before anything is copied
        expansion::check(input, limits)?;
    }
    let mut d = Decoder { input, budget: Budget::new(input, limits), stack: Vec::new(), refs: BTreeMap::new(), track_refs };
    let mut reader = reader(input);
    let mut result: Option<Value> = None;
    loop {
        let pos = reader.buffer_position() as usize;
        let event = reader.read_event().map_err(|e| DecodeError::at(input, reader.error_position() as usize, e.to_string()))?;
        if matches!(event, Event::Eof) {
            break;
        }
        if result.is_some() && matches!(event, Event::Start(_) | Event::Empty(_)) {
            return Err(DecodeError::at(input, pos, "content after the end of the document"));
        }
        if let Some(v) = d.event(pos, event)? {
            result = Some(v);
        }
    }
    if !d.stack.is_empty() {
        return Err(DecodeError::at(input, input.len(), "truncated document (unclosed elements)"));
    }
    result.ok_or_else(|| DecodeError::at(input, input.len(), "no <marshal> element"))
}

/// The decoder's state between events.
struct Decoder<'a> {
    input: &'a [u8],
    budget: Budget<'a>,
    stack: Vec<Frame>,
    /// Containers by id, when the document has back-references.
    refs: BTreeMap<String, Value>,
    track_refs: bool,
}

impl Decoder<'_> {
    /// Handles one event; returns the document's value when `</marshal>` closes.
    fn event(&mut self, pos: usize, event: Event) -> Result<Option<Value>, DecodeError> {
        let input = self.input;
        match event {
            Event::Start(e) => {
                let frame = self.open(pos, &e, false)?;
                self.stack.push(frame);
            }
            Event::Empty(e) => {
                let frame = self.open(pos, &e, true)?;
                match close(input, pos, frame, &mut self.refs, self.track_refs, &mut self.budget)? {
                    Some(v) => push_child(input, pos, &mut self.stack, v)?,
                    None => return Err(DecodeError::at(input, pos, "empty <marshal/> document")),
                }
            }
            Event::End(_) => {
                let frame = self.stack.pop().ok_or_else(|| DecodeError::at(input, pos, "unexpected end tag"))?;
                // only the root stays open as a Marshal frame (references are empty)
                if let Frame::Marshal(v) = frame {
                    return v.map(Some).ok_or_else(|| DecodeError::at(input, pos, "empty <marshal> document"));
                }
                if let Some(v) = close(input, pos, frame, &mut self.refs, self.track_refs, &mut self.budget)? {
                    push_child(input, pos, &mut self.stack, v)?;
                }
            }
            Event::Text(t) => {
                let text = t.unescape().map_err(|e| DecodeError::at(input, pos, format!("bad text: {e}")))?;
                match self.stack.last_mut() {
                    // the usual case: the whole text of a scalar in one event
                    Some(Frame::Scalar { text: buf, .. }) if buf.is_empty() => *buf = text.into_owned(),
                    _ => add_text(input, pos, &mut self.stack, &text)?,
                }
            }
            Event::CData(t) => {
                let text = std::str::from_utf8(&t).map_err(|_| DecodeError::at(input, pos, "invalid UTF-8 in CDATA"))?;
                add_text(input, pos, &mut self.stack, text)?;
            }
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) | Event::Eof => {}
        }
        Ok(None)
    }

    /// The frame of an element, counted against the limits when it is a value.
    fn open(&mut self, pos: usize, e: &BytesStart, empty: bool) -> Result<Frame, DecodeError> {
        let frame = open(self.input, pos, e, &self.stack, &self.refs, empty, self.track_refs)?;
        // the root and resolved references (measured beforehand) are not counted here
        if !matches!(frame, Frame::Marshal(_)) {
            self.budget.depth(pos, self.stack.len())?;
            self.budget.count(pos, 1, 0)?;
        }
        Ok(frame)
    }
}

/// The first pass over documents with back-references: the size of what
/// they expand to, computed from the size of each identified container, with
/// no value built.
mod expansion {
    use std::collections::HashMap;

    use quick_xml::events::{BytesStart, Event};

    use super::{attr, unescape_second_level, Budget, DecodeError, Limits};

    /// What one container expands to.
    #[derive(Clone, Copy)]
    struct Weight {
        nodes: u64,
        bytes: u64,
        /// 1 for a container without children.
        height: usize,
    }

    /// An open element.
    struct Open {
        id: Option<String>,
        nodes_before: u64,
        bytes_before: u64,
        height: usize,
        /// The text so far, for strings.
        text: Option<String>,
    }

    /// Refuses the document if what it expands to exceeds `limits`.
    pub(super) fn check(input: &[u8], limits: &Limits) -> Result<(), DecodeError> {
        let mut budget = Budget::new(input, limits);
        let mut weights: HashMap<String, Weight> = HashMap::new();
        let mut stack: Vec<Open> = Vec::new();
        let mut reader = super::reader(input);
        loop {
            let pos = reader.buffer_position() as usize;
            // malformed documents are left for the decoder to describe
            let Ok(event) = reader.read_event() else {
                return Ok(());
            };
            match event {
                Event::Empty(e) if e.local_name().as_ref() == b"reference" => {
                    let Some(id) = attr(input, pos, &e, "id")? else {
                        return Ok(());
                    };
                    let Some(w) = weights.get(&id).copied() else {
                        return Ok(());
                    };
                    budget.depth(pos, stack.len() + w.height - 1)?;
                    budget.count(pos, w.nodes, w.bytes)?;
                    grow(&mut stack, w.height);
                }
                Event::Start(e) if e.local_name().as_ref() == b"reference" => return Ok(()),
                Event::Start(e) => {
                    let name = e.local_name();
                    let text = matches!(name.as_ref(), b"string" | b"unicode").then(String::new);
                    let open = Open { id: id(input, pos, &e)?, nodes_before: budget.nodes, bytes_before: budget.bytes, height: 1, text };
                    if !stack.is_empty() {
                        budget.depth(pos, stack.len())?;
                        budget.count(pos, 1, 0)?;
                    }
                    stack.push(open);
                }
                Event::Empty(e) => {
                    budget.depth(pos, stack.len())?;
                    budget.count(pos, 1, 0)?;
                    if let Some(id) = id(input, pos, &e)? {
                        weights.insert(id, Weight { nodes: 1, bytes: 0, height: 1 });
                    }
                    grow(&mut stack, 1);
                }
                Event::Text(t) => {
                    if let Some(Open { text: Some(buf), .. }) = stack.last_mut() {
                        let Ok(t) = t.unescape() else { return Ok(()) };
                        buf.push_str(&t);
                    }
                }
                Event::CData(t) => {
                    if let (Some(Open { text: Some(buf), .. }), Ok(t)) = (stack.last_mut(), std::str::from_utf8(&t)) {
                        buf.push_str(t);
                    }
                }
                Event::End(_) => {
                    let Some(open) = stack.pop() else {
                        return Ok(());
                    };
                    if let Some(text) = &open.text {
                        let len = if text.contains('&') { unescape_second_level(text).len() } else { text.len() };
                        budget.string(pos, len)?;
                    }
                    let w =
                        Weight { nodes: budget.nodes - open.nodes_before, bytes: budget.bytes - open.bytes_before, height: open.height };
                    if let Some(id) = open.id {
                        weights.insert(id, w);
                    }
                    grow(&mut stack, w.height);
                }
                Event::Eof => return Ok(()),
                Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
            }
        }
    }

    /// The id of a container that references may point at.
    fn id(input: &[u8], pos: usize, e: &BytesStart) -> Result<Option<String>, DecodeError> {
        match e.local_name().as_ref() {
            b"list" | b"set" | b"dictionary" | b"object" => attr(input, pos, e, "id"),
            _ => Ok(None),
        }
    }

    /// A child of `height` was added to the innermost open element.
    fn grow(stack: &mut [Open], height: usize) {
        if let Some(parent) = stack.last_mut() {
            parent.height = parent.height.max(height + 1);
        }
    }
}

/// At most 100 bytes of document text for an error message (documents are
/// untrusted and error messages end up in logs).
fn cut(s: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 100;
    if s.len() <= MAX {
        return s.into();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end]).into()
}

fn attr(input: &[u8], pos: usize, e: &BytesStart, name: &str) -> Result<Option<String>, DecodeError> {
    for a in e.attributes() {
        let a = a.map_err(|err| DecodeError::at(input, pos, format!("bad attribute: {err}")))?;
        if a.key.local_name().as_ref() == name.as_bytes() {
            let v = a.unescape_value().map_err(|err| DecodeError::at(input, pos, format!("bad attribute value: {err}")))?;
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
    let name = std::str::from_utf8(local.as_ref()).map_err(|_| DecodeError::at(input, pos, "invalid UTF-8 in element name"))?;
    if stack.is_empty() {
        if name != "marshal" {
            return Err(DecodeError::at(input, pos, format!("expected <marshal>, found <{}>", cut(name))));
        }
        return Ok(Frame::Marshal(None));
    }
    if matches!(stack.last(), Some(Frame::Scalar { .. }) | Some(Frame::Empty(_))) {
        return Err(DecodeError::at(input, pos, format!("element <{}> inside a scalar", cut(name))));
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
            module: attr(input, pos, e, "module")?.ok_or_else(|| DecodeError::at(input, pos, "<object> without module attribute"))?,
            class: attr(input, pos, e, "class")?.ok_or_else(|| DecodeError::at(input, pos, "<object> without class attribute"))?,
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
                None => return Err(DecodeError::at(input, pos, format!("reference to unknown id '{}'", cut(&id)))),
            }
        }
        other => return Err(DecodeError::at(input, pos, format!("unknown element <{}>", cut(other)))),
    })
}

fn close(
    input: &[u8],
    pos: usize,
    frame: Frame,
    refs: &mut BTreeMap<String, Value>,
    track_refs: bool,
    budget: &mut Budget,
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
            ScalarKind::Str => {
                let text = if text.contains('&') { unescape_second_level(&text) } else { text };
                budget.string(pos, text.len())?;
                Value::Str(text)
            }
            ScalarKind::Int => {
                let t = text.trim();
                Value::Int(t.parse().map_err(|_| DecodeError::at(input, pos, format!("not an integer: '{}'", cut(t))))?)
            }
            ScalarKind::Float => {
                let t = text.trim();
                Value::Float(t.parse().map_err(|_| DecodeError::at(input, pos, format!("not a float: '{}'", cut(t))))?)
            }
            ScalarKind::Bool => match text.trim() {
                "1" | "True" => Value::Bool(true),
                "0" | "False" => Value::Bool(false),
                t => return Err(DecodeError::at(input, pos, format!("not a boolean: '{}'", cut(t)))),
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
                    return Err(DecodeError::at(input, pos, format!("<object> arguments must be a tuple, found <{}>", other.type_name())))
                }
                None => Vec::new(),
            };
            let state = match it.next() {
                Some(Value::Dict(d)) => d,
                Some(other) => {
                    return Err(DecodeError::at(input, pos, format!("<object> state must be a dictionary, found <{}>", other.type_name())))
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
        _ => return Err(DecodeError::at(input, pos, format!("unexpected text '{}'", cut(text.trim())))),
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
    use test_support::reference_bomb;

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
        // document text in messages is cut
        let long = format!("<marshal><int>{}</int></marshal>", "9x".repeat(1 << 20));
        assert!(decode(&long).unwrap_err().message.len() < 200);
    }

    fn limit_of(r: Result<Value, DecodeError>) -> (LimitKind, u64) {
        match r {
            Err(DecodeError { kind: DecodeErrorKind::Limit { what, limit }, .. }) => (what, limit),
            other => panic!("expected a limit error, got {other:?}"),
        }
    }

    #[test]
    fn the_reference_bomb_is_refused_before_it_is_built() {
        let doc = reference_bomb(10, 9, 10);
        assert!(doc.len() < 2200, "{}", doc.len());
        let started = std::time::Instant::now();
        let err = decode(&doc).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
        assert_eq!(err.kind, DecodeErrorKind::Limit { what: LimitKind::Nodes, limit: 1_000_000 });
        assert!(err.to_string().contains("more than 1000000 values"), "{err}");
        // the position is that of the reference that crossed the limit
        assert!(doc[err.offset..].starts_with("<reference"), "{}", &doc[err.offset..]);
        // the same shape, small enough, decodes to its full expansion
        let v = decode(&reference_bomb(3, 4, 1)).unwrap();
        let top = v.as_seq().unwrap();
        assert_eq!(top.len(), 4);
        assert_eq!(top[3].as_seq().unwrap()[2].as_seq().unwrap()[1].as_seq().unwrap()[0], Value::List(vec![Value::str("x"); 3]));
    }

    #[test]
    fn references_count_as_what_they_expand_to() {
        // 1 outer list + 2 strings in i2 + 1 list i2 = 4 values; each reference 3 more
        let doc = |n: usize| {
            let refs = "<reference id=\"i2\"/>".repeat(n);
            format!("<marshal><list id=\"i1\"><list id=\"i2\"><string>ab</string><string>c</string></list>{refs}</list></marshal>")
        };
        let limits = |max_nodes, max_total_bytes| Limits { max_nodes, max_total_bytes, ..Limits::default() };
        assert!(decode_with(&doc(2), &limits(10, 100)).is_ok());
        assert_eq!(limit_of(decode_with(&doc(3), &limits(12, 100))), (LimitKind::Nodes, 12));
        assert!(decode_with(&doc(3), &limits(13, 100)).is_ok());
        assert!(decode_with(&doc(3), &limits(100, 12)).is_ok());
        assert_eq!(limit_of(decode_with(&doc(3), &limits(100, 11))), (LimitKind::TotalBytes, 11));
        // empty containers can be referenced too, and count
        let empties = format!("<marshal><list id=\"i1\"><list id=\"i2\"/>{}</list></marshal>", "<reference id=\"i2\"/>".repeat(20));
        assert_eq!(limit_of(decode_with(&empties, &limits(20, 100))), (LimitKind::Nodes, 20));
        assert_eq!(decode_with(&empties, &limits(22, 100)).unwrap().as_seq().unwrap().len(), 21);
    }

    #[test]
    fn deep_nesting_is_refused_even_through_references() {
        let nested = |n: usize| format!("<marshal>{}{}</marshal>", "<tuple>".repeat(n), "</tuple>".repeat(n));
        assert!(decode(&nested(128)).is_ok());
        assert_eq!(limit_of(decode(&nested(129))), (LimitKind::Depth, 128));
        assert_eq!(limit_of(decode(&nested(100_000))), (LimitKind::Depth, 128));
        // a 100-deep list referenced 100 levels down is 200 deep
        let deep = format!("<list id=\"i2\">{}<none/>{}</list>", "<tuple>".repeat(99), "</tuple>".repeat(99));
        let doc =
            format!("<marshal><tuple>{deep}{}<reference id=\"i2\"/>{}</tuple></marshal>", "<tuple>".repeat(99), "</tuple>".repeat(99));
        assert_eq!(limit_of(decode(&doc)), (LimitKind::Depth, 128));
    }

    #[test]
    fn huge_strings_are_refused() {
        let limits = Limits { max_string_bytes: 1000, max_total_bytes: 2500, ..Limits::default() };
        let string = |n: usize| format!("<string>{}</string>", "é".repeat(n));
        // decoded bytes count (é is 2 bytes; the document writes it &#233;)
        assert!(decode_with(&format!("<marshal>{}</marshal>", string(500)), &limits).is_ok());
        let one = format!("<marshal>{}</marshal>", string(501));
        assert_eq!(limit_of(decode_with(&one, &limits)), (LimitKind::StringBytes, 1000));
        let many = format!("<marshal><tuple>{}</tuple></marshal>", string(400).repeat(4));
        assert_eq!(limit_of(decode_with(&many, &limits)), (LimitKind::TotalBytes, 2500));
        let big = format!("<marshal><string>{}</string></marshal>", "x".repeat((16 << 20) + 1));
        assert_eq!(limit_of(decode(&big)), (LimitKind::StringBytes, 16 << 20));
        assert!(!decode("<marshal><int>x</int></marshal>").unwrap_err().is_limit());
    }
}
