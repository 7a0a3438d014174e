//! `Gem::Version` semantics the indexes need: ordering and "is this a prerelease".

use std::cmp::Ordering;

/// What `Gem::Version.new` keeps of a version string: stripped, `-` spelled `.pre.`.
pub fn normalize(version: &str) -> String {
    version.trim().replace('-', ".pre.")
}

/// `Gem::Version#prerelease?`: any letter in the version.
pub fn is_prerelease(version: &str) -> bool {
    version.bytes().any(|b| b.is_ascii_alphabetic())
}

#[derive(Debug, PartialEq, Eq)]
enum Segment<'a> {
    Number(u128),
    Text(&'a str),
}

/// `Gem::Version#<=>`: segments are runs of digits or of letters; trailing zeros of the
/// release part and of the prerelease part do not count; a missing segment is 0; text sorts
/// before numbers (so `1.0.a` < `1.0`).
pub fn compare(a: &str, b: &str) -> Ordering {
    let (a, b) = (normalize(a), normalize(b));
    let (a, b) = (canonical_segments(&a), canonical_segments(&b));
    let zero = Segment::Number(0);
    for i in 0..a.len().max(b.len()) {
        let (left, right) = (a.get(i).unwrap_or(&zero), b.get(i).unwrap_or(&zero));
        let ordering = match (left, right) {
            (Segment::Number(l), Segment::Number(r)) => l.cmp(r),
            (Segment::Text(l), Segment::Text(r)) => l.cmp(r),
            (Segment::Text(_), Segment::Number(_)) => Ordering::Less,
            (Segment::Number(_), Segment::Text(_)) => Ordering::Greater,
        };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    Ordering::Equal
}

fn canonical_segments(version: &str) -> Vec<Segment<'_>> {
    let mut segments = Vec::new();
    let bytes = version.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        if bytes[i].is_ascii_digit() {
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            segments.push(Segment::Number(
                version[start..i].parse().unwrap_or(u128::MAX),
            ));
        } else if bytes[i].is_ascii_alphabetic() {
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            segments.push(Segment::Text(&version[start..i]));
        } else {
            i += 1;
        }
    }
    let text_start = segments
        .iter()
        .position(|s| matches!(s, Segment::Text(_)))
        .unwrap_or(segments.len());
    let text = segments.split_off(text_start);
    let mut canonical = drop_trailing_zeros(segments);
    canonical.extend(drop_trailing_zeros(text));
    canonical
}

fn drop_trailing_zeros(mut segments: Vec<Segment<'_>>) -> Vec<Segment<'_>> {
    while segments.last() == Some(&Segment::Number(0)) {
        segments.pop();
    }
    segments
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_follows_rubygems() {
        let sorted = [
            "0.9",
            "1.0.a",
            "1.0.b1",
            "1.0.rc",
            "1.0",
            "1.0.1",
            "1.1",
            "1.10",
            "2.0.0-pre",
            "2",
        ];
        for pair in sorted.windows(2) {
            assert_eq!(compare(pair[0], pair[1]), Ordering::Less, "{pair:?}");
        }
        assert_eq!(compare("1.0", "1"), Ordering::Equal);
        assert_eq!(compare("1.0.0", "1.0"), Ordering::Equal);
        assert!(is_prerelease("1.0.rc1") && is_prerelease("2.0.0-pre"));
        assert!(!is_prerelease("1.10.0"));
    }
}
