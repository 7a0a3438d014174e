//! GitLab's dependency API answers (`api/v1/dependencies?gems=a,b`) split into one answer
//! per gem and merged back into the answer GitLab gives for a batch, byte for byte.
//!
//! GitLab answers `Marshal.dump(results.flatten)`: for each requested name in order, one
//! Hash per package of that name, `{name:, number:, platform:, dependencies:}`
//! (`lib/api/rubygem_packages.rb`, `dependency_resolver_service.rb`). Two of its Strings
//! are shared objects, which Marshal writes once and then as `@` links: the requested name
//! (one object for all of that name's entries) and the platform (the frozen constant
//! `"ruby"`, one object for the whole answer). [`render`] writes the same sharing.

use super::marshal::{self, MarshalError, Value};

/// One package in a dependency answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name as requested (GitLab echoes the request, not the package record).
    pub name: String,
    pub number: String,
    pub platform: String,
    /// `(name, requirement)` pairs as GitLab records them (runtime and development alike).
    pub dependencies: Vec<(String, String)>,
}

/// Why bytes are not a dependency answer.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error(transparent)]
    Marshal(#[from] MarshalError),
    #[error("a dependency answer is not an array of package hashes: {0}")]
    Shape(&'static str),
}

/// The platform GitLab writes for every package (`DEFAULT_PLATFORM`).
const RUBY: &str = "ruby";

/// Reads a dependency answer's entries, in order.
pub fn parse(body: &[u8]) -> Result<Vec<Entry>, AnswerError> {
    let Value::Array(items) = marshal::load(body)? else {
        return Err(AnswerError::Shape("not an array"));
    };
    items.iter().map(entry).collect()
}

fn entry(item: &Value) -> Result<Entry, AnswerError> {
    let Value::Hash(pairs) = item else {
        return Err(AnswerError::Shape("an entry is not a hash"));
    };
    let field = |key: &'static str| {
        pairs
            .iter()
            .find(|(k, _)| matches!(k, Value::Symbol(s) if s == key))
            .map(|(_, v)| v)
            .ok_or(AnswerError::Shape("an entry lacks a field"))
    };
    let text = |key: &'static str| {
        field(key)?
            .as_text()
            .map(str::to_owned)
            .ok_or(AnswerError::Shape("a field is not a string"))
    };
    if pairs.len() != 4 {
        return Err(AnswerError::Shape("an entry has other fields"));
    }
    let Value::Array(list) = field("dependencies")? else {
        return Err(AnswerError::Shape("dependencies are not an array"));
    };
    let dependencies = list
        .iter()
        .map(|pair| match pair {
            Value::Array(pair) => match pair.as_slice() {
                [name, requirement] => Some((
                    name.as_text()?.to_owned(),
                    requirement.as_text()?.to_owned(),
                )),
                _ => None,
            },
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .ok_or(AnswerError::Shape(
            "a dependency is not a name and requirement",
        ))?;
    Ok(Entry {
        name: text("name")?,
        number: text("number")?,
        platform: text("platform")?,
        dependencies,
    })
}

/// The entries of an answer to distinct names, grouped by name; `None` if a name's entries
/// are not together (then the answer is not one GitLab gives for distinct names).
pub fn split(entries: Vec<Entry>) -> Option<Vec<(String, Vec<Entry>)>> {
    let mut groups: Vec<(String, Vec<Entry>)> = Vec::new();
    for entry in entries {
        match groups.last_mut() {
            Some((name, group)) if *name == entry.name => group.push(entry),
            _ => {
                if groups.iter().any(|(name, _)| *name == entry.name) {
                    return None;
                }
                groups.push((entry.name.clone(), vec![entry]));
            }
        }
    }
    Some(groups)
}

/// GitLab's answer for names requested in this order, each with its entries (a name
/// requested twice is listed twice).
pub fn render(groups: &[(&str, &[Entry])]) -> Result<Vec<u8>, MarshalError> {
    let mut items = Vec::new();
    // Each requested name is one String object, from the split query; id 0 is the platform.
    for (name_id, (name, entries)) in (1u32..).zip(groups) {
        for entry in *entries {
            let platform = if entry.platform == RUBY {
                Value::Shared {
                    id: 0,
                    value: Box::new(Value::str(RUBY)),
                }
            } else {
                Value::str(&entry.platform)
            };
            let dependencies = entry
                .dependencies
                .iter()
                .map(|(n, r)| Value::Array(vec![Value::str(n), Value::str(r)]))
                .collect();
            items.push(Value::Hash(vec![
                (
                    Value::sym("name"),
                    Value::Shared {
                        id: name_id,
                        value: Box::new(Value::str(*name)),
                    },
                ),
                (Value::sym("number"), Value::str(&entry.number)),
                (Value::sym("platform"), platform),
                (Value::sym("dependencies"), Value::Array(dependencies)),
            ]));
        }
    }
    marshal::dump(&Value::Array(items))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, number: &str, dependencies: &[(&str, &str)]) -> Entry {
        Entry {
            name: name.to_owned(),
            number: number.to_owned(),
            platform: RUBY.to_owned(),
            dependencies: dependencies
                .iter()
                .map(|(n, r)| ((*n).to_owned(), (*r).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn gitlab_bytes_round_trip() {
        // Ruby: P = "ruby".freeze; a = +"a"; b = +"b"
        // Marshal.dump([{name: a, number: +"1.0", platform: P, dependencies: [[+"rack", +">= 1"]]},
        //               {name: a, number: +"1.1", platform: P, dependencies: [[+"rack", +">= 1"]]},
        //               {name: b, number: +"2.0", platform: P, dependencies: [[+"rack", +">= 1"]]}])
        let gitlab = b"\x04\x08[\x08{\x09:\x09nameI\"\x06a\x06:\x06ET:\x0bnumberI\"\x081.0\x06;\x06T:\x0dplatformI\"\x09ruby\x06;\x06T:\x11dependencies[\x06[\x07I\"\x09rack\x06;\x06TI\"\x09>= 1\x06;\x06T{\x09;\x00@\x07;\x07I\"\x081.1\x06;\x06T;\x08@\x09;\x09[\x06[\x07I\"\x09rack\x06;\x06TI\"\x09>= 1\x06;\x06T{\x09;\x00I\"\x06b\x06;\x06T;\x07I\"\x082.0\x06;\x06T;\x08@\x09;\x09[\x06[\x07I\"\x09rack\x06;\x06TI\"\x09>= 1\x06;\x06T";
        let entries = parse(gitlab).unwrap();
        let rack = [("rack", ">= 1")];
        assert_eq!(
            entries,
            vec![
                entry("a", "1.0", &rack),
                entry("a", "1.1", &rack),
                entry("b", "2.0", &rack)
            ]
        );
        let groups = split(entries).unwrap();
        let borrowed: Vec<(&str, &[Entry])> = groups
            .iter()
            .map(|(n, e)| (n.as_str(), e.as_slice()))
            .collect();
        assert_eq!(render(&borrowed).unwrap(), gitlab.to_vec());
    }

    #[test]
    fn other_shapes_are_refused() {
        let not_array = marshal::dump(&Value::str("200")).unwrap();
        assert!(parse(&not_array).is_err());
        assert!(parse(b"200").is_err());
        let odd = marshal::dump(&Value::Array(vec![Value::Hash(vec![(
            Value::sym("name"),
            Value::str("a"),
        )])]))
        .unwrap();
        assert!(parse(&odd).is_err());
        assert!(split(vec![
            entry("a", "1", &[]),
            entry("b", "1", &[]),
            entry("a", "2", &[])
        ])
        .is_none());
        assert_eq!(render(&[]).unwrap(), b"\x04\x08[\x00".to_vec());
    }
}
