//! numpy in, numpy out: preference rows and per-row users as the core's borrowed views (no
//! copy when the rows are C-contiguous float32/float16 and the users sorted), and float32
//! results.

use half::f16;
use lore_core::{
    count_rows_per_user, group_rows_by_user, offsets_from_counts, FeatureRows, LoreError,
    Preferences,
};
use lore_io::OwnedFeatures;
use numpy::ndarray::ArrayView2;
use numpy::{Element, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::errors::to_py;

/// `numpy.asarray(value)` (any array-like: lists, numpy arrays, CPU torch tensors).
pub fn asarray<'py>(value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    value
        .py()
        .import("numpy")?
        .call_method1("asarray", (value,))
}

/// The dtype name (`float32`, `int64`, ...) and the kind letter (`f`, `i`, `u`, ...) of an
/// array.
fn dtype_of(array: &Bound<'_, PyAny>) -> PyResult<(String, String)> {
    let dtype = array.getattr("dtype")?;
    Ok((
        dtype.getattr("name")?.extract()?,
        dtype.getattr("kind")?.extract()?,
    ))
}

/// The shape of an array, as Python shows it.
fn shape_of(array: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
    array.getattr("shape")?.extract()
}

/// `(a, b)` as Python writes a shape.
fn show_shape(shape: &[usize]) -> String {
    match shape {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A real-valued 2-D array `name` as float32 (a copy unless it is float32 already; float16
/// is kept as float16 when `keep_f16`).
fn real_matrix<'py>(
    name: &str,
    value: &Bound<'py, PyAny>,
    keep_f16: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let array = asarray(value)?;
    let shape = shape_of(&array)?;
    if shape.len() != 2 {
        return Err(PyValueError::new_err(format!(
            "{name} must be a 2-D array, got shape {}",
            show_shape(&shape)
        )));
    }
    let (dtype, kind) = dtype_of(&array)?;
    match (dtype.as_str(), kind.as_str()) {
        ("float32", _) => Ok(array),
        ("float16", _) if keep_f16 => Ok(array),
        (_, "f" | "i" | "u") => array.call_method1("astype", ("float32",)),
        _ => Err(PyValueError::new_err(format!(
            "{name} must hold real numbers (float32 or float16), got dtype {dtype}"
        ))),
    }
}

/// A float32 matrix `name` [rows x cols] copied into a row-major Vec, with its shape.
pub fn f32_matrix(name: &str, value: &Bound<'_, PyAny>) -> PyResult<(usize, usize, Vec<f32>)> {
    let array = real_matrix(name, value, false)?;
    let array = array.cast::<PyArray2<f32>>()?.readonly();
    let (rows, cols) = array.as_array().dim();
    Ok((rows, cols, array.as_array().iter().copied().collect()))
}

/// A float32 vector `name` [n] (or [n, 1] when `column_ok`), copied.
pub fn f32_vector(name: &str, value: &Bound<'_, PyAny>, column_ok: bool) -> PyResult<Vec<f32>> {
    let array = asarray(value)?;
    let shape = shape_of(&array)?;
    let ok = match shape[..] {
        [_] => true,
        [_, 1] => column_ok,
        _ => false,
    };
    if !ok {
        return Err(PyValueError::new_err(format!(
            "{name} must be a 1-D array{}, got shape {}",
            if column_ok { " [F] or [F, 1]" } else { "" },
            show_shape(&shape)
        )));
    }
    let (dtype, kind) = dtype_of(&array)?;
    if !matches!(kind.as_str(), "f" | "i" | "u") {
        return Err(PyValueError::new_err(format!(
            "{name} must hold real numbers, got dtype {dtype}"
        )));
    }
    let flat = array
        .call_method1("astype", ("float32",))?
        .call_method1("reshape", (-1,))?;
    let flat = flat.cast::<PyArray1<f32>>()?.readonly();
    Ok(flat.as_array().iter().copied().collect())
}

/// Refuses a NaN or infinite value of `name`, naming its place.
pub fn check_finite(name: &str, values: &[f32], cols: usize) -> PyResult<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(PyValueError::new_err(format!(
            "{name}: the value at [{}, {}] is {} (values must be finite)",
            i / cols.max(1),
            i % cols.max(1),
            values[i]
        ))),
    }
}

/// Where the feature rows are: borrowed from the caller's array, or one grouped copy.
enum Rows<'py> {
    /// C-contiguous float32 rows already in user order.
    F32(PyReadonlyArray2<'py, f32>),
    /// C-contiguous float16 rows already in user order.
    F16(PyReadonlyArray2<'py, f16>),
    /// Rows copied into user order (unsorted users, or a layout that cannot be borrowed).
    Owned(OwnedFeatures),
}

/// Preference rows `x` [P, F] and users `user` [P] as the core takes them: grouped by user,
/// every user 0..N-1 with a row. Keeps the caller's array borrowed (and so alive) while the
/// view is in use.
pub struct PairsInput<'py> {
    rows: Rows<'py>,
    n_features: usize,
    user_offsets: Vec<usize>,
    row_order: Option<Vec<usize>>,
}

impl<'py> PairsInput<'py> {
    /// Reads `x` and `user`: float32 and float16 rows are used as they are (borrowed when
    /// C-contiguous and `user` is sorted, else copied once into user order); other real
    /// dtypes are converted to float32.
    pub fn read(x: &Bound<'py, PyAny>, user: &Bound<'py, PyAny>) -> PyResult<Self> {
        let array = real_matrix("x", x, true)?;
        let shape = shape_of(&array)?;
        let (n_rows, n_features) = (shape[0], shape[1]);
        let users = read_users(user, n_rows)?;
        let n_users = count_users(&users).map_err(|e| to_py(e.into()))?;
        let counts = count_rows_per_user(&users, n_users).map_err(|e| to_py(e.into()))?;
        let user_offsets = offsets_from_counts(&counts);
        let sorted = users.windows(2).all(|w| w[0] <= w[1]);
        let row_order = (!sorted).then(|| group_rows_by_user(&users));
        drop(users);

        let rows = if let Ok(a) = array.cast::<PyArray2<f32>>() {
            borrow_or_gather(a.readonly(), row_order.as_deref(), Rows::F32, |v| {
                OwnedFeatures::F32(v)
            })
        } else {
            let a = array.cast::<PyArray2<f16>>()?;
            borrow_or_gather(a.readonly(), row_order.as_deref(), Rows::F16, |v| {
                OwnedFeatures::F16(v)
            })
        };
        let input = Self {
            rows,
            n_features,
            user_offsets,
            row_order,
        };
        // Checks shapes and that every value is finite, naming the caller's row.
        input.preferences_checked()?;
        Ok(input)
    }

    /// The feature rows in user order.
    fn features(&self) -> FeatureRows<'_> {
        match &self.rows {
            Rows::F32(a) => FeatureRows::F32(a.as_slice().expect("C-contiguous, checked")),
            Rows::F16(a) => FeatureRows::F16(a.as_slice().expect("C-contiguous, checked")),
            Rows::Owned(owned) => owned.rows(),
        }
    }

    /// The core's view of the rows (values were checked by [`Self::read`]).
    pub fn preferences(&self) -> Preferences<'_> {
        Preferences::with_checked_values(
            self.features(),
            self.n_features,
            self.user_offsets.clone(),
        )
        .expect("preference rows were checked by PairsInput::read")
    }

    /// Builds the view with every check, reporting a non-finite value at the caller's row.
    fn preferences_checked(&self) -> PyResult<()> {
        match Preferences::new(self.features(), self.n_features, self.user_offsets.clone()) {
            Ok(_) => Ok(()),
            Err(LoreError::NonFinite { row, col, value }) => {
                let row = self.row_order.as_ref().map_or(row, |order| order[row]);
                Err(to_py(LoreError::NonFinite { row, col, value }.into()))
            }
            Err(e) => Err(to_py(e.into())),
        }
    }

    /// Number of users N.
    pub fn n_users(&self) -> usize {
        self.user_offsets.len() - 1
    }

    /// Feature dimension F.
    pub fn n_features(&self) -> usize {
        self.n_features
    }
}

/// Borrows a C-contiguous array whose rows are in user order, else copies its rows once in
/// `order` (or as they are).
fn borrow_or_gather<'py, T: Element + Copy>(
    array: PyReadonlyArray2<'py, T>,
    order: Option<&[usize]>,
    borrowed: impl FnOnce(PyReadonlyArray2<'py, T>) -> Rows<'py>,
    owned: impl FnOnce(Vec<T>) -> OwnedFeatures,
) -> Rows<'py> {
    if order.is_none() && array.is_c_contiguous() {
        return borrowed(array);
    }
    Rows::Owned(owned(gather(array.as_array(), order)))
}

/// The rows of `view` in `order` (all rows in order without one), row-major.
fn gather<T: Copy>(view: ArrayView2<'_, T>, order: Option<&[usize]>) -> Vec<T> {
    let (p, f) = view.dim();
    let mut out = Vec::with_capacity(p * f);
    let mut push = |i: usize| {
        let row = view.row(i);
        match row.as_slice() {
            Some(slice) => out.extend_from_slice(slice),
            None => out.extend(row.iter().copied()),
        }
    };
    match order {
        Some(order) => order.iter().for_each(|&i| push(i)),
        None => (0..p).for_each(push),
    }
    out
}

/// `user` as u32 indices, one per row of the features.
fn read_users(user: &Bound<'_, PyAny>, n_rows: usize) -> PyResult<Vec<u32>> {
    let array = asarray(user)?;
    let shape = shape_of(&array)?;
    if shape != [n_rows] {
        return Err(PyValueError::new_err(format!(
            "user must be a 1-D array [P] with P = {n_rows} (the rows of x), got shape {}",
            show_shape(&shape)
        )));
    }
    let (dtype, kind) = dtype_of(&array)?;
    if !matches!(kind.as_str(), "i" | "u") {
        return Err(PyValueError::new_err(format!(
            "user must hold integer user indices 0..N-1, got dtype {dtype}"
        )));
    }
    let array = array.call_method1("astype", ("int64",))?;
    let array = array.cast::<PyArray1<i64>>()?.readonly();
    array
        .as_array()
        .iter()
        .enumerate()
        .map(|(row, &u)| {
            u32::try_from(u).map_err(|_| {
                PyValueError::new_err(if u < 0 {
                    format!("user: row {row} has negative user index {u} (indices must run 0..N-1)")
                } else {
                    format!(
                        "user: row {row} has user index {u}, above the largest supported (2^32 - 1)"
                    )
                })
            })
        })
        .collect()
}

/// N = largest index + 1, refusing cheaply an index so large that a user below it must be
/// empty (as the preference files do).
fn count_users(users: &[u32]) -> Result<usize, LoreError> {
    let n_users = users.iter().max().map_or(0, |&u| u as usize + 1);
    if n_users > users.len() {
        let mut seen = vec![false; users.len()];
        for &u in users {
            if let Some(s) = seen.get_mut(u as usize) {
                *s = true;
            }
        }
        let user = seen.iter().position(|&s| !s).unwrap_or(users.len());
        return Err(LoreError::EmptyUser { user });
    }
    Ok(n_users)
}

/// Optional user names: N distinct strings.
pub fn read_user_ids(ids: Option<Vec<String>>, n_users: usize) -> PyResult<Option<Vec<String>>> {
    let Some(ids) = ids else { return Ok(None) };
    if ids.len() != n_users {
        return Err(PyValueError::new_err(format!(
            "user_ids has {} names but the data has {n_users} users",
            ids.len()
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    if let Some(dup) = ids.iter().find(|id| !seen.insert(id.as_str())) {
        return Err(PyValueError::new_err(format!(
            "user_ids: name {dup:?} appears more than once"
        )));
    }
    Ok(Some(ids))
}

/// A float32 numpy matrix [rows x cols] from row-major values.
pub fn matrix_out<'py>(
    py: Python<'py>,
    rows: usize,
    cols: usize,
    values: &[f32],
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    PyArray1::from_slice(py, values).reshape([rows, cols])
}

/// A float32 numpy vector.
pub fn vector_out<'py>(py: Python<'py>, values: &[f32]) -> Bound<'py, PyArray1<f32>> {
    PyArray1::from_slice(py, values)
}

/// Whether `value` names a file (a str or an os.PathLike) rather than holding arrays.
pub fn path_of(value: &Bound<'_, PyAny>) -> PyResult<Option<std::path::PathBuf>> {
    if value.is_instance_of::<PyString>() || value.hasattr("__fspath__")? {
        return Ok(Some(value.extract()?));
    }
    Ok(None)
}

/// A count argument (`rank`, `iterations`, ...) as usize: a negative value is refused as the
/// library refuses 0 (which it checks itself).
pub fn count(name: &str, value: Option<i64>) -> PyResult<Option<usize>> {
    value
        .map(|v| {
            usize::try_from(v).map_err(|_| {
                PyValueError::new_err(format!("invalid {name}: {v} (must be at least 1)"))
            })
        })
        .transpose()
}
