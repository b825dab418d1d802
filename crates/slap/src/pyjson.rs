//! JSON written byte for byte as Python's `json.dumps` writes it.
//!
//! SlapOS writes JSON files that other programs (and people diffing them)
//! read: promise results (`json.dumps(result)`), json-in-xml instance
//! parameters (`json.dumps(params, indent=2)`), the format state
//! (`json.dump(computer, sort_keys=True, indent=2)`, `.slapos-resource` with
//! `indent=4`). [`PythonFormatter`] is a [`serde_json::ser::Formatter`] that
//! lays out values like Python does:
//!
//! * separators `", "` and `": "` by default, `","` and `": "` with an
//!   indent (Python's defaults), or the ones given (`separators=`);
//! * with an indent, one item per line and empty containers as `[]`/`{}`;
//! * `ensure_ascii` (the default): every character outside `' '..='~'`
//!   (including DEL) as `\uXXXX` (lowercase hex, UTF-16 surrogate pairs
//!   above U+FFFF); `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t` as such, the other
//!   control characters as `\u00XX`;
//! * floats as Python's `repr` (`1e-05`, `1e+16`, `1.0`).
//!
//! `sort_keys` needs the whole map before writing, so it is done by [`dumps`]
//! on a [`serde_json::Value`], not by the formatter. Not covered: NaN and
//! infinities (serde_json writes `null` where Python writes `NaN`), integers
//! beyond 128 bits, `indent` given as a string.

use std::io::{self, Write};

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::ser::{CharEscape, Formatter};
use serde_json::Value;

use crate::marshal::python_float_repr;

/// The `json.dumps` keyword arguments this writer honours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// `indent=`: spaces per level; `None` writes everything on one line.
    pub indent: Option<usize>,
    /// `separators=(item, key)`; `None` is Python's default for the indent.
    pub separators: Option<(&'static str, &'static str)>,
    /// `sort_keys=`: objects' keys in code point order (only in [`dumps`]).
    pub sort_keys: bool,
    /// `ensure_ascii=`: everything outside printable ASCII escaped.
    pub ensure_ascii: bool,
}

impl Options {
    /// `json.dumps(value)`.
    pub const DEFAULT: Options = Options { indent: None, separators: None, sort_keys: false, ensure_ascii: true };

    /// `json.dumps(value, indent=n)`.
    pub const fn indent(n: usize) -> Options {
        Options { indent: Some(n), ..Options::DEFAULT }
    }

    /// The same with `sort_keys=True`.
    pub const fn sort_keys(self) -> Options {
        Options { sort_keys: true, ..self }
    }

    /// The same with `separators=(",", ":")`.
    pub const fn compact(self) -> Options {
        Options { separators: Some((",", ":")), ..self }
    }

    /// The `(item, key)` separators in effect.
    fn effective_separators(&self) -> (&'static str, &'static str) {
        match (self.separators, self.indent) {
            (Some(s), _) => s,
            (None, Some(_)) => (",", ": "),
            (None, None) => (", ", ": "),
        }
    }
}

impl Default for Options {
    fn default() -> Options {
        Options::DEFAULT
    }
}

/// Python's `json.dumps(value, **options)`.
pub fn dumps(value: &Value, options: &Options) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter::new(options));
    let written = if options.sort_keys { Sorted(value).serialize(&mut ser) } else { value.serialize(&mut ser) };
    written.expect("a JSON value always serialises into memory");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// A value whose objects serialise with their keys sorted.
struct Sorted<'a>(&'a Value);

impl Serialize for Sorted<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Array(items) => serializer.collect_seq(items.iter().map(Sorted)),
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                let mut m = serializer.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    m.serialize_entry(k, &Sorted(v))?;
                }
                m.end()
            }
            other => other.serialize(serializer),
        }
    }
}

/// A [`Formatter`] that writes like Python's `json` module (see the module
/// documentation); use it with [`serde_json::Serializer::with_formatter`].
#[derive(Debug, Clone)]
pub struct PythonFormatter {
    indent: Option<usize>,
    item_separator: &'static str,
    key_separator: &'static str,
    ensure_ascii: bool,
    level: usize,
    has_value: bool,
}

impl PythonFormatter {
    /// A formatter for these options (`sort_keys` is [`dumps`]'s business).
    pub fn new(options: &Options) -> PythonFormatter {
        let (item_separator, key_separator) = options.effective_separators();
        PythonFormatter {
            indent: options.indent,
            item_separator,
            key_separator,
            ensure_ascii: options.ensure_ascii,
            level: 0,
            has_value: false,
        }
    }

    /// A new line at the current level, when indenting.
    fn newline<W: ?Sized + Write>(&self, w: &mut W) -> io::Result<()> {
        if let Some(n) = self.indent {
            w.write_all(b"\n")?;
            for _ in 0..n * self.level {
                w.write_all(b" ")?;
            }
        }
        Ok(())
    }

    fn begin<W: ?Sized + Write>(&mut self, w: &mut W, open: &[u8]) -> io::Result<()> {
        self.level += 1;
        self.has_value = false;
        w.write_all(open)
    }

    fn end<W: ?Sized + Write>(&mut self, w: &mut W, close: &[u8]) -> io::Result<()> {
        self.level -= 1;
        if self.has_value {
            self.newline(w)?;
        }
        w.write_all(close)
    }

    fn item<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if !first {
            w.write_all(self.item_separator.as_bytes())?;
        }
        self.newline(w)
    }
}

impl Formatter for PythonFormatter {
    fn write_f64<W: ?Sized + Write>(&mut self, w: &mut W, value: f64) -> io::Result<()> {
        w.write_all(python_float_repr(value).as_bytes())
    }

    /// Python has no single precision: the value is widened, as
    /// `float(numpy.float32(x))` would be.
    fn write_f32<W: ?Sized + Write>(&mut self, w: &mut W, value: f32) -> io::Result<()> {
        self.write_f64(w, value as f64)
    }

    fn write_string_fragment<W: ?Sized + Write>(&mut self, w: &mut W, fragment: &str) -> io::Result<()> {
        if !self.ensure_ascii {
            return w.write_all(fragment.as_bytes());
        }
        let mut units = [0u16; 2];
        let mut plain = 0;
        for (i, c) in fragment.char_indices() {
            if (' '..='~').contains(&c) {
                continue;
            }
            w.write_all(&fragment.as_bytes()[plain..i])?;
            for unit in c.encode_utf16(&mut units) {
                write!(w, "\\u{unit:04x}")?;
            }
            plain = i + c.len_utf8();
        }
        w.write_all(&fragment.as_bytes()[plain..])
    }

    fn write_char_escape<W: ?Sized + Write>(&mut self, w: &mut W, escape: CharEscape) -> io::Result<()> {
        let text: &[u8] = match escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::Solidus => b"/", // Python never escapes '/'
            CharEscape::Backspace => b"\\b",
            CharEscape::FormFeed => b"\\f",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::AsciiControl(b) => return write!(w, "\\u{b:04x}"),
        };
        w.write_all(text)
    }

    fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.begin(w, b"[")
    }

    fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.end(w, b"]")
    }

    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.item(w, first)
    }

    fn end_array_value<W: ?Sized + Write>(&mut self, _w: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.begin(w, b"{")
    }

    fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.end(w, b"}")
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.item(w, first)
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(self.key_separator.as_bytes())
    }

    fn end_object_value<W: ?Sized + Write>(&mut self, _w: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use serde_json::json;

    /// A value with every kind of string the escaping must get right.
    fn sample() -> Value {
        json!({
            "zeta": "a\"b\\c/d\u{8}\u{c}\n\r\t\u{1}\u{1f}\u{7f}",
            "alpha": ["é", "€", "😀", "\u{ffff}", 1, -2, 1.5, 0.1, 1e-5, 1e16, 123456789.0, true, null],
            "empty": {"l": [], "d": {}},
            "nested": [[1, [2]], {"b": 1, "a": 2}],
        })
    }

    // Each expected text is what Python 3.11.2 printed for `sample()` with
    // `print(json.dumps(json.dumps(v, **options)))`, kept JSON-quoted as it
    // came out (decoded by `py`).
    const PY_DEFAULT: &str = r#""{\"zeta\": \"a\\\"b\\\\c/d\\b\\f\\n\\r\\t\\u0001\\u001f\\u007f\", \"alpha\": [\"\\u00e9\", \"\\u20ac\", \"\\ud83d\\ude00\", \"\\uffff\", 1, -2, 1.5, 0.1, 1e-05, 1e+16, 123456789.0, true, null], \"empty\": {\"l\": [], \"d\": {}}, \"nested\": [[1, [2]], {\"b\": 1, \"a\": 2}]}""#;
    const PY_INDENT2: &str = r#""{\n  \"zeta\": \"a\\\"b\\\\c/d\\b\\f\\n\\r\\t\\u0001\\u001f\\u007f\",\n  \"alpha\": [\n    \"\\u00e9\",\n    \"\\u20ac\",\n    \"\\ud83d\\ude00\",\n    \"\\uffff\",\n    1,\n    -2,\n    1.5,\n    0.1,\n    1e-05,\n    1e+16,\n    123456789.0,\n    true,\n    null\n  ],\n  \"empty\": {\n    \"l\": [],\n    \"d\": {}\n  },\n  \"nested\": [\n    [\n      1,\n      [\n        2\n      ]\n    ],\n    {\n      \"b\": 1,\n      \"a\": 2\n    }\n  ]\n}""#;
    const PY_SORTED_INDENT4_COMPACT: &str = r#""{\n    \"alpha\":[\n        \"\\u00e9\",\n        \"\\u20ac\",\n        \"\\ud83d\\ude00\",\n        \"\\uffff\",\n        1,\n        -2,\n        1.5,\n        0.1,\n        1e-05,\n        1e+16,\n        123456789.0,\n        true,\n        null\n    ],\n    \"empty\":{\n        \"d\":{},\n        \"l\":[]\n    },\n    \"nested\":[\n        [\n            1,\n            [\n                2\n            ]\n        ],\n        {\n            \"a\":2,\n            \"b\":1\n        }\n    ],\n    \"zeta\":\"a\\\"b\\\\c/d\\b\\f\\n\\r\\t\\u0001\\u001f\\u007f\"\n}""#;
    const PY_NO_ASCII_SORTED: &str = r#""{\"alpha\": [\"\u00e9\", \"\u20ac\", \"\ud83d\ude00\", \"\uffff\", 1, -2, 1.5, 0.1, 1e-05, 1e+16, 123456789.0, true, null], \"empty\": {\"d\": {}, \"l\": []}, \"nested\": [[1, [2]], {\"a\": 2, \"b\": 1}], \"zeta\": \"a\\\"b\\\\c/d\\b\\f\\n\\r\\t\\u0001\\u001f\u007f\"}""#;

    fn py(quoted: &str) -> String {
        serde_json::from_str(quoted).unwrap()
    }

    #[test]
    fn writes_what_python_writes() {
        let v = sample();
        assert_eq!(dumps(&v, &Options::DEFAULT), py(PY_DEFAULT));
        assert_eq!(dumps(&v, &Options::indent(2)), py(PY_INDENT2));
        assert_eq!(dumps(&v, &Options::indent(4).sort_keys().compact()), py(PY_SORTED_INDENT4_COMPACT));
        assert_eq!(dumps(&v, &Options { ensure_ascii: false, ..Options::DEFAULT.sort_keys() }), py(PY_NO_ASCII_SORTED));
    }

    #[test]
    fn floats_are_written_as_python_repr() {
        // repr() of each, from Python 3.11.2
        for (x, py) in [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345678901234568e20, "1.2345678901234568e+20"),
            (1.5e300, "1.5e+300"),
            (-2.5e-300, "-2.5e-300"),
            (123.456, "123.456"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (0.30000000000000004, "0.30000000000000004"),
        ] {
            assert_eq!(dumps(&json!(x), &Options::DEFAULT), py, "{x:e}");
        }
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((any::<String>(), inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// Equal values, floats within serde_json's parsing error (its default
    /// float parser may be one unit in the last place off; Python's repr
    /// digits themselves are checked exactly by `float_repr_reads_back`).
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                x == y || (x - y).abs() <= x.abs().max(y.abs()) * 4.0 * f64::EPSILON
            }
            (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
            (Value::Object(x), Value::Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w))),
            _ => a == b,
        }
    }

    proptest! {
        #[test]
        fn float_repr_reads_back(x in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
            let text = python_float_repr(x);
            prop_assert_eq!(text.parse::<f64>().unwrap().to_bits(), x.to_bits(), "{}", text);
        }

        #[test]
        fn reads_back_as_the_same_value(v in arb_value(), indent in prop::option::of(0usize..5), sort in any::<bool>(), ascii in any::<bool>()) {
            let options = Options { indent, separators: None, sort_keys: sort, ensure_ascii: ascii };
            let text = dumps(&v, &options);
            let back = serde_json::from_str::<Value>(&text).unwrap();
            prop_assert!(same(&back, &v), "{} read back as {}", v, back);
            if ascii {
                prop_assert!(text.chars().all(|c| (' '..='~').contains(&c) || c == '\n'), "{}", text);
            }
        }
    }

    /// Runs `/usr/bin/python3` (always present on Debian; not the venv) on a
    /// few hundred random values and compares its `json.dumps` with ours, for
    /// the option sets the project uses.
    #[test]
    fn random_values_match_the_system_python() {
        const PY: &str = "/usr/bin/python3";
        let option_sets = [Options::DEFAULT, Options::indent(2), Options::indent(2).sort_keys(), Options::indent(4).sort_keys()];
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let values: Vec<Value> = (0..300).map(|_| arb_value().new_tree(&mut runner).unwrap().current()).collect();
        let script = "import json,sys\nopts=[{},{'indent':2},{'indent':2,'sort_keys':True},{'indent':4,'sort_keys':True}]\nfor line in sys.stdin:\n    v=json.loads(line)\n    for o in opts:\n        print(json.dumps(json.dumps(v,**o)))\n";
        let mut child = std::process::Command::new(PY)
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("this test needs {PY} ({e})"));
        let input: String = values.iter().map(|v| serde_json::to_string(v).unwrap() + "\n").collect();
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(out.status.success(), "{PY} failed");
        let mut lines = std::str::from_utf8(&out.stdout).unwrap().lines();
        for v in &values {
            for o in &option_sets {
                let python: String = serde_json::from_str(lines.next().expect("one line per value and option set")).unwrap();
                assert_eq!(dumps(v, o), python, "{o:?} of {v}");
            }
        }
    }
}
