//! The byte layout of the store's values: user records and pair rows (little-endian f32).

use redb::ReadableTable;

use super::{StoreError, StoredUser};

/// The first byte of a user record: its layout version.
const RECORD_TAG: u8 = 1;
/// Bytes before the model version: tag, version, pairs, imported, model version's length.
const HEADER: usize = 1 + 8 + 8 + 1 + 4;

/// One user as stored in the `users` table.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UserRecord {
    pub version: u64,
    pub pairs: u64,
    pub imported: bool,
    pub model_version: String,
    pub weights: Vec<f32>,
}

impl UserRecord {
    /// The record's bytes (tag, version, pairs, imported, model version, weights).
    pub fn encode(&self) -> Vec<u8> {
        let mv = self.model_version.as_bytes();
        let mut out = Vec::with_capacity(HEADER + mv.len() + 4 * self.weights.len());
        out.push(RECORD_TAG);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.pairs.to_le_bytes());
        out.push(u8::from(self.imported));
        // A model version is a short identifier; anything past u32::MAX bytes is cut.
        let len = mv.len().min(u32::MAX as usize);
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&mv[..len]);
        for w in &self.weights {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Parses a record; a record that does not parse is reported as corruption.
    pub fn decode(bytes: &[u8]) -> Result<UserRecord, StoreError> {
        let corrupt = |why: &str| StoreError::Database(format!("corrupt user record: {why}"));
        if bytes.len() < HEADER {
            return Err(corrupt("too short"));
        }
        if bytes[0] != RECORD_TAG {
            return Err(corrupt("unknown layout"));
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let version = u64_at(1);
        let pairs = u64_at(9);
        let imported = match bytes[17] {
            0 => false,
            1 => true,
            _ => return Err(corrupt("bad imported flag")),
        };
        let mut len = [0u8; 4];
        len.copy_from_slice(&bytes[18..22]);
        let len = u32::from_le_bytes(len) as usize;
        let rest = &bytes[HEADER..];
        if rest.len() < len || !(rest.len() - len).is_multiple_of(4) {
            return Err(corrupt("bad length"));
        }
        let model_version = std::str::from_utf8(&rest[..len])
            .map_err(|_| corrupt("model version not UTF-8"))?
            .to_owned();
        let weights = f32s(&rest[len..]);
        Ok(UserRecord {
            version,
            pairs,
            imported,
            model_version,
            weights,
        })
    }

    /// The record as the service reports it.
    pub fn into_user(self, user_id: &str) -> StoredUser {
        StoredUser {
            user_id: user_id.to_owned(),
            pairs: self.pairs,
            weights: self.weights,
            version: self.version,
            model_version: self.model_version,
            imported: self.imported,
        }
    }
}

/// Little-endian f32s from bytes (the length is a multiple of 4).
pub(crate) fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Little-endian bytes of f32s.
pub(crate) fn row_bytes(row: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 * row.len());
    for v in row {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Appends every stored pair of `user_id` (in sequence order) to `out`; returns how many.
pub(crate) fn read_pairs(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    user_id: &str,
    features: usize,
    out: &mut Vec<f32>,
) -> Result<u64, StoreError> {
    let mut n = 0u64;
    let range = table
        .range((user_id, 0u64)..=(user_id, u64::MAX))
        .map_err(StoreError::db)?;
    for entry in range {
        let (_, value) = entry.map_err(StoreError::db)?;
        let bytes = value.value();
        if bytes.len() != 4 * features {
            return Err(StoreError::Database(format!(
                "corrupt pair of {user_id:?}: {} bytes, expected {}",
                bytes.len(),
                4 * features
            )));
        }
        out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        n += 1;
    }
    Ok(n)
}
