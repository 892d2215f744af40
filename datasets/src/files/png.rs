//! A split given as one folder of PNG files per class (`train/cat/0001.png`, ...), the layout
//! of torchvision's `ImageFolder`: classes are the folder names in byte order, files are read in
//! name order, so the same folder always loads the same dataset.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};

/// The class folders of `dir` (hidden ones skipped), sorted by name.
pub(crate) fn class_folders(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type()?.is_dir() && !name.starts_with('.') {
            out.push((name, e.path()));
        }
    }
    out.sort();
    ensure!(
        !out.is_empty(),
        "{}: no class folders (expected one folder of PNG files per class)",
        dir.display()
    );
    Ok(out)
}

/// The `.png` files of a class folder, sorted by name (other files are ignored).
fn png_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let p = e?.path();
        if p.is_file() && p.extension().is_some_and(|x| x.eq_ignore_ascii_case("png")) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// One decoded image: `[channels, height, width]` and its values, channels first. Grayscale
/// gives 1 channel, RGB 3; an alpha channel is dropped, palettes are expanded and 16-bit
/// samples are reduced to 8 bits.
fn decode(path: &Path, budget: u64) -> Result<([usize; 3], Vec<f32>)> {
    let p = path.display();
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {p}"))?;
    let limits = png::Limits {
        bytes: usize::try_from(budget).unwrap_or(usize::MAX),
    };
    let mut dec = png::Decoder::new_with_limits(std::io::BufReader::new(f), limits);
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec
        .read_info()
        .map_err(|e| anyhow!("{p}: not a readable PNG: {e}"))?;
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| anyhow!("{p}: not a readable PNG: {e}"))?;
    let (h, w) = (info.height as usize, info.width as usize);
    let (stored, kept) = match info.color_type {
        png::ColorType::Grayscale => (1, 1),
        png::ColorType::GrayscaleAlpha => (2, 1),
        png::ColorType::Rgb => (3, 3),
        png::ColorType::Rgba => (4, 3),
        png::ColorType::Indexed => bail!("{p}: the palette was not expanded"),
    };
    ensure!(
        info.bit_depth == png::BitDepth::Eight && info.line_size == w * stored,
        "{p}: unexpected sample layout after decoding ({:?}, {} bytes a row)",
        info.bit_depth,
        info.line_size
    );
    let px = &buf[..h * w * stored];
    let mut out = vec![0f32; kept * h * w];
    for c in 0..kept {
        for (i, o) in out[c * h * w..(c + 1) * h * w].iter_mut().enumerate() {
            *o = f32::from(px[i * stored + c]);
        }
    }
    Ok(([kept, h, w], out))
}

/// The images and labels of a split folder: `(shape, values channels first, labels)`; `classes`
/// names the class folders in label order (the training split's, so both splits agree).
pub(crate) fn read_folder(
    dir: &Path,
    classes: &[String],
) -> Result<(Vec<usize>, Vec<f32>, Vec<u8>)> {
    let limit = supermask_core::limits::memory_limit()?;
    let mut shape: Option<([usize; 3], PathBuf)> = None;
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for (name, folder) in class_folders(dir)? {
        let label = classes.iter().position(|c| *c == name).ok_or_else(|| {
            anyhow!(
                "{}: class folder `{name}` is not one of the training split's classes ({})",
                folder.display(),
                classes.join(", ")
            )
        })?;
        let label = u8::try_from(label)
            .map_err(|_| anyhow!("{}: more than 256 class folders", dir.display()))?;
        let files = png_files(&folder)?;
        ensure!(
            !files.is_empty(),
            "{}: no .png files in class folder `{name}`",
            folder.display()
        );
        for f in files {
            let used = (images.len() * 4) as u64;
            let (s, values) = decode(&f, limit.saturating_sub(used))?;
            match &shape {
                None => shape = Some((s, f.clone())),
                Some((first, at)) => ensure!(
                    s == *first,
                    "{}: an image of shape {s:?} (channels, height, width), but {} is {first:?}; \
                     every image of a dataset has the same shape",
                    f.display(),
                    at.display()
                ),
            }
            ensure!(
                used + (values.len() * 4) as u64 <= limit,
                "{}: the images up to {} need more than the {} of memory available (set {} to \
                 change the limit)",
                dir.display(),
                f.display(),
                supermask_core::limits::format_bytes(limit),
                supermask_core::limits::MEMORY_LIMIT_ENV
            );
            images.extend(values);
            labels.push(label);
        }
    }
    let shape = shape.map(|(s, _)| s.to_vec()).unwrap_or_default();
    Ok((shape, images, labels))
}
