//! Little-endian decoding of tensor bytes into Rust values, borrowed when alignment allows.

use half::{bf16, f16};
use safetensors::Dtype;

/// Reinterprets little-endian bytes as `T` without copying, when the host is little-endian and
/// the bytes are aligned for `T`.
pub(crate) fn borrow_le<T: bytemuck::Pod>(bytes: &[u8]) -> Option<&[T]> {
    if cfg!(target_endian = "little") {
        bytemuck::try_cast_slice(bytes).ok()
    } else {
        None
    }
}

/// Decodes little-endian values of `N` bytes each with `f`.
fn decode<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunks_exact yields N bytes")))
        .collect()
}

/// Copies little-endian f16 values.
pub(crate) fn f16_vec(bytes: &[u8]) -> Vec<f16> {
    decode(bytes, f16::from_le_bytes)
}

/// Copies little-endian bf16 values.
pub(crate) fn bf16_vec(bytes: &[u8]) -> Vec<bf16> {
    decode(bytes, bf16::from_le_bytes)
}

/// Copies little-endian f32 values.
pub(crate) fn f32_vec(bytes: &[u8]) -> Vec<f32> {
    match borrow_le::<f32>(bytes) {
        Some(v) => v.to_vec(),
        None => decode(bytes, f32::from_le_bytes),
    }
}

/// Floating dtypes read as f32.
pub(crate) const FLOAT_DTYPES: &[&str] = &["F32", "F16", "BF16", "F64"];

/// Widens or narrows a floating tensor to f32; `None` for any other dtype.
pub(crate) fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => f32_vec(bytes),
        Dtype::F16 => decode(bytes, |b| f16::from_le_bytes(b).to_f32()),
        Dtype::BF16 => decode(bytes, |b| bf16::from_le_bytes(b).to_f32()),
        Dtype::F64 => decode(bytes, |b| f64::from_le_bytes(b) as f32),
        _ => return None,
    })
}

/// Integer dtypes read as i64.
pub(crate) const INDEX_DTYPES: &[&str] = &["I64", "I32", "U32", "I16", "U16", "U8", "I8"];

/// Widens an integer tensor to i64; `None` for any other dtype.
pub(crate) fn to_i64(dtype: Dtype, bytes: &[u8]) -> Option<Vec<i64>> {
    Some(match dtype {
        Dtype::I64 => decode(bytes, i64::from_le_bytes),
        Dtype::I32 => decode(bytes, |b| i32::from_le_bytes(b).into()),
        Dtype::U32 => decode(bytes, |b| u32::from_le_bytes(b).into()),
        Dtype::I16 => decode(bytes, |b| i16::from_le_bytes(b).into()),
        Dtype::U16 => decode(bytes, |b| u16::from_le_bytes(b).into()),
        Dtype::U8 => bytes.iter().map(|&b| b.into()).collect(),
        Dtype::I8 => bytes.iter().map(|&b| (b as i8).into()).collect(),
        _ => return None,
    })
}
