//! The official ID-EA regulariser (`--reg mahalanobis`): a Mahalanobis distance of each pseudo-token to its
//! anchor under the covariance of the anchor vectors,
//! `C = cov(initᵀ) + 2e-5·I`, `m_i = sqrt(max((Δ C⁺ Δᵀ)_ii, 1e-8))`, `reg = w · mean_i m_i`, `Δ = E − init`.
//!
//! It is degenerate: n anchor vectors give a covariance of rank ≤ n − 1 (1 for the usual 2 tokens), and
//! `torch.linalg.pinv`'s default cut-off (`max(d, d)·eps_f32·σ_max`) drops the 2e-5 ridge whenever the
//! anchors differ by more than a whisker, so C⁺ keeps only the direction(s) spanned by the centred anchors:
//! a weak pull along `init_0 − init_1` and none elsewhere. The default, Cross Init's L2 term, pulls in every
//! direction. C⁺ depends only on the (constant) anchor, so it is built once, in f64, from the small n×n Gram
//! matrix instead of a d×d decomposition.

use candle_core::{DType, Tensor};

use crate::Result;

/// Added to the covariance's diagonal by the official code.
const RIDGE: f64 = 2e-5;
/// Floor of the squared distance before the square root (keeps the gradient finite at Δ = 0).
const FLOOR: f64 = 1e-8;

/// `C⁺ [d, d]` for anchors `init [n, d]`, as `torch.linalg.pinv(torch.cov(init.T) + 2e-5·I)` computes it in
/// float32 (singular values below `d·eps_f32·σ_max` are dropped). For n = 1 the covariance is taken as 0.
pub fn precision(init: &Tensor) -> Result<Tensor> {
    let (n, d) = init.dims2()?;
    let x = init.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    let mean: Vec<f64> = (0..d)
        .map(|j| x.iter().map(|r| r[j]).sum::<f64>() / n as f64)
        .collect();
    let xc: Vec<Vec<f64>> = x
        .iter()
        .map(|r| r.iter().zip(&mean).map(|(v, m)| v - m).collect())
        .collect();
    let denom = (n.max(2) - 1) as f64;
    let gram: Vec<Vec<f64>> = (0..n)
        .map(|a| (0..n).map(|b| dot(&xc[a], &xc[b]) / denom).collect())
        .collect();
    let (values, vectors) = jacobi_eigen(gram);
    let top = values.iter().fold(0f64, |m, &v| m.max(v));
    // Eigenpairs of the covariance in the anchors' span: v = Xcᵀ w / ‖Xcᵀ w‖, eigenvalue μ (+ ridge).
    let mut span = Vec::new();
    for (k, &mu) in values.iter().enumerate() {
        if mu > top * 1e-12 && mu > 0.0 {
            let mut v: Vec<f64> = (0..d)
                .map(|j| (0..n).map(|a| xc[a][j] * vectors[a][k]).sum())
                .collect();
            let norm = dot(&v, &v).sqrt();
            v.iter_mut().for_each(|e| *e /= norm);
            span.push((mu + RIDGE, v));
        }
    }
    let sigma_max = span.iter().map(|(l, _)| *l).fold(RIDGE, f64::max);
    let cut = d as f64 * f32::EPSILON as f64 * sigma_max;
    let mut p = vec![0f64; d * d];
    if RIDGE > cut {
        // The ridge eigenspace (the complement of the span) survives: (I − Σ v vᵀ) / ridge.
        for i in 0..d {
            p[i * d + i] = 1.0 / RIDGE;
        }
        for (_, v) in &span {
            outer_add(&mut p, v, -1.0 / RIDGE);
        }
    }
    for (lambda, v) in &span {
        if *lambda > cut {
            outer_add(&mut p, v, 1.0 / lambda);
        }
    }
    Ok(Tensor::from_vec(p, (d, d), init.device())?.to_dtype(init.dtype())?)
}

/// `w · mean_i sqrt(max((Δ P Δᵀ)_ii, 1e-8))` with `Δ = rows − init` (differentiable in `rows`).
pub fn mahalanobis(
    rows: &Tensor,
    init: &Tensor,
    precision: &Tensor,
    weight: f64,
) -> Result<Tensor> {
    let delta = rows.broadcast_sub(init)?;
    let quad = (delta.matmul(precision)? * &delta)?.sum(1)?;
    Ok((quad.maximum(FLOOR)?.sqrt()?.mean_all()? * weight)?)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn outer_add(p: &mut [f64], v: &[f64], scale: f64) {
    let d = v.len();
    for i in 0..d {
        for j in 0..d {
            p[i * d + j] += scale * v[i] * v[j];
        }
    }
}

/// Eigenvalues and eigenvectors (columns) of a small symmetric matrix by cyclic Jacobi rotations.
fn jacobi_eigen(mut a: Vec<Vec<f64>>) -> (Vec<f64>, Vec<Vec<f64>>) {
    let n = a.len();
    let mut v: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..n).map(|j| f64::from(u8::from(i == j))).collect())
        .collect();
    for _ in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j].powi(2))
            .sum();
        if off < 1e-300 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                if a[p][q].abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let (c, s) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
                for row in a.iter_mut() {
                    let (akp, akq) = (row[p], row[q]);
                    row[p] = c * akp - s * akq;
                    row[q] = s * akp + c * akq;
                }
                let (row_p, row_q) = (a[p].clone(), a[q].clone());
                for (k, (apk, aqk)) in row_p.into_iter().zip(row_q).enumerate() {
                    a[p][k] = c * apk - s * aqk;
                    a[q][k] = s * apk + c * aqk;
                }
                for row in v.iter_mut() {
                    let (vp, vq) = (row[p], row[q]);
                    row[p] = c * vp - s * vq;
                    row[q] = s * vp + c * vq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i][i]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_diagonalises() {
        let m = vec![
            vec![4.0, 1.0, 0.5],
            vec![1.0, 3.0, 0.2],
            vec![0.5, 0.2, 1.0],
        ];
        let (vals, vecs) = jacobi_eigen(m.clone());
        for k in 0..3 {
            for i in 0..3 {
                let mv: f64 = (0..3).map(|j| m[i][j] * vecs[j][k]).sum();
                assert!((mv - vals[k] * vecs[i][k]).abs() < 1e-10);
            }
        }
    }

    #[test]
    fn two_anchors_keep_one_direction() {
        let init = Tensor::new(
            &[[10.0f64, 20.0, 0.0, 10.0], [30.0, -10.0, 20.0, 0.0]],
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let p = precision(&init).unwrap().to_vec2::<f64>().unwrap();
        // u = init0 − init1; cov = u uᵀ / 2 (eigenvalue 900, cut-off 4·eps_f32·900 > ridge): only u survives,
        // P = u uᵀ / (‖u‖² (‖u‖²/2 + ridge)).
        let u = [-20.0, 30.0, -20.0, 10.0];
        let nu: f64 = u.iter().map(|x| x * x).sum();
        for i in 0..4 {
            for j in 0..4 {
                let want = u[i] * u[j] / (nu * (nu / 2.0 + RIDGE));
                assert!(
                    (p[i][j] - want).abs() < 1e-15,
                    "{i},{j}: {} vs {want}",
                    p[i][j]
                );
            }
        }
    }
}
