//! Box helpers shared by the detectors: non-maximum suppression.

/// How two boxes' overlap is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Overlap {
    /// Intersection over union.
    Union,
    /// Intersection over the smaller area. MTCNN's last stage uses it so that a small box
    /// nested inside a larger one (a face part detected as a face) is removed.
    Min,
}

/// Greedy NMS over `[x1, y1, x2, y2]` boxes. Returns the kept indices, best score first.
///
/// Areas use the inclusive-pixel convention `(x2 - x1 + 1) * (y2 - y1 + 1)` of the reference
/// implementations (MTCNN, insightface), so thresholds mean the same thing as there.
pub(crate) fn nms(boxes: &[[f64; 4]], scores: &[f64], threshold: f64, how: Overlap) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let area = |b: &[f64; 4]| (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0);
    let mut keep = Vec::new();
    let mut suppressed = vec![false; boxes.len()];
    for (k, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let a = &boxes[i];
        for &j in &order[k + 1..] {
            if suppressed[j] {
                continue;
            }
            let b = &boxes[j];
            let w = (a[2].min(b[2]) - a[0].max(b[0]) + 1.0).max(0.0);
            let h = (a[3].min(b[3]) - a[1].max(b[1]) + 1.0).max(0.0);
            let inter = w * h;
            let o = match how {
                Overlap::Union => inter / (area(a) + area(b) - inter),
                Overlap::Min => inter / area(a).min(area(b)),
            };
            // The references keep boxes with overlap <= threshold; NaN (degenerate boxes) is
            // suppressed rather than kept.
            if !(o <= threshold) {
                suppressed[j] = true;
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_best_of_overlapping_and_separate_boxes() {
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 1.0, 11.0, 11.0],
            [50.0, 50.0, 60.0, 60.0],
        ];
        let scores = [0.8, 0.9, 0.7];
        assert_eq!(nms(&boxes, &scores, 0.5, Overlap::Union), vec![1, 2]);
    }

    #[test]
    fn min_overlap_removes_nested_box_that_union_keeps() {
        let boxes = [[0.0, 0.0, 99.0, 99.0], [10.0, 10.0, 29.0, 29.0]];
        let scores = [0.9, 0.95];
        // IoU = 400 / 10000 = 0.04: both kept. Over the smaller box: 1.0: the big one goes.
        assert_eq!(nms(&boxes, &scores, 0.7, Overlap::Union).len(), 2);
        assert_eq!(nms(&boxes, &scores, 0.7, Overlap::Min), vec![1]);
    }
}
