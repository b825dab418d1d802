//! Property tests of the codecs: any value round-trips, and arbitrary input
//! never makes a decoder panic (the decoders' fuzz target).

use std::collections::BTreeMap;

use proptest::prelude::*;
use slap::instance_xml::{dict_to_xml, xml_to_dict};
use slap::marshal::{decode, decode_bytes, encode, Object, Value};

/// Text the marshaller can write: anything but the control characters XML
/// 1.0 forbids (the Python encoder refuses them too).
fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            8 => proptest::char::range(' ', '~'),
            2 => Just('&'), 2 => Just('<'), 2 => Just('>'), 1 => Just('\r'), 1 => Just('\n'), 1 => Just('\t'),
            2 => proptest::char::range('\u{a0}', '\u{2fff}'),
            1 => proptest::char::range('\u{1f300}', '\u{1f64f}'),
        ],
        0..24,
    )
    .prop_map(|cs| cs.into_iter().collect())
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::None),
        any::<bool>().prop_map(Value::Bool),
        (-(10i128.pow(30))..10i128.pow(30)).prop_map(Value::Int),
        any::<i64>().prop_map(|i| Value::Int(i as i128)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::Float),
        text().prop_map(Value::Str),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::List),
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Tuple),
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Set),
            proptest::collection::btree_map(text(), inner.clone(), 0..5).prop_map(Value::Dict),
            (proptest::collection::vec(inner.clone(), 0..3), proptest::collection::btree_map(text(), inner, 0..4)).prop_map(
                |(args, state)| Value::Object(Box::new(Object {
                    module: "slapos.slap.slap".into(),
                    class: "ComputerPartition".into(),
                    args,
                    state,
                }))
            ),
        ]
    })
}

/// Equality with floats compared bit for bit (so -0.0 ≠ 0.0 is caught).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
        (Value::List(x), Value::List(y)) | (Value::Tuple(x), Value::Tuple(y)) | (Value::Set(x), Value::Set(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same(v, w))
        }
        (Value::Dict(x), Value::Dict(y)) => dicts(x, y),
        (Value::Object(x), Value::Object(y)) => {
            x.module == y.module
                && x.class == y.class
                && x.args.len() == y.args.len()
                && x.args.iter().zip(&y.args).all(|(v, w)| same(v, w))
                && dicts(&x.state, &y.state)
        }
        _ => a == b,
    }
}

fn dicts(x: &BTreeMap<String, Value>, y: &BTreeMap<String, Value>) -> bool {
    x.len() == y.len() && x.iter().zip(y).all(|((k, v), (l, w))| k == l && same(v, w))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn marshal_round_trips(v in value()) {
        let doc = encode(&v).unwrap();
        prop_assert!(doc.is_ascii(), "output must be ASCII: {doc}");
        let back = decode(&doc).unwrap();
        prop_assert!(same(&v, &back), "{:?} != {:?}", v, back);
        // and the encoding is a fixed point
        prop_assert_eq!(encode(&back).unwrap(), doc);
    }

    #[test]
    fn instance_xml_round_trips_text(d in proptest::collection::btree_map(
            text().prop_filter("ids", |k| !k.is_empty()),
            text().prop_filter("non-empty", |v| !v.is_empty() && !v.contains('\r')),
            0..6)) {
        let dict: BTreeMap<String, Value> = d.iter().map(|(k, v)| (k.clone(), Value::str(v))).collect();
        let back = xml_to_dict(&dict_to_xml(&dict)).unwrap();
        let expected: BTreeMap<String, Option<String>> = d.into_iter().map(|(k, v)| (k, Some(v))).collect();
        prop_assert_eq!(back, expected);
    }

    #[test]
    fn decoders_never_panic_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_bytes(&bytes);
        if let Ok(s) = std::str::from_utf8(&bytes) {
            let _ = xml_to_dict(s);
        }
    }

    #[test]
    fn decoders_never_panic_on_near_documents(v in value(), cut in any::<prop::sample::Index>(),
                                              junk in "[<>/&;\"a-z=#0-9 ]{0,8}") {
        let doc = encode(&v).unwrap();
        let at = cut.index(doc.len() + 1);
        let mutated = format!("{}{}{}", &doc[..at], junk, &doc[at..]);
        let _ = decode(&mutated);
        let _ = xml_to_dict(&mutated);
        // a strict prefix of a document is never a valid document
        if at < doc.len() {
            prop_assert!(decode(&doc[..at]).is_err());
        }
    }
}

#[test]
fn error_kinds_say_what_and_where() {
    let cases = [
        ("<marshal><string>a</marshal>", "expected `</string>`"),
        ("<marshal><object id=\"i2\" class=\"C\"><tuple/><dictionary id=\"i3\"/></object></marshal>", "module"),
        ("<marshal><int>1.5</int></marshal>", "not an integer"),
        ("<marshal><bool>yes</bool></marshal>", "not a boolean"),
        ("<marshal><dictionary id=\"i2\"><string>k</string></dictionary></marshal>", "key without a value"),
        ("<marshal><dictionary id=\"i2\"><int>1</int><none/></dictionary></marshal>", "dictionary key"),
        ("<marshal><code/></marshal>", "unknown element <code>"),
        ("<other/>", "expected <marshal>"),
        ("<marshal><string>&#0;</string></marshal>", "invalid character reference"),
    ];
    for (doc, what) in cases {
        let e = decode(doc).expect_err(doc);
        assert!(e.to_string().contains(what), "{doc}: {e}");
        assert!(e.line >= 1 && e.column >= 1);
    }
}
