//! [`Lanes`]: one queue per device, so that a device's requests are worked on one at a time
//! in the order they arrived while different devices' requests run side by side. Both stages
//! use it: ingest so a device's appends reach the log in order, deliver so its calls reach the
//! target in order.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// Items waiting per key. The caller runs at most one item per key: the one [`Lanes::push`]
/// or [`Lanes::finish`] hands back.
#[derive(Debug)]
pub struct Lanes<K, T> {
    /// A key is present while one of its items runs; its queue holds the ones after it.
    busy: HashMap<K, VecDeque<T>>,
    queued: usize,
}

impl<K: Hash + Eq + Clone, T> Lanes<K, T> {
    /// No lanes.
    pub fn new() -> Self {
        Self {
            busy: HashMap::new(),
            queued: 0,
        }
    }

    /// Adds `item` to `key`'s lane. Returns it when the lane was idle: the caller starts it
    /// now. Otherwise it waits for the items before it.
    pub fn push(&mut self, key: &K, item: T) -> Option<T> {
        match self.busy.get_mut(key) {
            Some(queue) => {
                queue.push_back(item);
                self.queued += 1;
                None
            }
            None => {
                self.busy.insert(key.clone(), VecDeque::new());
                Some(item)
            }
        }
    }

    /// The running item of `key`'s lane is finished. Returns the lane's next item, which the
    /// caller starts now, or `None` when the lane is empty (and idle again).
    pub fn finish(&mut self, key: &K) -> Option<T> {
        let queue = self.busy.get_mut(key)?;
        match queue.pop_front() {
            Some(next) => {
                self.queued -= 1;
                Some(next)
            }
            None => {
                self.busy.remove(key);
                None
            }
        }
    }

    /// Items running (one per busy lane) plus items waiting.
    pub fn len(&self) -> usize {
        self.busy.len() + self.queued
    }

    /// Whether nothing is running or waiting.
    pub fn is_empty(&self) -> bool {
        self.busy.is_empty()
    }
}

impl<K: Hash + Eq + Clone, T> Default for Lanes<K, T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_item_per_key_runs_and_the_rest_follow_in_order() {
        let mut lanes = Lanes::new();
        assert_eq!(lanes.push(&"a", 1), Some(1));
        assert_eq!(lanes.push(&"a", 2), None);
        assert_eq!(lanes.push(&"b", 3), Some(3));
        assert_eq!(lanes.push(&"a", 4), None);
        assert_eq!(lanes.len(), 4);
        assert_eq!(lanes.finish(&"a"), Some(2));
        assert_eq!(lanes.finish(&"b"), None);
        assert_eq!(lanes.finish(&"a"), Some(4));
        assert_eq!(lanes.finish(&"a"), None);
        assert!(lanes.is_empty());
        assert_eq!(lanes.push(&"a", 5), Some(5), "an idle lane starts at once");
    }

    #[test]
    fn finishing_an_unknown_lane_does_nothing() {
        let mut lanes: Lanes<&str, u8> = Lanes::new();
        assert_eq!(lanes.finish(&"x"), None);
        assert_eq!(lanes.len(), 0);
    }
}
