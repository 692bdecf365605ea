//! Signs that text preference pairs lie, found before any embedding: texts that are a list or
//! dict written as its string (a preparation bug that makes one side recognizable), chosen
//! identical to rejected, a length that alone predicts the label ("longer wins"), repeated
//! pairs and pair ids, and the same pair in training and held-out records.
//!
//! [`check_pairs`] is a pure function of the records [`crate::read_pairs`] yields; `lore embed`
//! prints its warnings and `lore check-data` lists them.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use crate::input::{PairRecord, Text};

/// Fewest pairs of unequal lengths before "longer wins" is judged (below it, an extreme
/// accuracy is chance).
pub const LONGER_WINS_MIN_PAIRS: usize = 20;
/// "Longer wins" accuracy at or above which (or at or below 1 minus which) the length alone
/// predicts the label.
pub const LONGER_WINS_WARN: f64 = 0.8;

/// The findings are lore-io's: `lore check-data` lists text and preference checks alike.
pub use lore_io::checks::{Finding, Severity};

/// Every check on `pairs`, in a fixed order: serialized texts, identical texts, longer wins
/// (always reported when some pairs differ in length; a warning when extreme), repeated pairs,
/// repeated pair ids, training/held-out overlap.
pub fn check_pairs(pairs: &[PairRecord]) -> Vec<Finding> {
    [
        serialized_texts(pairs),
        identical_texts(pairs),
        longer_wins(pairs),
        duplicate_pairs(pairs),
        duplicate_pair_ids(pairs),
        train_test_overlap(pairs),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// True when `text` looks like a Python or JSON list or dict written as a string:
/// `['...']`, `["..."]`, `{'...': ...}` or `{"...": ...}`.
pub fn looks_serialized(text: &str) -> bool {
    let t = text.trim();
    let opens = ["['", "[\"", "{'", "{\""].iter().any(|p| t.starts_with(p));
    opens && (t.ends_with(']') || t.ends_with('}'))
}

/// True when the text (a plain string, or any message's content) looks serialized.
fn text_serialized(text: &Text) -> bool {
    match text {
        Text::Plain(s) => looks_serialized(s),
        Text::Messages(messages) => messages.iter().any(|m| looks_serialized(&m.content)),
    }
}

/// Pairs with a `chosen` or `rejected` text (or a prompt) that looks like a serialized list or
/// dict: the brackets and quotes become a feature that can reveal the label.
pub fn serialized_texts(pairs: &[PairRecord]) -> Option<Finding> {
    let (mut chosen, mut rejected, mut prompt, mut count) = (0, 0, 0, 0);
    let mut first: Option<(&PairRecord, &'static str)> = None;
    for pair in pairs {
        let c = text_serialized(&pair.chosen);
        let r = text_serialized(&pair.rejected);
        let p = text_serialized(&pair.prompt);
        chosen += usize::from(c);
        rejected += usize::from(r);
        prompt += usize::from(p);
        if c || r || p {
            count += 1;
            let column = if c {
                "chosen"
            } else if r {
                "rejected"
            } else {
                "prompt"
            };
            first.get_or_insert((pair, column));
        }
    }
    let (pair, column) = first?;
    let total = pairs.len();
    let text = match column {
        "chosen" => &pair.chosen,
        "rejected" => &pair.rejected,
        _ => &pair.prompt,
    };
    Some(Finding {
        kind: "serialized-text",
        severity: Severity::Warning,
        message: format!(
            "{count} of {total} pairs have a text that looks like a serialized list or dict \
             ({chosen} chosen, {rejected} rejected, {prompt} prompts; first at {}, `{column}` = \
             {}): a list written as its string? (brackets and quotes can reveal the label)",
            pair.at,
            excerpt(&text.to_plain())
        ),
        count,
        total,
        value: Some(count as f64 / total as f64),
    })
}

/// Pairs whose chosen and rejected texts are identical: they become all-zero rows.
pub fn identical_texts(pairs: &[PairRecord]) -> Option<Finding> {
    let mut count = 0;
    let mut first = None;
    for pair in pairs {
        if pair.chosen.to_plain() == pair.rejected.to_plain() {
            count += 1;
            first.get_or_insert(pair.at);
        }
    }
    let at = first?;
    let total = pairs.len();
    Some(Finding {
        kind: "identical-texts",
        severity: Severity::Warning,
        message: format!(
            "{count} of {total} pairs have chosen identical to rejected (first at {at}): their \
             rows will be all zeros and carry no preference"
        ),
        count,
        total,
        value: Some(count as f64 / total as f64),
    })
}

/// The accuracy of predicting "chosen is the longer text" (in characters) over the pairs whose
/// texts differ in length. Reported as [`Severity::Info`]; a warning when at or beyond
/// [`LONGER_WINS_WARN`] (either way) over at least [`LONGER_WINS_MIN_PAIRS`] pairs, since then
/// the length alone predicts the label. `None` when every pair has equal lengths.
pub fn longer_wins(pairs: &[PairRecord]) -> Option<Finding> {
    let (mut wins, mut total) = (0, 0);
    for pair in pairs {
        let c = pair.chosen.to_plain().chars().count();
        let r = pair.rejected.to_plain().chars().count();
        if c != r {
            total += 1;
            wins += usize::from(c > r);
        }
    }
    if total == 0 {
        return None;
    }
    let accuracy = wins as f64 / total as f64;
    let extreme = accuracy >= LONGER_WINS_WARN || accuracy <= 1.0 - LONGER_WINS_WARN;
    let warn = extreme && total >= LONGER_WINS_MIN_PAIRS;
    let message = if warn {
        format!(
            "\"longer wins\" predicts {wins} of {total} pairs (accuracy {accuracy:.3}): the \
             length alone {} the label; an accuracy near it says little about preferences",
            if accuracy >= 0.5 {
                "predicts"
            } else {
                "predicts (inversely)"
            }
        )
    } else {
        format!(
            "\"longer wins\" predicts {wins} of {total} pairs of unequal lengths (accuracy \
             {accuracy:.3}; chance is 0.5)"
        )
    };
    Some(Finding {
        kind: "longer-wins",
        severity: if warn {
            Severity::Warning
        } else {
            Severity::Info
        },
        message,
        count: wins,
        total,
        value: Some(accuracy),
    })
}

/// Pairs that repeat an earlier pair: the same user, prompt, chosen and rejected texts.
pub fn duplicate_pairs(pairs: &[PairRecord]) -> Option<Finding> {
    let mut seen: HashMap<u64, usize> = HashMap::with_capacity(pairs.len());
    let mut count = 0;
    let mut example = None;
    for (i, pair) in pairs.iter().enumerate() {
        let key = pair_key(pair);
        match seen.get(&key) {
            Some(&j) if same_pair(&pairs[j], pair) => {
                count += 1;
                example.get_or_insert((pairs[j].at, pair.at));
            }
            Some(_) => {}
            None => {
                seen.insert(key, i);
            }
        }
    }
    let (first, again) = example?;
    let total = pairs.len();
    Some(Finding {
        kind: "duplicate-pairs",
        severity: Severity::Warning,
        message: format!(
            "{count} of {total} pairs repeat an earlier pair of the same user (same prompt, \
             chosen and rejected; e.g. {first} and {again}): counted twice"
        ),
        count,
        total,
        value: Some(count as f64 / total as f64),
    })
}

/// Pair ids (column `pair_id`) that appear on more than one record.
pub fn duplicate_pair_ids(pairs: &[PairRecord]) -> Option<Finding> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut count = 0;
    let mut example = None;
    let mut total = 0;
    for (i, pair) in pairs.iter().enumerate() {
        let Some(id) = pair.pair_id.as_deref() else {
            continue;
        };
        total += 1;
        match seen.get(id) {
            Some(&j) => {
                count += 1;
                example.get_or_insert((id, pairs[j].at, pair.at));
            }
            None => {
                seen.insert(id, i);
            }
        }
    }
    let (id, first, again) = example?;
    Some(Finding {
        kind: "duplicate-pair-ids",
        severity: Severity::Warning,
        message: format!(
            "{count} of {total} pair ids repeat an earlier one (e.g. {id:?} at {first} and \
             {again}): the same pair counted twice?"
        ),
        count,
        total,
        value: Some(count as f64 / total.max(1) as f64),
    })
}

/// True for a `split` value naming training records (`train`, `training`, `train_prefs`, ...).
fn is_training(split: &str) -> bool {
    split.trim().to_ascii_lowercase().starts_with("train")
}

/// Held-out records (a `split` other than training) that repeat a training record's pair: the
/// same user, prompt, chosen and rejected texts, or the same pair id.
pub fn train_test_overlap(pairs: &[PairRecord]) -> Option<Finding> {
    let mut training: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut training_ids: HashMap<&str, usize> = HashMap::new();
    for (i, pair) in pairs.iter().enumerate() {
        if pair.split.as_deref().is_some_and(is_training) {
            training.entry(pair_key(pair)).or_default().push(i);
            if let Some(id) = pair.pair_id.as_deref() {
                training_ids.entry(id).or_insert(i);
            }
        }
    }
    if training.is_empty() {
        return None;
    }
    let mut count = 0;
    let mut total = 0;
    let mut example = None;
    for pair in pairs {
        let Some(split) = pair.split.as_deref() else {
            continue;
        };
        if is_training(split) {
            continue;
        }
        total += 1;
        let by_text = training
            .get(&pair_key(pair))
            .and_then(|c| c.iter().find(|&&j| same_pair(&pairs[j], pair)));
        let by_id = pair.pair_id.as_deref().and_then(|id| training_ids.get(id));
        if let Some(&j) = by_text.or(by_id) {
            count += 1;
            example.get_or_insert((pairs[j].at, pair.at));
        }
    }
    let (first, again) = example?;
    Some(Finding {
        kind: "train-test-overlap",
        severity: Severity::Warning,
        message: format!(
            "{count} of {total} held-out pairs (`split` other than train) repeat a training \
             pair (same user and texts, or same pair id; e.g. {first} and {again}): test \
             accuracy is inflated"
        ),
        count,
        total,
        value: Some(count as f64 / total.max(1) as f64),
    })
}

/// A hash of the pair's user and texts.
fn pair_key(pair: &PairRecord) -> u64 {
    let mut h = DefaultHasher::new();
    pair.user_id.hash(&mut h);
    pair.prompt.to_plain().hash(&mut h);
    pair.chosen.to_plain().hash(&mut h);
    pair.rejected.to_plain().hash(&mut h);
    h.finish()
}

/// True when `a` and `b` have the same user and texts.
fn same_pair(a: &PairRecord, b: &PairRecord) -> bool {
    a.user_id == b.user_id
        && a.prompt.to_plain() == b.prompt.to_plain()
        && a.chosen.to_plain() == b.chosen.to_plain()
        && a.rejected.to_plain() == b.rejected.to_plain()
}

/// The first 40 characters of `text`, quoted, for messages.
fn excerpt(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((cut, _)) => format!("{:?}...", &text[..cut]),
        None => format!("{text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Location;

    fn pair(user: &str, chosen: &str, rejected: &str) -> PairRecord {
        PairRecord {
            user_id: user.into(),
            prompt: Text::from("p"),
            chosen: Text::from(chosen),
            rejected: Text::from(rejected),
            prompt_id: None,
            pair_id: None,
            split: None,
            at: Location::Line(1),
        }
    }

    fn numbered(mut pairs: Vec<PairRecord>) -> Vec<PairRecord> {
        for (i, p) in pairs.iter_mut().enumerate() {
            p.at = Location::Line(i + 1);
        }
        pairs
    }

    #[test]
    fn serialized_lists_and_dicts() {
        assert!(looks_serialized("['Sure, here it is.']"));
        assert!(looks_serialized(" [\"a\", \"b\"] "));
        assert!(looks_serialized("{'role': 'assistant'}"));
        assert!(looks_serialized("{\"a\": 1}"));
        assert!(!looks_serialized("[1, 2]"));
        assert!(!looks_serialized("['unfinished"));
        assert!(!looks_serialized("A plain answer [with brackets]"));
        let pairs = numbered(vec![
            pair("u", "fine", "good"),
            pair("u", "['a list']", "ok"),
            pair("v", "yes", "{'k': 'v'}"),
        ]);
        let f = serialized_texts(&pairs).unwrap();
        assert_eq!((f.count, f.total), (2, 3));
        assert!(f.message.contains("1 chosen, 1 rejected"), "{f}");
        assert!(f.message.contains("first at line 2"), "{f}");
        assert!(serialized_texts(&pairs[..1]).is_none());
    }

    #[test]
    fn identical_and_duplicate_pairs() {
        let pairs = numbered(vec![
            pair("u", "same", "same"),
            pair("u", "a", "b"),
            pair("u", "a", "b"),
            pair("v", "a", "b"),
        ]);
        let f = identical_texts(&pairs).unwrap();
        assert_eq!((f.count, f.total), (1, 4));
        let f = duplicate_pairs(&pairs).unwrap();
        assert_eq!(f.count, 1, "another user's pair is not a duplicate");
        assert!(f.message.contains("line 2 and line 3"), "{f}");
    }

    #[test]
    fn longer_wins_reported_and_warned_when_extreme() {
        let few = vec![pair("u", "longer", "s"), pair("u", "s", "longer")];
        let f = longer_wins(&few).unwrap();
        assert_eq!((f.severity, f.count, f.total), (Severity::Info, 1, 2));
        assert_eq!(f.value, Some(0.5));

        // 20 pairs, 18 with the longer chosen: 0.9.
        let mut many: Vec<PairRecord> = (0..18).map(|_| pair("u", "longer", "s")).collect();
        many.extend((0..2).map(|_| pair("u", "s", "longer")));
        many.push(pair("u", "same", "size"));
        let f = longer_wins(&many).unwrap();
        assert_eq!((f.severity, f.count, f.total), (Severity::Warning, 18, 20));
        assert!(f.message.contains("accuracy 0.900"), "{f}");

        // Inverse: the shorter always wins.
        let short: Vec<PairRecord> = (0..20).map(|_| pair("u", "s", "longer")).collect();
        assert_eq!(longer_wins(&short).unwrap().severity, Severity::Warning);
        // Extreme but too few pairs: only reported.
        assert_eq!(longer_wins(&short[..5]).unwrap().severity, Severity::Info);
        assert!(longer_wins(&[pair("u", "ab", "cd")]).is_none());
    }

    #[test]
    fn pair_ids_and_split_overlap() {
        let mut pairs = numbered(vec![
            pair("u", "a", "b"),
            pair("u", "c", "d"),
            pair("u", "a", "b"),
            pair("v", "e", "f"),
        ]);
        let splits = ["train", "train", "test", "test"];
        let ids = ["1", "2", "3", "2"];
        for (p, (s, id)) in pairs.iter_mut().zip(splits.iter().zip(ids)) {
            p.split = Some(s.to_string());
            p.pair_id = Some(id.to_string());
        }
        let f = duplicate_pair_ids(&pairs).unwrap();
        assert_eq!((f.count, f.total), (1, 4));
        let f = train_test_overlap(&pairs).unwrap();
        assert_eq!((f.count, f.total), (2, 2), "line 3 by text, line 4 by id");
        let all = check_pairs(&pairs);
        let kinds: Vec<&str> = all.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            [
                "duplicate-pairs",
                "duplicate-pair-ids",
                "train-test-overlap"
            ]
        );
    }
}
