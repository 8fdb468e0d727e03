//! A position embedding for another patch grid, resized bicubically as mmpretrain's
//! `resize_pos_embed` does (PyTorch's `F.interpolate(mode="bicubic", align_corners=False)`).

use candle_core::{DType, Device, Tensor};

/// (1, N_src[+1], D) position embedding -> (1, th * tw, D): bicubic over the grid, as
/// PyTorch's `F.interpolate(mode="bicubic", align_corners=False)`, dropping a class-token slot.
/// The source grid is read as square or of the target's aspect, first without and then with
/// one extra (class) token, as the checkpoints that exist are.
pub fn resize_pos_embed(src: &Tensor, target_grid: (usize, usize)) -> std::result::Result<Tensor, String> {
    let err = |e: candle_core::Error| e.to_string();
    let (one, n_src, d) = src.dims3().map_err(err)?;
    if one != 1 {
        return Err("expected a leading dimension of 1".into());
    }
    let (th, tw) = target_grid;
    let Some((sh, sw, extra)) = (0..=1).find_map(|extra| {
        let n = n_src.checked_sub(extra)?;
        source_grid(n, th, tw).map(|(h, w)| (h, w, extra))
    }) else {
        return Err(format!("{n_src} positions form neither a square grid nor a {th}:{tw} one"));
    };
    let values = src.to_dtype(DType::F32).map_err(err)?.flatten_all().map_err(err)?.to_vec1::<f32>().map_err(err)?;
    let out = bicubic_resize(&values[extra * d..], sh, sw, d, th, tw);
    Tensor::from_vec(out, (1, th * tw, d), &Device::Cpu).map_err(err)
}

/// A square grid of n positions, or one of the target's aspect th:tw.
fn source_grid(n: usize, th: usize, tw: usize) -> Option<(usize, usize)> {
    let s = (n as f64).sqrt().round() as usize;
    if s > 0 && s * s == n {
        return Some((s, s));
    }
    let g = gcd(th, tw);
    let (a, b) = (th / g, tw / g);
    let u = ((n / (a * b)) as f64).sqrt().round() as usize;
    (u > 0 && a * b * u * u == n).then_some((a * u, b * u))
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn cubic_weights(t: f32) -> [f32; 4] {
    // PyTorch's upsample_bicubic2d with A = -0.75.
    const A: f32 = -0.75;
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// Separable bicubic of a (h, w, d) grid (channels last) to (th, tw, d), align_corners=False.
pub fn bicubic_resize(src: &[f32], h: usize, w: usize, d: usize, th: usize, tw: usize) -> Vec<f32> {
    let plan = |n_in: usize, n_out: usize| -> Vec<([usize; 4], [f32; 4])> {
        let scale = n_in as f32 / n_out as f32;
        (0..n_out)
            .map(|o| {
                let f = (o as f32 + 0.5) * scale - 0.5;
                let i = f.floor();
                let idx = [-1i64, 0, 1, 2].map(|k| (i as i64 + k).clamp(0, n_in as i64 - 1) as usize);
                (idx, cubic_weights(f - i))
            })
            .collect()
    };
    let (py, px) = (plan(h, th), plan(w, tw));
    let mut out = vec![0f32; th * tw * d];
    for (oy, (iy, wy)) in py.iter().enumerate() {
        for (ox, (ix, wx)) in px.iter().enumerate() {
            let dst = &mut out[(oy * tw + ox) * d..(oy * tw + ox + 1) * d];
            for a in 0..4 {
                for b in 0..4 {
                    let weight = wy[a] * wx[b];
                    let s = &src[(iy[a] * w + ix[b]) * d..(iy[a] * w + ix[b] + 1) * d];
                    for (o, v) in dst.iter_mut().zip(s) {
                        *o += weight * v;
                    }
                }
            }
        }
    }
    out
}
