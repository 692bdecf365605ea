//! The golden reference files load as preference files without copying their features.

use std::path::PathBuf;

use lore_core::FeatureRows;
use lore_io::{PreferenceFile, TensorFile};
use safetensors::SafeTensors;

fn fixtures() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    assert!(files.len() >= 7, "fixtures not found in {}", dir.display());
    files
}

#[test]
fn every_fixture_loads_zero_copy() {
    for path in fixtures() {
        // Independent reading with the safetensors crate.
        let bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let x = st.tensor("x").unwrap();
        let (p, f) = (x.shape()[0], x.shape()[1]);
        let users: Vec<i64> = st
            .tensor("user")
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let n = *users.iter().max().unwrap() as usize + 1;
        assert_eq!(st.tensor("accuracy").unwrap().shape(), [n]);
        let expected_x: Vec<f32> = x
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();

        let prefs = PreferenceFile::load(&path).unwrap();
        let name = path.display();
        assert_eq!(prefs.n_rows(), p, "{name}");
        assert_eq!(prefs.n_features(), f, "{name}");
        assert_eq!(prefs.n_users(), n, "{name}");
        assert_eq!(prefs.dtype_name(), "f32");
        assert!(prefs.row_order().is_none(), "{name}: rows were gathered");
        assert!(prefs.is_zero_copy(), "{name}: features were copied");
        assert!(prefs.user_ids().is_none());

        let view = prefs.view();
        assert_eq!(
            (view.n_rows(), view.n_features(), view.n_users()),
            (p, f, n)
        );
        let FeatureRows::F32(values) = view.features() else {
            panic!("{name}: features are not f32");
        };
        assert_eq!(values, expected_x.as_slice(), "{name}");
        // The slice lies inside the file's bytes (the map).
        let file = prefs.file().as_bytes().as_ptr_range();
        let rows = values.as_ptr_range();
        assert!(
            file.start <= rows.start.cast() && rows.end.cast() <= file.end,
            "{name}: features are not borrowed from the file"
        );
        assert!(prefs.file().is_mapped());
        // Offsets follow the user column.
        for u in 0..n {
            for row in view.user_rows(u) {
                assert_eq!(users[row], u as i64);
            }
        }
    }
}

#[test]
fn fixture_metadata_parses_as_json() {
    let path = fixtures()
        .into_iter()
        .find(|p| p.ends_with("lore_l2.safetensors"))
        .unwrap();
    let file = TensorFile::open(&path).unwrap();
    assert_eq!(
        file.metadata_json::<String>("method").unwrap().as_deref(),
        Some("lore")
    );
    assert_eq!(file.metadata_json::<f64>("alpha").unwrap(), Some(0.01));
    assert_eq!(file.metadata_json::<usize>("rank").unwrap(), Some(3));
    assert_eq!(file.metadata_json::<u32>("absent").unwrap(), None);
    assert_eq!(file.metadata()["method"], "\"lore\"");

    let names = file.names();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert!(file.has("V0") && !file.has("nope"));
    assert_eq!(file.shape("V").unwrap(), [32, 3]);
    assert_eq!(file.dtype_name("user").unwrap(), "I64");
    let (shape, nll) = file.tensor_f32("nll").unwrap();
    assert_eq!(shape, [150]);
    assert!(nll.iter().all(|v| v.is_finite()));
    let (shape, users) = file.tensor_indices("user").unwrap();
    assert_eq!(shape, [106]);
    assert_eq!(users[0], 0);
}
