"""manifest.json of a stage: what went in (hashes, config), what came out (hashes, metrics), where and how fast."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Optional

from compress.bundle_predict import sha256_file, usable_cores  # usable_cores: the cores this process may run on

try:
    import fcntl
except ImportError:  # not POSIX (Windows): nothing is locked
    fcntl = None

LIBRARIES = ("torch", "transformers", "accelerate", "datasets", "onnx", "onnxruntime", "optimum", "optimum-onnx",
             "torch-pruning", "numpy")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = None
    from compress import __version__

    out["compress"] = __version__
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


INT8_BF16_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16",
                      "asimddp", "i8mm", "bf16")
"""CPU flags that decide which int8 and bf16 kernels run (x86: VNNI dot products, AVX-512 BF16, AMX; Arm: SDOT,
I8MM, BF16): onnxruntime's int8 kernels on AVX2 without VNNI are slower and round differently."""


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo ``flags`` on x86, ``Features`` on Arm); empty elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_features() -> str:
    """The `INT8_BF16_FEATURES` this CPU has, joined by "+"."""
    present = cpu_flags()
    return "+".join(f for f in INT8_BF16_FEATURES if f in present) or "none of " + "/".join(INT8_BF16_FEATURES[:3])


def host() -> dict:
    import torch

    info = {"cpu": cpu_model(), "cores": usable_cores(), "torch_threads": torch.get_num_threads(),
            "cpu_features": cpu_features(), "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


TIMING_KEYS = ("cpu", "cores", "cpu_features", "onnxruntime", "torch")


def timing_machine(env: Optional[dict] = None) -> dict:
    """What a latency depends on besides the model and the settings: the CPU, its core count and int8/bf16 features,
    the onnxruntime and torch versions; of this machine, or of a manifest's ``env`` (its ``host`` and ``versions``:
    the keys it lacks are left out). Imports no torch (``compress run --dry-run`` calls it)."""
    if env is None:
        env = {"host": {"cpu": cpu_model(), "cores": usable_cores(), "cpu_features": cpu_features()},
               "versions": versions()}
    parts = [env.get(k) for k in ("versions", "host")] if isinstance(env, dict) else []
    found = {k: v for part in parts if isinstance(part, dict) for k, v in part.items()}  # a hand-edited env: no keys
    return {k: found[k] for k in TIMING_KEYS if k in found}


def other_machine(env: Optional[dict]) -> Optional[str]:
    """How the machine a manifest's ``env`` was timed on differs from this one (``cores: 16 -> 2``), on the keys both
    have; None when it does not (or the manifest says nothing of it)."""
    then, now = timing_machine(env), timing_machine()
    changed = [f"{k}: {then[k]} -> {now[k]}" for k in TIMING_KEYS if k in then and k in now and then[k] != now[k]]
    return "; ".join(changed) or None


def hidden_path(rel: str | Path) -> bool:
    """Has the relative path a part named ``.*`` (a model folder's .git/, a file browser's .DS_Store: nothing that
    loads a model or reads a stage's outputs uses them)?"""
    return any(part.startswith(".") for part in Path(rel).parts)


def outputs_intact(folder: Path, outputs: Any, added: tuple[str, ...] = ()) -> bool:
    """Whether ``folder`` holds exactly the files ``outputs`` (relative path -> sha256, as `hash_tree` gave them when
    written) lists, unedited. Hidden files the writer did not list (a file browser's .DS_Store) are not outputs, nor
    files under the names in ``added`` (what a user's tools add beside them: `compress.pipeline.Stage.added`)."""
    if not isinstance(outputs, dict) or not Path(folder).is_dir():
        return False
    return hash_tree(folder, keep=lambda rel: rel in outputs or not (
        hidden_path(rel) or any(part in added for part in Path(rel).parts))) == outputs


def published_manifest(folder: Path) -> dict:
    """A published stage folder's manifest.json ({} when there is none, or it is unreadable)."""
    try:
        manifest = read_json(Path(folder) / "manifest.json")
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def part_intact(folder: Path, manifest: dict, part: str) -> bool:
    """Whether ``folder/part`` holds exactly what ``manifest`` (the stage folder's) hashed under ``part/``."""
    outputs = manifest.get("outputs")
    return isinstance(outputs, dict) and outputs_intact(Path(folder) / part, {
        k[len(part) + 1:]: d for k, d in outputs.items() if k.startswith(f"{part}/")})


def hash_tree(folder: Path, keep: Optional[Callable[[str], bool]] = None) -> dict[str, str]:
    """relative path -> sha256 for every file under ``folder`` (its own manifest.json excluded; one in a subfolder,
    such as a bundle's, is an output like any other); with ``keep``, only the relative paths it keeps are read."""
    folder = Path(folder)
    rels = ((str(p.relative_to(folder)), p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p != folder / "manifest.json")
    return {rel: sha256_file(p) for rel, p in rels if keep is None or keep(rel)}


RUN_ONLY_KEYS = frozenset({"train_s", "tokens_per_s", "timing", "resumed_from", "source_folder",
                           "kept_from_previous_run", "dev_pruned", "dev_recovered"})
"""What a training stage's records (`RECORDS`) hold of how the run went, not of what it made: its speed and a
student's ``timing`` (whether the teacher's logits were cached or reused, augmentation seconds), a resume (a resumed
run makes the model an uninterrupted one makes), where its run folder was, whether the model was kept from the
previous run, and the dev scores of a pruning's intermediate models (a kept pruned model's records lack them)."""
RECORDS = ("metrics.json", "pruning.json")
"""The file names of the records a training stage writes beside its model (at any depth: ``<student>/metrics.json``)."""


def record_digests(folder: Path, outputs: dict[str, str]) -> dict[str, str]:
    """relative path -> sha256 of each record (`RECORDS`) among ``outputs`` without its `RUN_ONLY_KEYS`, where that
    differs from the file's: what the stages after it read as that file (`content_outputs`). A stage redone for the
    same model (``--force``, a resume) wrote another ``train_s`` and redid every stage after it, the report's timing
    pass and the bundle (other latencies to publish) included."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in RUN_ONLY_KEYS}
        return [strip(v) for v in value] if isinstance(value, list) else value

    out = {}
    for rel, digest in outputs.items():
        if Path(rel).name in RECORDS:
            try:
                content = fingerprint(strip(read_json(Path(folder) / rel)))
            except (OSError, ValueError):
                continue
            if content != digest:
                out[rel] = content
    return out


def content_outputs(manifest: dict) -> Optional[dict]:
    """A stage manifest's ``outputs`` as the stages after it read them: a record's sha256 without what only says how
    the run went (its ``records``, `record_digests`; a manifest without them: the files' own)."""
    outputs, records = manifest.get("outputs"), manifest.get("records")
    if not isinstance(outputs, dict) or not isinstance(records, dict):
        return outputs
    return {rel: records[rel] if isinstance(records.get(rel), str) else digest for rel, digest in outputs.items()}


def fingerprint(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def now_utc() -> str:
    """The time a manifest records as ``created``: now, or ``SOURCE_DATE_EPOCH`` (seconds) when set, the
    reproducible-builds convention: two bundle builds of one model then give byte-identical archives (``--no-ort``:
    an ``.ort`` file's bytes differ between conversions), and the same manifest sha256 to publish."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch.isdigit():
        return datetime.fromtimestamp(int(epoch), timezone.utc).isoformat(timespec="seconds")
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def missing_folders(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first: what ``mkdir(parents=True)`` of it makes
    (absolute: a parent spelled ``..`` is not a folder to remove)."""
    path = Path(os.path.abspath(path))
    return [p for p in (path, *path.parents) if not p.exists()]


def remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first, `missing_folders`) while each is an empty folder: what a failed run or build
    made and left empty; one that holds something (another run's, since) stops it, with those above."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, then rename it onto ``path``; a failed write (a full
    disk) leaves neither a half-written ``path`` nor its temporary file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        try:
            write(tmp)
            os.replace(tmp, path)
        except OSError as e:  # `path` a folder, or a folder this user cannot write: named as the caller knows it, not
            if e.filename != str(tmp):  # by its temporary name
                raise
            raise OSError(e.errno, e.strerror, str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)


def finite(value: Any) -> Any:
    """``value`` with every nan or infinite float (a pearson of constant predictions) as None: strict JSON, which
    JavaScript's JSON.parse (a bundle's predict.mjs and page) reads; Python's json writes a bare NaN it refuses."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def scores(metrics: Optional[dict]) -> dict:
    """A metrics dict (name -> score) as `write_json` wrote it, read back: a null score is nan again, as scored (a
    pearson of constant predictions), for code that formats or subtracts scores."""
    return {k: float("nan") if v is None else v for k, v in (metrics or {}).items()}


def write_json(path: Path, data: dict) -> None:
    """Write strict JSON (`finite`) atomically (`write_atomic`)."""
    text = json.dumps(finite(data), indent=2, sort_keys=False, default=str, allow_nan=False) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text))


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def scratch_dir(kind: str):
    """A temporary folder for one step's intermediate files (``with scratch_dir("quantize") as tmp``), named
    ``compress-<kind>-<pid>-*`` in the system's temporary folder so that `remove_dead_scratch` can find what a killed
    run (kill -9: no cleanup ran) left there."""
    import tempfile

    return tempfile.TemporaryDirectory(prefix=f"compress-{kind}-{os.getpid()}-")


@contextlib.contextmanager
def file_lock(path: Path, busy: Optional[Callable[[str], None]] = None):
    """Hold an exclusive advisory lock (flock) on ``path`` for the block: a file (created; it keeps the holder's pid),
    or a folder (locked as it is: nothing is added to it, so the holder's pid is unknown). When another process holds
    it, ``busy(holder_pid)`` is called: it raises to refuse (`compress run`'s run folder lock), or returns and this
    process waits its turn (None: say so on stderr and wait). The kernel drops the lock when its process ends: a killed
    holder leaves nothing to clean up."""
    if fcntl is None:
        yield
        return
    folder = Path(path).is_dir()
    fd = os.open(path, os.O_RDONLY) if folder else os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = "unknown" if folder else os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            if busy is None:  # a folder's holder is not known: no pid said rather than "pid unknown"
                print(f"waiting: {path if folder else Path(path).parent} is being written by another compress "
                      f"process{'' if holder == 'unknown' else f' (pid {holder})'}", file=sys.stderr, flush=True)
            else:
                busy(holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        if not folder:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def remove_dead(folder: Path, pattern: str, pid_regex: str) -> None:
    """Delete the entries of ``folder`` matching ``pattern`` whose name holds the pid (``pid_regex``'s group 1, the
    whole name matched) of a process that is gone: work files of killed runs, never trusted, only in the way."""
    import re
    import shutil

    for path in Path(folder).glob(pattern):
        found = re.fullmatch(pid_regex, path.name)
        if found and not alive(int(found.group(1))):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def remove_dead_scratch() -> None:
    """Delete the `scratch_dir` folders of processes that are gone (a quantize stage's leftovers are model-sized)."""
    import tempfile

    remove_dead(Path(tempfile.gettempdir()), "compress-*", r"compress-[a-z]+-(\d+)-.+")

