//! Accuracy, balanced accuracy, per-class precision/recall and the confusion matrix, clean and
//! (optionally) under a PGD attack.

use crate::adversarial::Pgd;
use crate::data::cache::ImageCache;
use crate::data::loader::make_batch;
use crate::model::Classifier;
use crate::rng::SeededRng;
use crate::Result;
use candle_core::{Device, D};
use serde::{Deserialize, Serialize};

/// Precision and recall of one class.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClassMetrics {
    pub class: String,
    pub support: usize,
    pub precision: f64,
    pub recall: f64,
}

/// Metrics of one evaluation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Evaluation {
    pub images: usize,
    pub loss: f64,
    pub accuracy: f64,
    /// Mean per-class recall (the authors' "weighted accuracy" on balanced data).
    pub balanced_accuracy: f64,
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
    /// Under attack, when asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub robust: Option<Box<Evaluation>>,
}

impl Evaluation {
    /// Metrics from true and predicted labels.
    pub fn from_predictions(
        truth: &[usize],
        pred: &[usize],
        loss_sum: f64,
        class_names: &[String],
    ) -> Evaluation {
        let k = class_names.len();
        let mut confusion = vec![vec![0usize; k]; k];
        for (&t, &p) in truth.iter().zip(pred) {
            if t < k && p < k {
                confusion[t][p] += 1;
            }
        }
        let n = truth.len();
        let correct: usize = (0..k).map(|i| confusion[i][i]).sum();
        let per_class: Vec<ClassMetrics> = (0..k)
            .map(|c| {
                let support: usize = confusion[c].iter().sum();
                let predicted: usize = (0..k).map(|t| confusion[t][c]).sum();
                ClassMetrics {
                    class: class_names[c].clone(),
                    support,
                    precision: if predicted > 0 {
                        confusion[c][c] as f64 / predicted as f64
                    } else {
                        0.0
                    },
                    recall: if support > 0 {
                        confusion[c][c] as f64 / support as f64
                    } else {
                        0.0
                    },
                }
            })
            .collect();
        let present: Vec<&ClassMetrics> = per_class.iter().filter(|c| c.support > 0).collect();
        let balanced = if present.is_empty() {
            0.0
        } else {
            present.iter().map(|c| c.recall).sum::<f64>() / present.len() as f64
        };
        Evaluation {
            images: n,
            loss: if n > 0 { loss_sum / n as f64 } else { 0.0 },
            accuracy: if n > 0 {
                correct as f64 / n as f64
            } else {
                0.0
            },
            balanced_accuracy: balanced,
            per_class,
            confusion,
            robust: None,
        }
    }

    /// A plain-text table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "images {}  loss {:.4}  accuracy {:.2}%  balanced accuracy {:.2}%\n",
            self.images,
            self.loss,
            100.0 * self.accuracy,
            100.0 * self.balanced_accuracy
        );
        s.push_str(&format!(
            "{:<12} {:>8} {:>10} {:>8}\n",
            "class", "support", "precision", "recall"
        ));
        for c in &self.per_class {
            s.push_str(&format!(
                "{:<12} {:>8} {:>9.2}% {:>7.2}%\n",
                c.class,
                c.support,
                100.0 * c.precision,
                100.0 * c.recall
            ));
        }
        s.push_str("confusion (rows true, columns predicted):\n");
        for row in &self.confusion {
            s.push_str(&format!(
                "  {}\n",
                row.iter().map(|v| format!("{v:>6}")).collect::<String>()
            ));
        }
        if let Some(r) = &self.robust {
            s.push_str(&format!(
                "robust accuracy {:.2}%  robust balanced accuracy {:.2}%\n",
                100.0 * r.accuracy,
                100.0 * r.balanced_accuracy
            ));
        }
        s
    }
}

#[allow(clippy::too_many_arguments)]
/// Evaluates `model` on cache items `indices` (eval mode, batches of `batch`), optionally also
/// on PGD versions of the images.
pub fn evaluate_model(
    model: &dyn Classifier,
    cache: &ImageCache,
    labels: &[usize],
    indices: &[usize],
    class_names: &[String],
    batch: usize,
    attack: Option<(&Pgd, u64)>,
    device: &Device,
) -> Result<Evaluation> {
    // constant weights for the whole call: their derived forms computed once
    crate::ops::with_frozen_weights(|| {
        let mut truth = Vec::new();
        let mut pred = Vec::new();
        let mut loss = 0f64;
        let mut adv_pred = Vec::new();
        let mut adv_loss = 0f64;
        let pb = crate::progress::bar(
            indices.len() as u64,
            if attack.is_some() {
                "robust eval"
            } else {
                "evaluating"
            },
        );
        for (bi, chunk) in indices.chunks(batch.max(1)).enumerate() {
            let b = make_batch(cache, labels, chunk, None, &vec![0; chunk.len()]);
            let x = b.images(device)?;
            let logits = model.logits(&x)?.detach();
            let l = crate::adversarial::pgd::cross_entropy_per_example(&logits, &b.labels)?;
            loss += l
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
            let p: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
            pred.extend(p.into_iter().map(|v| v as usize));
            truth.extend_from_slice(&b.labels);
            if let Some((pgd, seed)) = attack {
                let mut rng =
                    SeededRng::new(seed ^ (bi as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
                let adv = pgd.attack(model, &x, &b.labels, None, &mut rng)?;
                let logits = model.logits(&adv.images)?.detach();
                let l = crate::adversarial::pgd::cross_entropy_per_example(&logits, &b.labels)?;
                adv_loss += l
                    .sum_all()?
                    .to_dtype(candle_core::DType::F64)?
                    .to_scalar::<f64>()?;
                let p: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
                adv_pred.extend(p.into_iter().map(|v| v as usize));
            }
            pb.inc(chunk.len() as u64);
        }
        pb.finish_and_clear();
        let mut e = Evaluation::from_predictions(&truth, &pred, loss, class_names);
        if attack.is_some() {
            e.robust = Some(Box::new(Evaluation::from_predictions(
                &truth,
                &adv_pred,
                adv_loss,
                class_names,
            )));
        }
        Ok(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn metrics_by_hand() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let e = Evaluation::from_predictions(&[0, 0, 1, 1, 2, 2], &[0, 1, 1, 1, 2, 0], 3.0, &names);
        assert_eq!(
            e.confusion,
            vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 1]]
        );
        assert!((e.accuracy - 4.0 / 6.0).abs() < 1e-12);
        assert!((e.balanced_accuracy - (0.5 + 1.0 + 0.5) / 3.0).abs() < 1e-12);
        assert!((e.per_class[1].precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((e.loss - 0.5).abs() < 1e-12);
    }
}
