//! Memoized decisions. A policy whose calls are all pure (no clock,
//! randomness or network; see [`CallCheck::impure`](super::builtins)) decides
//! the same input the same way for as long as it and its data are loaded, so
//! an agent that reads the same few secrets over and over need not run the
//! VM each time. The cache belongs to one compiled policy set: a reload
//! starts an empty one, so a changed policy or bundle is never answered from
//! the old one's decisions.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use foldhash::fast::RandomState;

use super::decision::Decision;

/// Decisions kept, at most. Keys are a few hundred bytes, so this bounds the
/// cache to about a megabyte; when full it starts over, which costs one
/// evaluation per distinct input and needs no bookkeeping per hit.
const CAPACITY: usize = 4096;

/// Answers by input key: [`Decision`]s of the decision rule, or the values
/// of another rule. Hashed with foldhash, randomly seeded per cache: a
/// lookup is a few hundred bytes of key on every request, where SipHash
/// cost as much as the rest of a memoized decision; the capacity bounds
/// what colliding keys could cost.
pub(super) struct DecisionCache<T = Decision> {
    decisions: Mutex<HashMap<Box<[u8]>, T, RandomState>>,
}

impl<T> Default for DecisionCache<T> {
    fn default() -> Self {
        Self {
            decisions: Mutex::new(HashMap::with_hasher(RandomState::default())),
        }
    }
}

impl<T: Clone> DecisionCache<T> {
    pub(super) fn get(&self, key: &[u8]) -> Option<T> {
        self.decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// The answer kept for `key`, else `answer()`, kept when it succeeds
    /// (errors are not remembered).
    pub(super) fn get_or_try_insert<E>(
        &self,
        key: Vec<u8>,
        answer: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        if let Some(kept) = self.get(&key) {
            return Ok(kept);
        }
        let answer = answer()?;
        self.insert(key, answer.clone());
        Ok(answer)
    }

    pub(super) fn insert(&self, key: Vec<u8>, decision: T) {
        let mut decisions = self
            .decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if decisions.len() >= CAPACITY {
            decisions.clear();
        }
        decisions.insert(key.into_boxed_slice(), decision);
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_at_most_its_capacity() {
        let cache = DecisionCache::<Decision>::default();
        for n in 0..CAPACITY + 10 {
            cache.insert(n.to_le_bytes().to_vec(), Decision::deny("x"));
        }
        assert!(cache.len() <= CAPACITY);
        let last = (CAPACITY + 9).to_le_bytes();
        assert_eq!(cache.get(&last), Some(Decision::deny("x")));
    }
}
