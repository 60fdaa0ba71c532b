//! Shards on Redis Cluster: which hash slot a request's keys live in.
//!
//! A Redis Cluster runs a script only when every key it touches hashes to one slot. So on a
//! cluster the backend splits the key space into `shards` (16 by default, at most
//! [`MAX_SHARDS`]), each with a hash tag of its own, and keeps everything one start touches in
//! one shard: the record, the task's queue stream for that shard, the idempotency key and the
//! pending set it is counted in. See the module docs of the backend for the whole layout.
//!
//! * The shard of a request is the **first byte of its id** (`RedisBackend::place` writes it
//!   when the request starts), so any process finds the record from the id alone, whatever its
//!   own `shards` setting.
//! * Shard `s`'s tag is a short text whose CRC16 slot lies in the window of 64 slots starting
//!   at `bit_reverse(s) × 64`: for any shard count that is a power of two, the shards' slots are
//!   evenly spaced over the 16384 slots, so `redis-cli --cluster create`'s even split of slots
//!   over the masters gives each master an even share of shards (16 shards on 3 masters: 6, 5
//!   and 5). The tags depend on nothing but `s`: every process and every version computes the
//!   same ones.

use crate::protocol::RequestId;

/// Most shards a cluster layout can have: the id's first byte names the shard.
pub(super) const MAX_SHARDS: u16 = 256;

/// Redis Cluster's slot count.
const SLOTS: u16 = 16384;

/// The slots each tag's window spans (`SLOTS / MAX_SHARDS`).
const WINDOW: u16 = SLOTS / MAX_SHARDS;

/// CRC16 as Redis Cluster hashes keys (XMODEM: polynomial 0x1021, initial value 0).
pub(super) fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in data {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The cluster slot of `key`, with the hash-tag rule: when the key has a `{` followed later by
/// a `}` with something between them, only that part is hashed.
#[cfg(test)]
pub(super) fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = bytes
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            rest.iter()
                .position(|b| *b == b'}')
                .filter(|close| *close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(bytes);
    crc16(hashed) % SLOTS
}

/// The tag of shard `s`: the first of `s.0`, `s.1`, … whose slot lies in the shard's window.
fn tag_for(shard: u16) -> String {
    let start = u16::from((shard as u8).reverse_bits()) * WINDOW;
    // Each candidate lands in the window with probability 1/256: the loop ends after a few
    // hundred tries (the unit test checks every shard).
    (0u32..)
        .map(|k| format!("{shard}.{k}"))
        .find(|tag| (start..start + WINDOW).contains(&(crc16(tag.as_bytes()) % SLOTS)))
        .unwrap_or_default()
}

/// The shards of a cluster layout and their tags.
#[derive(Debug)]
pub(super) struct Shards {
    /// How many shards new requests are spread over (and workers read).
    count: u16,
    /// The tag of every possible shard: a request made under a larger `count` is still found.
    tags: Vec<String>,
}

impl Shards {
    /// A layout of `count` shards (1 to [`MAX_SHARDS`], checked by the builder).
    pub(super) fn new(count: u16) -> Self {
        Shards {
            count: count.clamp(1, MAX_SHARDS),
            tags: (0..MAX_SHARDS).map(tag_for).collect(),
        }
    }

    /// How many shards new requests are spread over.
    pub(super) fn count(&self) -> u16 {
        self.count
    }

    /// The shard request `id` lives in.
    pub(super) fn of(id: &RequestId) -> u16 {
        u16::from(id.as_bytes()[0])
    }

    /// The hash tag of `shard` (without braces).
    pub(super) fn tag(&self, shard: u16) -> &str {
        &self.tags[usize::from(shard % MAX_SHARDS)]
    }

    /// The shard for text `anchor` (an owner or idempotency-key digest, a task name): always the
    /// same one for the same text and shard count.
    pub(super) fn anchored(&self, anchor: &str) -> u16 {
        crc16(anchor.as_bytes()) % self.count
    }

    /// `id` with its first byte set to name `shard`; the other 15 bytes stay as they are.
    pub(super) fn placed(id: RequestId, shard: u16) -> RequestId {
        let mut bytes = *id.as_bytes();
        bytes[0] = (shard % MAX_SHARDS) as u8;
        RequestId::from_bytes(bytes)
    }

    /// A shard for a request with nothing to anchor it: spread by the id's own random first byte.
    pub(super) fn spread(&self, id: &RequestId) -> u16 {
        Self::of(id) % self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_and_slots_match_redis() {
        // The check value of CRC16/XMODEM, and slots as `CLUSTER KEYSLOT` gives them.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
        assert_eq!(key_slot("foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(key_slot("foo{{bar}}zap"), crc16(b"{bar") % SLOTS);
        assert_eq!(key_slot("foo{bar}{zap}"), key_slot("bar"));
    }

    #[test]
    fn every_tag_lies_in_its_window() {
        let shards = Shards::new(16);
        for s in 0..MAX_SHARDS {
            let start = u16::from((s as u8).reverse_bits()) * WINDOW;
            let slot = key_slot(&format!("ae:r:{{{}}}x", shards.tag(s)));
            assert!(
                (start..start + WINDOW).contains(&slot),
                "shard {s}: slot {slot}"
            );
        }
    }

    #[test]
    fn shards_spread_evenly_over_three_masters() {
        // `redis-cli --cluster create` with 3 masters: 0-5460, 5461-10922, 10923-16383.
        let shards = Shards::new(16);
        let mut per_master = [0; 3];
        for s in 0..shards.count() {
            let slot = key_slot(&format!("{{{}}}", shards.tag(s)));
            per_master[match slot {
                0..=5460 => 0,
                5461..=10922 => 1,
                _ => 2,
            }] += 1;
        }
        assert_eq!(per_master, [6, 5, 5]);
    }

    #[test]
    fn a_real_cluster_agrees_on_slots_and_masters() {
        let Some(cluster) = test_support::redis_cluster::start() else {
            return;
        };
        let node = cluster.node(cluster.masters()[0]);
        let shards = Shards::new(16);
        let mut masters = std::collections::HashSet::new();
        for s in 0..shards.count() {
            let key = format!("ae:q:{{{}}}:task", shards.tag(s));
            let slot = node.bulk(&format!("CLUSTER KEYSLOT {key}")).unwrap();
            assert_eq!(slot, Some(format!(":{}", key_slot(&key))), "{key}");
            masters.insert(cluster.master_for(&key));
        }
        assert_eq!(masters.len(), 3, "16 shards reach every master");
    }

    #[test]
    fn placement_is_read_back_from_the_id() {
        let shards = Shards::new(16);
        for _ in 0..100 {
            let id = RequestId::random();
            let shard = shards.spread(&id);
            assert!(shard < 16);
            let placed = Shards::placed(id, shard);
            assert_eq!(Shards::of(&placed), shard);
            assert_eq!(placed.as_bytes()[1..], id.as_bytes()[1..]);
        }
        assert_eq!(shards.anchored("owner-a"), shards.anchored("owner-a"));
        assert!(shards.anchored("owner-a") < 16);
    }
}
