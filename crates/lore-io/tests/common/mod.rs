//! Helpers shared by the integration tests: files written independently of lore-io's writer.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// A raw tensor for `write_raw`: name, dtype, shape and little-endian bytes.
pub struct Raw {
    pub name: &'static str,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

pub fn f32s(name: &'static str, shape: &[usize], v: &[f32]) -> Raw {
    raw(
        name,
        Dtype::F32,
        shape,
        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}

pub fn i64s(name: &'static str, shape: &[usize], v: &[i64]) -> Raw {
    raw(
        name,
        Dtype::I64,
        shape,
        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}

pub fn i32s(name: &'static str, shape: &[usize], v: &[i32]) -> Raw {
    raw(
        name,
        Dtype::I32,
        shape,
        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}

pub fn u32s(name: &'static str, shape: &[usize], v: &[u32]) -> Raw {
    raw(
        name,
        Dtype::U32,
        shape,
        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}

pub fn raw(name: &'static str, dtype: Dtype, shape: &[usize], bytes: Vec<u8>) -> Raw {
    Raw {
        name,
        dtype,
        shape: shape.to_vec(),
        bytes,
    }
}

/// Writes `tensors` with the safetensors crate's own serializer (not lore-io's writer).
pub fn write_raw(dir: &Path, file: &str, tensors: &[Raw], metadata: &[(&str, &str)]) -> PathBuf {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            (
                t.name,
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap(),
            )
        })
        .collect();
    let meta: Option<HashMap<String, String>> = (!metadata.is_empty()).then(|| {
        metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    });
    let bytes = safetensors::serialize(views, meta).unwrap();
    let path = dir.join(file);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A small valid preference file: P = 5 rows of F = 2, users [0, 0, 1, 1, 2].
pub fn valid_file(dir: &Path, file: &str) -> PathBuf {
    let x: Vec<f32> = (0..10).map(|i| i as f32).collect();
    write_raw(
        dir,
        file,
        &[f32s("x", &[5, 2], &x), i64s("user", &[5], &[0, 0, 1, 1, 2])],
        &[],
    )
}
