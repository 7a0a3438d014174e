//! Ruby's `Marshal` format 4.8: the subset RubyGems' index files use, written and read.
//!
//! Written: nil, booleans, Fixnums, UTF-8 and binary Strings, Symbols (repeats as `;`
//! links, which Ruby requires readers to honour), Arrays, Hashes, plain objects (`o`),
//! `marshal_dump` objects (`U`, e.g. `Gem::Version`) and `_dump` objects (`u`, e.g.
//! `Gem::Specification`). A tree of owned values shares no object unless it says so with
//! [`Value::Shared`], which the writer spells as Ruby does (the first occurrence in full,
//! later ones as `@` links), so answers GitLab writes with shared objects can be written
//! byte for byte; the reader resolves links to copies (GitLab's answers hold them).
//! No maintained crate writes this subset (reference compact-index.md §5.3).

use std::fmt;

/// Longest Marshal input the reader accepts and deepest nesting, so hostile bytes cannot
/// exhaust memory or the stack.
const MAX_DEPTH: usize = 64;

/// A Ruby value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Nil,
    Bool(bool),
    /// A Fixnum: Ruby marshals integers in -2^30 ..= 2^30-1 this way.
    Int(i32),
    /// A String tagged UTF-8 (the encoding ivar `E` = true).
    Str(String),
    /// A String without an encoding ivar (ASCII-8BIT), e.g. a `_dump` result.
    Bytes(Vec<u8>),
    Symbol(String),
    Array(Vec<Value>),
    /// In insertion order, as Ruby keeps it.
    Hash(Vec<(Value, Value)>),
    /// `o`: an object of `class` with instance variables (names include the `@`).
    Object {
        class: String,
        ivars: Vec<(String, Value)>,
    },
    /// `U`: an object whose class defines `marshal_dump`; `data` is what it returned.
    UserMarshal {
        class: String,
        data: Box<Value>,
    },
    /// `u`: an object whose class defines `_dump`; `data` is the string it returned.
    UserDefined {
        class: String,
        data: Vec<u8>,
    },
    /// One Ruby object that appears more than once in the value: every occurrence with the
    /// same `id` is that object. Only written (the reader resolves links to copies).
    Shared {
        id: u32,
        value: Box<Value>,
    },
}

impl Value {
    pub fn str(s: impl Into<String>) -> Value {
        Value::Str(s.into())
    }

    pub fn sym(s: impl Into<String>) -> Value {
        Value::Symbol(s.into())
    }

    /// `Gem::Version.new(version)`: its `marshal_dump` is `[version_string]`.
    pub fn gem_version(version: &str) -> Value {
        Value::UserMarshal {
            class: "Gem::Version".to_owned(),
            data: Box::new(Value::Array(vec![Value::str(version)])),
        }
    }

    /// The text of a String (either kind), if this is one and it is UTF-8.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

/// Why bytes could not be written or read as Marshal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarshalError {
    #[error("integer {0} does not fit a Marshal Fixnum")]
    IntRange(i64),
    #[error("length {0} is too large for Marshal")]
    TooLong(usize),
    #[error("symbol {0:?} is not ASCII")]
    NonAsciiSymbol(String),
    #[error("not Marshal 4.8 data")]
    Version,
    #[error("Marshal data ends early")]
    Truncated,
    #[error("Marshal type byte {0:#04x} is not supported")]
    Unsupported(u8),
    #[error("Marshal link {0} points nowhere")]
    BadLink(usize),
    #[error("Marshal data nests deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("Marshal data is malformed: {0}")]
    Malformed(&'static str),
}

/// `Marshal.dump(value)`.
pub fn dump(value: &Value) -> Result<Vec<u8>, MarshalError> {
    let mut writer = Writer {
        out: vec![4, 8],
        symbols: Vec::new(),
        objects: 0,
        shared: Vec::new(),
    };
    writer.value(value)?;
    Ok(writer.out)
}

struct Writer {
    out: Vec<u8>,
    /// Symbols already written, in order: a repeat is written as `;` + its index here.
    symbols: Vec<String>,
    /// Objects written so far: Ruby numbers every non-immediate value in the order it
    /// registers them, and an `@` link names that number.
    objects: usize,
    /// `(id, object number)` of each [`Value::Shared`] written so far.
    shared: Vec<(u32, usize)>,
}

const FIXNUM_MIN: i64 = -(1 << 30);
const FIXNUM_MAX: i64 = (1 << 30) - 1;

impl Writer {
    fn value(&mut self, value: &Value) -> Result<(), MarshalError> {
        // Registered before their contents (a `_dump` object only after its bytes, which
        // hold no objects, so the number is the same).
        if matches!(
            value,
            Value::Str(_)
                | Value::Bytes(_)
                | Value::Array(_)
                | Value::Hash(_)
                | Value::Object { .. }
                | Value::UserMarshal { .. }
                | Value::UserDefined { .. }
        ) {
            self.objects += 1;
        }
        match value {
            Value::Nil => self.out.push(b'0'),
            Value::Bool(true) => self.out.push(b'T'),
            Value::Bool(false) => self.out.push(b'F'),
            Value::Int(n) => {
                let n = i64::from(*n);
                if !(FIXNUM_MIN..=FIXNUM_MAX).contains(&n) {
                    return Err(MarshalError::IntRange(n));
                }
                self.out.push(b'i');
                self.long(n);
            }
            Value::Str(s) => {
                // `I`: an object with instance variables follows; the one ivar is `E`.
                self.out.extend_from_slice(b"I\"");
                self.bytes(s.as_bytes())?;
                self.long(1);
                self.symbol("E")?;
                self.out.push(b'T');
            }
            Value::Bytes(b) => {
                self.out.push(b'"');
                self.bytes(b)?;
            }
            Value::Symbol(name) => self.symbol(name)?,
            Value::Array(items) => {
                self.out.push(b'[');
                self.len(items.len())?;
                for item in items {
                    self.value(item)?;
                }
            }
            Value::Hash(pairs) => {
                self.out.push(b'{');
                self.len(pairs.len())?;
                for (key, value) in pairs {
                    self.value(key)?;
                    self.value(value)?;
                }
            }
            Value::Object { class, ivars } => {
                self.out.push(b'o');
                self.symbol(class)?;
                self.len(ivars.len())?;
                for (name, value) in ivars {
                    self.symbol(name)?;
                    self.value(value)?;
                }
            }
            Value::UserMarshal { class, data } => {
                self.out.push(b'U');
                self.symbol(class)?;
                self.value(data)?;
            }
            Value::UserDefined { class, data } => {
                self.out.push(b'u');
                self.symbol(class)?;
                self.bytes(data)?;
            }
            Value::Shared { id, value } => {
                let immediate = matches!(
                    **value,
                    Value::Nil | Value::Bool(_) | Value::Int(_) | Value::Symbol(_)
                );
                match self.shared.iter().find(|(known, _)| known == id) {
                    Some(&(_, number)) if !immediate => {
                        self.out.push(b'@');
                        self.len(number)?;
                    }
                    _ => {
                        if !immediate {
                            self.shared.push((*id, self.objects));
                        }
                        self.value(value)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn symbol(&mut self, name: &str) -> Result<(), MarshalError> {
        if let Some(index) = self.symbols.iter().position(|s| s == name) {
            self.out.push(b';');
            return self.len(index);
        }
        if !name.is_ascii() {
            return Err(MarshalError::NonAsciiSymbol(name.to_owned()));
        }
        self.out.push(b':');
        self.bytes(name.as_bytes())?;
        self.symbols.push(name.to_owned());
        Ok(())
    }

    fn bytes(&mut self, bytes: &[u8]) -> Result<(), MarshalError> {
        self.len(bytes.len())?;
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    fn len(&mut self, len: usize) -> Result<(), MarshalError> {
        match i64::try_from(len) {
            Ok(n) if n <= FIXNUM_MAX => {
                self.long(n);
                Ok(())
            }
            _ => Err(MarshalError::TooLong(len)),
        }
    }

    /// Ruby's `w_long`: small values in one byte offset by 5; others as a byte count
    /// (negated when negative) and little-endian bytes up to where the rest is all sign.
    fn long(&mut self, n: i64) {
        match n {
            0 => self.out.push(0),
            1..=122 => self.out.push(n as u8 + 5),
            -123..=-1 => self.out.push((n - 5) as u8),
            _ => {
                let mut rest = n;
                let mut bytes = Vec::with_capacity(4);
                let count = loop {
                    bytes.push(rest as u8);
                    rest >>= 8;
                    match rest {
                        0 => break bytes.len() as i8,
                        -1 => break -(bytes.len() as i8),
                        _ => {}
                    }
                };
                self.out.push(count as u8);
                self.out.extend_from_slice(&bytes);
            }
        }
    }
}

/// `Marshal.load(bytes)` for the subset above (plus `@` object links, resolved to copies).
pub fn load(bytes: &[u8]) -> Result<Value, MarshalError> {
    if bytes.get(..2) != Some(&[4, 8]) {
        return Err(MarshalError::Version);
    }
    let mut reader = Reader {
        input: bytes,
        at: 2,
        symbols: Vec::new(),
        objects: Vec::new(),
    };
    let value = reader.value(0)?;
    Ok(value)
}

struct Reader<'a> {
    input: &'a [u8],
    at: usize,
    symbols: Vec<String>,
    /// Every object read so far, in Ruby's numbering, for `@` links.
    objects: Vec<Value>,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, MarshalError> {
        let b = *self.input.get(self.at).ok_or(MarshalError::Truncated)?;
        self.at += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], MarshalError> {
        let end = self.at.checked_add(n).ok_or(MarshalError::Truncated)?;
        let slice = self
            .input
            .get(self.at..end)
            .ok_or(MarshalError::Truncated)?;
        self.at = end;
        Ok(slice)
    }

    fn long(&mut self) -> Result<i64, MarshalError> {
        let c = self.byte()? as i8;
        Ok(match c {
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
                for i in 0..-c {
                    n &= !(0xff << (8 * i));
                    n |= i64::from(self.byte()?) << (8 * i);
                }
                n
            }
        })
    }

    /// A count of things that follow: each takes at least one byte, so a longer count is
    /// a lie (and must not size an allocation).
    fn len(&mut self) -> Result<usize, MarshalError> {
        let n = self.index()?;
        if n > self.input.len() - self.at {
            return Err(MarshalError::Truncated);
        }
        Ok(n)
    }

    /// A link's index into the symbols or objects read so far.
    fn index(&mut self) -> Result<usize, MarshalError> {
        let n = self.long()?;
        usize::try_from(n).map_err(|_| MarshalError::Malformed("negative length"))
    }

    fn raw_bytes(&mut self) -> Result<Vec<u8>, MarshalError> {
        let n = self.len()?;
        Ok(self.take(n)?.to_vec())
    }

    fn symbol(&mut self) -> Result<String, MarshalError> {
        match self.byte()? {
            b':' => self.symbol_body(),
            b';' => {
                let index = self.index()?;
                self.symbols
                    .get(index)
                    .cloned()
                    .ok_or(MarshalError::BadLink(index))
            }
            b'I' => {
                // A symbol with an encoding ivar (non-ASCII); the ivars are read and dropped.
                if self.byte()? != b':' {
                    return Err(MarshalError::Malformed("ivars on a non-symbol"));
                }
                let name = self.symbol_body()?;
                let count = self.len()?;
                for _ in 0..count {
                    self.symbol()?;
                    self.value(MAX_DEPTH - 1)?;
                }
                Ok(name)
            }
            other => Err(MarshalError::Unsupported(other)),
        }
    }

    fn symbol_body(&mut self) -> Result<String, MarshalError> {
        let bytes = self.raw_bytes()?;
        let name = String::from_utf8(bytes).map_err(|_| MarshalError::Malformed("symbol"))?;
        self.symbols.push(name.clone());
        Ok(name)
    }

    /// Reserves the object number of an object being read, and fills it in once read.
    fn register(&mut self) -> usize {
        self.objects.push(Value::Nil);
        self.objects.len() - 1
    }

    fn value(&mut self, depth: usize) -> Result<Value, MarshalError> {
        if depth >= MAX_DEPTH {
            return Err(MarshalError::TooDeep);
        }
        let depth = depth + 1;
        let tag = self.byte()?;
        let value = match tag {
            b'0' => Value::Nil,
            b'T' => Value::Bool(true),
            b'F' => Value::Bool(false),
            b'i' => {
                let n = self.long()?;
                Value::Int(i32::try_from(n).map_err(|_| MarshalError::IntRange(n))?)
            }
            b':' => Value::Symbol(self.symbol_body()?),
            b';' => {
                let index = self.index()?;
                Value::Symbol(
                    self.symbols
                        .get(index)
                        .cloned()
                        .ok_or(MarshalError::BadLink(index))?,
                )
            }
            b'@' => {
                let index = self.index()?;
                self.objects
                    .get(index)
                    .cloned()
                    .ok_or(MarshalError::BadLink(index))?
            }
            b'"' => {
                let slot = self.register();
                let value = Value::Bytes(self.raw_bytes()?);
                self.objects[slot] = value.clone();
                value
            }
            b'I' => {
                // Ivars on the next object: for Strings, the encoding.
                let slot = self.objects.len();
                let inner = self.value(depth)?;
                let count = self.len()?;
                let mut utf8 = false;
                for _ in 0..count {
                    let name = self.symbol()?;
                    let value = self.value(depth)?;
                    if (name == "E" && value == Value::Bool(true))
                        || (name == "encoding" && value.as_text() == Some("UTF-8"))
                    {
                        utf8 = true;
                    }
                }
                match inner {
                    Value::Bytes(bytes) if utf8 => {
                        let text = String::from_utf8(bytes)
                            .map_err(|_| MarshalError::Malformed("string is not UTF-8"))?;
                        let value = Value::Str(text);
                        if let Some(object) = self.objects.get_mut(slot) {
                            *object = value.clone();
                        }
                        value
                    }
                    other => other,
                }
            }
            b'[' => {
                let slot = self.register();
                let n = self.len()?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(depth)?);
                }
                let value = Value::Array(items);
                self.objects[slot] = value.clone();
                value
            }
            b'{' => {
                let slot = self.register();
                let n = self.len()?;
                let mut pairs = Vec::with_capacity(n);
                for _ in 0..n {
                    let key = self.value(depth)?;
                    let value = self.value(depth)?;
                    pairs.push((key, value));
                }
                let value = Value::Hash(pairs);
                self.objects[slot] = value.clone();
                value
            }
            b'o' => {
                let slot = self.register();
                let class = self.symbol()?;
                let n = self.len()?;
                let mut ivars = Vec::with_capacity(n);
                for _ in 0..n {
                    let name = self.symbol()?;
                    ivars.push((name, self.value(depth)?));
                }
                let value = Value::Object { class, ivars };
                self.objects[slot] = value.clone();
                value
            }
            b'U' => {
                let slot = self.register();
                let class = self.symbol()?;
                let data = Box::new(self.value(depth)?);
                let value = Value::UserMarshal { class, data };
                self.objects[slot] = value.clone();
                value
            }
            b'u' => {
                let class = self.symbol()?;
                let data = self.raw_bytes()?;
                let value = Value::UserDefined { class, data };
                self.objects.push(value.clone());
                value
            }
            other => return Err(MarshalError::Unsupported(other)),
        };
        Ok(value)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_bytes() {
        // Ruby: Marshal.dump([1, "a", :b, :b, nil, true, 300, -129])
        let value = Value::Array(vec![
            Value::Int(1),
            Value::str("a"),
            Value::sym("b"),
            Value::sym("b"),
            Value::Nil,
            Value::Bool(true),
            Value::Int(300),
            Value::Int(-129),
        ]);
        let bytes = dump(&value).unwrap();
        assert_eq!(
            bytes,
            b"\x04\x08[\x0di\x06I\"\x06a\x06:\x06ET:\x06b;\x060Ti\x02,\x01i\xff\x7f".to_vec()
        );
        assert_eq!(load(&bytes).unwrap(), value);
    }

    #[test]
    fn object_links_are_resolved() {
        // Ruby: s = "ruby"; Marshal.dump([s, s])
        let bytes = b"\x04\x08[\x07I\"\x09ruby\x06:\x06ET@\x06";
        assert_eq!(
            load(bytes).unwrap(),
            Value::Array(vec![Value::str("ruby"), Value::str("ruby")])
        );
    }

    #[test]
    fn shared_objects_are_written_as_links() {
        // Ruby: s = "ruby"; Marshal.dump([s, s])
        let s = || Value::Shared {
            id: 1,
            value: Box::new(Value::str("ruby")),
        };
        let bytes = dump(&Value::Array(vec![s(), s()])).unwrap();
        assert_eq!(bytes, b"\x04\x08[\x07I\"\x09ruby\x06:\x06ET@\x06".to_vec());
        // Ruby: a = "a"; Marshal.dump([[1, a], {k: :v, a: a}, :v])
        let a = || Value::Shared {
            id: 7,
            value: Box::new(Value::str("a")),
        };
        let value = Value::Array(vec![
            Value::Array(vec![Value::Int(1), a()]),
            Value::Hash(vec![
                (Value::sym("k"), Value::sym("v")),
                (Value::sym("a"), a()),
            ]),
            Value::Shared {
                id: 8,
                value: Box::new(Value::sym("v")),
            },
        ]);
        assert_eq!(
            dump(&value).unwrap(),
            b"\x04\x08[\x08[\x07i\x06I\"\x06a\x06:\x06ET{\x07:\x06k:\x06v:\x06a@\x07;\x07".to_vec()
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        for bytes in [
            &b""[..],
            b"\x04\x09[\x00",
            b"\x04\x08[\x7f",
            b"\x04\x08@\x06",
            b"\x04\x08;\x00",
            b"\x04\x08f\x061",
            b"\x04\x08I\"\x06\xff\x06:\x06ET",
        ] {
            assert!(load(bytes).is_err(), "{bytes:?}");
        }
        let deep = [vec![4u8, 8], vec![b'['; 200], vec![6u8]].concat();
        let mut deep = deep;
        deep.extend(std::iter::repeat_n(6u8, 200));
        assert!(load(&deep).is_err());
        assert!(dump(&Value::Int(1 << 30)).is_err());
        assert!(dump(&Value::sym("é")).is_err());
    }

    pub fn values() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Nil),
            any::<bool>().prop_map(Value::Bool),
            (-(1i32 << 30)..(1i32 << 30)).prop_map(Value::Int),
            "\\PC{0,12}".prop_map(Value::Str),
            proptest::collection::vec(any::<u8>(), 0..12).prop_map(Value::Bytes),
            "[a-z_]{1,6}".prop_map(Value::Symbol),
            "[0-9]{1,2}(\\.[0-9a-z]{1,3}){0,3}".prop_map(|v| Value::gem_version(&v)),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                // Keys are distinct: Ruby keeps one entry per key.
                proptest::collection::btree_map("[a-z]{1,4}", inner.clone(), 0..4).prop_map(
                    |pairs| Value::Hash(
                        pairs
                            .into_iter()
                            .map(|(k, v)| (Value::Symbol(k), v))
                            .collect()
                    )
                ),
                proptest::collection::btree_map("@[a-z]{1,5}", inner, 0..3).prop_map(|ivars| {
                    Value::Object {
                        class: "Gem::Dependency".to_owned(),
                        ivars: ivars.into_iter().collect(),
                    }
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn load_reads_what_dump_writes(value in values()) {
            let bytes = dump(&value).unwrap();
            prop_assert_eq!(load(&bytes).unwrap(), value);
        }

        #[test]
        fn load_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut input = vec![4u8, 8];
            input.extend(bytes);
            let _ = load(&input);
        }
    }
}
