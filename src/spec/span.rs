//! A tree of source spans of a job file (TOML or YAML), parallel to its data, so that
//! errors found after deserialization (missing `name`, conflicting fields, bad template)
//! point at the right line.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;

/// One node: the byte span of its value (and of its key, when known).
#[derive(Debug, Clone, Default)]
pub struct SpanNode {
    pub span: Range<usize>,
    pub key_span: Option<Range<usize>>,
    pub children: Children,
}

#[derive(Debug, Clone, Default)]
pub enum Children {
    #[default]
    Leaf,
    Map(Vec<(String, SpanNode)>),
    Seq(Vec<SpanNode>),
}

/// A step of a path into the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Idx(usize),
}

impl From<&str> for Seg {
    fn from(s: &str) -> Seg {
        Seg::Key(s.to_string())
    }
}

impl From<usize> for Seg {
    fn from(i: usize) -> Seg {
        Seg::Idx(i)
    }
}

/// `jobs[3].expect.stdout`.
pub fn path_string(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Idx(i) => {
                s.push_str(&format!("[{i}]"));
            }
        }
    }
    s
}

impl SpanNode {
    pub fn get(&self, key: &str) -> Option<&SpanNode> {
        match &self.children {
            Children::Map(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn idx(&self, i: usize) -> Option<&SpanNode> {
        match &self.children {
            Children::Seq(v) => v.get(i),
            _ => None,
        }
    }

    pub fn lookup(&self, path: &[Seg]) -> Option<&SpanNode> {
        let mut n = self;
        for seg in path {
            n = match seg {
                Seg::Key(k) => n.get(k)?,
                Seg::Idx(i) => n.idx(*i)?,
            };
        }
        Some(n)
    }

    /// The deepest path whose node starts closest before (or at) `offset`.
    pub fn path_at(&self, offset: usize) -> Vec<Seg> {
        let mut best: (usize, Vec<Seg>) = (0, vec![]);
        let mut cur = vec![];
        self.walk(offset, &mut cur, &mut best);
        best.1
    }

    fn walk(&self, offset: usize, cur: &mut Vec<Seg>, best: &mut (usize, Vec<Seg>)) {
        let start = match &self.key_span {
            Some(k) => k.start.min(self.span.start),
            None => self.span.start,
        };
        if !cur.is_empty() && start <= offset && start >= best.0 {
            *best = (start, cur.clone());
        }
        match &self.children {
            Children::Leaf => {}
            Children::Map(m) => {
                for (k, v) in m {
                    cur.push(Seg::Key(k.clone()));
                    v.walk(offset, cur, best);
                    cur.pop();
                }
            }
            Children::Seq(v) => {
                for (i, n) in v.iter().enumerate() {
                    cur.push(Seg::Idx(i));
                    n.walk(offset, cur, best);
                    cur.pop();
                }
            }
        }
    }
}

/// A map key and its span, when known.
pub type KeyWithSpan = (String, Option<Range<usize>>);

/// How a format wraps a value with its span.
pub trait Flavor: Sized {
    fn next_value<'de, A: MapAccess<'de>>(map: &mut A) -> Result<SpanNode, A::Error>;
    fn next_key<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Option<KeyWithSpan>, A::Error>;
    fn next_element<'de, A: SeqAccess<'de>>(seq: &mut A) -> Result<Option<SpanNode>, A::Error>;
}

/// Children of a node (the node's own span comes from the enclosing spanned wrapper).
pub struct Raw<F>(pub Children, PhantomData<F>);

impl<'de, F: Flavor> Deserialize<'de> for Raw<F> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor::<F>(PhantomData))
    }
}

struct RawVisitor<F>(PhantomData<F>);

macro_rules! leaf {
    ($name:ident, $t:ty) => {
        fn $name<E: de::Error>(self, _v: $t) -> Result<Self::Value, E> {
            Ok(Raw(Children::Leaf, PhantomData))
        }
    };
}

impl<'de, F: Flavor> Visitor<'de> for RawVisitor<F> {
    type Value = Raw<F>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }

    leaf!(visit_bool, bool);
    leaf!(visit_i64, i64);
    leaf!(visit_u64, u64);
    leaf!(visit_i128, i128);
    leaf!(visit_u128, u128);
    leaf!(visit_f64, f64);
    leaf!(visit_str, &str);
    leaf!(visit_bytes, &[u8]);

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Raw(Children::Leaf, PhantomData))
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Raw(Children::Leaf, PhantomData))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        Raw::<F>::deserialize(d)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        Raw::<F>::deserialize(d)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = vec![];
        while let Some((k, key_span)) = F::next_key(&mut map)? {
            let mut v = F::next_value(&mut map)?;
            v.key_span = key_span;
            out.push((k, v));
        }
        Ok(Raw(Children::Map(out), PhantomData))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = vec![];
        while let Some(v) = F::next_element(&mut seq)? {
            out.push(v);
        }
        Ok(Raw(Children::Seq(out), PhantomData))
    }
}

/// A map key of any scalar type, as a string.
struct AnyKey(String);

impl<'de> Deserialize<'de> for AnyKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = AnyKey;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AnyKey, E> {
                Ok(AnyKey(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<AnyKey, E> {
                Ok(AnyKey(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<AnyKey, E> {
                Ok(AnyKey(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<AnyKey, E> {
                Ok(AnyKey(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<AnyKey, E> {
                Ok(AnyKey(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<AnyKey, E> {
                Ok(AnyKey("null".into()))
            }
        }
        d.deserialize_any(V)
    }
}

/// TOML (`toml` crate, via the `serde_spanned` protocol). Implicit tables (dotted keys,
/// `[a.b]` parents) have no span: they take the span of their first key.
pub struct Toml;

const SPANNED_NAME: &str = "$__serde_spanned_private_Spanned";
const SPANNED_START: &str = "$__serde_spanned_private_start";
const SPANNED_END: &str = "$__serde_spanned_private_end";
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";
const SPANNED_FIELDS: [&str; 3] = [SPANNED_START, SPANNED_END, SPANNED_VALUE];

/// A TOML value with its span when the parser has one.
struct TomlNode(SpanNode);

impl<'de> Deserialize<'de> for TomlNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_struct(SPANNED_NAME, &SPANNED_FIELDS, TomlNodeVisitor)
    }
}

struct TomlNodeVisitor;

fn leaf_node() -> TomlNode {
    TomlNode(SpanNode::default())
}

macro_rules! toml_leaf {
    ($name:ident, $t:ty) => {
        fn $name<E: de::Error>(self, _v: $t) -> Result<TomlNode, E> {
            Ok(leaf_node())
        }
    };
}

impl<'de> Visitor<'de> for TomlNodeVisitor {
    type Value = TomlNode;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }

    toml_leaf!(visit_bool, bool);
    toml_leaf!(visit_i64, i64);
    toml_leaf!(visit_u64, u64);
    toml_leaf!(visit_f64, f64);
    toml_leaf!(visit_str, &str);

    fn visit_unit<E: de::Error>(self) -> Result<TomlNode, E> {
        Ok(leaf_node())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<TomlNode, A::Error> {
        let raw = RawVisitor::<Toml>(PhantomData).visit_seq(seq)?;
        Ok(TomlNode(SpanNode {
            children: raw.0,
            ..Default::default()
        }))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TomlNode, A::Error> {
        let Some(first) = map.next_key::<String>()? else {
            return Ok(TomlNode(SpanNode {
                children: Children::Map(vec![]),
                ..Default::default()
            }));
        };
        if first == SPANNED_START {
            let start: usize = map.next_value()?;
            let mut end = start;
            let mut children = Children::Leaf;
            while let Some(k) = map.next_key::<String>()? {
                if k == SPANNED_END {
                    end = map.next_value()?;
                } else {
                    children = map.next_value::<Raw<Toml>>()?.0;
                }
            }
            return Ok(TomlNode(SpanNode {
                span: start..end,
                key_span: None,
                children,
            }));
        }
        // A table without a span: its keys, the first one without a key span.
        let mut out = vec![];
        let v = Toml::next_value(&mut map)?;
        out.push((first, v));
        while let Some((k, key_span)) = Toml::next_key(&mut map)? {
            let mut v = Toml::next_value(&mut map)?;
            v.key_span = key_span;
            out.push((k, v));
        }
        let span = out
            .iter()
            .find_map(|(_, v)| v.key_span.clone().or(Some(v.span.clone())))
            .unwrap_or_default();
        Ok(TomlNode(SpanNode {
            span,
            key_span: None,
            children: Children::Map(out),
        }))
    }
}

/// A TOML key with its span (plain string keys, e.g. of datetimes, have none).
struct TomlKey(String, Option<Range<usize>>);

impl<'de> Deserialize<'de> for TomlKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TomlKey;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TomlKey, E> {
                Ok(TomlKey(v.to_string(), None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TomlKey, A::Error> {
                let (mut start, mut end, mut key) = (0, 0, String::new());
                while let Some(k) = map.next_key::<String>()? {
                    match k.as_str() {
                        SPANNED_START => start = map.next_value()?,
                        SPANNED_END => end = map.next_value()?,
                        _ => key = map.next_value::<AnyKey>()?.0,
                    }
                }
                Ok(TomlKey(key, Some(start..end)))
            }
        }
        d.deserialize_struct(SPANNED_NAME, &SPANNED_FIELDS, V)
    }
}

impl Flavor for Toml {
    fn next_value<'de, A: MapAccess<'de>>(map: &mut A) -> Result<SpanNode, A::Error> {
        Ok(map.next_value::<TomlNode>()?.0)
    }

    fn next_key<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Option<KeyWithSpan>, A::Error> {
        Ok(map.next_key::<TomlKey>()?.map(|k| (k.0, k.1)))
    }

    fn next_element<'de, A: SeqAccess<'de>>(seq: &mut A) -> Result<Option<SpanNode>, A::Error> {
        Ok(seq.next_element::<TomlNode>()?.map(|n| n.0))
    }
}

/// YAML (`serde-saphyr`, via its `Spanned`).
pub struct Yaml;

fn yaml_span(loc: &serde_saphyr::Location) -> Range<usize> {
    let s = loc.span();
    s.offset()..s.offset() + s.len()
}

impl Flavor for Yaml {
    fn next_value<'de, A: MapAccess<'de>>(map: &mut A) -> Result<SpanNode, A::Error> {
        let v: serde_saphyr::Spanned<Raw<Yaml>> = map.next_value()?;
        Ok(SpanNode {
            span: yaml_span(&v.referenced),
            key_span: None,
            children: v.value.0,
        })
    }

    fn next_key<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Option<KeyWithSpan>, A::Error> {
        Ok(map
            .next_key::<serde_saphyr::Spanned<AnyKey>>()?
            .map(|k| (k.value.0, Some(yaml_span(&k.referenced)))))
    }

    fn next_element<'de, A: SeqAccess<'de>>(seq: &mut A) -> Result<Option<SpanNode>, A::Error> {
        Ok(seq
            .next_element::<serde_saphyr::Spanned<Raw<Yaml>>>()?
            .map(|v| SpanNode {
                span: yaml_span(&v.referenced),
                key_span: None,
                children: v.value.0,
            }))
    }
}

/// The span tree of a TOML document (None when it does not parse).
pub fn toml_spans(text: &str) -> Option<SpanNode> {
    let raw: Raw<Toml> = toml::from_str(text).ok()?;
    Some(SpanNode {
        span: 0..text.len(),
        key_span: None,
        children: raw.0,
    })
}

/// The span tree of a YAML document (None when it does not parse).
pub fn yaml_spans(text: &str) -> Option<SpanNode> {
    let raw: Raw<Yaml> =
        serde_saphyr::from_str_with_options(text, super::load::yaml_options()).ok()?;
    Some(SpanNode {
        span: 0..text.len(),
        key_span: None,
        children: raw.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(p: &[Seg]) -> String {
        path_string(p)
    }

    #[test]
    fn toml_tree() {
        let text = "[defaults]\nlang = \"python\"\n\n[[jobs]]\nname = \"a\"\ncode = \"x\"\n\n[[jobs]]\nname = \"b\"\nexpect = { stdout = \"hi\" }\n";
        let t = toml_spans(text).unwrap();
        let n = t.lookup(&["jobs".into(), 1.into(), "name".into()]).unwrap();
        assert_eq!(&text[n.span.clone()], "\"b\"");
        let k = n.key_span.clone().unwrap();
        assert_eq!(&text[k], "name");
        let e = t
            .lookup(&["jobs".into(), 1.into(), "expect".into(), "stdout".into()])
            .unwrap();
        assert_eq!(&text[e.span.clone()], "\"hi\"");
        assert_eq!(seg(&t.path_at(e.span.start)), "jobs[1].expect.stdout");
        let j = t.lookup(&["jobs".into(), 1.into()]).unwrap();
        assert!(j.span.start <= n.span.start, "{:?}", j.span);
    }

    #[test]
    fn toml_implicit_tables() {
        let text = "[[jobs]]\nname = \"a\"\nexpect.stdout = \"1\"\n[jobs.limits]\npids = 3\n";
        let t = toml_spans(text).unwrap();
        let e = t
            .lookup(&["jobs".into(), 0.into(), "expect".into(), "stdout".into()])
            .unwrap();
        assert_eq!(&text[e.span.clone()], "\"1\"");
        let j = t.lookup(&["jobs".into(), 0.into()]).unwrap();
        assert_eq!(&text[j.span.start..j.span.start + 8], "[[jobs]]");
        let p = t
            .lookup(&["jobs".into(), 0.into(), "limits".into(), "pids".into()])
            .unwrap();
        assert_eq!(&text[p.span.clone()], "3");
    }

    #[test]
    fn toml_datetimes_keep_the_tree() {
        let text = "[vars]\nwhen = 1979-05-27T07:32:00Z\n[[jobs]]\nname = \"a\"\n";
        let t = toml_spans(text).unwrap();
        let n = t.lookup(&["jobs".into(), 0.into(), "name".into()]).unwrap();
        assert_eq!(&text[n.span.clone()], "\"a\"");
    }

    #[test]
    fn yaml_tree() {
        let text = "defaults:\n  lang: python\njobs:\n  - name: a\n    code: x\n  - name: b\n    expect:\n      stdout: hi\n";
        let t = yaml_spans(text).unwrap();
        let n = t.lookup(&["jobs".into(), 1.into(), "name".into()]).unwrap();
        assert_eq!(&text[n.span.start..n.span.start + 1], "b");
        let k = n.key_span.clone().unwrap();
        assert_eq!(&text[k.start..k.start + 4], "name");
        let e = t
            .lookup(&["jobs".into(), 1.into(), "expect".into(), "stdout".into()])
            .unwrap();
        assert_eq!(&text[e.span.start..e.span.start + 2], "hi");
        assert_eq!(seg(&t.path_at(e.span.start)), "jobs[1].expect.stdout");
    }
}
