//! Just enough of Ruby's Marshal 4.8 reader to see which gem versions GitLab's dependency
//! answers and spec indexes list (the subset GitLab writes: nil, booleans, fixnums, strings,
//! symbols, arrays, hashes, instance-variable wrappers and `Gem::Version`'s `marshal_dump`).
//!
//! A fuller reader belongs to the RubyGems work under `src/gems/`; this one can be replaced
//! by it without changing its callers (see [`super::shows`]).

/// A decoded value; what the proxy does not need to look into is `Other`.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Nil,
    Bool(bool),
    Int(i64),
    Str(Vec<u8>),
    Sym(String),
    Array(Vec<Value>),
    Hash(Vec<(Value, Value)>),
    /// `U`: a class and its `marshal_dump` data (`Gem::Version` dumps `[version]`).
    User(String, Box<Value>),
    Other,
}

/// Nesting deeper than this is refused (GitLab's answers are three levels deep).
const MAX_DEPTH: usize = 64;
/// More elements than this in one array or hash is refused (bounds allocation on bad input).
const MAX_LEN: usize = 10_000_000;

/// Decodes a whole dump; `None` for anything malformed or outside the subset.
pub fn load(bytes: &[u8]) -> Option<Value> {
    let (major, minor) = (*bytes.first()?, *bytes.get(1)?);
    if (major, minor) != (4, 8) {
        return None;
    }
    let mut reader = Reader {
        bytes,
        at: 2,
        symbols: Vec::new(),
        objects: Vec::new(),
    };
    reader.value(0)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    symbols: Vec<String>,
    objects: Vec<Value>,
}

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.at.checked_add(n)?;
        let slice = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(slice)
    }

    /// Marshal's packed integer.
    fn int(&mut self) -> Option<i64> {
        let c = self.byte()? as i8;
        Some(match c {
            0 => 0,
            5..=127 => i64::from(c) - 5,
            -128..=-5 => i64::from(c) + 5,
            1..=4 => {
                let mut n: i64 = 0;
                for i in 0..c {
                    n |= i64::from(self.byte()?) << (8 * i);
                }
                n
            }
            -4..=-1 => {
                let mut n: i64 = -1;
                for i in 0..(-c) {
                    n &= !(0xff << (8 * i));
                    n |= i64::from(self.byte()?) << (8 * i);
                }
                n
            }
        })
    }

    fn len(&mut self) -> Option<usize> {
        usize::try_from(self.int()?).ok().filter(|n| *n <= MAX_LEN)
    }

    fn symbol(&mut self) -> Option<String> {
        match self.byte()? {
            b':' => {
                let len = self.len()?;
                let name = String::from_utf8(self.take(len)?.to_vec()).ok()?;
                self.symbols.push(name.clone());
                Some(name)
            }
            b';' => {
                let index = self.len()?;
                self.symbols.get(index).cloned()
            }
            _ => None,
        }
    }

    /// Registers an object before its children, as Ruby numbers them.
    fn reserve(&mut self) -> usize {
        self.objects.push(Value::Other);
        self.objects.len() - 1
    }

    fn value(&mut self, depth: usize) -> Option<Value> {
        if depth > MAX_DEPTH {
            return None;
        }
        let tag = self.byte()?;
        Some(match tag {
            b'0' => Value::Nil,
            b'T' => Value::Bool(true),
            b'F' => Value::Bool(false),
            b'i' => Value::Int(self.int()?),
            b':' | b';' => {
                self.at -= 1;
                Value::Sym(self.symbol()?)
            }
            b'"' => {
                let slot = self.reserve();
                let len = self.len()?;
                let value = Value::Str(self.take(len)?.to_vec());
                self.objects[slot] = value.clone();
                value
            }
            b'I' => {
                // Instance variables (a string's encoding) follow the wrapped object.
                let value = self.value(depth + 1)?;
                let count = self.len()?;
                for _ in 0..count {
                    self.symbol()?;
                    self.value(depth + 1)?;
                }
                value
            }
            b'[' => {
                let slot = self.reserve();
                let len = self.len()?;
                let mut items = Vec::with_capacity(len.min(1024));
                for _ in 0..len {
                    items.push(self.value(depth + 1)?);
                }
                let value = Value::Array(items);
                self.objects[slot] = value.clone();
                value
            }
            b'{' => {
                let slot = self.reserve();
                let len = self.len()?;
                let mut pairs = Vec::with_capacity(len.min(1024));
                for _ in 0..len {
                    let key = self.value(depth + 1)?;
                    pairs.push((key, self.value(depth + 1)?));
                }
                let value = Value::Hash(pairs);
                self.objects[slot] = value.clone();
                value
            }
            b'U' => {
                let slot = self.reserve();
                let class = self.symbol()?;
                let data = self.value(depth + 1)?;
                let value = Value::User(class, Box::new(data));
                self.objects[slot] = value.clone();
                value
            }
            b'@' => {
                let index = self.len()?;
                self.objects.get(index)?.clone()
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_ruby_writes() {
        // Marshal.dump([{name: "a", number: "1.0"}, "a"]) with the second "a" a distinct
        // object, and Marshal.dump(Gem::Version.new("1.2")) inside an array.
        let deps =
            b"\x04\x08[\x07{\x07:\x09nameI\"\x06a\x06:\x06ET:\x0bnumberI\"\x081.0\x06;\x06T@\x07";
        let value = load(deps).unwrap();
        let Value::Array(items) = value else {
            panic!("array expected")
        };
        assert_eq!(items.len(), 2);
        assert_eq!(
            items[0],
            Value::Hash(vec![
                (Value::Sym("name".into()), Value::Str(b"a".to_vec())),
                (Value::Sym("number".into()), Value::Str(b"1.0".to_vec())),
            ])
        );
        assert_eq!(items[1], Value::Str(b"a".to_vec()), "object links resolve");
        let version = b"\x04\x08[\x06U:\x11Gem::Version[\x06I\"\x081.2\x06:\x06ET";
        assert_eq!(
            load(version).unwrap(),
            Value::Array(vec![Value::User(
                "Gem::Version".into(),
                Box::new(Value::Array(vec![Value::Str(b"1.2".to_vec())]))
            )])
        );
    }

    #[test]
    fn malformed_input_is_refused() {
        for bad in [
            &b""[..],
            b"\x04\x09[\x00",
            b"\x04\x08[\x7f",
            b"\x04\x08@\x06",
            b"\x04\x08x",
        ] {
            assert!(load(bad).is_none(), "{bad:?}");
        }
        let deep: Vec<u8> = [4u8, 8]
            .into_iter()
            .chain(std::iter::repeat_n(b'[', 200))
            .collect();
        assert!(load(&deep).is_none());
    }

    #[test]
    fn packed_integers() {
        for (bytes, n) in [
            (&b"\x04\x08i\x00"[..], 0),
            (b"\x04\x08i\x06", 1),
            (b"\x04\x08i\xfa", -1),
            (b"\x04\x08i\x01\xc8", 200),
            (b"\x04\x08i\x02\x2c\x01", 300),
            (b"\x04\x08i\xff\x38", -200),
        ] {
            assert_eq!(load(bytes), Some(Value::Int(n)), "{bytes:?}");
        }
    }
}
