"""Text data for training runs: documents from a fetched corpus, a local text file or folder, or a Hugging Face
dataset (streamed); tokenized once into uint16 shards with a fixed held-out split; and the same batches for both
arms of a pair at any world size.

Shards live under `<data dir>/tokens/<key>/{train,heldout}.bin + meta.json`. Two ways to cut sequences
(`data.sequences`): `packed` joins documents with EOS and cuts windows of seq_len tokens; `document_start` keeps the
first seq_len tokens of each document that has at least that many (the paper's Pythia data: position 0 is a
document's first token). A streamed source is read only as far as the run needs. One process stages a key while
the others wait on its lock (ranks of one run, runs of one sweep), so nothing is tokenized twice into one place.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path

import numpy as np
from filelock import FileLock

from trainers.corpora import CORPORA, TOKENIZER, DataError, corpus_names, corpus_path, tokenizer_path
from trainers.job_protocol import run_storage
from trainers.paths import data_dir
from trainers.spec import HFData, RunSpec, TextData

EOS = 0  # Pythia's <|endoftext|>, between documents in packed shards
SPLIT_BUCKETS = 10_000  # held-out share resolution: a document is held out when hash(id) % 10,000 < share × 10,000
Documents = Iterable[tuple[str, str]]  # (document id, text)
TEXT_SUFFIXES = (".txt", ".md")


# ------------------------------------------------------------------------------------------------ documents
def read_documents(corpus: str, root: Path | None = None) -> tuple[str, list[tuple[str, str]]]:
    """(key, [(doc id, text)]) for a fetched corpus name, a '+'-joined mix of them (ids prefixed by the corpus), or
    a local text file or folder."""
    names = corpus_names(corpus)
    if names:
        _missing(names, root)
        docs = []
        for name in names:
            path = corpus_path(name, root)
            for n, line in enumerate(path.read_text().splitlines(), 1):
                try:
                    d = json.loads(line)
                    docs.append((f"{name}/{d['id']}" if len(names) > 1 else str(d["id"]), str(d["text"])))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise DataError(
                        f"{path}:{n}: not a {{'id', 'text'}} JSON line; delete the file and fetch again"
                    ) from None
        return corpus, docs
    path = Path(corpus).expanduser()
    files = corpus_files(path)
    if path.is_dir():
        docs = [(str(p.relative_to(path)), _read_text(p)) for p in files]
    else:  # one file: its blank-line-separated paragraphs are the documents
        docs = [
            (f"{path.name}#{i}", para) for i, para in enumerate(re.split(r"\n\s*\n", _read_text(path))) if para.strip()
        ]
    key = "local-" + hashlib.sha256("".join(i + t for i, t in docs).encode()).hexdigest()[:12]
    return key, docs


def corpus_files(path: Path) -> list[Path]:
    """The text files a local corpus (a file or a folder) is read from, or a DataError naming why not: a file must
    be text (never a store, a key or a state file that happens to lie nearby), and no file of a folder may lead out
    of it through a link (a folder of links to /etc/passwd is not a corpus)."""
    if path.is_dir():
        inside = path.resolve()
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (*TEXT_SUFFIXES, ""))
        for p in files:
            if not p.resolve().is_relative_to(inside):  # (a link to a file, or inside a linked folder)
                raise DataError(f"{p} links to {p.resolve()}, outside the corpus folder {path}: copy the file in")
        if not files:
            raise DataError(f"{path} holds no .txt or .md files")
        return files
    if path.is_file():
        if path.suffix not in TEXT_SUFFIXES or path.resolve().suffix not in TEXT_SUFFIXES:
            raise DataError(f"{path} is not a text file ({', '.join(TEXT_SUFFIXES)})")
        return [path]
    raise DataError(f"no corpus named {str(path)!r} (known: {', '.join(CORPORA)}) and no such file or folder")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start})") from None


def hf_documents(source: HFData) -> tuple[str, Iterator[tuple[str, str]]]:
    """(key, documents) of a Hugging Face dataset, read lazily: a save_to_disk directory (memory-mapped), or a hub
    id streamed where the hub is reachable. Document ids are positions in the split."""
    import datasets

    path = Path(source.dataset).expanduser()
    if (path / "state.json").exists() or (path / "dataset_dict.json").exists():  # written by save_to_disk
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if source.split not in ds:
                raise DataError(f"{source.dataset} has no split {source.split!r}; it has {', '.join(ds)}")
            ds = ds[source.split]
        fingerprint = ds._fingerprint
    else:
        try:
            ds = datasets.load_dataset(source.dataset, split=source.split, streaming=True)
        except Exception as e:  # noqa: BLE001 - the hub or the name: either way the run cannot start
            raise DataError(f"cannot open the Hugging Face dataset {source.dataset!r}: {e}") from None
        fingerprint = "stream"
    columns = ds.column_names
    if columns is not None and source.text_field not in columns:
        raise DataError(f"{source.dataset} has no field {source.text_field!r}; fields: {', '.join(columns)}")
    key = "hf-" + _digest(f"{source.dataset}|{source.split}|{source.text_field}|{fingerprint}")

    def rows() -> Iterator[tuple[str, str]]:
        for i, row in enumerate(ds):
            if source.text_field not in row:
                raise DataError(f"{source.dataset} has no field {source.text_field!r}; fields: {', '.join(row)}")
            if row[source.text_field]:
                yield str(i), row[source.text_field]

    return key, rows()


def check_source(spec: RunSpec) -> None:
    """Cheap checks that a run's data and checkpoint exist where they must be local (DataError names what is not)."""
    if spec.data.kind == "text":
        names = corpus_names(spec.data.corpus)
        if names:
            _missing(names)
        elif not Path(spec.data.corpus).expanduser().exists():
            raise DataError(
                f"no corpus named {spec.data.corpus!r} (known: {', '.join(CORPORA)}) and no such file or folder"
            )
    if spec.data.kind in ("text", "hf") and not tokenizer_path().exists():  # both tokenize with it, on the workers
        raise DataError("the Pythia tokenizer is not fetched yet: run `myopia data fetch`")
    if (
        spec.data.kind == "hf"
        and spec.data.dataset.startswith(("/", "~", "."))
        and not Path(spec.data.dataset).expanduser().exists()
    ):
        raise DataError(f"no Hugging Face dataset directory {spec.data.dataset}")
    checkpoint = spec.protocol.checkpoint
    if checkpoint and checkpoint.startswith(("/", "~", ".")) and not Path(checkpoint).expanduser().is_dir():
        raise DataError(f"no checkpoint directory {checkpoint}")
    if spec.attention.past_from:  # the local arm's vanilla partner: trained, its checkpoint where this run reads it
        from trainers.local import latest_checkpoint

        try:
            latest_checkpoint(run_storage(spec.storage_path), spec.attention.past_from)
        except FileNotFoundError as e:
            raise DataError(str(e)) from None


def _missing(names: list[str], root: Path | None = None) -> None:
    missing = [n for n in names if not corpus_path(n, root).exists()]
    if missing:
        raise DataError(f"corpus {', '.join(missing)} is not fetched yet: run `myopia data fetch {' '.join(missing)}`")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def is_held_out(doc_id: str, share: float = 0.02) -> bool:
    return int(hashlib.sha1(doc_id.encode()).hexdigest(), 16) % SPLIT_BUCKETS < round(share * SPLIT_BUCKETS)


# ---------------------------------------------------------------------------------------------------- staging
def stage(
    key: str,
    docs: Documents,
    *,
    sequences: str = "packed",
    seq_len: int = 64,
    held_out: float = 0.02,
    need: tuple[int, int] | None = None,
    root: Path | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Tokenize documents into `tokens/<key>/`, once. `need` = (train, held-out) sequences: stop reading once both
    are there (a streamed source is never read whole). Shards are written as they fill: memory stays bounded."""
    from tokenizers import Tokenizer

    root = root or data_dir()
    out = root / "tokens" / key
    if (out / "meta.json").exists():
        return out
    tok_file = tokenizer_path(root)
    if not tok_file.exists():
        raise DataError("the Pythia tokenizer is not fetched yet: run `myopia data fetch`")
    tokenizer = Tokenizer.from_file(str(tok_file))
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    counts = {"train": 0, "heldout": 0}  # tokens written
    files = {split: (tmp / f"{split}.bin").open("wb") for split in counts}
    n_docs = 0
    try:
        it = iter(docs)
        while batch := list(islice(it, 1024)):
            n_docs += len(batch)
            for (doc_id, _), enc in zip(batch, tokenizer.encode_batch([t for _, t in batch]), strict=True):
                if sequences == "document_start":
                    if len(enc.ids) < seq_len:
                        continue
                    ids = enc.ids[:seq_len]
                else:
                    ids = [*enc.ids, EOS]
                split = "heldout" if is_held_out(doc_id, held_out) else "train"
                np.asarray(ids, dtype=np.uint16).tofile(files[split])
                counts[split] += len(ids)
            if need and counts["train"] >= need[0] * seq_len and counts["heldout"] >= need[1] * seq_len:
                break
    finally:
        for f in files.values():
            f.close()
    meta = {
        "key": key,
        "documents": n_docs,
        "sequences": sequences,
        "seq_len": seq_len,
        "held_out": held_out,
        "tokenizer_sha256": TOKENIZER.sha256,
        "dtype": "uint16",
        **{f"{split}_tokens": n for split, n in counts.items()},
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    os.replace(tmp, out)
    log(f"{key}: {counts['train']:,} train and {counts['heldout']:,} held-out tokens → {out}")
    return out


def shard_key(base: str, source: TextData | HFData, seq_len: int, need: tuple[int, int] | None) -> str:
    """What the tokens depend on: the documents, the cut, the split, and (for a streamed source) how far it was read."""
    parts = [source.sequences, f"h{source.held_out:g}"]
    if source.sequences == "document_start":
        parts.append(f"T{seq_len}")
    if need is not None:
        parts.append(f"n{need[0]}+{need[1]}")
    return f"{base}-{_digest('|'.join(parts))}"


def text_dataset(
    source: TextData | HFData, seq_len: int, need: tuple[int, int] | None = None, root: Path | None = None
) -> TokenShards:
    """Shards for a run's text source, staged on first use by whichever process takes the lock first.
    `need` (train, held-out sequences) bounds how far a streamed Hugging Face dataset is read."""
    root = root or data_dir()
    (root / "tokens").mkdir(parents=True, exist_ok=True)
    if source.kind == "text":
        base, docs = read_documents(source.corpus, root)
        need = None  # a local corpus is small: tokenize it whole, once, for every run
    else:
        base, docs = hf_documents(source)
    key = shard_key(base, source, seq_len, need)
    path = root / "tokens" / key
    with FileLock(str(path) + ".lock"):
        if not (path / "meta.json").exists():
            stage(
                key,
                docs,
                sequences=source.sequences,
                seq_len=seq_len,
                held_out=source.held_out,
                need=need,
                root=root,
                log=lambda _: None,
            )
    return TokenShards(path, seq_len)


# ------------------------------------------------------------------------------------------------- sampling
class TokenShards:
    """Token shards of one corpus, cut into sequences of `seq_len` tokens (memory-mapped)."""

    def __init__(self, path: Path, seq_len: int) -> None:
        meta_file = path / "meta.json"
        if not meta_file.exists():
            raise DataError(f"{path} has no prepared tokens: run `myopia data prepare`")
        self.meta = json.loads(meta_file.read_text())
        self.seq_len = seq_len
        if self.meta.get("sequences") == "document_start" and self.meta.get("seq_len") != seq_len:
            raise DataError(f"{path} holds document starts of {self.meta['seq_len']} tokens, not {seq_len}")
        self.splits = {}
        for split in ("train", "heldout"):
            tokens = np.memmap(path / f"{split}.bin", dtype=np.uint16, mode="r")
            if tokens.size != self.meta[f"{split}_tokens"]:
                raise DataError(f"{path / (split + '.bin')} is truncated: prepare it again")
            self.splits[split] = tokens
        if self.n_sequences("train") < 1:
            raise DataError(f"{path}: fewer than {seq_len} training tokens")

        self.lookup: np.ndarray | None = None

    def restrict_vocab(self, size: int) -> None:
        """Keep the size − 1 most frequent training tokens (renumbered by frequency, ties by id) and map every other
        token to the last id, size − 1: a small softmax for CPU-sized models. Counted on the training split only."""
        counts = np.bincount(self.splits["train"], minlength=65536)
        keep = np.argsort(-counts, kind="stable")[: size - 1]
        self.lookup = np.full(65536, size - 1, dtype=np.int64)
        self.lookup[keep] = np.arange(size - 1)
        self.meta["vocab_coverage"] = float(counts[keep].sum() / max(1, counts.sum()))

    def n_sequences(self, split: str) -> int:
        return self.splits[split].size // self.seq_len

    def sequences(self, split: str, indices: np.ndarray) -> np.ndarray:
        starts = np.asarray(indices, dtype=np.int64)[:, None] * self.seq_len
        ids = np.asarray(self.splits[split][starts + np.arange(self.seq_len)], dtype=np.int64)
        return ids if self.lookup is None else self.lookup[ids]


def global_batch_indices(step: int, global_batch: int, n: int, seed: int) -> np.ndarray:
    """Sequence indices of optimizer step `step`: a seeded permutation per epoch, so the order depends only on the
    seed, never on the world size or the attention mode."""
    pos = np.arange(step * global_batch, (step + 1) * global_batch)
    epochs, offsets = np.divmod(pos, n)
    out = np.empty(global_batch, dtype=np.int64)
    for epoch in np.unique(epochs):
        perm = np.random.default_rng([seed, int(epoch)]).permutation(n)
        out[epochs == epoch] = perm[offsets[epochs == epoch]]
    return out


def shard(batch: np.ndarray, rank: int, world: int, micro_batch: int) -> list[np.ndarray]:
    """This rank's micro-batches of a global batch: rank r takes the r-th of `world` equal slices."""
    per_rank = len(batch) // world
    mine = batch[rank * per_rank : (rank + 1) * per_rank]
    return [mine[i : i + micro_batch] for i in range(0, per_rank, micro_batch)]
