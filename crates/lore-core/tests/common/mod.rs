//! Helpers shared by the core's integration tests: the golden fixtures and simulated splits.
#![allow(dead_code)] // each test binary uses its own part

use std::collections::HashMap;
use std::path::PathBuf;

use lore_core::{CheckedFitParams, FitInit, FitParams, Method};
use safetensors::{Dtype, SafeTensors};

/// The simulated split of the harness's tests (one definition for both crates' tests).
#[path = "../../../lore-experiment/tests/common/mod.rs"]
mod simulated;
#[allow(unused_imports)] // not every test binary simulates
pub use simulated::population;

/// One golden run of the reference (tests/fixtures/reference): its tensors and metadata.
pub struct Golden {
    pub tensors: HashMap<String, (Vec<usize>, Vec<f64>)>,
    pub meta: HashMap<String, String>,
}

impl Golden {
    pub fn load(name: &str) -> Self {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/reference")
            .join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path:?}: {e}"));
        let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = metadata.metadata().clone().unwrap_or_default();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let data = view.data();
            let values: Vec<f64> = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::I64 => data
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                other => panic!("unexpected dtype {other:?}"),
            };
            tensors.insert(name, (view.shape().to_vec(), values));
        }
        Self { tensors, meta }
    }

    pub fn f32(&self, name: &str) -> Vec<f32> {
        self.tensors[name].1.iter().map(|&v| v as f32).collect()
    }
    pub fn f64(&self, name: &str) -> &[f64] {
        &self.tensors[name].1
    }
    pub fn shape(&self, name: &str) -> &[usize] {
        &self.tensors[name].0
    }
    pub fn users(&self) -> Vec<u32> {
        self.tensors["user"].1.iter().map(|&v| v as u32).collect()
    }
    pub fn meta_f64(&self, key: &str) -> f64 {
        self.meta[key].parse().unwrap()
    }
    /// The run's hyperparameters (unchecked).
    pub fn fit_params(&self, method: Method, k: usize) -> FitParams {
        FitParams::new(method, k)
            .alpha(self.meta_f64("alpha"))
            .iterations(self.meta_f64("iterations") as usize)
            .learning_rate(self.meta_f64("learning_rate"))
    }

    /// The run's initial W0, V0.
    pub fn init(&self) -> FitInit {
        FitInit {
            logits: self.f32("W0"),
            basis: self.f32("V0"),
        }
    }

    /// The run's hyperparameters and initial W0, V0.
    pub fn fit_setup(&self, method: Method, k: usize) -> (CheckedFitParams, FitInit) {
        (self.fit_params(method, k).check().unwrap(), self.init())
    }
}
