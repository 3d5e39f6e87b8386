//! An ONNX graph loaded once with tract and run with optimised plans, one per input shape.
//!
//! tract optimises a graph for concrete shapes (kernel selection, weight packing, constant
//! folding). The face models come with partly symbolic inputs — MTCNN's P-Net is fully
//! convolutional and runs at every pyramid size, R-/O-Net and ArcFace have a free batch axis —
//! so the parsed graph is kept and an optimised plan is built the first time each concrete
//! shape is seen, then reused. Graphs whose input is fully concrete (FaceNet) are optimised at
//! load time and the parsed graph is dropped to save memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use crate::error::{FaceError, Result};

type Plan = Arc<TypedRunnableModel>;

/// Plans kept per model before the cache is flushed; P-Net sees ~10 shapes per image size, so
/// this covers a handful of image sizes while bounding memory for a stream of odd sizes.
const MAX_CACHED_PLANS: usize = 64;

struct PlanCache {
    /// The parsed graph, kept only when the input has symbolic dimensions.
    base: Option<InferenceModel>,
    plans: HashMap<Vec<usize>, Plan>,
}

/// A loaded ONNX graph with a single f32 input.
pub struct OnnxModel {
    path: PathBuf,
    /// The declared input shape; `None` for symbolic dimensions.
    input_shape: Vec<Option<usize>>,
    output_names: Vec<String>,
    /// Names of the first few nodes, used to recognise preprocessing baked into the graph.
    leading_nodes: Vec<String>,
    cache: Mutex<PlanCache>,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("path", &self.path)
            .field("input_shape", &self.input_shape)
            .field("outputs", &self.output_names)
            .finish()
    }
}

impl OnnxModel {
    /// Parses `path`. Fully concrete inputs are optimised immediately, so a broken model fails
    /// here and not at the first image.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if !path.is_file() {
            return Err(FaceError::ModelLoad {
                path,
                message: "file does not exist".into(),
            });
        }
        let load_err = |e: TractError| FaceError::ModelLoad {
            path: path.clone(),
            message: format!("{e:#}"),
        };
        let model = tract_onnx::onnx().model_for_path(&path).map_err(load_err)?;
        let inputs = model.input_outlets().map_err(load_err)?;
        if inputs.len() != 1 {
            return Err(FaceError::ModelLayout {
                path,
                expected: "a single-input image model".into(),
                message: format!("it has {} inputs", inputs.len()),
            });
        }
        let fact = model.input_fact(0).map_err(load_err)?;
        let input_shape: Vec<Option<usize>> = fact
            .shape
            .dims()
            .map(|d| {
                d.concretize()
                    .and_then(|d| d.as_i64())
                    .and_then(|v| usize::try_from(v).ok())
            })
            .collect();
        let output_names = model
            .output_outlets()
            .map_err(load_err)?
            .iter()
            .map(|o| {
                model
                    .outlet_label(*o)
                    .map(str::to_string)
                    .unwrap_or_else(|| model.node(o.node).name.clone())
            })
            .collect();
        let leading_nodes = model
            .nodes()
            .iter()
            .take(12)
            .map(|n| n.name.clone())
            .collect();
        let mut cache = PlanCache {
            base: Some(model),
            plans: HashMap::new(),
        };
        let concrete: Option<Vec<usize>> = input_shape.iter().copied().collect();
        let me = OnnxModel {
            path,
            input_shape,
            output_names,
            leading_nodes,
            cache: Mutex::new(PlanCache {
                base: None,
                plans: HashMap::new(),
            }),
        };
        if let Some(shape) = concrete.filter(|s: &Vec<usize>| !s.is_empty()) {
            let base = cache.base.take().expect("set above");
            let plan = me.optimise(base, &shape)?;
            cache.plans.insert(shape, plan);
        }
        *me.cache.lock().expect("fresh mutex") = cache;
        Ok(me)
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The declared input shape, `None` where the graph leaves a dimension symbolic.
    pub fn input_shape(&self) -> &[Option<usize>] {
        &self.input_shape
    }

    /// Output names in graph order.
    pub fn output_names(&self) -> &[String] {
        &self.output_names
    }

    /// Names of the first nodes of the graph (inputs first).
    pub fn leading_nodes(&self) -> &[String] {
        &self.leading_nodes
    }

    fn optimise(&self, model: InferenceModel, shape: &[usize]) -> Result<Plan> {
        let fact = InferenceFact::dt_shape(f32::datum_type(), shape);
        model
            .with_input_fact(0, fact)
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| FaceError::ModelLoad {
                path: self.path.clone(),
                message: format!("optimising for input shape {shape:?}: {e:#}"),
            })
    }

    fn plan_for(&self, shape: &[usize]) -> Result<Plan> {
        let compatible = shape.len() == self.input_shape.len()
            && shape
                .iter()
                .zip(&self.input_shape)
                .all(|(s, d)| d.is_none_or(|d| d == *s));
        if !compatible || shape.contains(&0) {
            return Err(FaceError::ModelRun {
                path: self.path.clone(),
                message: format!(
                    "input shape {shape:?} does not fit the graph's input {:?}",
                    self.input_shape
                ),
            });
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(plan) = cache.plans.get(shape) {
            return Ok(plan.clone());
        }
        let Some(base) = cache.base.as_ref() else {
            return Err(FaceError::ModelRun {
                path: self.path.clone(),
                message: format!("no plan for input shape {shape:?}"),
            });
        };
        let plan = self.optimise(base.clone(), shape)?;
        if cache.plans.len() >= MAX_CACHED_PLANS {
            cache.plans.clear();
        }
        cache.plans.insert(shape.to_vec(), plan.clone());
        Ok(plan)
    }

    /// Runs the graph on one f32 tensor of the given shape; returns the outputs in graph order
    /// as (shape, data) pairs.
    pub fn run(&self, shape: &[usize], data: Vec<f32>) -> Result<Vec<(Vec<usize>, Vec<f32>)>> {
        let run_err = |e: TractError| FaceError::ModelRun {
            path: self.path.clone(),
            message: format!("{e:#}"),
        };
        let plan = self.plan_for(shape)?;
        let input = Tensor::from_shape(shape, &data).map_err(run_err)?;
        let outputs = plan.run(tvec!(input.into_tvalue())).map_err(run_err)?;
        outputs
            .iter()
            .map(|t| {
                let t = t.cast_to::<f32>().map_err(run_err)?;
                let data = t
                    .to_plain_array_view::<f32>()
                    .map_err(run_err)?
                    .iter()
                    .copied()
                    .collect();
                Ok((t.shape().to_vec(), data))
            })
            .collect()
    }
}
