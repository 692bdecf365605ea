//! torch-identical Adam (betas 0.9/0.999, eps 1e-8, bias correction, no weight decay) over flat slices.

/// The step count and learning rate of an Adam optimizer: each step's bias-corrected scalars.
/// Users' weights keep their moments elsewhere (per chunk or lane) and only need this clock.
#[derive(Debug, Clone)]
pub(crate) struct AdamClock {
    learning_rate: f32,
    step: u32,
}

/// First and second moments of one parameter group, plus its clock.
#[derive(Debug, Clone)]
pub(crate) struct Adam {
    clock: AdamClock,
    first_moment: Vec<f32>,
    second_moment: Vec<f32>,
}

/// The scalars of one Adam step, shared by every slice updated in that step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamStep {
    step_size: f32,
    bias_correction2_sqrt: f32,
}

const BETA1: f32 = 0.9;
const BETA2: f32 = 0.999;
const EPS: f32 = 1e-8;

impl AdamClock {
    /// A clock before its first step.
    pub fn new(learning_rate: f32) -> Self {
        Self {
            learning_rate,
            step: 0,
        }
    }

    /// Advances the step count and returns this step's scalars (as torch computes them, in f64).
    pub fn begin_step(&mut self) -> AdamStep {
        self.step += 1;
        let t = self.step as i32;
        let bias_correction1 = 1.0 - (BETA1 as f64).powi(t);
        let bias_correction2 = 1.0 - (BETA2 as f64).powi(t);
        AdamStep {
            step_size: (self.learning_rate as f64 / bias_correction1) as f32,
            bias_correction2_sqrt: bias_correction2.sqrt() as f32,
        }
    }
}

impl Adam {
    /// A fresh state for `len` parameters.
    pub fn new(len: usize, learning_rate: f32) -> Self {
        Self {
            clock: AdamClock::new(learning_rate),
            first_moment: vec![0.0; len],
            second_moment: vec![0.0; len],
        }
    }

    /// Advances the step count and returns this step's scalars.
    pub fn begin_step(&mut self) -> AdamStep {
        self.clock.begin_step()
    }

    /// Updates all parameters of this group from their gradients.
    pub fn update(&mut self, step: AdamStep, params: &mut [f32], grads: &[f32]) {
        step.apply(
            params,
            grads,
            &mut self.first_moment,
            &mut self.second_moment,
        );
    }
}

impl AdamStep {
    /// Applies this step to `params` with their gradients and moments (all the same length).
    #[inline(always)]
    pub fn apply(&self, params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32]) {
        debug_assert!(
            params.len() == grads.len() && m.len() == grads.len() && v.len() == grads.len()
        );
        for (((p, &g), m), v) in params.iter_mut().zip(grads).zip(m).zip(v) {
            // torch: exp_avg.lerp_(grad, 1 - beta1), written as ATen's lerp for weight < 0.5.
            *m += (1.0 - BETA1) * (g - *m);
            *v = *v * BETA2 + (1.0 - BETA2) * g * g;
            let denom = v.sqrt() / self.bias_correction2_sqrt + EPS;
            *p -= self.step_size * (*m / denom);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_moves_by_learning_rate() {
        // With bias correction the first Adam step is lr * sign(g) (up to eps).
        let mut adam = Adam::new(2, 0.1);
        let mut p = [1.0f32, -1.0];
        let step = adam.begin_step();
        adam.update(step, &mut p, &[3.0, -0.5]);
        assert!((p[0] - 0.9).abs() < 1e-6);
        assert!((p[1] + 0.9).abs() < 1e-6);
    }

    #[test]
    fn minimizes_a_quadratic() {
        let mut adam = Adam::new(1, 0.05);
        let mut p = [3.0f32];
        for _ in 0..2000 {
            let g = [2.0 * (p[0] - 1.0)];
            let step = adam.begin_step();
            adam.update(step, &mut p, &g);
        }
        assert!((p[0] - 1.0).abs() < 1e-3, "{}", p[0]);
    }
}
