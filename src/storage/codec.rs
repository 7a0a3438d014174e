//! Byte layouts of everything the store writes: tree keys, version envelopes and chunk framing.

use bytes::Bytes;

use super::{ArtifactMeta, FillId, StoreError, FORMAT_VERSION};

/// `[version u8][crc32 of data, u32 LE]` in front of every chunk's data.
pub const CHUNK_HEADER_LEN: usize = 5;

/// Big-endian so that a fill's keys form one contiguous, index-ordered range.
pub fn fill_key(fill: FillId) -> [u8; 8] {
    fill.0.to_be_bytes()
}

pub fn parse_fill_key(key: &[u8]) -> Option<FillId> {
    Some(FillId(u64::from_be_bytes(key.try_into().ok()?)))
}

pub fn chunk_key(fill: FillId, index: u32) -> [u8; 12] {
    let mut key = [0; 12];
    key[..8].copy_from_slice(&fill_key(fill));
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

/// Length-prefixed so that no (namespace, key) pair can collide with another.
pub fn record_key(namespace: &str, key: &[u8]) -> Result<Vec<u8>, StoreError> {
    let len = u8::try_from(namespace.len()).map_err(|_| StoreError::NamespaceTooLong)?;
    let mut out = Vec::with_capacity(1 + namespace.len() + key.len());
    out.push(len);
    out.extend_from_slice(namespace.as_bytes());
    out.extend_from_slice(key);
    Ok(out)
}

pub fn envelope(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + payload.len());
    out.push(FORMAT_VERSION);
    out.extend_from_slice(payload);
    out
}

/// The payload, or `None` if the value was written by another format version.
pub fn open_envelope(raw: &[u8]) -> Option<&[u8]> {
    match raw.split_first() {
        Some((&FORMAT_VERSION, payload)) => Some(payload),
        _ => None,
    }
}

pub fn encode_chunk(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + data.len());
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// The CRC a chunk header announces for its data, or why the header cannot be trusted.
pub fn decode_chunk_header(header: &[u8; CHUNK_HEADER_LEN]) -> Result<u32, String> {
    if header[0] != FORMAT_VERSION {
        return Err(format!("unknown chunk format version {}", header[0]));
    }
    Ok(u32::from_le_bytes([
        header[1], header[2], header[3], header[4],
    ]))
}

/// The chunk's data, or why it cannot be trusted.
pub fn decode_chunk(raw: Bytes) -> Result<Bytes, String> {
    if raw.len() < CHUNK_HEADER_LEN {
        return Err(format!("chunk too short ({} bytes)", raw.len()));
    }
    if raw[0] != FORMAT_VERSION {
        return Err(format!("unknown chunk format version {}", raw[0]));
    }
    let stored = u32::from_le_bytes([raw[1], raw[2], raw[3], raw[4]]);
    let data = raw.slice(CHUNK_HEADER_LEN..);
    let computed = crc32fast::hash(&data);
    if stored != computed {
        return Err(format!(
            "crc32 mismatch (stored {stored:08x}, computed {computed:08x})"
        ));
    }
    Ok(data)
}

pub fn encode_meta(meta: &ArtifactMeta) -> Result<Vec<u8>, StoreError> {
    let json = serde_json::to_vec(meta)
        .map_err(|e| StoreError::Io(format!("encoding artifact record: {e}")))?;
    Ok(envelope(&json))
}

pub fn decode_meta(raw: &[u8]) -> Option<ArtifactMeta> {
    serde_json::from_slice(open_envelope(raw)?).ok()
}

pub fn encode_tick(tick: u64) -> Vec<u8> {
    envelope(&tick.to_le_bytes())
}

pub fn decode_tick(raw: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(open_envelope(raw)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_round_trips_and_detects_damage() {
        let encoded = encode_chunk(b"hello");
        assert_eq!(decode_chunk(Bytes::from(encoded.clone())).unwrap(), "hello");

        let mut flipped = encoded.clone();
        flipped[7] ^= 1;
        assert!(decode_chunk(Bytes::from(flipped))
            .unwrap_err()
            .contains("crc32"));

        let mut future = encoded;
        future[0] = FORMAT_VERSION + 1;
        assert!(decode_chunk(Bytes::from(future))
            .unwrap_err()
            .contains("version"));

        assert!(decode_chunk(Bytes::from_static(&[1, 0])).is_err());
    }

    #[test]
    fn record_keys_do_not_collide_across_namespaces() {
        assert_ne!(
            record_key("a", b"bc").unwrap(),
            record_key("ab", b"c").unwrap()
        );
        assert_eq!(
            record_key(&"n".repeat(256), b"k"),
            Err(StoreError::NamespaceTooLong)
        );
    }

    #[test]
    fn chunk_keys_sort_by_fill_then_index() {
        let a = chunk_key(FillId(1), 300);
        let b = chunk_key(FillId(2), 0);
        assert!(a < b);
        assert!(chunk_key(FillId(1), 2) < a);
        assert!(a.starts_with(&fill_key(FillId(1))));
    }
}
