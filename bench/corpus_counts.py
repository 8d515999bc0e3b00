"""What the registry corpora hold once tokenized: documents and Pythia tokens (train / held-out) per corpus at the
default split, and the mix the CPU text presets train on, packed (cpu-ladder: windows of 128, 5% held out, its
4,096-token vocabulary's coverage) and as document starts (context-cpu: 64 tokens, 5% held out). Stages what is
not staged yet, as `myopia data prepare` does (in MYOPIA_DATA_DIR; `myopia data fetch` first).

    python bench/corpus_counts.py --json docs/figures/corpora.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from trainers.corpora import CORPORA
from trainers.data import text_dataset
from trainers.spec import TextData

MIX = "wiki+sotu+brown+austen+moby-dick"


def counts(source: TextData, seq_len: int, vocab: int | None = None) -> dict:
    shards = text_dataset(source, seq_len)
    row = {k: shards.meta[k] for k in ("documents", "train_tokens", "heldout_tokens")}
    row |= {"corpus": source.corpus, "sequences": source.sequences, "seq_len": seq_len, "held_out": source.held_out}
    row |= {"train_sequences": shards.n_sequences("train"), "heldout_sequences": shards.n_sequences("heldout")}
    if vocab:
        shards.restrict_vocab(vocab)
        row |= {"vocab_size": vocab, "vocab_coverage": shards.meta["vocab_coverage"]}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    rows = [counts(TextData(corpus=name), 64) for name in CORPORA]
    rows.append(counts(TextData(corpus=MIX, held_out=0.05), 128, vocab=4096))  # cpu-ladder
    rows.append(counts(TextData(corpus=MIX, held_out=0.05, sequences="document_start"), 64))  # context-cpu
    print("| corpus | sequences | held out | documents | tokens (train / held-out) | sequences (train / held-out) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['corpus']} | {r['sequences']} {r['seq_len']} | {r['held_out']:g} | {r['documents']:,} | "
            f"{r['train_tokens']:,} / {r['heldout_tokens']:,} | {r['train_sequences']:,} / {r['heldout_sequences']:,} |"
        )
    if args.json:
        doc = {"command": " ".join(["python bench/corpus_counts.py", *sys.argv[1:]]), "rows": rows}
        Path(args.json).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
