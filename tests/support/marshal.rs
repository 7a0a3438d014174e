//! Writes Ruby `Marshal.dump` bytes (format 4.8) for the value types GitLab's RubyGems API emits.
//!
//! Only what the fake needs, and what a test needs to build expected bodies: nil, booleans,
//! Fixnums, UTF-8 Strings, Symbols, Arrays, Hashes and user-marshalled objects such as
//! `Gem::Version`. The output matches Ruby's byte for byte: where one Ruby *object* appears
//! twice (GitLab's dependency answers share the requested name and the `"ruby"` platform),
//! the value says so with [`Value::Shared`] and the writer spells later occurrences as `@`
//! back-references, numbering objects as Ruby does. Symbols always repeat as `;` links to
//! their first occurrence, so the writer keeps a symbol table.

/// A Ruby value that [`dump`] can write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Nil,
    Bool(bool),
    /// An Integer that Ruby marshals as a Fixnum (`i`): -2^30 ..= 2^30-1. Ruby writes larger
    /// magnitudes as Bignums (`l`), which this writer does not produce.
    Int(i32),
    /// A String in UTF-8, which Ruby tags with the encoding instance variable `E` = true.
    Str(String),
    /// A Symbol; ASCII only (Ruby adds an encoding ivar to other symbols).
    Symbol(String),
    Array(Vec<Value>),
    /// A Hash in insertion order, as Ruby keeps it.
    Hash(Vec<(Value, Value)>),
    /// An object whose class defines `marshal_dump`: Ruby writes `U`, the class name as a
    /// symbol, then the dumped value.
    UserMarshal {
        class: String,
        data: Box<Value>,
    },
    /// One Ruby object met more than once: every occurrence with the same `id` is it.
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

    /// An object that is the same Ruby object wherever `id` appears again.
    pub fn shared(id: u32, value: Value) -> Value {
        Value::Shared {
            id,
            value: Box::new(value),
        }
    }

    /// `Gem::Version.new(version)`: its `marshal_dump` is `[version_string]`.
    pub fn gem_version(version: &str) -> Value {
        Value::UserMarshal {
            class: "Gem::Version".to_owned(),
            data: Box::new(Value::Array(vec![Value::str(version)])),
        }
    }
}

/// `Marshal.dump(value)`.
pub fn dump(value: &Value) -> Vec<u8> {
    let mut writer = Writer {
        out: vec![4, 8],
        symbols: Vec::new(),
        objects: 0,
        shared: Vec::new(),
    };
    writer.value(value);
    writer.out
}

struct Writer {
    out: Vec<u8>,
    /// Symbols already written, in order: a repeat is written as `;` + its index here.
    symbols: Vec<String>,
    /// Objects written so far (Ruby's numbering for `@` links).
    objects: usize,
    /// `(id, object number)` of each shared object written.
    shared: Vec<(u32, usize)>,
}

impl Writer {
    fn value(&mut self, value: &Value) {
        if matches!(
            value,
            Value::Str(_) | Value::Array(_) | Value::Hash(_) | Value::UserMarshal { .. }
        ) {
            self.objects += 1;
        }
        match value {
            Value::Nil => self.out.push(b'0'),
            Value::Bool(true) => self.out.push(b'T'),
            Value::Bool(false) => self.out.push(b'F'),
            Value::Int(n) => {
                assert!(
                    (-(1 << 30)..(1 << 30)).contains(n),
                    "{n} is outside the range Ruby marshals as a Fixnum"
                );
                self.out.push(b'i');
                self.long(*n);
            }
            Value::Str(s) => {
                // `I` = "object with instance variables follows"; the one ivar is the encoding.
                self.out.extend_from_slice(b"I\"");
                self.bytes(s.as_bytes());
                self.long(1);
                self.symbol("E");
                self.out.push(b'T');
            }
            Value::Symbol(name) => self.symbol(name),
            Value::Array(items) => {
                self.out.push(b'[');
                self.len(items.len());
                for item in items {
                    self.value(item);
                }
            }
            Value::Hash(pairs) => {
                self.out.push(b'{');
                self.len(pairs.len());
                for (key, value) in pairs {
                    self.value(key);
                    self.value(value);
                }
            }
            Value::UserMarshal { class, data } => {
                self.out.push(b'U');
                self.symbol(class);
                self.value(data);
            }
            Value::Shared { id, value } => {
                match self.shared.iter().find(|(known, _)| known == id) {
                    Some(&(_, number)) => {
                        self.out.push(b'@');
                        self.len(number);
                    }
                    None => {
                        self.shared.push((*id, self.objects));
                        self.value(value);
                    }
                }
            }
        }
    }

    fn symbol(&mut self, name: &str) {
        if let Some(index) = self.symbols.iter().position(|s| s == name) {
            self.out.push(b';');
            self.len(index);
        } else {
            assert!(
                name.is_ascii(),
                "non-ASCII symbol {name:?} is not supported"
            );
            self.out.push(b':');
            self.bytes(name.as_bytes());
            self.symbols.push(name.to_owned());
        }
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.len(bytes.len());
        self.out.extend_from_slice(bytes);
    }

    fn len(&mut self, len: usize) {
        self.long(i32::try_from(len).expect("length too large for Marshal"));
    }

    /// Ruby's `w_long`: small values in one byte with an offset of 5; others as a byte count
    /// (negated for negative numbers) and the little-endian bytes up to the point where the
    /// rest of the number is all zero bits (or all one bits, when negative).
    fn long(&mut self, n: i32) {
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
