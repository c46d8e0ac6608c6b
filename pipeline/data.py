"""Pretraining data at training time: memory-mapped shards, batch-time masking, data order.

The training job never tokenizes: it maps the Arrow shards written by ``kowiki-bert shard``
and derives ``[CLS] A [SEP] B [SEP]``, token types and the attention mask per example. Masking
draws from an RNG keyed by (seed, epoch, example index) alone, and the data order is a pure
function of (seed, epoch), so a resumed or re-sharded run sees exactly the same batches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from pipeline.errors import PipelineError
from pipeline.shards import read_manifest
from pipeline.tokenizer import tokenizer_hash


def _read_manifest(path: Path) -> dict:
    manifest = read_manifest(path, "pretraining data", "run 'kowiki-bert shard' (again) to finish it")
    if manifest.get("kind") != "pretraining":
        raise PipelineError(f"{path} is not made by 'kowiki-bert shard'; pass the shard stage's --output")
    return manifest


class PretrainingDataset(torch.utils.data.Dataset):
    """MLM+NSP examples of one split, zero-copy over memory-mapped Arrow files."""

    def __init__(self, files: list[Path], cls_id: int, sep_id: int):
        self.cls_id, self.sep_id = cls_id, sep_id
        self._values, self._offsets, self._a_len, self._label = [], [], [], []
        for file in files:
            table = pa.ipc.open_stream(pa.memory_map(str(file))).read_all().combine_chunks()
            ids = table.column("ids").chunk(0) if table.num_rows else pa.array([], pa.list_(pa.uint16()))
            self._values.append(ids.values.to_numpy(zero_copy_only=True) if len(ids) else np.zeros(0, np.uint16))
            self._offsets.append(ids.offsets.to_numpy() if len(ids) else np.zeros(1, np.int32))
            self._a_len.append(table.column("a_len").to_numpy() if table.num_rows else np.zeros(0, np.uint16))
            self._label.append(table.column("label").to_numpy() if table.num_rows else np.zeros(0, np.uint8))
        self._starts = np.cumsum([0] + [len(a) for a in self._a_len])
        self._counts: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        f = int(np.searchsorted(self._starts, index, side="right")) - 1
        return f, index - int(self._starts[f])

    def token_counts(self, vocab_size: int, limit: int) -> np.ndarray:
        """How often each id occurs in the examples' text, from about ``limit`` tokens taken
        evenly across the files (a unigram for the context-free baseline and the output bias,
        in seconds; counted once per dataset)."""
        key = (vocab_size, limit)
        if key not in self._counts:
            self._counts[key] = self._count(vocab_size, limit)
        return self._counts[key].copy()

    def _count(self, vocab_size: int, limit: int) -> np.ndarray:
        counts = np.zeros(vocab_size, dtype=np.int64)
        per_file = max(1, limit // max(1, len(self._values)))
        for values in self._values:
            step = max(1, len(values) // per_file)
            counts += np.bincount(values[::step], minlength=vocab_size)[:vocab_size]
        return counts

    def num_tokens(self, index: int) -> int:
        f, i = self._locate(index)
        return int(self._offsets[f][i + 1] - self._offsets[f][i]) + 3

    def __getitem__(self, index: int) -> dict:
        f, i = self._locate(int(index))
        body = self._values[f][self._offsets[f][i]:self._offsets[f][i + 1]].astype(np.int64)
        a = int(self._a_len[f][i])
        n = len(body) + 3
        input_ids = np.empty(n, dtype=np.int64)
        input_ids[0], input_ids[a + 1], input_ids[n - 1] = self.cls_id, self.sep_id, self.sep_id
        input_ids[1:a + 1] = body[:a]
        input_ids[a + 2:n - 1] = body[a:]
        token_type_ids = np.zeros(n, dtype=np.int64)
        token_type_ids[a + 2:] = 1
        return {"input_ids": input_ids, "token_type_ids": token_type_ids,
                "attention_mask": np.ones(n, dtype=np.int64),
                "next_sentence_label": int(self._label[f][i]), "index": int(index)}


def load_tokenizer(path: str | Path):
    """A directory's tokenizer, with the exact normalizer of its ``tokenizer.json``.

    transformers 5's ``BertTokenizer`` rebuilds the pipeline from its settings and drops the
    NFC step; restoring it keeps every stage's ids those the shards were made with.
    """
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer.json").exists() and not (path / "vocab.txt").exists():
        raise PipelineError(f"{path}: no tokenizer files (tokenizer.json or vocab.txt); pass a directory with a tokenizer")
    tok = AutoTokenizer.from_pretrained(str(path))
    if (path / "tokenizer.json").exists() and getattr(tok, "is_fast", False):
        tok.backend_tokenizer.normalizer = Tokenizer.from_file(str(path / "tokenizer.json")).normalizer
    return tok


def load_pretraining_dataset(path: str | Path, split: str = "train", tokenizer=None) -> PretrainingDataset:
    """The ``split`` ("train" or "valid") of a shard-stage output as an indexable dataset.

    ``tokenizer`` (a directory) is checked against the one the shards were made with.
    """
    path = Path(path)
    manifest = _read_manifest(path)
    if tokenizer is not None and tokenizer_hash(tokenizer) != manifest["tokenizer_hash"]:
        raise PipelineError(f"{path} was tokenized with another tokenizer (hash {manifest['tokenizer_hash']}, "
                            f"{tokenizer} has {tokenizer_hash(tokenizer)}); re-run 'kowiki-bert shard' with it")
    tok = load_tokenizer(path / "tokenizer")
    files = [path / rec["files"][split]["file"] for rec in manifest["shards"]]
    return PretrainingDataset(files, tok.cls_token_id, tok.sep_token_id)


def pretraining_manifest(path: str | Path) -> dict:
    return _read_manifest(Path(path))


class MLMNSPCollator:
    """Pad a batch and mask it for MLM, reproducibly.

    Masks ``mlm_probability`` of the real tokens of each example (never ``[CLS]``, ``[SEP]``,
    ``[PAD]``): by default (``shares``) 80% become ``[MASK]``, 10% a random token, 10% stay. The draw for an example
    depends only on (seed, epoch, example index); set ``epoch`` before each epoch.
    ``whole_word`` masks all pieces of a word together. Besides ``labels`` (B, S) it gives
    ``mlm_positions``/``mlm_labels`` (B, max_predictions): static shapes for the MLM head.
    """

    def __init__(self, tokenizer, mlm_probability: float = 0.15, seed: int = 0, whole_word: bool = False,
                 pad_to_multiple_of: int | None = 8, epoch: int = 0, max_seq_len: int = 512,
                 buckets: tuple[int, ...] | None = None, padding_free: bool = False,
                 shares: tuple[float, float] = (0.8, 0.1)):
        self.padding_free, self.max_seq_len = padding_free, max_seq_len
        self.mask_share, self.random_share = shares
        self.mlm_probability, self.seed, self.whole_word, self.epoch = mlm_probability, seed, whole_word, epoch
        self.pad_to_multiple_of = pad_to_multiple_of
        self.buckets = tuple(sorted(buckets)) if buckets else None
        # A fixed number of prediction slots per sequence (BERT's max_predictions_per_seq), so
        # the MLM head's shape never changes; unused slots are padding with label -100.
        self.max_predictions = -(-max(1, round(max_seq_len * mlm_probability)) // 8) * 8
        self.pad_id, self.mask_id = tokenizer.pad_token_id, tokenizer.mask_token_id
        vocab = tokenizer.get_vocab()
        self.vocab_size = len(tokenizer)
        special = set(tokenizer.all_special_ids)
        self.special = np.array(sorted(special), dtype=np.int64)
        self.random_ids = np.array([i for i in range(self.vocab_size) if i not in special], dtype=np.int64)
        self.continuation = np.zeros(self.vocab_size, dtype=bool)
        for piece, idx in vocab.items():
            if piece.startswith("##") and idx < self.vocab_size:
                self.continuation[idx] = True

    def _units(self, ids: np.ndarray) -> list[np.ndarray]:
        """Maskable units: single positions, or whole words when ``whole_word``."""
        candidates = np.flatnonzero(~np.isin(ids, self.special))
        if not self.whole_word:
            return [candidates[i:i + 1] for i in range(len(candidates))]
        starts = ~self.continuation[ids[candidates]]
        starts[0] = True
        return np.split(candidates, np.flatnonzero(starts)[1:])

    def mask_example(self, ids: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(masked ids, labels) for one example; labels are -100 where nothing is predicted."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        units = self._units(ids)
        n_real = sum(len(u) for u in units)
        budget = max(1, int(round(n_real * self.mlm_probability))) if n_real else 0
        chosen: list[int] = []
        for u in rng.permutation(len(units)):
            if len(chosen) >= budget:
                break
            if len(chosen) + len(units[u]) <= budget:
                chosen.extend(units[u].tolist())
        pos = np.array(sorted(chosen), dtype=np.int64)
        labels = np.full(len(ids), -100, dtype=np.int64)
        labels[pos] = ids[pos]
        out = ids.copy()
        roll = rng.random(len(pos))
        out[pos[roll < self.mask_share]] = self.mask_id
        rand_pos = pos[(roll >= self.mask_share) & (roll < self.mask_share + self.random_share)]
        out[rand_pos] = self.random_ids[rng.integers(0, len(self.random_ids), len(rand_pos))]
        return out, labels

    def padded_length(self, longest: int) -> int:
        """The batch's length: the smallest bucket that fits (a few static shapes for compiled
        steps), or the longest example rounded up to ``pad_to_multiple_of``."""
        if self.buckets:
            return next((b for b in self.buckets if b >= longest), self.buckets[-1])
        if self.pad_to_multiple_of:
            return -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        return longest

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        longest = self.padded_length(max(len(e["input_ids"]) for e in examples))
        b, p = len(examples), self.max_predictions
        batch = {k: np.full((b, longest), fill, dtype=np.int64)
                 for k, fill in (("input_ids", self.pad_id), ("token_type_ids", 0), ("attention_mask", 0), ("labels", -100))}
        batch["mlm_positions"] = np.zeros((b, p), dtype=np.int64)
        batch["mlm_labels"] = np.full((b, p), -100, dtype=np.int64)
        for row, ex in enumerate(examples):
            n = len(ex["input_ids"])
            ids, labels = self.mask_example(np.asarray(ex["input_ids"]), ex["index"])
            batch["input_ids"][row, :n] = ids
            batch["labels"][row, :n] = labels
            batch["token_type_ids"][row, :n] = ex["token_type_ids"]
            batch["attention_mask"][row, :n] = 1
            pos = np.flatnonzero(labels != -100)[:p]
            batch["mlm_positions"][row, :len(pos)] = pos
            batch["mlm_labels"][row, :len(pos)] = labels[pos]
        if self.padding_free:
            batch = packed(batch)
        out = {k: torch.from_numpy(v) for k, v in batch.items()}
        out["next_sentence_label"] = torch.tensor([e["next_sentence_label"] for e in examples], dtype=torch.long)
        return out

    def shape_examples(self, rows: int) -> list[list[dict]]:
        """One batch of placeholder examples per padded length training can see, for
        compiling every graph before step 1."""
        lengths = self.buckets or (self.max_seq_len,)
        return [[{"input_ids": np.full(n, self.random_ids[0]), "token_type_ids": np.zeros(n, np.int64),
                  "next_sentence_label": 0, "index": i} for i in range(rows)] for n in lengths]


def packed(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A padded batch as one stream of its real tokens (``pipeline.unpadded``), built on the
    host so that the device never computes a data-dependent shape."""
    mask = batch["attention_mask"].astype(bool)
    rows, length = mask.shape
    token_index = np.flatnonzero(mask.ravel())
    cu = np.zeros(rows + 1, dtype=np.int32)
    cu[1:] = np.cumsum(mask.sum(1))
    slots = batch["mlm_positions"] + cu[:-1, None]
    real = batch["mlm_labels"] != -100
    return {"input_ids": batch["input_ids"].ravel()[token_index],
            "token_type_ids": batch["token_type_ids"].ravel()[token_index],
            "position_ids": np.tile(np.arange(length), rows)[token_index], "cu_seqlens": cu, "token_index": token_index,
            "attention_mask": batch["attention_mask"], "labels": batch["labels"],
            "mlm_positions": np.where(real, slots, 0).ravel(), "mlm_labels": batch["mlm_labels"].ravel()}


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of an epoch: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_examples)


def micro_batch_indices(order: np.ndarray, step_in_epoch: int, global_batch: int, micro_batch: int,
                        accumulation: int, rank: int, world: int) -> list[np.ndarray]:
    """The example indices this rank feeds in each accumulation micro-step of a step.

    Step ``s`` of an epoch consumes ``order[s*global_batch:(s+1)*global_batch]`` whatever the
    number of processes, so a run resumed on another world size continues at the same place
    and sees each example once per epoch.
    """
    base = step_in_epoch * global_batch
    return [order[base + (a * world + rank) * micro_batch: base + (a * world + rank + 1) * micro_batch]
            for a in range(accumulation)]


class StepBatches(torch.utils.data.Dataset):
    """This rank's k-th micro-batch, a pure function of k: resuming needs no replay."""

    def __init__(self, ds, collator: MLMNSPCollator, seed: int, global_batch: int, micro: int, accum: int,
                 rank: int, world: int):
        self.ds, self.collator, self.seed = ds, collator, seed
        self.global_batch, self.micro, self.accum, self.rank, self.world = global_batch, micro, accum, rank, world
        self.steps_per_epoch = len(ds) // global_batch
        self._epoch, self._order = -1, None

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, k: int) -> dict:
        step, a = divmod(k, self.accum)
        epoch, s = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, epoch_order(len(self.ds), self.seed, epoch)
        idx = micro_batch_indices(self._order, s, self.global_batch, self.micro, self.accum, self.rank, self.world)[a]
        self.collator.epoch = epoch
        return self.collator([self.ds[int(i)] for i in idx])
