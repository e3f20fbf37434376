//! The plugin's key/value store behind `kv-get` and `kv-set`: shared by a
//! pipeline's instances, bounded in entries and bytes.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// A plugin's key/value store: shared by all instances of one pipeline's
/// handler and kept across instance recycling. Bounded in entries and bytes;
/// past a bound the least recently written entries are evicted.
#[derive(Debug)]
pub struct KvStore {
    max_entries: usize,
    max_bytes: usize,
    bytes: usize,
    seq: u64,
    entries: HashMap<String, KvEntry>,
    /// Write order, oldest first: `seq → key`.
    order: BTreeMap<u64, String>,
}

#[derive(Debug)]
struct KvEntry {
    value: Vec<u8>,
    expires: Option<Instant>,
    seq: u64,
}

impl KvStore {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        KvStore {
            max_entries,
            max_bytes,
            bytes: 0,
            seq: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&mut self, key: &str, now: Instant) -> Option<Vec<u8>> {
        let expired = match self.entries.get(key) {
            None => return None,
            Some(e) => e.expires.is_some_and(|t| t <= now),
        };
        if expired {
            self.remove(key);
            return None;
        }
        self.entries.get(key).map(|e| e.value.clone())
    }

    pub fn set(&mut self, key: String, value: Vec<u8>, ttl: Option<Duration>, now: Instant) {
        self.remove(&key);
        let size = key.len() + value.len();
        if size > self.max_bytes || self.max_entries == 0 {
            return;
        }
        while self.entries.len() >= self.max_entries || self.bytes + size > self.max_bytes {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.remove(&oldest) {
                self.bytes -= oldest.len() + e.value.len();
            }
        }
        self.seq += 1;
        self.order.insert(self.seq, key.clone());
        self.bytes += size;
        self.entries.insert(
            key,
            KvEntry {
                value,
                // A ttl too long to represent never expires (a guest may pass u64::MAX ms).
                expires: ttl.and_then(|t| now.checked_add(t)),
                seq: self.seq,
            },
        );
    }

    fn remove(&mut self, key: &str) {
        if let Some(e) = self.entries.remove(key) {
            self.order.remove(&e.seq);
            self.bytes -= key.len() + e.value.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_is_bounded_and_expires() {
        let now = Instant::now();
        let mut kv = KvStore::new(2, 1024);
        kv.set("a".into(), b"1".to_vec(), None, now);
        kv.set("b".into(), b"2".to_vec(), None, now);
        kv.set("c".into(), b"3".to_vec(), None, now);
        assert_eq!(kv.len(), 2);
        assert_eq!(kv.get("a", now), None, "oldest evicted");
        assert_eq!(kv.get("c", now), Some(b"3".to_vec()));
        kv.set(
            "t".into(),
            b"x".to_vec(),
            Some(Duration::from_millis(10)),
            now,
        );
        assert_eq!(kv.get("t", now), Some(b"x".to_vec()));
        assert_eq!(kv.get("t", now + Duration::from_millis(11)), None);

        let mut kv = KvStore::new(100, 10);
        kv.set("k".into(), vec![0; 20], None, now);
        assert!(kv.is_empty(), "an entry larger than the store is refused");
        kv.set("k1".into(), vec![0; 4], None, now);
        kv.set("k2".into(), vec![0; 4], None, now);
        assert_eq!(kv.len(), 1, "bytes bound evicts the oldest");
        assert_eq!(kv.bytes, 6);
    }
}
