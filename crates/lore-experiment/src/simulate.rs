//! Simulated populations in the style of PersonalLLM: users who mix J reward functions.
//!
//! M prompts each have R responses, each response an embedding e [F] and J reward functions'
//! scores s [J]. A user draws weights w ~ Dirichlet(alpha 1_J) and, on a prompt, prefers the
//! response with the highest weighted score w . s over the one with the lowest; the preference
//! row is x = e(best) - e(worst). Prompts are divided into training and test prompts; a seen
//! user answers a share of the training prompts (their training rows), an unseen user a
//! smaller share (their few-shot rows), and every user a share of the test prompts (their test
//! rows). The result is the four sets of [`crate::split`], generated directly.
//!
//! [`synthetic_responses`] makes responses with no input: J planted reward directions d_j in F
//! dimensions and Gaussian embeddings, scored s_j = e . d_j, so user u's true reward direction
//! is sum_j w_uj d_j: a population of planted rank J.
//!
//! Everything is seeded (ChaCha8): the same parameters give the same population, bit for bit.

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Gamma, StandardNormal};

use crate::split::Split;
use lore_core::{LoreError, Result};

/// Responses to simulate preferences on: M prompts x R responses, each with an embedding \[F\]
/// and J reward functions' scores, borrowed row-major.
#[derive(Debug, Clone, Copy)]
pub struct ResponseSet<'a> {
    embeddings: &'a [f32],
    scores: &'a [f32],
    n_prompts: usize,
    n_responses: usize,
    n_features: usize,
    n_rewards: usize,
}

impl<'a> ResponseSet<'a> {
    /// `embeddings` [M, R, F] and `scores` [M, R, J], row-major; checks sizes and finiteness.
    pub fn new(
        embeddings: &'a [f32],
        scores: &'a [f32],
        [n_prompts, n_responses, n_features]: [usize; 3],
        n_rewards: usize,
    ) -> Result<Self> {
        if n_prompts < 2 || n_responses < 2 || n_features == 0 || n_rewards == 0 {
            return Err(LoreError::Shape(format!(
                "responses need M >= 2 prompts, R >= 2 responses, F >= 1 and J >= 1 reward \
                 functions (got M = {n_prompts}, R = {n_responses}, F = {n_features}, \
                 J = {n_rewards})"
            )));
        }
        let responses = n_prompts * n_responses;
        if embeddings.len() != responses * n_features {
            return Err(LoreError::Shape(format!(
                "{} embedding values are not [M = {n_prompts}, R = {n_responses}, F = {n_features}]",
                embeddings.len()
            )));
        }
        if scores.len() != responses * n_rewards {
            return Err(LoreError::Shape(format!(
                "{} score values are not [M = {n_prompts}, R = {n_responses}, J = {n_rewards}]",
                scores.len()
            )));
        }
        for (what, values, width) in [
            ("embedding", embeddings, n_features),
            ("score", scores, n_rewards),
        ] {
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(LoreError::InvalidParameter {
                    name: "responses",
                    reason: format!(
                        "{what} of prompt {}, response {} is {} (values must be finite)",
                        i / width / n_responses,
                        i / width % n_responses,
                        values[i]
                    ),
                });
            }
        }
        Ok(Self {
            embeddings,
            scores,
            n_prompts,
            n_responses,
            n_features,
            n_rewards,
        })
    }

    /// Number of prompts M.
    pub fn n_prompts(&self) -> usize {
        self.n_prompts
    }
    /// Responses per prompt R.
    pub fn n_responses(&self) -> usize {
        self.n_responses
    }
    /// Embedding dimension F.
    pub fn n_features(&self) -> usize {
        self.n_features
    }
    /// Number of reward functions J.
    pub fn n_rewards(&self) -> usize {
        self.n_rewards
    }

    fn embedding(&self, prompt: usize, response: usize) -> &[f32] {
        let start = (prompt * self.n_responses + response) * self.n_features;
        &self.embeddings[start..start + self.n_features]
    }

    fn scores(&self, prompt: usize, response: usize) -> &[f32] {
        let start = (prompt * self.n_responses + response) * self.n_rewards;
        &self.scores[start..start + self.n_rewards]
    }
}

/// Sizes of a synthetic response set (unchecked).
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticParams {
    /// Embedding dimension F.
    pub n_features: usize,
    /// Number of planted reward directions J (the population's true rank).
    pub n_rewards: usize,
    /// Number of prompts M.
    pub n_prompts: usize,
    /// Responses per prompt R.
    pub n_responses: usize,
    /// Seed of the directions and embeddings.
    pub seed: u64,
}

impl Default for SyntheticParams {
    /// F = 64, J = 4, M = 400 prompts of R = 4 responses, seed 0. (PersonalLLM has 8
    /// responses; with fewer, the best and worst response of a prompt are less extreme, so
    /// that users who weigh the rewards differently disagree more often.)
    fn default() -> Self {
        Self {
            n_features: 64,
            n_rewards: 4,
            n_prompts: 400,
            n_responses: 4,
            seed: 0,
        }
    }
}

/// Synthetic responses: embeddings [M, R, F], scores [M, R, J] and the planted directions.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticResponses {
    /// Response embeddings [M, R, F], entries ~ N(0, 1).
    pub embeddings: Vec<f32>,
    /// Scores [M, R, J]: s_j = e . d_j.
    pub scores: Vec<f32>,
    /// The planted reward directions d_j [J, F], unit vectors.
    pub directions: Vec<f32>,
    params: SyntheticParams,
}

impl SyntheticResponses {
    /// The responses as a [`ResponseSet`].
    pub fn view(&self) -> ResponseSet<'_> {
        let p = &self.params;
        ResponseSet::new(
            &self.embeddings,
            &self.scores,
            [p.n_prompts, p.n_responses, p.n_features],
            p.n_rewards,
        )
        .expect("synthetic responses have checked sizes")
    }
}

/// Draws J unit directions and M x R Gaussian embeddings, and scores them s_j = e . d_j.
pub fn synthetic_responses(params: &SyntheticParams) -> Result<SyntheticResponses> {
    let p = params;
    if p.n_features == 0 || p.n_rewards == 0 || p.n_prompts < 2 || p.n_responses < 2 {
        return Err(LoreError::InvalidParameter {
            name: "synthetic responses",
            reason: format!(
                "need F >= 1, J >= 1, M >= 2 prompts and R >= 2 responses (got F = {}, J = {}, \
                 M = {}, R = {})",
                p.n_features, p.n_rewards, p.n_prompts, p.n_responses
            ),
        });
    }
    if crate::memory::synthetic_memory(p).is_none() || p.n_prompts > u32::MAX as usize {
        return Err(crate::memory::too_large(
            "synthetic responses",
            format!(
                "F = {}, J = {}, M = {} prompts x R = {} responses",
                p.n_features, p.n_rewards, p.n_prompts, p.n_responses
            ),
        ));
    }
    let (f, j) = (p.n_features, p.n_rewards);
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
    let mut directions: Vec<f32> = (0..j * f)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect();
    for d in directions.chunks_exact_mut(f) {
        let norm = d.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        let norm = if norm > 0.0 { norm } else { 1.0 };
        d.iter_mut().for_each(|v| *v = (*v as f64 / norm) as f32);
    }
    let n_responses = p.n_prompts * p.n_responses;
    let embeddings: Vec<f32> = (0..n_responses * f)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect();
    let scores = embeddings
        .chunks_exact(f)
        .flat_map(|e| directions.chunks_exact(f).map(move |d| dot(e, d) as f32))
        .collect();
    Ok(SyntheticResponses {
        embeddings,
        scores,
        directions,
        params: params.clone(),
    })
}

/// How to draw the population and which prompts each user answers (unchecked).
#[derive(Debug, Clone, PartialEq)]
pub struct PopulationParams {
    /// Number of seen users (the basis is fitted on them).
    pub n_seen_users: usize,
    /// Number of unseen users (personalized from their few-shot rows).
    pub n_unseen_users: usize,
    /// Concentration alpha of the users' Dirichlet(alpha 1_J) weights: small values give users
    /// close to a single reward function, large values users close to the average.
    pub dirichlet_alpha: f64,
    /// Share of the prompts held out as test prompts, in (0, 1).
    pub test_prompt_fraction: f64,
    /// Share of the training prompts each seen user answers (their training rows), in (0, 1].
    pub seen_fraction: f64,
    /// Share of the training prompts each unseen user answers (their few-shot rows), in (0, 1].
    pub unseen_fraction: f64,
    /// Share of the test prompts each user answers (their test rows), in (0, 1].
    pub test_fraction: f64,
    /// Standard deviation of Gaussian noise added to every response's score, afresh for each
    /// user and prompt, before the best and worst are picked (0 = users answer exactly by their
    /// mixed reward; synthetic scores have a standard deviation of about 1).
    pub score_noise: f64,
    /// Seen users' training rows, drawn per user uniformly from this range, instead of
    /// `seen_fraction` (real users answer different numbers of prompts).
    pub seen_pairs: Option<PairRange>,
    /// Unseen users' few-shot rows, drawn per user from this range, instead of
    /// `unseen_fraction`.
    pub unseen_pairs: Option<PairRange>,
    /// Every user's test rows, drawn per user from this range, instead of `test_fraction`.
    pub test_pairs: Option<PairRange>,
    /// Seed of the users' weights and prompts.
    pub seed: u64,
}

/// An inclusive range of rows per user, `min..=max`, written `N` or `MIN-MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairRange {
    /// Fewest rows a user gets (at least 1).
    pub min: usize,
    /// Most rows a user gets.
    pub max: usize,
}

impl std::str::FromStr for PairRange {
    type Err = String;

    /// `N` (every user N rows) or `MIN-MAX` (each user a uniform draw in MIN..=MAX).
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let number = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("`{text}` is not N or MIN-MAX (whole numbers of rows)"))
        };
        let (min, max) = match text.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => {
                let n = number(text)?;
                (n, n)
            }
        };
        if min == 0 || min > max {
            return Err(format!("`{text}`: need 1 <= MIN <= MAX rows per user"));
        }
        Ok(Self { min, max })
    }
}

impl std::fmt::Display for PairRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}-{}", self.min, self.max)
        }
    }
}

impl Default for PopulationParams {
    /// 300 seen and 100 unseen users, alpha 0.1 (the reference's PersonalLLM value), half of
    /// the prompts for test; seen users answer 25% of the training prompts, unseen users 5%,
    /// everyone 25% of the test prompts.
    fn default() -> Self {
        Self {
            n_seen_users: 300,
            n_unseen_users: 100,
            dirichlet_alpha: 0.1,
            test_prompt_fraction: 0.5,
            seen_fraction: 0.25,
            unseen_fraction: 0.05,
            test_fraction: 0.25,
            score_noise: 0.0,
            seen_pairs: None,
            unseen_pairs: None,
            test_pairs: None,
            seed: 0,
        }
    }
}

impl PopulationParams {
    /// Validates the values against `responses`; returns the (training, test) prompt counts
    /// and the rows per user: (seen training, unseen few-shot, test).
    pub(crate) fn check(&self, n_prompts: usize) -> Result<RowCounts> {
        if self.n_seen_users == 0 || self.n_unseen_users == 0 {
            return Err(invalid(
                "users",
                format!(
                    "{} seen and {} unseen (need at least one of each)",
                    self.n_seen_users, self.n_unseen_users
                ),
            ));
        }
        // Users and prompts are numbered in u32 (the files' `user` and `prompt_id`).
        let n_users = self.n_seen_users.checked_add(self.n_unseen_users);
        if n_users.is_none_or(|n| n > u32::MAX as usize) {
            return Err(invalid(
                "users",
                format!(
                    "{} seen and {} unseen are too many (at most {} in all)",
                    self.n_seen_users,
                    self.n_unseen_users,
                    u32::MAX
                ),
            ));
        }
        if n_prompts > u32::MAX as usize {
            return Err(invalid(
                "prompts",
                format!("{n_prompts} are too many (at most {})", u32::MAX),
            ));
        }
        if !(self.dirichlet_alpha.is_finite() && self.dirichlet_alpha > 0.0) {
            return Err(invalid(
                "dirichlet alpha",
                format!("{} (must be finite and > 0)", self.dirichlet_alpha),
            ));
        }
        if !(self.test_prompt_fraction > 0.0 && self.test_prompt_fraction < 1.0) {
            return Err(invalid(
                "test prompt fraction",
                format!(
                    "{} (must be strictly between 0 and 1)",
                    self.test_prompt_fraction
                ),
            ));
        }
        if !(self.score_noise.is_finite() && self.score_noise >= 0.0) {
            return Err(invalid(
                "score noise",
                format!("{} (must be finite and >= 0)", self.score_noise),
            ));
        }
        let n_test = ((self.test_prompt_fraction * n_prompts as f64).round() as usize)
            .clamp(1, n_prompts - 1);
        let n_train = n_prompts - n_test;
        let count = |(name, pairs_name): (&'static str, &'static str),
                     fraction: f64,
                     pairs: Option<PairRange>,
                     of: usize,
                     what: &str|
         -> Result<PairRange> {
            if let Some(range) = pairs {
                if range.min == 0 || range.min > range.max || range.max > of {
                    return Err(invalid(
                        pairs_name,
                        format!(
                            "{range} rows per user (need 1 <= MIN <= MAX <= the {of} {what} \
                             prompts)"
                        ),
                    ));
                }
                return Ok(range);
            }
            if !(fraction > 0.0 && fraction <= 1.0) {
                return Err(invalid(name, format!("{fraction} (must be in (0, 1])")));
            }
            let n = (fraction * of as f64).round() as usize;
            if n == 0 {
                return Err(invalid(
                    name,
                    format!("{fraction} of {of} {what} prompts is 0 rows per user"),
                ));
            }
            Ok(PairRange { min: n, max: n })
        };
        Ok(RowCounts {
            n_train_prompts: n_train,
            seen: count(
                ("seen fraction", "seen pairs"),
                self.seen_fraction,
                self.seen_pairs,
                n_train,
                "training",
            )?,
            unseen: count(
                ("unseen fraction", "unseen pairs"),
                self.unseen_fraction,
                self.unseen_pairs,
                n_train,
                "training",
            )?,
            test: count(
                ("test fraction", "test pairs"),
                self.test_fraction,
                self.test_pairs,
                n_test,
                "test",
            )?,
        })
    }
}

/// Prompts and rows per user of a population.
pub(crate) struct RowCounts {
    pub(crate) n_train_prompts: usize,
    pub(crate) seen: PairRange,
    pub(crate) unseen: PairRange,
    pub(crate) test: PairRange,
}

impl PairRange {
    /// A user's count: `min` when the range is one value (no draw, so populations without
    /// ranges keep their bits), else a uniform draw from `rng`.
    fn draw(&self, rng: &mut ChaCha8Rng) -> usize {
        if self.min == self.max {
            self.min
        } else {
            rng.gen_range(self.min..=self.max)
        }
    }
}

/// A simulated population: its preference rows grouped by user, the users' true weights, a
/// reference direction, and the four sets.
#[derive(Debug, Clone, PartialEq)]
pub struct Population {
    /// Embedding dimension F.
    pub n_features: usize,
    /// Preference rows x = e(best) - e(worst) [P, F], grouped by user.
    pub features: Vec<f32>,
    /// User of each row \[P\] (seen users first, then unseen users).
    pub users: Vec<u32>,
    /// Prompt of each row \[P\].
    pub prompts: Vec<u32>,
    /// Names of the users: `user0000`, `user0001`, ... (zero-padded, so they sort as numbers).
    pub user_ids: Vec<String>,
    /// The users' true weights [N, J].
    pub weights: Vec<f32>,
    /// Number of reward functions J.
    pub n_rewards: usize,
    /// The reference head v_ref \[F\]: as given, or the direction that best predicts the
    /// population's average score (mean of the Dirichlet weights, 1/J each) from a response's
    /// embedding, by least squares over all responses (for synthetic responses, the mean
    /// planted direction).
    pub v_ref: Vec<f32>,
    /// The four sets (their rows index `features`).
    pub split: Split,
}

/// Simulates a population on `responses`. `v_ref` is the reference head to record (\[F\]); when
/// `None`, it is the least-squares direction of [`reference_direction`]. `progress` is called
/// with the number of users done.
pub fn simulate(
    responses: &ResponseSet,
    params: &PopulationParams,
    v_ref: Option<Vec<f32>>,
    mut progress: impl FnMut(usize),
) -> Result<Population> {
    let counts = params.check(responses.n_prompts())?;
    let sizes = [
        responses.n_prompts(),
        responses.n_responses(),
        responses.n_features(),
        responses.n_rewards(),
    ];
    if crate::memory::simulate_memory(params, sizes[0], sizes[1], sizes[2], sizes[3])?.is_none() {
        return Err(crate::memory::too_large(
            "users",
            format!(
                "a population of {} seen and {} unseen users on {} prompts x {} responses, F = {},",
                params.n_seen_users, params.n_unseen_users, sizes[0], sizes[1], sizes[2]
            ),
        ));
    }
    if let Some(v) = &v_ref {
        if v.len() != responses.n_features() {
            return Err(LoreError::FeatureMismatch {
                model: v.len(),
                data: responses.n_features(),
            });
        }
    }
    let (f, j) = (responses.n_features(), responses.n_rewards());
    let n_users = params.n_seen_users + params.n_unseen_users;

    // Stream u64::MAX: which prompts are test prompts; stream 1 + u: user u. (Stream 0 is
    // left to the synthetic responses, which may share the seed.)
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    rng.set_stream(u64::MAX);
    let mut prompt_order: Vec<u32> = (0..responses.n_prompts() as u32).collect();
    rand::seq::SliceRandom::shuffle(prompt_order.as_mut_slice(), &mut rng);
    let (train_prompts, test_prompts) = prompt_order.split_at(counts.n_train_prompts);
    let mut train_prompts = train_prompts.to_vec();
    let mut test_prompts = test_prompts.to_vec();
    train_prompts.sort_unstable();
    test_prompts.sort_unstable();

    let width = n_users.saturating_sub(1).to_string().len().max(4);
    let mut population = Population {
        n_features: f,
        features: Vec::new(),
        users: Vec::new(),
        prompts: Vec::new(),
        user_ids: (0..n_users).map(|u| format!("user{u:0width$}")).collect(),
        weights: Vec::with_capacity(n_users * j),
        n_rewards: j,
        v_ref: v_ref.unwrap_or_else(|| reference_direction(responses)),
        split: Split::default(),
    };
    let mut mixed = vec![0.0f64; responses.n_responses()];
    for u in 0..n_users {
        let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
        rng.set_stream(1 + u as u64);
        let w = dirichlet(j, params.dirichlet_alpha, &mut rng);
        let seen = u < params.n_seen_users;
        let n_train = if seen { counts.seen } else { counts.unseen }.draw(&mut rng);
        let n_test = counts.test.draw(&mut rng);
        let pick = |pool: &[u32], n: usize, rng: &mut ChaCha8Rng| -> Vec<u32> {
            let mut chosen: Vec<u32> = sample(rng, pool.len(), n)
                .into_iter()
                .map(|i| pool[i])
                .collect();
            chosen.sort_unstable();
            chosen
        };
        let train = pick(&train_prompts, n_train, &mut rng);
        let test = pick(&test_prompts, n_test, &mut rng);

        let (group, set_user) = if seen {
            (0, population.split.seen_users.len() as u32)
        } else {
            (1, population.split.unseen_users.len() as u32)
        };
        for (is_test, prompts) in [(false, &train), (true, &test)] {
            let set = match (group, is_test) {
                (0, false) => &mut population.split.seen_train,
                (0, true) => &mut population.split.seen_test,
                (_, false) => &mut population.split.unseen_train,
                (_, true) => &mut population.split.unseen_test,
            };
            for &prompt in prompts {
                let m = prompt as usize;
                for (r, s) in mixed.iter_mut().enumerate() {
                    *s = dot(responses.scores(m, r), &w);
                    if params.score_noise > 0.0 {
                        *s += params.score_noise * rng.sample::<f64, _>(StandardNormal);
                    }
                }
                let (best, worst) = extremes(&mixed);
                let row = population.users.len();
                population.features.extend(
                    responses
                        .embedding(m, best)
                        .iter()
                        .zip(responses.embedding(m, worst))
                        .map(|(a, b)| a - b),
                );
                population.users.push(u as u32);
                population.prompts.push(prompt);
                set.rows.push(row);
                set.users.push(set_user);
            }
        }
        if seen {
            population.split.seen_users.push(u as u32);
        } else {
            population.split.unseen_users.push(u as u32);
        }
        population.weights.extend(w.iter().map(|&v| v as f32));
        progress(u + 1);
    }
    population.split.prompt_counts = Some((train_prompts.len(), test_prompts.len()));
    Ok(population)
}

/// w ~ Dirichlet(alpha 1_J), computed in log space so that small alphas cannot underflow:
/// G ~ Gamma(alpha) is drawn as Gamma(alpha + 1) * U^(1/alpha).
fn dirichlet(j: usize, alpha: f64, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let gamma = Gamma::new(alpha + 1.0, 1.0).expect("alpha is finite and > 0");
    let mut log_g: Vec<f64> = (0..j)
        .map(|_| {
            let g: f64 = rng.sample(gamma);
            let u: f64 = rng.gen::<f64>().max(f64::MIN_POSITIVE);
            g.max(f64::MIN_POSITIVE).ln() + u.ln() / alpha
        })
        .collect();
    let max = log_g.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for v in log_g.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    log_g.iter_mut().for_each(|v| *v /= sum);
    log_g
}

/// Indices of the largest and smallest value (the first of ties).
fn extremes(values: &[f64]) -> (usize, usize) {
    let (mut best, mut worst) = (0, 0);
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
        if v < values[worst] {
            worst = i;
        }
    }
    (best, worst)
}

/// The least-squares direction v minimizing sum_r (e_r . v - mean_j s_rj)^2 + lambda |v|^2
/// over all responses (lambda = 1e-8 of the mean diagonal of E^T E, for a unique answer), by
/// at most max(50, min(F, 200)) conjugate-gradient steps on the normal equations, never
/// forming E^T E (exact for well-conditioned embeddings such as the synthetic ones).
pub fn reference_direction(responses: &ResponseSet) -> Vec<f32> {
    let (f, j) = (responses.n_features, responses.n_rewards);
    let rows = responses.embeddings.chunks_exact(f);
    let target: Vec<f64> = responses
        .scores
        .chunks_exact(j)
        .map(|s| s.iter().map(|&v| v as f64).sum::<f64>() / j as f64)
        .collect();
    let trace: f64 = responses
        .embeddings
        .iter()
        .map(|&v| (v as f64).powi(2))
        .sum();
    let lambda = 1e-8 * trace / f as f64 + f64::MIN_POSITIVE;
    // A p = E^T (E p) + lambda p.
    let apply = |p: &[f64]| -> Vec<f64> {
        let mut out: Vec<f64> = p.iter().map(|&v| lambda * v).collect();
        for e in rows.clone() {
            let ep: f64 = e.iter().zip(p).map(|(&a, &b)| a as f64 * b).sum();
            for (o, &a) in out.iter_mut().zip(e) {
                *o += a as f64 * ep;
            }
        }
        out
    };
    let mut b = vec![0.0f64; f];
    for (e, &t) in rows.clone().zip(&target) {
        for (o, &a) in b.iter_mut().zip(e) {
            *o += a as f64 * t;
        }
    }
    let mut v = vec![0.0f64; f];
    let mut r = b.clone();
    let mut p = r.clone();
    let mut rr: f64 = r.iter().map(|x| x * x).sum();
    let tolerance = 1e-20 * b.iter().map(|x| x * x).sum::<f64>();
    for _ in 0..f.clamp(50, 200) {
        if rr <= tolerance || rr == 0.0 {
            break;
        }
        let ap = apply(&p);
        let step = rr / p.iter().zip(&ap).map(|(a, b)| a * b).sum::<f64>();
        for ((vi, ri), (pi, api)) in v.iter_mut().zip(r.iter_mut()).zip(p.iter().zip(&ap)) {
            *vi += step * pi;
            *ri -= step * api;
        }
        let rr_next: f64 = r.iter().map(|x| x * x).sum();
        let beta = rr_next / rr;
        for (pi, ri) in p.iter_mut().zip(&r) {
            *pi = ri + beta * *pi;
        }
        rr = rr_next;
    }
    v.into_iter().map(|x| x as f32).collect()
}

fn dot<T: Copy + Into<f64>, U: Copy + Into<f64>>(a: &[T], b: &[U]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x.into() * y.into()).sum()
}

fn invalid(name: &'static str, reason: String) -> LoreError {
    LoreError::InvalidParameter { name, reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn small() -> (SyntheticResponses, PopulationParams) {
        let responses = synthetic_responses(&SyntheticParams {
            n_features: 12,
            n_rewards: 3,
            n_prompts: 40,
            n_responses: 5,
            seed: 3,
        })
        .unwrap();
        let params = PopulationParams {
            n_seen_users: 7,
            n_unseen_users: 4,
            test_prompt_fraction: 0.5,
            seen_fraction: 0.5,
            unseen_fraction: 0.2,
            test_fraction: 0.3,
            seed: 5,
            ..PopulationParams::default()
        };
        (responses, params)
    }

    #[test]
    fn population_is_reproducible_and_shaped_as_asked() {
        let (responses, params) = small();
        let mut calls = 0;
        let a = simulate(&responses.view(), &params, None, |done| {
            calls += 1;
            assert_eq!(done, calls);
        })
        .unwrap();
        assert_eq!(calls, 11);
        assert_eq!(
            a,
            simulate(&responses.view(), &params, None, |_| {}).unwrap()
        );
        let other = PopulationParams { seed: 6, ..params };
        assert_ne!(
            a,
            simulate(&responses.view(), &other, None, |_| {}).unwrap()
        );

        // 20 training and 20 test prompts: seen users 10 + 6 rows, unseen users 4 + 6.
        let s = &a.split;
        assert_eq!(s.prompt_counts, Some((20, 20)));
        assert_eq!((s.seen_users.len(), s.unseen_users.len()), (7, 4));
        assert_eq!(s.seen_train.rows.len(), 7 * 10);
        assert_eq!(s.seen_test.rows.len(), 7 * 6);
        assert_eq!(s.unseen_train.rows.len(), 4 * 4);
        assert_eq!(s.unseen_test.rows.len(), 4 * 6);
        assert_eq!(a.features.len(), a.users.len() * 12);
        assert_eq!(a.user_ids[10], "user0010");

        // Every row is in exactly one set; training and test prompts never mix.
        let mut rows = HashSet::new();
        for (_, set) in s.sets() {
            for &r in &set.rows {
                assert!(rows.insert(r));
            }
        }
        assert_eq!(rows.len(), a.users.len());
        let train: HashSet<u32> = s
            .seen_train
            .rows
            .iter()
            .chain(&s.unseen_train.rows)
            .map(|&r| a.prompts[r])
            .collect();
        assert!(s
            .seen_test
            .rows
            .iter()
            .chain(&s.unseen_test.rows)
            .all(|&r| !train.contains(&a.prompts[r])));
    }

    #[test]
    fn each_row_is_the_users_best_over_worst_response() {
        let (responses, params) = small();
        let pop = simulate(&responses.view(), &params, None, |_| {}).unwrap();
        let (f, j) = (12, 3);
        for (row, x) in pop.features.chunks_exact(f).enumerate() {
            let u = pop.users[row] as usize;
            let w = &pop.weights[u * j..(u + 1) * j];
            // The user's true direction sum_j w_j d_j scores the chosen response higher.
            let direction: Vec<f64> = (0..f)
                .map(|i| {
                    (0..j)
                        .map(|k| w[k] as f64 * responses.directions[k * f + i] as f64)
                        .sum()
                })
                .collect();
            assert!(dot(x, &direction) >= -1e-5, "row {row}");
        }
        for w in pop.weights.chunks_exact(j) {
            assert!(w.iter().all(|&v| v >= 0.0));
            assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn reference_direction_is_the_mean_planted_direction() {
        let (responses, params) = small();
        let pop = simulate(&responses.view(), &params, None, |_| {}).unwrap();
        let (f, j) = (12, 3);
        let mean: Vec<f64> = (0..f)
            .map(|i| {
                (0..j)
                    .map(|k| responses.directions[k * f + i] as f64)
                    .sum::<f64>()
                    / j as f64
            })
            .collect();
        for (a, b) in pop.v_ref.iter().zip(&mean) {
            assert!((*a as f64 - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    #[test]
    fn tiny_dirichlet_alpha_stays_finite() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..100 {
            let w = dirichlet(5, 1e-3, &mut rng);
            assert!(w.iter().all(|v| v.is_finite() && *v >= 0.0));
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn pair_ranges_draw_each_users_count() {
        let (responses, params) = small();
        let ranged = PopulationParams {
            seen_pairs: Some("3-9".parse().unwrap()),
            test_pairs: Some(PairRange { min: 2, max: 2 }),
            ..params.clone()
        };
        let pop = simulate(&responses.view(), &ranged, None, |_| {}).unwrap();
        let count =
            |set: &crate::split::SplitSet, u: u32| set.users.iter().filter(|&&v| v == u).count();
        let seen: Vec<usize> = (0..7).map(|u| count(&pop.split.seen_train, u)).collect();
        assert!(seen.iter().all(|n| (3..=9).contains(n)), "{seen:?}");
        assert!(
            seen.iter().any(|&n| n != seen[0]),
            "every user drew {}",
            seen[0]
        );
        assert!((0..7).all(|u| count(&pop.split.seen_test, u) == 2));
        // The unseen users keep their fraction: 0.2 of the 20 training prompts.
        assert!((0..4).all(|u| count(&pop.split.unseen_train, u) == 4));
        // A one-value range draws nothing: the population of the fraction it equals.
        let same = PopulationParams {
            seen_pairs: Some(PairRange { min: 10, max: 10 }),
            ..params.clone()
        };
        assert_eq!(
            simulate(&responses.view(), &same, None, |_| {}).unwrap(),
            simulate(&responses.view(), &params, None, |_| {}).unwrap()
        );
        for bad in ["0-3", "5-2", "x", "3-", ""] {
            assert!(bad.parse::<PairRange>().is_err(), "{bad}");
        }
        let too_many = PopulationParams {
            unseen_pairs: Some(PairRange { min: 1, max: 21 }),
            ..params
        };
        let err = simulate(&responses.view(), &too_many, None, |_| {}).unwrap_err();
        assert!(err.to_string().contains("unseen pairs"), "{err}");
    }

    #[test]
    fn invalid_inputs_are_refused() {
        let (responses, params) = small();
        let view = responses.view();
        for bad in [
            PopulationParams {
                n_unseen_users: 0,
                ..params.clone()
            },
            PopulationParams {
                dirichlet_alpha: 0.0,
                ..params.clone()
            },
            PopulationParams {
                test_prompt_fraction: 1.0,
                ..params.clone()
            },
            PopulationParams {
                seen_fraction: 1.5,
                ..params.clone()
            },
            PopulationParams {
                unseen_fraction: 0.01,
                ..params.clone()
            },
        ] {
            assert!(simulate(&view, &bad, None, |_| {}).is_err(), "{bad:?}");
        }
        assert!(ResponseSet::new(&[0.0; 10], &[0.0; 4], [2, 2, 3], 1).is_err());
        let err = ResponseSet::new(&[f32::NAN; 12], &[0.0; 4], [2, 2, 3], 1).unwrap_err();
        assert!(err.to_string().contains("prompt 0, response 0"), "{err}");
        assert!(synthetic_responses(&SyntheticParams {
            n_responses: 1,
            ..SyntheticParams::default()
        })
        .is_err());
    }
}
