"""Baseline for benchmarks/shard.py: the seeds' approach, ported straight.

It follows transformers' ``TextDatasetForNextSentencePrediction``: read the file line by line,
tokenize each line with the (Rust) tokenizer, keep every document in memory, build NSP pairs in
Python, store every example as a dict of tensors and pickle the whole list to a cache file.

    python benchmarks/seeds_nsp_builder.py TOKENIZER_DIR CORPUS.txt OUT.pkl [MAX_SEQ_LEN]
"""

import pickle
import random
import sys

import torch
from transformers import AutoTokenizer


def build(tokenizer, path, block_size, short_seq_prob=0.1, nsp_prob=0.5):
    documents = [[]]
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line and documents[-1]:
                documents.append([])
            tokens = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(line))
            if tokens:
                documents[-1].append(tokens)
    examples = []
    max_tokens = block_size - 3  # [CLS] A [SEP] B [SEP]
    for doc_index, document in enumerate(documents):
        target = max_tokens if random.random() >= short_seq_prob else random.randint(2, max_tokens)
        chunk, length, i = [], 0, 0
        while i < len(document):
            chunk.append(document[i])
            length += len(document[i])
            if i == len(document) - 1 or length >= target:
                if chunk:
                    a_end = random.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
                    a = [t for seg in chunk[:a_end] for t in seg]
                    if len(chunk) == 1 or random.random() < nsp_prob:
                        is_random = True
                        for _ in range(10):
                            other = random.randint(0, len(documents) - 1)
                            if other != doc_index:
                                break
                        rdoc = documents[other] or [[tokenizer.unk_token_id]]
                        b = []
                        for seg in rdoc[random.randint(0, len(rdoc) - 1):]:
                            b.extend(seg)
                            if len(b) >= target - len(a):
                                break
                        i -= len(chunk) - a_end
                    else:
                        is_random = False
                        b = [t for seg in chunk[a_end:] for t in seg]
                    while len(a) + len(b) > max_tokens:
                        longer = a if len(a) > len(b) else b
                        if random.random() < 0.5:
                            del longer[0]
                        else:
                            longer.pop()
                    if a and b:
                        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
                        examples.append({
                            "input_ids": torch.tensor([cls] + a + [sep] + b + [sep], dtype=torch.long),
                            "token_type_ids": torch.tensor([0] * (len(a) + 2) + [1] * (len(b) + 1), dtype=torch.long),
                            "next_sentence_label": torch.tensor(1 if is_random else 0, dtype=torch.long)})
                chunk, length = [], 0
            i += 1
    return examples


if __name__ == "__main__":
    tok_dir, corpus, out = sys.argv[1:4]
    block = int(sys.argv[4]) if len(sys.argv) > 4 else 128
    examples = build(AutoTokenizer.from_pretrained(tok_dir), corpus, block)
    with open(out, "wb") as fh:
        pickle.dump(examples, fh, protocol=pickle.HIGHEST_PROTOCOL)
    print(len(examples), sum(len(e["input_ids"]) for e in examples))
