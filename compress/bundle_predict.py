#!/usr/bin/env python3
"""Run an edge bundle made by ``compress bundle``: ``python predict.py "text" ["text pair"]``.

This file is copied into every bundle as ``predict.py``. It needs only the Python standard library, onnxruntime,
tokenizers and numpy (no torch, no transformers), so it runs on a device that holds nothing but the bundle:

    pip install onnxruntime tokenizers numpy
    python predict.py "a gripping, funny film"            # label and score
    python predict.py --json "sentence one" "sentence two"  # pair task, JSON output
    python predict.py --file ../texts.txt                   # one text a line (pair tasks: text<TAB>pair); keep it
                                                            # outside the bundle folder (unlisted files are refused)
    cat ../texts.txt | python predict.py --json --file -    # standard input; one JSON object a line
    python predict.py --bench 3 --file ../texts.txt         # p50/p90 ms per text on this machine

Before anything is loaded, every file listed in ``manifest.json`` is checked against its sha256, and a file that
the manifest does not list is refused: a changed or planted file stops the program with one line on stderr
(exit status 2). That catches a file damaged or swapped on its own; whoever can edit ``manifest.json`` can re-hash any
file, this one included. To check a bundle from elsewhere as a whole, compare the manifest's sha256 with the one
published apart (``compress bundle`` prints it) using code from outside the bundle: ``echo "HEX  manifest.json" |
sha256sum -c`` in the bundle folder, or ``compress predict --manifest-sha256 HEX``. ``--manifest-sha256`` here guards
against accidental edits only (an edited bundle can carry an edited predict.py).
In Python: ``Predictor("path/to/bundle").predict(["text"])``.
"""

import os
import sys

if sys.path and sys.path[0] and os.path.realpath(sys.path[0]) == os.path.dirname(os.path.realpath(__file__)):
    # Run as a script, Python puts the bundle folder first on sys.path: a planted "numpy.py" (or "json.py",
    # "argparse.py": any module not yet imported) there would be imported before the files are verified. Nothing is
    # imported from the bundle folder, so drop it before any other import (os and sys are loaded before the script;
    # no `from __future__` import either: under `python -S` a planted __future__.py would run).
    del sys.path[0]

import argparse  # noqa: E402 (after the bundle folder left sys.path)
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import marshal  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from importlib.util import MAGIC_NUMBER  # noqa: E402
from pathlib import Path, PurePosixPath  # noqa: E402
from typing import Optional, Union  # noqa: E402

if sys.version_info < (3, 9):
    sys.exit("error: predict.py needs Python 3.9 or newer")

FORMAT = "compress-bundle/1"
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)
"""onnxruntime's fused SkipLayerNormalization CPU kernel is ~3-7x slower than the Add + LayerNormalization it
replaces (onnxruntime 1.32): the model was built and timed without it, and runs without it here too."""
MANIFEST = "manifest.json"
NPM_OUTPUTS = ("node_modules", "package-lock.json")
"""What `npm install` adds next to predict.mjs: not part of the bundle, not checked (this runner reads none of it)."""
OS_FILES = (".DS_Store", "Thumbs.db", "desktop.ini")
"""What file browsers leave in a folder they show (and macOS's ``._NAME`` twins): no runner reads them, and Python
cannot import them, so an unpacked bundle opened in Finder or Explorer is not refused for them."""
RUNNER = "predict.py"
RUNTIME = ("onnxruntime", "tokenizers", "numpy")
"""All this runner needs besides the standard library."""


class BundleError(Exception):
    """A bundle that is missing, malformed or changed since it was built."""


class EmptyText(BundleError):
    """A text (or text pair) in which the tokenizer keeps nothing: only spaces, control or zero-width characters."""


EMPTY = "nothing in it the tokenizer keeps: nothing to classify"

CLIP_CHARS = 4096
"""A text over twice this many characters is tokenized from its first words only, when they hold more tokens than
the model reads (`Predictor._clipped`): a 5 MB line took 800 MB and 4.5 s to keep 64 tokens."""


class ModelRunError(BundleError):
    """onnxruntime failed running the model on an input (a model shorter than max_length, a broken graph);
    ``reason``: onnxruntime's first line."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if path.is_symlink():  # every other file must be a regular one; a link could point anywhere
        raise BundleError(f"{path}: a symlink, not the bundle's own manifest; refusing to load")
    if not path.is_file():
        if not Path(folder).exists():
            raise BundleError(f"{folder}: no such bundle folder")
        if Path(folder).is_file() and Path(folder).suffix.lower() in (".onnx", ".ort"):
            raise BundleError(f"{folder}: a model file, not a bundle folder (the folder that holds it, its "
                              f"manifest.json and tokenizer.json)")
        if Path(folder).is_file():  # an archive, say: this runner reads the folder it unpacks to
            raise BundleError(f"{folder}: a file, not a bundle folder (an archive: unpack it first, `tar xzf "
                              f"{Path(folder).name}`, or give it to `compress predict`)")
        raise BundleError(f"{folder}: not a bundle (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not a {FORMAT} manifest (format: {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if not isinstance(manifest.get("files"), dict) or not manifest["files"]:
        raise BundleError(f"{path}: 'files' must map every bundle file to its sha256")
    check_fields(manifest, path)
    return manifest


def check_fields(manifest: dict, path: Path) -> None:
    """The manifest fields the runners read: the model, tokenizer and label names must be files the manifest lists
    (and so are verified), max_length a positive integer, labels a list of names (null: regression), text_pair
    true or false."""
    def field(*keys):
        value = manifest
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    for keys in (("model", "file"), ("tokenizer", "file")):
        if not isinstance(field(*keys), str) or field(*keys) not in manifest["files"]:
            raise BundleError(f"{path}: {'.'.join(keys)} must name a file listed under 'files', got {field(*keys)!r}")
    if type(field("max_length")) is not int or field("max_length") < 1:
        raise BundleError(f"{path}: max_length must be a positive integer, got {field('max_length')!r}")
    if type(field("tokenizer", "pad_id")) is not int or not isinstance(field("tokenizer", "pad_token"), str):
        raise BundleError(f"{path}: tokenizer.pad_id / pad_token missing or malformed")
    if not isinstance(field("labels_file"), str) or field("labels_file") not in manifest["files"]:
        raise BundleError(f"{path}: labels_file must name a file listed under 'files' (the verified label names), got "
                          f"{field('labels_file')!r}")
    labels = field("task", "labels")
    if not isinstance(field("task"), dict) or labels is not None and (
            not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels)):
        raise BundleError(f"{path}: task.labels must be a list of two or more label names (null: regression), "
                          f"got {labels!r}")
    if not isinstance(field("task", "text_pair"), (bool, type(None))):  # "false" (text) read as true: a pair asked
        raise BundleError(f"{path}: task.text_pair must be true or false, got {field('task', 'text_pair')!r}")


def verify(folder: Union[str, os.PathLike], manifest_sha256: Optional[str] = None) -> dict:
    """The bundle's manifest, after checking every listed file's sha256 and that no unlisted file is present; with
    ``manifest_sha256`` (published apart from the bundle), the manifest's own first: then nothing in the bundle can
    have been changed, the manifest's hashes included, and another Python's bytecode of the runner (unverifiable
    here) is refused. What `npm install` adds (`NPM_OUTPUTS`) is never checked: install it yourself."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest_sha256 is not None:
        try:
            expected = sha256_arg(manifest_sha256)
        except argparse.ArgumentTypeError as e:
            raise BundleError(f"manifest_sha256: {e}") from None
        actual = sha256_file(folder / MANIFEST)
        if actual != expected:
            raise BundleError(f"{folder / MANIFEST}: sha256 {actual} is not the expected {expected}: the manifest, "
                              f"and so any file, may have been changed; refusing to load")
    root = folder.resolve()
    listed = set()
    for rel, digest in manifest["files"].items():
        parts = PurePosixPath(rel).parts
        if PurePosixPath(rel).is_absolute() or ".." in parts or not parts or rel == MANIFEST:
            raise BundleError(f"{folder / MANIFEST}: file entry {rel!r} is not a plain path inside the bundle")
        path = folder.joinpath(*parts)
        if path.is_symlink():  # a link could point anywhere: every bundle file is its own
            raise BundleError(f"{path}: a symbolic link, not the bundle's own file; refusing to load")
        if not path.is_file():
            raise BundleError(f"{path}: listed in {MANIFEST} but " + ("not a regular file" if path.exists() else
                                                                      "missing"))
        if not path.resolve().is_relative_to(root):
            raise BundleError(f"{path}: resolves outside the bundle")
        actual = sha256_file(path)
        if actual != digest:
            raise BundleError(f"{path}: sha256 mismatch (manifest {str(digest)[:12]}..., file {actual[:12]}...): "
                              f"the file changed after the bundle was built; refusing to load")
        listed.add(PurePosixPath(*parts))
    for path in sorted(folder.rglob("*")):
        rel = PurePosixPath(path.relative_to(folder).as_posix())
        if rel == PurePosixPath(MANIFEST) or path.is_dir() and not path.is_symlink() or rel.parts[0] in NPM_OUTPUTS:
            continue
        pycache = rel.parts[0] == "__pycache__" and PurePosixPath(RUNNER) in listed and len(rel.parts) == 2
        if pycache and is_runner_bytecode(path, folder / RUNNER):
            continue
        if pycache and other_pythons_bytecode(path, folder / RUNNER):
            if manifest_sha256 is None:  # the manifest itself unchecked: nothing here is vouched for anyway
                continue
            raise BundleError(f"{path}: {RUNNER} bytecode of another Python, which this one cannot check and that one "
                              f"would run on import in place of the verified {RUNNER}; delete {path.parent} (or "
                              f"check with that Python), then check again")
        if rel.name in OS_FILES or rel.name.startswith("._"):
            continue
        if rel not in listed:
            raise BundleError(f"{path}: not listed in {MANIFEST}; refusing a bundle with unverified files (keep your "
                              f"own files, such as texts to classify, outside the bundle folder)")
    return manifest


def other_pythons_bytecode(path: Path, source: Path) -> bool:
    """Whether ``path`` is named as another Python's bytecode of the runner (``predict.cpython-312.pyc`` under 3.11):
    this interpreter never loads it (its cache tag differs) and cannot check it, and one bundle folder used with two
    Pythons was refused by the second. The other Python checks its own file as `is_runner_bytecode` does. Only a
    lower-case tag that differs from this one's in more than case: on a case-insensitive file system
    ``predict.CPYTHON-311.pyc`` is the file 3.11 loads."""
    tag = runner_bytecode_name(path.name, source.stem)
    own = sys.implementation.cache_tag or ""  # None: this Python writes no bytecode
    return bool(tag) and not path.is_symlink() and path.is_file() and tag.casefold() != own.casefold()


def runner_bytecode_name(name: str, stem: str = Path(RUNNER).stem) -> Optional[str]:
    """The cache tag of a name ``<stem>.<tag>[.opt-1|.opt-2].pyc`` with a lower-case ASCII tag of letters, digits and
    dashes (``cpython-311``, ``pypy39``); None for any other name."""
    if not name.startswith(f"{stem}.") or not name.endswith(".pyc"):
        return None
    tag = name[len(stem) + 1:-len(".pyc")]
    for opt in (".opt-1", ".opt-2"):
        tag = tag[:-len(opt)] if tag.endswith(opt) else tag
    ok = tag and tag.isascii() and tag == tag.lower() and all(c.isalnum() or c == "-" for c in tag) \
        and any(c.isdigit() for c in tag)
    return tag if ok else None


def is_runner_bytecode(path: Path, source: Path) -> bool:
    """Whether ``path`` is what this Python writes to ``__pycache__`` when it imports the verified ``predict.py``
    (``from predict import Predictor``): that file, not a planted one, would run on the next import."""
    names = {f"{source.stem}.{sys.implementation.cache_tag}{opt}.pyc": level
             for level, opt in ((0, ""), (1, ".opt-1"), (2, ".opt-2"))}  # python, python -O, python -OO
    if path.is_symlink() or path.name not in names:
        return False
    data = path.read_bytes()
    if data[:4] != MAGIC_NUMBER:
        return False
    try:
        code = marshal.loads(data[16:])
        return code == compile(source.read_bytes(), str(source), "exec", dont_inherit=True, optimize=names[path.name])
    except Exception:  # malformed bytecode: not the runner's
        return False


class Predictor:
    """A verified bundle, loaded: ``predict(texts, pairs=None)`` -> one dict per text."""

    def __init__(self, folder: Union[str, os.PathLike], threads: Optional[int] = None, check: bool = True,
                 manifest_sha256: Optional[str] = None):
        self.folder = Path(folder)
        self.manifest = verify(self.folder, manifest_sha256) if check else read_manifest(self.folder)
        try:
            import numpy as np
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as e:
            pins = self.manifest.get("requirements") or {}
            floor = self.manifest.get("requirements_python")
            try:  # an older Python than the pinned versions support: the unpinned names install
                newer = bool(floor) and sys.version_info[:2] < tuple(int(x) for x in str(floor).split(".")[:2])
            except ValueError:
                newer = False
            raise BundleError(f"this bundle needs {', '.join(RUNTIME)} ({e}): pip install "
                              + " ".join(n if newer or n not in pins else f"{n}=={pins[n]}" for n in RUNTIME)
                              + (f" (the versions it was built with, {', '.join(f'{n}=={pins[n]}' for n in pins)}, "
                                 f"need Python >= {floor})" if newer else "")) from None

        m = self.manifest
        self.labels = m["task"].get("labels")
        labels_file = m["labels_file"]  # verified: the names shown must be the ones it holds
        try:
            stored = json.loads((self.folder / labels_file).read_text(encoding="utf-8")).get("labels")
        except (OSError, ValueError, AttributeError) as e:
            raise BundleError(f"{self.folder / labels_file}: unreadable ({e})") from None
        if stored != self.labels:
            raise BundleError(f"{self.folder / MANIFEST}: task.labels {self.labels!r} differ from {labels_file}'s "
                              f"{stored!r}; refusing to load")
        self.pair = bool(m["task"].get("text_pair"))
        try:
            self.tokenizer = Tokenizer.from_file(str(self.folder / m["tokenizer"]["file"]))
        except Exception as e:  # tokenizers raises plain Exceptions
            raise BundleError(f"{self.folder / m['tokenizer']['file']}: not a tokenizer.json ({first_line(e)})") \
                from None
        built = (self.tokenizer.truncation or {}).get("max_length")  # the verified file's, as the bundle was built
        if built != m["max_length"]:
            raise BundleError(f"{self.folder / MANIFEST}: max_length {m['max_length']} differs from the "
                              f"{built or 'no'} tokens {m['tokenizer']['file']} truncates to; refusing to load")
        pad = m["tokenizer"]  # batches pad with it: an edited id out of range crashed, a wrong one moved labels
        if self.tokenizer.token_to_id(pad["pad_token"]) != pad["pad_id"]:
            raise BundleError(f"{self.folder / MANIFEST}: tokenizer.pad_id {pad['pad_id']} is not the id "
                              f"{pad['file']} gives {pad['pad_token']!r}; refusing to load")
        self.tokenizer.enable_padding(pad_id=pad["pad_id"], pad_token=pad["pad_token"])
        self._counter = Tokenizer.from_str(self.tokenizer.to_str())  # whole texts' token counts (`_clipped`)
        self._counter.no_truncation()
        self._counter.no_padding()
        options = ort.SessionOptions()
        if threads is not None and not (isinstance(threads, int) and 1 <= threads <= MAX_THREADS):
            raise BundleError(f"threads: an integer from 1 to {MAX_THREADS}, got {threads!r}")
        self.threads = threads  # None: onnxruntime's default (one thread a physical core)
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.folder / m["model"]["file"]), options,
                                                providers=["CPUExecutionProvider"],
                                                disabled_optimizers=list(DISABLED_OPTIMIZERS))
        except Exception as e:  # onnxruntime's own exception types
            raise BundleError(f"{self.folder / m['model']['file']}: onnxruntime cannot load it ({first_line(e)})"
                              + _older_runtime(m, ort.__version__)) from None
        self.inputs = [i.name for i in self.session.get_inputs()]
        self._check_width(self.session.get_outputs()[0].shape[-1])  # symbolic: checked when run
        self._np = np

    def _check_width(self, width) -> None:
        """The model's scores per text must be one per label name (one value for regression)."""
        if isinstance(width, int) and width != len(self.labels or [0]):
            raise BundleError(f"{self.folder / MANIFEST}: the model gives {width} scores but the manifest names "
                              f"{len(self.labels or [0])} label(s)")

    def logits(self, texts: list[str], pairs: Optional[list[str]] = None, batch_size: int = 1):
        """Logits, one row per text. ``batch_size`` texts share one run: by default one, as the manifest's metrics
        were measured; larger batches are faster, but an int8 *dynamic* model computes its activation scales over
        the whole batch (padding included), so a text's scores then depend on the texts batched with it."""
        np = self._np
        self._check_texts(texts, pairs)
        if batch_size < 1:
            raise BundleError(f"batch_size must be at least 1, got {batch_size}")
        batch = list(zip(texts, pairs)) if pairs is not None else list(texts)
        return np.concatenate([self._run(batch[i:i + batch_size]) for i in range(0, len(batch), batch_size)]) \
            if batch else np.zeros((0, len(self.labels or [0])), dtype=np.float32)

    def _run(self, batch: list):
        return self._forward(*self._feed(batch))

    def _count(self, text: str) -> int:
        return len(self._counter.encode(text, add_special_tokens=False).ids)

    def _clipped(self, text: str, need: int) -> Optional[tuple[str, int]]:
        """The first whole words of a long ``text`` (over twice `CLIP_CHARS` characters) and their token count when
        it is over ``need``, or None. Cut before a space that ends a word, where every pre-tokenizer (BERT's, byte-level
        BPE's, SentencePiece's) ends one, they tokenize as they do in the whole text: truncated on the right, the
        same tokens are kept. None when the tokenizer truncates on the left (it keeps the last tokens)."""
        if (self.tokenizer.truncation or {}).get("direction", "right") != "right":
            return None
        window = CLIP_CHARS
        while len(text) > 2 * window:
            part = text[:window]
            cut = max((m.start() + 1 for m in re.finditer(r"\S ", part)), default=0)
            count = self._count(part[:cut]) if cut else 0
            if count > need:
                return part[:cut], count
            window *= 4
        return None

    def _clip(self, item):
        """A text (or (text, pair) tuple) of ``batch`` with a long text cut to its first words where the model's
        inputs stay the same (`_clipped`). Of a pair, one text alone is cut, and only when the other has fewer
        tokens than its cut: longest-first truncation then keeps the same share of each."""
        if all(len(text) <= 2 * CLIP_CHARS for text in (item if isinstance(item, tuple) else (item,))):
            return item  # the common case, on the per-text path: nothing to cut
        budget = self.tokenizer.truncation["max_length"] - self.tokenizer.num_special_tokens_to_add(
            isinstance(item, tuple))
        if not isinstance(item, tuple):
            return (self._clipped(item, budget) or (item,))[0]
        if (self.tokenizer.truncation or {}).get("strategy", "longest_first") != "longest_first":
            return item
        a, b = self._clipped(item[0], budget), self._clipped(item[1], budget)
        if (a is None) == (b is None):  # both long (which is the longer is not known) or neither
            return item
        if a is not None:
            return (a[0], item[1]) if self._count(item[1]) < a[1] else item
        return (item[0], b[0]) if self._count(item[0]) < b[1] else item

    def _feed(self, batch: list) -> tuple[dict, int]:
        """The model's inputs for ``batch`` (texts, or (text, pair) tuples), and how many tokens a row holds."""
        np = self._np
        encodings = self.tokenizer.encode_batch([self._clip(item) for item in batch])
        for e in encodings:  # "\u200b", "\x01": only the special tokens, as "" gives ("" refused on the command line)
            for sequence, what in ((0, "text"), (1, "text pair")):
                if (sequence == 0 or isinstance(batch[0], tuple)) and sequence not in e.sequence_ids:
                    raise EmptyText(f"an empty {what} ({EMPTY})")
        columns = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
                   "token_type_ids": [e.type_ids for e in encodings]}
        missing = [n for n in self.inputs if n not in columns]
        if missing:
            raise BundleError(f"model input {missing[0]!r} is not one the tokenizer provides ({', '.join(columns)})")
        return {n: np.asarray(columns[n], dtype=np.int64) for n in self.inputs}, \
            len(encodings[0].ids) if encodings else 0

    def _forward(self, feed: dict, tokens: int):
        try:
            return self.session.run(None, feed)[0]
        except Exception as e:  # onnxruntime's own exception types
            reason = first_line(e)
            raise ModelRunError(f"{self.folder / self.manifest['model']['file']}: onnxruntime cannot run it on "
                                f"{tokens} tokens ({reason})", reason) from None

    def predict(self, texts: list[str], pairs: Optional[list[str]] = None, batch_size: int = 1) -> list[dict]:
        """One dict per text: ``label``, ``score`` and every label's ``scores`` (``value`` for regression);
        ``batch_size``: see :meth:`logits`."""
        np = self._np
        logits = self.logits(texts, pairs, batch_size)
        self._check_width(logits.shape[-1])
        if self.labels is None:  # regression
            return [{"value": float(row[0])} for row in logits]
        z = logits - logits.max(axis=-1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
        out = []
        for row in probs:
            best = int(row.argmax())
            out.append({"label": self.labels[best], "score": float(row[best]),
                        "scores": {name: float(p) for name, p in zip(self.labels, row)}})
        return out

    def timings(self, texts: list[str], pairs: Optional[list[str]] = None, rounds: int = 3) -> dict:
        """This machine's latency per text, one text at a time (batch 1) as the manifest's was measured: one untimed
        pass over the texts, then ``rounds`` timed passes. ``p50_ms``/``p90_ms``: time.perf_counter around
        onnxruntime's run alone (what the manifest's latency times); ``..._with_tokenizer``: tokenizing included."""
        self._check_texts(texts, pairs)
        if not texts:
            raise BundleError("no text to time")
        if not (isinstance(rounds, int) and rounds >= 1):
            raise BundleError(f"rounds must be an integer of at least 1, got {rounds!r}")
        batch = list(zip(texts, pairs)) if pairs is not None else list(texts)
        for item in batch:  # warm-up; an empty text is refused before anything is timed
            self._check_width(self._forward(*self._feed([item])).shape[-1])
        model, whole = [], []
        for _ in range(rounds):
            for item in batch:
                start = time.perf_counter()
                feed = self._feed([item])
                ran = time.perf_counter()
                self._forward(*feed)
                end = time.perf_counter()
                model.append(end - ran)
                whole.append(end - start)
        ms = {}
        for suffix, times in (("", model), ("_with_tokenizer", whole)):
            for q in (50, 90):  # numpy's default (linear) percentiles, as the bench stage's
                ms[f"p{q}_ms{suffix}"] = round(float(self._np.percentile(times, q)) * 1000, 4)
        return {"texts": len(batch), "rounds": rounds, "runs": len(model), "threads": self.threads, **ms}

    def _check_texts(self, texts, pairs) -> None:
        for name, values in (("texts", texts), ("pairs", pairs)):
            if isinstance(values, str):
                raise BundleError(f"{name} must be a list of strings, got one string (use [{name[:-1]}])")
            bad = next((v for v in values or () if not isinstance(v, str)), "")
            if not isinstance(bad, str):
                raise BundleError(f"{name} must be a list of strings, got a value of type {type(bad).__name__} "
                                  f"among them")
        if self.pair and pairs is None:
            raise BundleError("this model reads text pairs: give a second text")
        if not self.pair and pairs is not None:
            raise BundleError("this model reads single texts: give one text (--file PATH classifies several, one a "
                              "line)")
        if pairs is not None and len(pairs) != len(texts):
            raise BundleError(f"{len(texts)} texts but {len(pairs)} text pairs")


def read_lines(path: str, pair: bool):
    """``(line number, text, pair or None)`` for each non-blank line of ``path`` (``-``: standard input), read as it
    comes; pair tasks: ``text<TAB>text pair`` on each line. Lines end at "\\n" ("\\r\\n" too); bytes that are not
    UTF-8 read as U+FFFD, as in predict.mjs. A line of the wrong shape, or a pair line with an empty text, stops
    with its file and line number."""
    if path == "":
        raise BundleError("--file: an empty path (give a file, or - for standard input)")
    try:
        if path != "-":
            stream = open(path, encoding="utf-8-sig", errors="replace", newline="\n")
        elif sys.stdin is None:  # closed by the caller (`<&-`)
            raise BundleError("-: cannot read (standard input is closed)")
        elif hasattr(sys.stdin, "buffer"):
            stream = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", errors="replace", newline="\n")
        else:  # already text (a test's StringIO)
            stream = sys.stdin
    except OSError as e:
        raise BundleError(f"{path}: cannot read ({e.strerror})") from None
    name = "standard input" if path == "-" else path
    try:
        for number, line in enumerate(stream, 1):
            # byte-order marks at a line's start dropped on every line (files joined with cat), as training data's
            line = line.removesuffix("\n").removesuffix("\r").lstrip("\ufeff")
            if not line.strip():
                continue
            fields = line.split("\t")
            if pair and len(fields) != 2:
                raise BundleError(f"{name} line {number}: this model reads text pairs: give text<TAB>text pair")
            if not pair and len(fields) != 1:
                raise BundleError(f"{name} line {number}: this model reads single texts: the line holds a tab")
            if pair and not all(field.strip() for field in fields):  # "text<TAB>" or "<TAB>pair": as the CLI does
                raise BundleError(f"{name} line {number}: an empty {'text' if not fields[0].strip() else 'text pair'}: "
                                  f"nothing to classify")
            yield number, fields[0], fields[1] if pair else None
    except OSError as e:  # a folder, a read error
        raise BundleError(f"{path}: cannot read ({e.strerror})") from None
    finally:
        if stream is not sys.stdin:
            stream.detach() if path == "-" else stream.close()  # detach: sys.stdin's buffer stays open


def predict_lines(predictor: Predictor, path: str, as_json: bool = False, out=None) -> int:
    """Classify every line of ``path`` (see :func:`read_lines`) one at a time, as the metrics were measured, writing one
    result a line to ``out`` (default stdout) as soon as it is known: "label<TAB>score", or one JSON object a line with
    its ``line`` number (blank lines are skipped). Returns how many lines were classified; a file of none (empty, or
    blank lines only) is an error, as an empty TEXT is."""
    out = out or sys.stdout
    count = 0
    for number, text, pair in read_lines(path, predictor.pair):
        try:
            result = predictor.predict([text], None if pair is None else [pair])[0]
        except EmptyText as e:
            raise EmptyText(f"{'standard input' if path == '-' else path} line {number}: {e}") from None
        out.write((json.dumps({"line": number, **result}) if as_json else format_result(result)) + "\n")
        out.flush()
        count += 1
    if not count:
        raise BundleError(f"{'standard input' if path == '-' else path}: no text to classify (empty, or blank lines "
                          f"only)")
    return count


def bench_texts(predictor: Predictor, text: Optional[str], text_pair: Optional[str], path: Optional[str],
                rounds: int, as_json: bool = False, out=None) -> dict:
    """``--bench ROUNDS``: time the bundle on this machine (:meth:`Predictor.timings`) on ``text`` (and its pair) or
    every line of ``path`` (``-``: standard input, read once), and print the result beside the latency the manifest
    records for the same thread count (one JSON object with ``as_json``). Returns the timings."""
    if path is not None:
        name = "standard input" if path == "-" else path
        lines = list(read_lines(path, predictor.pair))
        if not lines:
            raise BundleError(f"{name}: no line to time")
        for number, line, pair in lines:  # each line refused with its number, as predict_lines does (tokenized only:
            try:                          # the timings' own untimed pass runs the model)
                predictor._feed([line if pair is None else (line, pair)])
            except EmptyText as e:
                raise EmptyText(f"{name} line {number}: {e}") from None
        texts, pairs = [line for _, line, _ in lines], [pair for _, _, pair in lines] if predictor.pair else None
    else:
        texts, pairs = [text], None if text_pair is None else [text_pair]
    result = {**predictor.timings(texts, pairs, rounds), "peak_rss_mb": peak_rss_mb()}
    built = built_latency(predictor.manifest, predictor.threads)
    out = out or sys.stdout
    out.write((json.dumps({**result, "manifest": built}) if as_json else format_timings(result, built)) + "\n")
    out.flush()
    return result


def peak_rss_mb() -> Optional[float]:
    """This process's peak resident memory in MiB (tokenizer, model, onnxruntime, the interpreter; shared libraries'
    pages included): Linux's VmHWM, Windows' peak working set, else getrusage's ru_maxrss (macOS: bytes, other Unix:
    KiB); None where none of them answers."""
    if sys.platform == "win32":
        return _windows_peak_mb()
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2 ** 20 if sys.platform == "darwin" else 1024), 1)


def _windows_peak_mb() -> Optional[float]:
    """Windows: the process's peak working set (``GetProcessMemoryInfo``, through ctypes: nothing to install), in MiB;
    None if the call fails."""
    import ctypes
    from ctypes import wintypes

    class Counters(ctypes.Structure):  # PROCESS_MEMORY_COUNTERS
        _fields_ = [("cb", wintypes.DWORD), ("PageFaultCount", wintypes.DWORD)] + [
            (name, ctypes.c_size_t) for name in (
                "PeakWorkingSetSize", "WorkingSetSize", "QuotaPeakPagedPoolUsage", "QuotaPagedPoolUsage",
                "QuotaPeakNonPagedPoolUsage", "QuotaNonPagedPoolUsage", "PagefileUsage", "PeakPagefileUsage")]

    counters = Counters()
    counters.cb = ctypes.sizeof(Counters)
    try:
        kernel32 = ctypes.WinDLL("kernel32")
        kernel32.GetCurrentProcess.restype = wintypes.HANDLE
        get_info = kernel32.K32GetProcessMemoryInfo  # kernel32's since Windows 7 (psapi.dll's before)
        get_info.argtypes = [wintypes.HANDLE, ctypes.POINTER(Counters), wintypes.DWORD]
        get_info.restype = wintypes.BOOL
        if not get_info(kernel32.GetCurrentProcess(), ctypes.byref(counters), counters.cb):
            return None
    except (AttributeError, OSError):
        return None
    return round(counters.PeakWorkingSetSize / 2 ** 20, 1) if counters.PeakWorkingSetSize else None


def built_latency(manifest: dict, threads: Optional[int]) -> Optional[dict]:
    """The manifest's latency at ``threads`` (None: its headline thread count; another count than those it
    measured: the headline's, which names its own): ``p50_ms``, ``p90_ms``, ``threads``, ``cpu``, ``spin``."""
    latency = manifest.get("latency")
    if not isinstance(latency, dict):
        return None
    by_threads = latency.get("by_threads") if isinstance(latency.get("by_threads"), dict) else {}
    entry, count = latency, latency.get("threads")
    if threads is not None and isinstance(by_threads.get(str(threads)), dict):
        entry, count = by_threads[str(threads)], threads
    protocol = latency.get("protocol") if isinstance(latency.get("protocol"), dict) else {}
    def number(v):  # as JavaScript reads JSON: a finite number (2.0 is 2), else none
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            return None
        return int(v) if float(v).is_integer() else v

    def text(v):
        return v if isinstance(v, str) else None

    return {"p50_ms": number(entry.get("p50_ms")), "p90_ms": number(entry.get("p90_ms")), "threads": number(count),
            "cpu": text(protocol.get("cpu")), "spin": text(protocol.get("spin"))}


def format_timings(result: dict, built: Optional[dict]) -> str:
    """Two lines: this machine's timings, then the manifest's (:func:`built_latency`)."""
    def threads(n):
        return "onnxruntime's default threads" if n is None else count(n, "thread")

    def ms(value):
        return "?" if value is None else f"{value:.3f} ms"

    def count(n, what):
        return f"{n} {what}{'s' if n != 1 else ''}"

    def memory(mb):
        return "" if mb is None else f"; this process's peak resident memory {mb:.0f} MiB"

    here = (f"here: p50 {ms(result['p50_ms'])}, p90 {ms(result['p90_ms'])} per text, onnxruntime's run alone "
            f"(tokenizing included: p50 {ms(result['p50_ms_with_tokenizer'])}, p90 "
            f"{ms(result['p90_ms_with_tokenizer'])}); {count(result['runs'], 'run')} ({count(result['texts'], 'text')} "
            f"x {count(result['rounds'], 'round')}) at {threads(result['threads'])}, idle threads spinning "
            "(onnxruntime's default)" + memory(result.get("peak_rss_mb")))
    if built is None or built["p50_ms"] is None:
        return here + "\nbuilt: the manifest records no latency"
    return (here + f"\nbuilt: p50 {ms(built['p50_ms'])}, p90 {ms(built['p90_ms'])}"
            + (f" at {threads(built['threads'])}" if built["threads"] is not None else "")
            + (f" on {built['cpu']}" if built["cpu"] else "") + (f", {built['spin']}" if built["spin"] else "")
            + " (the manifest)")


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


INT4_RUNTIME = (1, 22)
"""The oldest onnxruntime that runs an int4 vocabulary table (GatherBlockQuantized of uint8-packed blocks)."""


def _older_runtime(manifest: dict, version: str) -> str:
    """What to add to a load error when the model has int4 tables (``model.int4_tables``) and this onnxruntime
    predates them (``version``: onnxruntime's ``__version__``)."""
    model = manifest.get("model")
    try:
        older = tuple(int(x) for x in version.split(".")[:2]) < INT4_RUNTIME
    except ValueError:  # a local build's odd version string: say nothing rather than guess
        older = False
    if not (isinstance(model, dict) and model.get("int4_tables") and older):
        return ""
    need = ".".join(map(str, INT4_RUNTIME))
    return (f"; its vocabulary table is int4, which needs onnxruntime >= {need} (this is {version}): "
            f"pip install 'onnxruntime>={need}'")


def cli_text(text: Optional[str], what: str = "text") -> Optional[str]:
    """A command-line text as UTF-8 would read it (bytes that are not UTF-8 become U+FFFD, as in predict.mjs);
    an empty one is refused, named ``what`` ("text" or "text pair") as files' lines and the API name it."""
    if text is None:
        return None
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if not text.strip():
        raise BundleError(f"an empty {what}: nothing to classify")
    return text


class NamedStdout:
    """Standard output whose write errors name it: met mid-run (output unbuffered, PYTHONUNBUFFERED=1, or past the
    buffer), a full disk (``>/dev/full``) said "No space left on device", naming no file. Everything else is the
    stream's own (fileno, isatty, encoding...)."""

    def __init__(self, stream):
        self.stream = stream

    def _call(self, method: str, *args):
        try:
            return getattr(self.stream, method)(*args)
        except BrokenPipeError:  # the reader gone: each CLI's own quiet ending
            raise
        except OSError as e:
            e.filename = e.filename or "standard output"
            raise

    def write(self, text: str) -> int:
        return self._call("write", text)

    def writelines(self, lines) -> None:
        return self._call("writelines", lines)

    def flush(self) -> None:
        return self._call("flush")

    def __getattr__(self, name: str):
        return getattr(self.stream, name)

    @staticmethod
    def restore() -> None:
        """sys.stdout as it was before a CLI wrapped it (nothing to do where it is not wrapped)."""
        if isinstance(sys.stdout, NamedStdout):
            sys.stdout = sys.stdout.stream


def closed_streams() -> None:
    """Standard output or error closed by the caller (``predict.py TEXT >&-``): Python makes it None, where a write
    raised AttributeError (a traceback) and ``print(file=None)`` wrote error lines to standard output: /dev/null
    stands in for it, as Python's own print treats a missing stream (nothing shown, no error)."""
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w"))


def quiet_broken_pipe() -> None:
    """Standard output's reader went away (``... | head``): stop without a traceback."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def sha256_arg(text: str) -> str:
    """argparse type of ``--manifest-sha256``: 64 hex digits, any case, spaces around ignored; anything else (a
    prefix, a ``sha256sum`` line) is a usage error, not a changed bundle."""
    value = str(text).strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise argparse.ArgumentTypeError(f"expected the 64 hex digits of a sha256 (compress bundle prints the "
                                         f"manifest's), got {str(text)[:80]!r}")
    return value


MAX_THREADS = 1024
"""The most threads a count may ask for: a typo's 100000 started that many onnxruntime threads (the machine hung,
deaf to SIGTERM), and past 2**31 - 1 onnxruntime's option raised a TypeError traceback."""

MAX_COUNT = 2**31 - 1
"""The largest count (tokens) an option takes: a C int, what onnxruntime and the tokenizers library hold it in."""


def positive_int(text: str, most: int = MAX_COUNT) -> int:
    """argparse type of a count (tokens): an integer from 1 to ``most`` in plain digits (not ``2_0``, `` 2``, ``+2`` or
    ``02``, which int() takes and predict.mjs refuses), else a usage error naming the option."""
    if not re.fullmatch(r"-?[0-9]+", text):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    value = int(text)
    if value >= 1 and text.startswith("0"):
        raise argparse.ArgumentTypeError(f"expected an integer without leading zeros, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    if value > most:
        raise argparse.ArgumentTypeError(f"must be at most {most}, got {value}")
    return value


def thread_count(text: str) -> int:
    """argparse type of a thread count: an integer from 1 to `MAX_THREADS`."""
    return positive_int(text, MAX_THREADS)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: `taskset`, a container's cpuset), as predict.mjs counts
    them (Node.js's os.availableParallelism); the machine's count where the system has no affinity call."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def warn_threads(threads: Optional[int]) -> None:
    """More intra-op threads than cores only slows onnxruntime down: say so on stderr (the run goes on)."""
    cores = usable_cores()
    if threads and threads > cores:
        print(f"warning: --threads {threads} is more than this machine's {cores} cores: onnxruntime will run "
              "slower, not faster", file=sys.stderr)


def add_text_arguments(parser: argparse.ArgumentParser) -> None:
    """TEXT, TEXT_PAIR, --file, --json and --threads: what this runner and `compress predict` read alike."""
    parser.add_argument("text", nargs="?", help="the text to classify (or --file)")
    parser.add_argument("text_pair", nargs="?", help="second text, for pair tasks (e.g. paraphrase, entailment)")
    parser.add_argument("--file", metavar="PATH", help="classify each line of PATH instead, one at a time (- : "
                        "standard input; pair tasks: text<TAB>text pair); one result a line, blank lines skipped "
                        "(--json gives each result its line number)")
    parser.add_argument("--json", action="store_true", help="print every label's score as JSON (one object a line "
                        "with --file)")
    parser.add_argument("--threads", type=thread_count,
                        help="onnxruntime intra-op threads (default: onnxruntime's, one per physical core)")
    parser.add_argument("--bench", type=positive_int, metavar="ROUNDS", help="time the model on this machine instead "
                        "of printing results: ROUNDS timed passes over the texts (TEXT, or every line of --file), one "
                        "text at a time after an untimed pass; prints p50/p90 ms per text beside the manifest's, and "
                        "this process's peak resident memory")


def main(argv: Optional[list[str]] = None, folder: Optional[Union[str, os.PathLike]] = None) -> int:
    closed_streams()
    parser = argparse.ArgumentParser(description="Classify a text (or a text pair), or every line of a file, with "
                                     "this bundle's model.", allow_abbrev=False)  # as predict.mjs: "--js" is no --json
    add_text_arguments(parser)
    parser.add_argument("--manifest-sha256", metavar="HEX", type=sha256_arg, help="the sha256 of manifest.json as "
                        "published apart from the bundle, checked first (against accidental edits: a bundle from "
                        "elsewhere is checked by code from outside it, `compress predict --manifest-sha256` or "
                        "sha256sum -c)")
    parser.add_argument("--bundle", default=folder or Path(__file__).resolve().parent,
                        help="bundle folder (default: the folder this file is in)")
    argv = sys.argv[1:] if argv is None else list(argv)
    texts = argv[argv.index("--") + 1:] if "--" in argv else []  # "--": texts that start with "-" (read apart:
    argv = argv[:argv.index("--")] if "--" in argv else argv      # parse_intermixed_args refuses them in 3.11)
    args = parser.parse_intermixed_args(argv)  # options after the texts too
    texts = [t for t in (args.text, args.text_pair) if t is not None] + texts
    if len(texts) > 2:
        parser.error(f"unrecognized arguments: {' '.join(texts[2:])}")
    args.text, args.text_pair = (texts + [None, None])[:2]
    if (args.text is None) == (args.file is None):
        parser.error("give a TEXT or --file PATH, not both" if args.text is not None else
                     "give a TEXT to classify, or --file PATH")
    warn_threads(args.threads)
    sys.stdout = NamedStdout(sys.stdout)
    try:
        text, text_pair = cli_text(args.text), cli_text(args.text_pair, "text pair")
        predictor = Predictor(args.bundle, threads=args.threads, manifest_sha256=args.manifest_sha256)
        if args.bench:
            bench_texts(predictor, text, text_pair, args.file, args.bench, args.json)
            return 0
        if args.file is not None:
            predict_lines(predictor, args.file, args.json)
            return 0
        result = predictor.predict([text], None if text_pair is None else [text_pair])[0]
        print(format_result(result, args.json), flush=True)
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        quiet_broken_pipe()
    except OSError as e:  # standard output on a full disk (/dev/full), a closed terminal...
        print(f"error: {e.filename + ': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        quiet_broken_pipe()  # (what is still buffered is not written again at exit)
        return 1
    except KeyboardInterrupt:  # Ctrl-C in a long --file run: the lines printed so far stand
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        NamedStdout.restore()
    return 0


def format_result(result: dict, as_json: bool = False) -> str:
    """One prediction as printed by the CLIs: "label<TAB>score", the value for regression, or JSON."""
    if as_json:
        return json.dumps(result)
    if "label" in result:
        return f"{result['label']}\t{result['score']:.4f}"
    return f"{result['value']:.4f}"


if __name__ == "__main__":
    sys.exit(main())
