//! NumPy's `.npy` format (versions 1-3) and `.npz` archives of them (`np.savez`,
//! `np.savez_compressed`): the header is parsed and checked against the bytes the file or
//! archive entry holds before the data is read, so memory stays bounded whatever a file claims.

use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};

/// Largest header accepted (NumPy's own headers are a few hundred bytes).
const MAX_HEADER: usize = 1 << 20;

/// An element type of the arrays we read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
}

impl Kind {
    fn size(self) -> usize {
        match self {
            Kind::U8 | Kind::I8 => 1,
            Kind::U16 | Kind::I16 => 2,
            Kind::U32 | Kind::I32 | Kind::F32 => 4,
            Kind::U64 | Kind::I64 | Kind::F64 => 8,
        }
    }

    /// Whether the type holds integers (labels must).
    pub(crate) fn is_integer(self) -> bool {
        !matches!(self, Kind::F32 | Kind::F64)
    }
}

/// One array as read: its shape, element type and raw little-endian bytes.
#[derive(Debug)]
pub(crate) struct Array {
    /// Where it came from, for errors: `file.npy` or `file.npz:name`.
    pub(crate) source: String,
    pub(crate) shape: Vec<usize>,
    pub(crate) kind: Kind,
    data: Vec<u8>,
}

impl Array {
    /// Number of elements.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.data.len() / self.kind.size()
    }

    /// Element `i` as f64 (exact for every integer below 2^53 and every f32).
    pub(crate) fn get(&self, i: usize) -> f64 {
        let s = self.kind.size();
        let b = &self.data[i * s..(i + 1) * s];
        match self.kind {
            Kind::U8 => f64::from(b[0]),
            Kind::I8 => f64::from(b[0] as i8),
            Kind::U16 => f64::from(u16::from_le_bytes([b[0], b[1]])),
            Kind::I16 => f64::from(i16::from_le_bytes([b[0], b[1]])),
            Kind::U32 => f64::from(u32::from_le_bytes(b.try_into().unwrap())),
            Kind::I32 => f64::from(i32::from_le_bytes(b.try_into().unwrap())),
            Kind::U64 => u64::from_le_bytes(b.try_into().unwrap()) as f64,
            Kind::I64 => i64::from_le_bytes(b.try_into().unwrap()) as f64,
            Kind::F32 => f64::from(f32::from_le_bytes(b.try_into().unwrap())),
            Kind::F64 => f64::from_le_bytes(b.try_into().unwrap()),
        }
    }
}

/// The element type and byte order of a `descr` such as `<f4` or `|u1`.
fn parse_descr(descr: &str) -> Result<(Kind, bool)> {
    let (order, code) = descr.split_at(descr.len().min(1));
    let big = match order {
        "<" | "|" | "=" => false,
        ">" => true,
        _ => bail!("dtype '{descr}' is not a plain numeric type"),
    };
    let kind = match code {
        "u1" | "B" => Kind::U8,
        "i1" | "b" => Kind::I8,
        "u2" => Kind::U16,
        "i2" => Kind::I16,
        "u4" => Kind::U32,
        "i4" => Kind::I32,
        "u8" => Kind::U64,
        "i8" => Kind::I64,
        "f4" => Kind::F32,
        "f8" => Kind::F64,
        _ => bail!(
            "dtype '{descr}' is not supported (use uint8, an integer type, float32 or float64)"
        ),
    };
    Ok((kind, big && kind.size() > 1))
}

/// The text after `'key':` in a header dict.
fn value_of<'a>(header: &'a str, key: &str) -> Result<&'a str> {
    let at = header
        .find(&format!("'{key}'"))
        .ok_or_else(|| anyhow!("the header has no '{key}'"))?;
    let rest = header[at + key.len() + 2..].trim_start();
    rest.strip_prefix(':')
        .map(str::trim_start)
        .ok_or_else(|| anyhow!("the header's '{key}' has no value"))
}

/// `(shape, kind, big-endian)` of a header dict such as
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 28, 28), }`.
fn parse_header(header: &str) -> Result<(Vec<usize>, Kind, bool)> {
    let descr = value_of(header, "descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or_else(|| {
            anyhow!("the header's 'descr' is not a string (structured dtypes are not supported)")
        })?;
    let (kind, big) = parse_descr(descr)?;
    let fortran = value_of(header, "fortran_order")?;
    ensure!(
        fortran.starts_with("False"),
        "the array is in Fortran order; save it C-contiguous (np.ascontiguousarray)"
    );
    let shape = value_of(header, "shape")?;
    let inner = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| anyhow!("the header's 'shape' is not a tuple"))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| anyhow!("shape entry '{s}' is not a size"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((shape, kind, big))
}

/// Reads one `.npy` stream that holds `len` bytes in all, checking its header, its size and
/// the memory it needs before reading the data.
pub(crate) fn read_npy(mut r: impl Read, len: u64, source: &str) -> Result<Array> {
    let ctx = |e: anyhow::Error| e.context(source.to_string());
    let mut pre = [0u8; 8];
    r.read_exact(&mut pre)
        .map_err(|e| anyhow!("{source}: too short for a .npy file: {e}"))?;
    ensure!(
        &pre[..6] == b"\x93NUMPY",
        "{source}: not a .npy file (no \\x93NUMPY magic)"
    );
    let (header_len, pre_len) = match pre[6] {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).map_err(|e| anyhow!("{source}: {e}"))?;
            (usize::from(u16::from_le_bytes(b)), 10u64)
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).map_err(|e| anyhow!("{source}: {e}"))?;
            (u32::from_le_bytes(b) as usize, 12u64)
        }
        v => bail!("{source}: .npy version {v} is not supported (1, 2 and 3 are)"),
    };
    ensure!(
        header_len <= MAX_HEADER,
        "{source}: a header of {header_len} bytes (at most {MAX_HEADER})"
    );
    let mut header = vec![0u8; header_len];
    r.read_exact(&mut header)
        .map_err(|e| anyhow!("{source}: the header is cut short: {e}"))?;
    let header =
        String::from_utf8(header).map_err(|_| anyhow!("{source}: the header is not text"))?;
    let (shape, kind, big) = parse_header(&header).map_err(ctx)?;
    let count = shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
        .ok_or_else(|| anyhow!("{source}: shape {shape:?} overflows"))?;
    let bytes = supermask_core::limits::bytes_of(count, kind.size() as u64, source)?;
    let expected = bytes.saturating_add(pre_len + header_len as u64);
    ensure!(
        expected == len,
        "{source}: the header says shape {shape:?} of {} ({expected} bytes with the header), but \
         it holds {len} bytes",
        header_kind_name(kind)
    );
    supermask_core::limits::check_alloc(bytes, &format!("{source}: shape {shape:?}"))?;
    let mut data = Vec::with_capacity(bytes as usize);
    r.take(bytes)
        .read_to_end(&mut data)
        .map_err(|e| anyhow!("{source}: {e}"))?;
    ensure!(
        data.len() as u64 == bytes,
        "{source}: the data is cut short ({} of {bytes} bytes)",
        data.len()
    );
    if big {
        for chunk in data.chunks_exact_mut(kind.size()) {
            chunk.reverse();
        }
    }
    Ok(Array {
        source: source.to_string(),
        shape,
        kind,
        data,
    })
}

fn header_kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::U8 => "uint8",
        Kind::I8 => "int8",
        Kind::U16 => "uint16",
        Kind::I16 => "int16",
        Kind::U32 => "uint32",
        Kind::I32 => "int32",
        Kind::U64 => "uint64",
        Kind::I64 => "int64",
        Kind::F32 => "float32",
        Kind::F64 => "float64",
    }
}

/// Reads a `.npy` file.
pub(crate) fn read_npy_file(path: &Path) -> Result<Array> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = f.metadata()?.len();
    read_npy(std::io::BufReader::new(f), len, &path.display().to_string())
}

/// Reads the first of `names` that the `.npz` archive at `path` holds (NumPy stores array `x`
/// as the entry `x.npy`); the error lists the archive's arrays when none is there.
pub(crate) fn read_npz_entry(path: &Path, names: &[&str]) -> Result<Array> {
    let p = path.display();
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {p}"))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(f))
        .map_err(|e| anyhow!("{p}: not a readable .npz (zip) archive: {e}"))?;
    let Some(name) = names
        .iter()
        .find(|n| zip.index_for_name(&format!("{n}.npy")).is_some())
    else {
        let held: Vec<String> = zip
            .file_names()
            .filter_map(|n| n.ok().map(|n| n.trim_end_matches(".npy").to_string()))
            .collect();
        bail!(
            "{p}: holds no array named {} (it holds: {})",
            names.join(" or "),
            held.join(", ")
        );
    };
    let entry = zip
        .by_name(&format!("{name}.npy"))
        .map_err(|e| anyhow!("{p}: array {name}: {e}"))?;
    let len = entry.size();
    read_npy(entry, len, &format!("{p}:{name}"))
}

/// The bytes of a version-1 `.npy` file of `shape` and dtype `descr` (`|u1`, `<f4`, `<i8`, ...)
/// holding `data`, the caller's bytes already in that dtype and byte order, as NumPy writes
/// them: for writing fixtures and converting data to the `files` dataset.
pub fn npy_bytes(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((h.len() as u16).to_le_bytes());
    out.extend(h.as_bytes());
    out.extend(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
        npy_bytes(descr, shape, data)
    }

    fn read(bytes: &[u8]) -> Result<Array> {
        read_npy(bytes, bytes.len() as u64, "t.npy")
    }

    #[test]
    fn headers_of_every_supported_type_and_order_read_back_their_values() {
        let a = read(&npy("|u1", &[2, 3], &[0, 1, 2, 3, 4, 255])).unwrap();
        assert_eq!(
            (a.shape.clone(), a.kind, a.len()),
            (vec![2, 3], Kind::U8, 6)
        );
        assert_eq!(a.get(5), 255.0);
        let le: Vec<u8> = [-1.5f32, 2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let a = read(&npy("<f4", &[2], &le)).unwrap();
        assert_eq!((a.get(0), a.get(1)), (-1.5, 2.0));
        let be: Vec<u8> = [-7i64, 9].iter().flat_map(|v| v.to_be_bytes()).collect();
        let a = read(&npy(">i8", &[2, 1], &be)).unwrap();
        assert_eq!((a.get(0), a.get(1), a.kind), (-7.0, 9.0, Kind::I64));
    }

    #[test]
    fn bad_files_are_refused_before_their_data_is_read() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"PK\x03\x04 not npy".to_vec(), "magic"),
            (npy("<f4", &[2], &[0; 7]), "holds 135 bytes"),
            (npy("<f4", &[2], &[0; 9]), "holds 137 bytes"),
            (npy("<c8", &[1], &[0; 8]), "not supported"),
            (npy("|O", &[1], &[0; 8]), "not supported"),
            (npy("<f4", &[1 << 20, 1 << 20], &[]), "holds 128 bytes"),
            (npy("<f4", &[usize::MAX, 2], &[]), "overflow"),
        ];
        for (bytes, want) in cases {
            let err = format!("{:#}", read(&bytes).unwrap_err());
            assert!(err.contains("t.npy") && err.contains(want), "{want}: {err}");
        }
        let mut fortran = npy("|u1", &[1], &[0]);
        let at = fortran.windows(5).position(|w| w == b"False").unwrap();
        fortran[at..at + 5].copy_from_slice(b"True ");
        let err = format!("{:#}", read(&fortran).unwrap_err());
        assert!(err.contains("Fortran"), "{err}");
    }
}
