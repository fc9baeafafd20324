# SPDX-License-Identifier: Apache-2.0
"""The offline corpora: text present on every machine that ran the CPU setup, nothing downloaded.

* `stdlib`: the Python standard library's own sources (the embedded model's corpus);
* `proxy`: the standard library plus the sources and package descriptions (METADATA) of
  PROXY_PACKAGES, documentation-rich packages whose versions `requirements/cpu-lock.txt` pins, so
  every machine set up from the lock reads the same text (the Qwen3-shaped proxy's corpus).

Documents are split by a hash of their name (the path relative to the stdlib root, or
`site-packages/...`, or `metadata/<dist>`), so the split is the same wherever the text is the
same: the HELD_OUT_EVERY-th bucket is held out of training (tokenizer and model) and is what the
fidelity harness reads. `write_archive` packs a corpus into one xz file, for a machine (the GPU
host) that lacks the environment; `documents(..., archive=F)` reads it back.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import lzma
import sysconfig
from pathlib import Path

HELD_OUT_EVERY = 20  # 5% of files
_SKIP_DIRS = {"site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__", "turtledemo"}
MAX_FILE_BYTES = 200_000
SOURCES = ("stdlib", "proxy")
# import name -> distribution; all pinned by requirements/cpu-lock.txt (installers such as pip and
# setuptools are not: their versions follow the machine). Chosen for prose-rich docstrings (numpy,
# sympy, networkx, matplotlib) beside plain code; about 55 MB of text with the standard library.
PROXY_PACKAGES = {
    "numpy": "numpy", "sympy": "sympy", "networkx": "networkx", "mpmath": "mpmath",
    "matplotlib": "matplotlib", "pygments": "Pygments", "pydantic": "pydantic",
    "_pytest": "pytest", "rich": "rich", "huggingface_hub": "huggingface_hub",
    "jinja2": "Jinja2", "requests": "requests", "click": "click",
}  # fmt: skip


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _bucket(rel: str) -> int:
    return int(hashlib.sha256(rel.encode()).hexdigest()[:8], 16) % HELD_OUT_EVERY


def _in_split(name: str, split: str) -> bool:
    return (_bucket(name) == 0) == (split == "heldout")


def _sources(root: Path, base: Path):
    """(name relative to base, path) of the .py files under root, sorted, minus skipped
    directories and files over MAX_FILE_BYTES."""
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(base).as_posix()
        if not (set(rel.split("/")[:-1]) & _SKIP_DIRS or path.stat().st_size > MAX_FILE_BYTES):
            yield rel, path


def files(split: str, root: Path | None = None) -> list[Path]:
    """Sorted stdlib .py files of a split: 'train' or 'heldout'."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split {split!r}: use 'train' or 'heldout'")
    root = root or stdlib_root()
    return [path for rel, path in _sources(root, root) if _in_split(rel, split)]


def _check(split: str, source: str) -> None:
    if split not in ("train", "heldout"):
        raise ValueError(f"split {split!r}: use 'train' or 'heldout'")
    if source not in SOURCES:
        raise ValueError(f"corpus {source!r}: use one of {', '.join(SOURCES)}")


def _package_documents() -> list[tuple[str, Path | str]]:
    """(name, path or text) of PROXY_PACKAGES' sources and descriptions in this environment."""
    docs: list[tuple[str, Path | str]] = []
    for module, dist in sorted(PROXY_PACKAGES.items()):
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"corpus 'proxy' needs the package {dist} (requirements/"
                               "cpu-lock.txt pins it; run scripts/setup_cpu_env.sh)")  # fmt: skip
        root = Path(next(iter(spec.submodule_search_locations)))
        docs += [(f"site-packages/{rel}", path) for rel, path in _sources(root, root.parent)]
        meta = importlib.metadata.distribution(dist).read_text("METADATA") or ""
        if meta:
            docs.append((f"metadata/{dist}", meta))
    return docs


def documents(split: str, source: str = "stdlib", archive: Path | str | None = None
              ) -> list[tuple[str, str]]:  # fmt: skip
    """(name, text) of every document of a split, sorted by name; from `archive` (as
    write_archive wrote it) when given, else from this machine's files."""
    _check(split, source)
    if archive is not None:
        with lzma.open(archive, "rt", encoding="utf-8") as f:
            header = json.loads(f.readline())
            if header.get("source") != source:
                raise ValueError(
                    f"{archive}: holds corpus {header.get('source')!r}, not {source!r}"
                )
            rows = [json.loads(line) for line in f]
        return [(n, t) for n, t in rows if _in_split(n, split)]
    root = stdlib_root()
    out = [(p.relative_to(root).as_posix(), p) for p in files(split, root)]
    if source == "proxy":
        out += [(n, d) for n, d in _package_documents() if _in_split(n, split)]
    return sorted((n, d if isinstance(d, str) else d.read_text(encoding="utf-8", errors="replace"))
                  for n, d in out)  # fmt: skip


def write_archive(path: Path | str, source: str) -> dict:
    """Pack both splits of a corpus into one xz file of JSON lines (a header, then [name, text]
    per document); `documents` splits it again by name as it splits files."""
    docs = sorted(documents("train", source) + documents("heldout", source))
    header = {"source": source, "documents": len(docs),
              "chars": sum(len(t) for _, t in docs), "fingerprint": fingerprint_documents(docs)}  # fmt: skip
    with lzma.open(path, "wt", encoding="utf-8", preset=9) as f:
        f.write(json.dumps(header) + "\n")
        for row in docs:
            f.write(json.dumps(row) + "\n")
    return header


def fingerprint_documents(docs: list[tuple[str, str]]) -> str:
    """sha256 over the names and texts: what exactly was read, wherever it was read."""
    h = hashlib.sha256()
    for name, text in docs:
        h.update(name.encode())
        h.update(text.encode("utf-8", errors="replace"))
    return h.hexdigest()[:16]


def of_model(model: Path | str) -> str:
    """The corpus a checkpoint trained on, as its training.json records it ('stdlib' for a model
    without one): its held-out split is the text that was kept out of that model."""
    record = Path(model) / "training.json"
    if not record.is_file():
        return "stdlib"
    name = json.loads(record.read_text()).get("corpus", {}).get("name", "stdlib")
    return name if name in SOURCES else "stdlib"
