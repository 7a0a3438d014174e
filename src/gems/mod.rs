//! What the proxy adds to RubyGems on GitLab: reading gems and writing the index formats
//! (compact index, gemspecs, spec indexes) that GitLab lacks or has only since 19.1.

pub mod catalog;
pub mod compact_index;
pub mod dependencies;
pub mod gem_file;
pub mod gemspec;
pub mod held;
pub mod marshal;
pub mod seen;
pub mod version;
