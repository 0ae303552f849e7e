//! [`NestedInts`]: a JSON array of arrays of integers (any depth), read straight into one flat
//! buffer while serde_json parses the record — no per-element allocation, which matters at a
//! million tokens × 60 layers × top-8 — with every inner array checked to be the same length.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};

/// A rectangular nested integer array: `values` row-major, `dims[0]` the outer length.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NestedInts {
    pub values: Vec<i32>,
    /// Length at each depth; inner lengths are the same for every array at that depth. An
    /// empty outer array has `dims == [0]`.
    pub dims: Vec<usize>,
}

impl NestedInts {
    /// Values per outer element (the product of the inner dims; 1 for a flat array).
    pub fn row_len(&self) -> usize {
        self.dims.iter().skip(1).product()
    }

    pub fn rows(&self) -> usize {
        self.dims.first().copied().unwrap_or(0)
    }
}

impl<'de> de::Deserialize<'de> for NestedInts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut out = NestedInts::default();
        let mut lens: Vec<Option<usize>> = Vec::new();
        deserializer.deserialize_seq(Level {
            out: &mut out.values,
            lens: &mut lens,
            depth: 0,
        })?;
        out.dims = lens.into_iter().map(|l| l.unwrap_or(0)).collect();
        if out.dims.is_empty() {
            out.dims.push(0);
        }
        if out.values.len() != out.dims.iter().product::<usize>() {
            return Err(de::Error::custom(
                "ragged array: numbers and arrays mixed at one depth",
            ));
        }
        Ok(out)
    }
}

/// One array at `depth`: its elements are all integers or all arrays.
struct Level<'a> {
    out: &'a mut Vec<i32>,
    lens: &'a mut Vec<Option<usize>>,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Level<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Level<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an array of expert ids (nesting depth {})", self.depth)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.depth;
        if self.lens.len() <= depth {
            self.lens.resize(depth + 1, None);
        }
        let mut n = 0usize;
        loop {
            let more = seq.next_element_seed(Element {
                out: &mut *self.out,
                lens: &mut *self.lens,
                depth: depth + 1,
            })?;
            if more.is_none() {
                break;
            }
            n += 1;
        }
        match self.lens[depth] {
            None => self.lens[depth] = Some(n),
            Some(expected) if depth > 0 && expected != n => {
                return Err(de::Error::custom(format!(
                    "ragged array: an array at depth {depth} has {n} entries, an earlier one {expected}"
                )));
            }
            Some(_) => {}
        }
        Ok(())
    }
}

/// An element: an integer (pushed) or a nested array.
struct Element<'a> {
    out: &'a mut Vec<i32>,
    lens: &'a mut Vec<Option<usize>>,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Element<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Element<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an expert id or an array of them")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.push(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.push(i64::try_from(v).unwrap_or(i64::MAX))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        // All elements at one depth must be the same kind: a value here means the parent's
        // siblings were arrays (or the reverse), which the length check of the leaf depth
        // catches as ragged.
        Level {
            out: self.out,
            lens: self.lens,
            depth: self.depth,
        }
        .visit_seq(seq)
    }
}

impl Element<'_> {
    fn push<E: de::Error>(self, v: i64) -> Result<(), E> {
        if self.lens.len() > self.depth {
            return Err(E::custom(format!(
                "ragged array: a number where an array was expected (depth {})",
                self.depth
            )));
        }
        let v =
            i32::try_from(v).map_err(|_| E::custom(format!("expert id {v} is out of range")))?;
        self.out.push(v);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NestedInts, serde_json::Error> {
        serde_json::from_str(s)
    }

    #[test]
    fn flattens_rectangular_arrays() {
        let a = parse("[[[1, 2], [3, -1]], [[5, 6], [7, 8]]]").unwrap();
        assert_eq!(a.values, vec![1, 2, 3, -1, 5, 6, 7, 8]);
        assert_eq!(a.dims, vec![2, 2, 2]);
        assert_eq!((a.rows(), a.row_len()), (2, 4));
        let b = parse("[[4, 5, 6]]").unwrap();
        assert_eq!(b.dims, vec![1, 3]);
        assert_eq!(parse("[]").unwrap().dims, vec![0]);
    }

    #[test]
    fn ragged_or_non_integer_arrays_are_errors() {
        let err = parse("[[[1, 2], [3]]]").unwrap_err().to_string();
        assert!(err.contains("ragged"), "{err}");
        let err = parse("[[1, 2], 3]").unwrap_err().to_string();
        assert!(err.contains("ragged"), "{err}");
        let err = parse("[3, [1, 2]]").unwrap_err().to_string();
        assert!(err.contains("ragged"), "{err}");
        assert!(parse(r#"[["a"]]"#).is_err());
        assert!(parse("[[1.5]]").is_err());
        let err = parse("[[99999999999]]").unwrap_err().to_string();
        assert!(err.contains("out of range"), "{err}");
    }
}
