//! The decoders fuzzed from real documents (issue 11, "decoder limits"):
//! every marshal document of the wire captures (`testdata/slap-vectors/`,
//! requests and answers) and every instance XML document found in them is
//! mutated — snippets inserted (references to other ids, unbalanced tags,
//! entities, a DOCTYPE, character references XML forbids), ranges deleted,
//! copied elsewhere (duplicate ids) or repeated (growth), tag names swapped,
//! the whole wrapped in deep nesting — and decoded again. Whatever the
//! mutation: no panic (a stack overflow would abort the binary), an answer
//! in bounded time, an error that points inside the input, and what does
//! decode re-encodes to a fixed point.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use slap::instance_xml::{text_dict_to_xml, xml_to_dict};
use slap::marshal::{decode, encode, Value};

/// How long one decode may take, in a debug build on a loaded machine.
const BOUND: Duration = Duration::from_secs(2);

/// The marshal documents of the captures, and the instance XML documents
/// inside them (texts of decoded values and of JSON answers, and every
/// decoded dictionary written as instance XML).
struct Corpus {
    marshal: Vec<String>,
    instance: Vec<String>,
}

fn corpus() -> &'static Corpus {
    static CORPUS: std::sync::OnceLock<Corpus> = std::sync::OnceLock::new();
    CORPUS.get_or_init(|| {
        let mut texts = Vec::new();
        for (_, capture) in test_support::vectors() {
            let request = &capture["request"];
            let body = request["body"].as_str().unwrap_or_default();
            texts.extend(url::form_urlencoded::parse(body.as_bytes()).map(|(_, v)| v.into_owned()));
            texts.extend(request["query"].as_array().into_iter().flatten().filter_map(|kv| kv[1].as_str().map(str::to_string)));
            texts.push(capture["response"]["body"].as_str().unwrap_or_default().to_string());
        }
        // (some captures send broken documents on purpose: those start no mutation)
        let marshal: Vec<String> = texts.iter().filter(|t| t.starts_with("<marshal") && decode(t).is_ok()).cloned().collect();
        let mut instance = Vec::new();
        for t in &texts {
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(t) {
                json_instance_xml(&json, &mut instance);
            }
        }
        for m in &marshal {
            value_instance_xml(&decode(m).expect("kept because it decodes"), &mut instance);
        }
        instance.sort();
        instance.dedup();
        assert!(marshal.len() > 50 && instance.len() > 10, "{} marshal, {} instance XML documents", marshal.len(), instance.len());
        Corpus { marshal, instance }
    })
}

fn is_instance_xml(s: &str) -> bool {
    s.contains("<instance")
}

fn value_instance_xml(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Str(s) if is_instance_xml(s) => out.push(s.clone()),
        Value::List(xs) | Value::Tuple(xs) | Value::Set(xs) => xs.iter().for_each(|x| value_instance_xml(x, out)),
        Value::Dict(d) => {
            let text: BTreeMap<String, Option<String>> = d.iter().map(|(k, v)| (k.clone(), v.as_str().map(str::to_string))).collect();
            out.push(text_dict_to_xml(&text));
            d.values().for_each(|x| value_instance_xml(x, out));
        }
        Value::Object(o) => {
            o.args.iter().for_each(|x| value_instance_xml(x, out));
            value_instance_xml(&Value::Dict(o.state.clone()), out);
        }
        _ => {}
    }
}

fn json_instance_xml(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) if is_instance_xml(s) => out.push(s.clone()),
        serde_json::Value::Array(xs) => xs.iter().for_each(|x| json_instance_xml(x, out)),
        serde_json::Value::Object(m) => m.values().for_each(|x| json_instance_xml(x, out)),
        _ => {}
    }
}

// ---------------------------------------------------------------- mutations

/// One change to a document; positions are indexes into its current length.
#[derive(Debug, Clone)]
enum Mutation {
    Insert(Index, String),
    Delete(Index, Index),
    /// Copies the range `[a, b)` to `at`.
    Copy(Index, Index, Index),
    /// Replaces the range `[a, b)` by `n` copies of itself.
    Repeat(Index, Index, usize),
    /// Renames every `<from`/`</from` to `to`.
    Rename(&'static str, &'static str),
    /// Wraps the content of the root element in `n` levels of `tag`.
    Nest(&'static str, usize),
}

const TAGS: [&str; 16] = [
    "marshal",
    "list",
    "tuple",
    "dictionary",
    "set",
    "string",
    "unicode",
    "int",
    "long",
    "float",
    "bool",
    "none",
    "object",
    "reference",
    "instance",
    "parameter",
];

/// Tags that can stand for each other's in a well-formed document.
const KIN: [(&str, &str); 12] = [
    ("string", "unicode"),
    ("unicode", "string"),
    ("int", "long"),
    ("int", "float"),
    ("float", "int"),
    ("string", "int"),
    ("list", "tuple"),
    ("tuple", "set"),
    ("list", "dictionary"),
    ("dictionary", "list"),
    ("tuple", "dictionary"),
    ("object", "list"),
];

fn snippet() -> impl Strategy<Value = String> {
    let fixed = vec![
        "<reference id=\"i1\"/>",
        "<reference id=\"i2\"/>",
        "<reference id=\"i99\"/>",
        "<reference/>",
        "<list id=\"i2\">",
        "</list>",
        "<dictionary>",
        "<string>",
        "</string>",
        "<none/>",
        "<int>99999999999999999999999999999999999999999</int>",
        "<float>nan</float>",
        "<float>1e999</float>",
        "id=\"i1\"",
        " id=\"\"",
        "&amp;",
        "&#0;",
        "&#xFFFF;",
        "&#1114112;",
        "&#x;",
        "&bogus;",
        "<![CDATA[<x>]]>",
        "<!-- -->",
        "<?pi x?>",
        "<!DOCTYPE m [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\">]>",
        "&b;",
        "<parameter id=\"x\">",
        "</parameter>",
        "<parameter id=\"x\"/>",
        "<instance>",
        "\u{0}",
        "\u{feff}",
        "é🦀",
        "\r\n",
        "<",
        ">",
        "\"",
    ];
    prop_oneof![4 => proptest::sample::select(fixed).prop_map(str::to_string), 1 => "[<>/&;\"'=#a-z0-9 !?\\[\\]-]{0,12}"]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let tag = || proptest::sample::select(TAGS.to_vec());
    prop_oneof![
        4 => (any::<Index>(), snippet()).prop_map(|(i, s)| Mutation::Insert(i, s)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Delete(a, b)),
        2 => (any::<Index>(), any::<Index>(), any::<Index>()).prop_map(|(a, b, c)| Mutation::Copy(a, b, c)),
        1 => (any::<Index>(), any::<Index>(), 2..64usize).prop_map(|(a, b, n)| Mutation::Repeat(a, b, n)),
        1 => (tag(), tag()).prop_map(|(a, b)| Mutation::Rename(a, b)),
        // kin: the document stays well-formed, its types change
        3 => proptest::sample::select(KIN.to_vec()).prop_map(|(a, b)| Mutation::Rename(a, b)),
        1 => (proptest::sample::select(vec!["list", "tuple", "parameter", "instance"]), prop_oneof![1..200usize, 200..5_000usize])
            .prop_map(|(t, n)| Mutation::Nest(t, n)),
    ]
}

/// The char boundary at or before `i` of `s`.
fn floor(s: &str, i: usize) -> usize {
    (0..=i.min(s.len())).rev().find(|&j| s.is_char_boundary(j)).unwrap_or(0)
}

fn range(s: &str, a: &Index, b: &Index) -> (usize, usize) {
    let (a, b) = (floor(s, a.index(s.len() + 1)), floor(s, b.index(s.len() + 1)));
    (a.min(b), a.max(b).min(a.min(b) + 4096))
}

impl Mutation {
    fn apply(&self, s: &mut String) {
        match self {
            Mutation::Insert(i, text) => s.insert_str(floor(s, i.index(s.len() + 1)), text),
            Mutation::Delete(a, b) => {
                let (a, b) = range(s, a, b);
                s.replace_range(a..b, "");
            }
            Mutation::Copy(a, b, at) => {
                let (a, b) = range(s, a, b);
                let piece = s[a..b].to_string();
                s.insert_str(floor(s, at.index(s.len() + 1)), &piece);
            }
            Mutation::Repeat(a, b, n) => {
                let (a, b) = range(s, a, b);
                let piece = s[a..b].repeat(*n);
                s.replace_range(a..b, &piece);
            }
            Mutation::Rename(from, to) => {
                *s = s.replace(&format!("<{from}"), &format!("<{to}")).replace(&format!("</{from}"), &format!("</{to}"))
            }
            Mutation::Nest(tag, n) => {
                // inside the root element: after the first '>', before the last "</"
                let (Some(open), Some(close)) = (s.find('>'), s.rfind("</")) else { return };
                if open < close {
                    let (head, rest) = s.split_at(open + 1);
                    let (body, tail) = rest.split_at(close - open - 1);
                    *s = format!("{head}{}{body}{}{tail}", format!("<{tag}>").repeat(*n), format!("</{tag}>").repeat(*n));
                }
            }
        }
    }
}

fn mutated(docs: &'static [String]) -> impl Strategy<Value = String> {
    (any::<Index>(), proptest::collection::vec(mutation(), 1..3)).prop_map(move |(i, ms)| {
        let mut doc = i.get(docs).clone();
        ms.iter().for_each(|m| m.apply(&mut doc));
        doc
    })
}

/// `f(input)`, failing the case when it takes longer than [`BOUND`].
fn timed<T>(what: &str, input: &str, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    let started = Instant::now();
    let out = f();
    let took = started.elapsed();
    prop_assert!(took < BOUND, "{what} took {took:?} on {} bytes", input.len());
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// A mutated capture: a value or a typed error pointing inside the
    /// input, in bounded time; a value re-encodes to a fixed point.
    #[test]
    fn mutated_marshal_documents_decode_or_fail_cleanly(doc in mutated(&corpus().marshal)) {
        match timed("decode", &doc, || decode(&doc))? {
            Ok(v) => {
                // what the marshaller cannot write (a control character) is refused, not a panic
                if let Ok(text) = encode(&v) {
                    let again = timed("decode of the re-encoded value", &text, || decode(&text))?;
                    prop_assert!(again.is_ok(), "our own encoding does not decode: {again:?}\n{text:.400}");
                    let third = encode(&again.unwrap()).ok();
                    prop_assert_eq!(third.as_ref(), Some(&text), "not a fixed point");
                }
            }
            Err(e) => {
                prop_assert!(e.offset <= doc.len(), "{e} beyond the {} bytes", doc.len());
                prop_assert!(!e.to_string().contains('\n') || e.message.contains('\n'), "one-line error: {e}");
            }
        }
    }

    /// A mutated instance XML document: a dictionary or an error pointing
    /// inside the input, in bounded time; a dictionary written again and
    /// read back is stable.
    #[test]
    fn mutated_instance_xml_decodes_or_fails_cleanly(doc in mutated(&corpus().instance)) {
        match timed("xml_to_dict", &doc, || xml_to_dict(&doc))? {
            Ok(d) => {
                let text = text_dict_to_xml(&d);
                let d2 = timed("xml_to_dict of the re-written dictionary", &text, || xml_to_dict(&text))?;
                prop_assert!(d2.is_ok(), "our own instance XML does not read: {d2:?}\n{text:.400}");
                let d2 = d2.unwrap();
                let d3 = xml_to_dict(&text_dict_to_xml(&d2));
                prop_assert_eq!(d3.as_ref(), Ok(&d2), "not stable");
            }
            Err(e) => prop_assert!(e.offset <= doc.len(), "{e} beyond the {} bytes", doc.len()),
        }
    }
}

/// The corpus is what the fuzzing starts from: every capture's marshal
/// document decodes, and instance XML documents were found.
#[test]
fn the_corpus_holds_the_captures_documents() {
    let c = corpus();
    eprintln!("{} marshal and {} instance XML documents", c.marshal.len(), c.instance.len());
    for doc in &c.instance {
        assert!(xml_to_dict(doc).is_ok(), "{doc}");
    }
}
