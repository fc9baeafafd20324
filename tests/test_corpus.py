# SPDX-License-Identifier: Apache-2.0
"""The offline corpora: the split by name, the proxy corpus's extra documents, the archive that
carries a corpus to a machine without its packages, and which corpus a checkpoint reads."""

import json

import pytest

from lynx_ops.embedded import corpus


@pytest.fixture
def small_world(tmp_path, monkeypatch):
    """A standard library of 60 files and one 'package' (click, pinned by the lock) of sources."""
    lib = tmp_path / "lib"
    (lib / "pkg").mkdir(parents=True)
    (lib / "test").mkdir()
    for i in range(60):
        (lib / "pkg" / f"m{i}.py").write_text(f"def f{i}():\n    return {i}\n")
    (lib / "test" / "skipped.py").write_text("never read\n")
    monkeypatch.setattr(corpus, "stdlib_root", lambda: lib)
    monkeypatch.setattr(corpus, "PROXY_PACKAGES", {"click": "click"})
    return lib


def test_splits_partition_the_documents_by_name(small_world):
    for source in corpus.SOURCES:
        train = corpus.documents("train", source)
        held = corpus.documents("heldout", source)
        names = [n for n, _ in train + held]
        assert len(names) == len(set(names))  # no document in both splits
        assert all(corpus._bucket(n) == 0 for n, _ in held)
        assert all(corpus._bucket(n) != 0 for n, _ in train)
        assert not any(n.startswith("test/") for n in names)
    stdlib = {n for n, _ in corpus.documents("train", "stdlib")}
    proxy = {n for n, _ in corpus.documents("train", "proxy")}
    assert stdlib < proxy  # the proxy corpus is the standard library and more
    extra = proxy - stdlib
    assert "metadata/click" in extra or "metadata/click" in {
        n for n, _ in corpus.documents("heldout", "proxy")
    }
    assert any(n.startswith("site-packages/click/") for n in extra)
    # the stdlib split is the one the embedded model trained on: the same files as files()
    root = small_world
    assert sorted(p.relative_to(root).as_posix() for p in corpus.files("heldout")) == [
        n for n, _ in corpus.documents("heldout", "stdlib")
    ]


def test_archive_round_trips_both_splits(small_world, tmp_path):
    path = tmp_path / "c.jsonl.xz"
    header = corpus.write_archive(path, "proxy")
    for split in ("train", "heldout"):
        here = corpus.documents(split, "proxy")
        assert corpus.documents(split, "proxy", path) == here
    both = sorted(corpus.documents("train", "proxy") + corpus.documents("heldout", "proxy"))
    assert header["documents"] == len(both)
    assert header["fingerprint"] == corpus.fingerprint_documents(both)
    with pytest.raises(ValueError, match="holds corpus 'proxy', not 'stdlib'"):
        corpus.documents("train", "stdlib", path)


def test_bad_split_or_corpus_is_named():
    with pytest.raises(ValueError, match="split 'dev'"):
        corpus.documents("dev")
    with pytest.raises(ValueError, match="corpus 'web'"):
        corpus.documents("train", "web")


def test_missing_package_is_named(small_world, monkeypatch):
    monkeypatch.setattr(corpus, "PROXY_PACKAGES", {"no_such_pkg_xyz": "no-such-pkg"})
    with pytest.raises(RuntimeError, match="needs the package no-such-pkg"):
        corpus.documents("train", "proxy")


def test_a_checkpoint_reads_the_corpus_its_training_record_names(tmp_path):
    assert corpus.of_model(tmp_path) == "stdlib"  # no training.json: the embedded default
    (tmp_path / "training.json").write_text(json.dumps({"corpus": {"name": "proxy"}}))
    assert corpus.of_model(tmp_path) == "proxy"
    (tmp_path / "training.json").write_text(json.dumps({"corpus": {"root": "stdlib"}}))
    assert corpus.of_model(tmp_path) == "stdlib"  # records written before corpora had names
