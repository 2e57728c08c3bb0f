"""The prefix-state cache: an LRU, bounded in bytes, of read-only LSTM states keyed by token ids.

An LSTM's state is a few kilobytes whatever the context, so the engine keeps read-only copies
of states and log-probs keyed by token ids; a request whose ids extend a cached key runs only
the new tokens. It is the one structure that requests share; nothing in it is modified in
place. Used from the event loop only.
"""

from __future__ import annotations

import bisect
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.rnnlm import LSTMState

# Bookkeeping bytes counted per cache entry besides its arrays (dict slot, objects).
ENTRY_OVERHEAD = 256


def frozen(a: np.ndarray) -> np.ndarray:
    """A read-only copy."""
    out = np.array(a, copy=True)
    out.flags.writeable = False
    return out


@dataclass(frozen=True, eq=False)
class CacheEntry:
    """A cached prefix: ids s_0..s_{k-1}, the state after s_0..s_{k-2}, log P(s_j | s_<j), j >= 1.

    The state is the one *before* the key's last token, so a text extending the key feeds
    s_{k-1} onwards: exactly the new tokens' count, and every log-prob comes out of one
    scoring forward.
    """

    key: bytes  # the ids as int32 bytes
    state: LSTMState  # (L, 1, H) read-only
    logprobs: np.ndarray  # (length - 1,) read-only
    nbytes: int

    @property
    def length(self) -> int:
        """k, the number of ids in the key."""
        return len(self.key) // 4


# Multiplier of the polynomial prefix hash (odd, so its powers never vanish mod 2**64).
_HASH_BASE = np.uint64(0x9E3779B97F4A7C15)


class PrefixCache:
    """LRU of prefix states bounded in bytes, keyed by token ids; used from the event loop only.

    Entries are found by (length, polynomial hash of the ids): one vectorised pass hashes
    every prefix of a text, so a lookup costs a dict probe per distinct cached key length
    (and one byte comparison on a hit), however long the keys are.
    """

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = max(0, int(capacity_bytes))
        self._entries: OrderedDict[tuple[int, int], CacheEntry] = OrderedDict()
        self._lengths: list[int] = []  # distinct key lengths, ascending
        self._length_count: Counter[int] = Counter()
        self._powers = np.ones(1, np.uint64)
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self.tokens_saved = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _prefix_hashes(self, ids: np.ndarray, n: int) -> np.ndarray:
        """h[k-1] = sum_{i<k} (ids[i] + 1) * BASE**i mod 2**64, for k = 1..n."""
        if len(self._powers) < n:
            size = max(n, 2 * len(self._powers))
            steps = np.full(size, _HASH_BASE, np.uint64)
            steps[0] = 1
            self._powers = np.cumprod(steps, dtype=np.uint64)  # wraps mod 2**64, as meant
        terms = (ids[:n].astype(np.uint64) + np.uint64(1)) * self._powers[:n]
        return np.cumsum(terms, dtype=np.uint64)

    def lookup(self, ids: np.ndarray, max_length: int) -> CacheEntry | None:
        """The longest entry whose key is ids[:k] for some 2 <= k <= max_length (counted)."""
        found: CacheEntry | None = None
        top = bisect.bisect_right(self._lengths, max_length)
        if self.capacity_bytes and top:
            hashes = self._prefix_hashes(ids, self._lengths[top - 1])
            for k in reversed(self._lengths[:top]):
                if k < 2:
                    break
                slot = (k, int(hashes[k - 1]))
                entry = self._entries.get(slot)
                if entry is not None and entry.key == ids[:k].tobytes():
                    self._entries.move_to_end(slot)
                    found = entry
                    break
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
            self.tokens_saved += found.length - 1
        return found

    def insert(self, ids: np.ndarray, state: LSTMState, logprobs: np.ndarray) -> None:
        """Keep read-only copies of a prefix's state and log-probs; evict the least recent."""
        k = len(ids)
        if not self.capacity_bytes or k < 2:
            return
        key = np.asarray(ids, np.int32).tobytes()
        slot = (k, int(self._prefix_hashes(ids, k)[-1]))
        old = self._entries.get(slot)
        if old is not None:
            if old.key == key:
                self._entries.move_to_end(slot)
                return
            self._remove(slot)  # a hash collision: the newer text wins the slot
        nbytes = state.nbytes + logprobs.nbytes + len(key) + ENTRY_OVERHEAD
        if nbytes > self.capacity_bytes:
            return
        while self.nbytes + nbytes > self.capacity_bytes:
            self._remove(next(iter(self._entries)))
            self.evictions += 1
        st = LSTMState(frozen(state.h), frozen(state.c))
        self._entries[slot] = CacheEntry(key, st, frozen(logprobs.astype(np.float32)), nbytes)
        self.nbytes += nbytes
        if self._length_count[k] == 0:
            bisect.insort(self._lengths, k)
        self._length_count[k] += 1

    def _remove(self, slot: tuple[int, int]) -> None:
        """Drop one entry."""
        entry = self._entries.pop(slot)
        self.nbytes -= entry.nbytes
        k = entry.length
        self._length_count[k] -= 1
        if self._length_count[k] == 0:
            del self._length_count[k]
            self._lengths.pop(bisect.bisect_left(self._lengths, k))

    def entries(self) -> list[CacheEntry]:
        """The entries, least recently used first (read-only objects)."""
        return list(self._entries.values())

    def stats(self) -> dict[str, Any]:
        """Counters for /info."""
        return {
            "entries": len(self._entries),
            "bytes": self.nbytes,
            "capacity_bytes": self.capacity_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "tokens_saved": self.tokens_saved,
            "evictions": self.evictions,
        }

