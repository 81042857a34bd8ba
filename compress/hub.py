"""Hub ids on a machine that may not reach the Hugging Face hub.

A model name that is neither a zoo name nor a folder is a hub id (``bert-base-uncased``, ``org/name``). Offline,
loading one made huggingface_hub retry every file for ~30 s before failing, and a hub id in a student's ``init`` failed
only after the teacher had trained. So before a run's first stage starts, every hub id the remaining stages load is
looked up: in the Hugging Face cache, it loads from there without touching the network (``local_files_only``) when
the hub cannot be reached; neither cached nor reachable, the run stops at once naming the recipe field, as it does
for a path (``./x``, ``/x/y``, ``a/b/c``: not a repo id) that does not exist.

The hub counts as reachable when a TCP connection to its endpoint (``HF_ENDPOINT``) opens within 3 s. Behind a proxy
(``HTTPS_PROXY``/``ALL_PROXY``) that probe says nothing, so the hub is assumed reachable, as before.
``HF_HUB_OFFLINE=1`` means unreachable. When it is reachable, each hub id is looked up (``model_info``, 3 s): one the
hub says does not exist (misspelt, or private without a login) stops the run at once, naming the field, instead of
after the stages before the one that loads it; any other answer (a proxy's page, a timeout) leaves it to the download.
"""

from __future__ import annotations

import functools
import os
import re
import socket
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from compress.errors import CompressError

PROBE_TIMEOUT_S = 3.0


# what the hub accepts as a repo id: name or org/name, not starting with "." (./x, /x/y or a/b/c are paths)
_REPO_ID = re.compile(r"^(?!\.)[\w.-]+(/[\w.-]+)?$")


def _named_elsewhere(name: str) -> bool:
    """A zoo name, "random" (no checkpoint) or an existing path: nothing to fetch."""
    from teachers.zoo import ZOO

    return name in ZOO or name == "random" or os.path.exists(name)


def is_hub_id(name: str) -> bool:
    return not _named_elsewhere(name) and bool(_REPO_ID.match(name))


def is_missing_folder(name: str) -> bool:
    """A name that can only be a path (not a zoo name, not a repo id) and does not exist."""
    return not _named_elsewhere(name) and not _REPO_ID.match(name)


@functools.lru_cache(maxsize=None)
def reachable() -> bool:
    """Whether the hub endpoint answers a TCP connection (once per process)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=PROBE_TIMEOUT_S).close()
        return True
    except OSError:
        return False


WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
"""The files ``from_pretrained`` reads a model's weights from (one of them)."""


def cached(repo_id: str, weights: bool = False, tokenizer: bool = False) -> bool:
    """Whether the Hugging Face cache holds the repo's config.json (a download that got that far) and, with
    ``weights``, a weights file too (a download stopped after the config loads no model offline), with ``tokenizer``
    a tokenizer file (`config.TOKENIZER_FILES`: a repo of weights only loaded no tokenizer, a TypeError)."""
    from huggingface_hub import try_to_load_from_cache

    from compress.config import TOKENIZER_FILES

    def held(files) -> bool:
        return any(isinstance(try_to_load_from_cache(repo_id, f), str) for f in files)

    try:
        return held(["config.json"]) and (not weights or held(WEIGHTS)) and (not tokenizer or held(TOKENIZER_FILES))
    except Exception:  # not a valid repo id: loading it reports that
        return False


def check(name: str, where: str, weights: bool = True, tokenizer: bool = False) -> None:
    """Refuse, at once, a folder that does not exist, and a hub id that can be neither downloaded nor read from the
    cache (its weights too, unless ``weights`` is off: a tokenizer; its tokenizer with ``tokenizer``)."""
    if is_missing_folder(name):
        raise CompressError(f"{where}: {name!r}: no such folder (and not a zoo model or a hub id)")
    if not is_hub_id(name):
        return
    here = "" if os.path.isabs(name) else f"; no folder {os.path.abspath(name)} either (relative paths are read " \
        f"from the folder compress runs in)"
    if reachable():
        if _not_on_hub(name):
            raise CompressError(f"{where}: {name!r}: the hub has no such model (misspelt? a private or gated one needs "
                                f"`hf auth login` or HF_TOKEN){here}")
        return
    if cached(name, weights, tokenizer):
        return
    from huggingface_hub import constants

    from compress.config import TOKENIZER_FILES
    from teachers.zoo import ZOO

    held = "it is not in the Hugging Face cache" if not cached(name) else \
        "the Hugging Face cache holds it without its weights" if not cached(name, weights) else \
        f"the Hugging Face cache holds it without its tokenizer (none of {', '.join(TOKENIZER_FILES)})"
    raise CompressError(f"{where}: {name!r} is a hub id (not a zoo model or a folder), the hub ({constants.ENDPOINT}) "
                        f"cannot be reached and {held} ({constants.HF_HUB_CACHE}){here}; use a zoo model "
                        f"({', '.join(ZOO)}) or a local folder, or run once online")


def _hub_cache_folder(repo_id: str, kind: str = "model") -> Path:
    """The Hugging Face cache's folder of a model or dataset repo (``models--org--name``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / f"{kind}s--{repo_id.replace('/', '--')}"


def check_dataset(name: str, where: str) -> None:
    """Refuse a hub dataset id (``task.hub_dataset``, its ``:config`` left out) that can be neither downloaded nor
    found in the cache ``load_dataset`` reads offline (the datasets library's prepared rows; the hub cache's files of
    the repository it does not read then): a recipe that validated failed at once when run. A local folder is the
    task's data files' business."""
    if os.path.exists(name) or reachable():
        return
    import datasets.config
    from datasets.naming import camelcase_to_snakecase
    from huggingface_hub import constants

    prepared = Path(datasets.config.HF_DATASETS_CACHE)  # <namespace>___<name in snake case>, as load_dataset names it
    owner, _, short = name.rpartition("/")
    folder = f"{owner}___{camelcase_to_snakecase(short)}" if owner else camelcase_to_snakecase(short)
    if (prepared / folder).is_dir():
        return
    files = " (the hub cache holds its files, which load_dataset does not read offline)" \
        if _hub_cache_folder(name, "dataset").is_dir() else ""
    raise CompressError(f"{where}: {name!r} is a hub dataset, the hub ({constants.ENDPOINT}) cannot be reached and "
                        f"the datasets cache ({prepared}) does not hold it{files}; use local files (task.files, "
                        f"task.data_dir) or run once online")


@functools.lru_cache(maxsize=None)
def _not_on_hub(repo_id: str) -> bool:
    """Whether the hub answers that ``repo_id`` does not exist (for this user). False for any other outcome."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        HfApi(endpoint=constants.ENDPOINT).model_info(repo_id, timeout=PROBE_TIMEOUT_S)
    except RepositoryNotFoundError:
        return True
    except Exception:  # a proxy's answer, a timeout, a rate limit: the download will say what it is
        return False
    return False


@functools.lru_cache(maxsize=None)
def revision(repo_id: str, kind: str = "model") -> Optional[str]:
    """The commit a hub id's ``from_pretrained`` (``kind`` "dataset": ``load_dataset``) loads (its main branch): the
    hub's answer when it is reachable, else the cache's ``refs/main``; None when neither says. A run folder records it
    among a stage's inputs: a new push to the repository (or a cache updated by another program) redoes the stage
    instead of reusing what the old weights or rows made."""
    from huggingface_hub import HfApi, constants

    if reachable():
        try:
            api = HfApi(endpoint=constants.ENDPOINT)
            info = api.dataset_info if kind == "dataset" else api.model_info
            sha = info(repo_id, timeout=PROBE_TIMEOUT_S).sha
            if sha:
                return sha
        except Exception:  # a proxy's answer, a timeout: the cache's may still say
            pass
    ref = _hub_cache_folder(repo_id, kind) / "refs" / "main"
    try:
        return ref.read_text().strip() or None
    except OSError:
        return None


def load_kwargs(name: str) -> dict:
    """Extra ``from_pretrained`` arguments for ``name``: no repository code (a model that needs its own is refused
    in one line, not asked about on the terminal); for a hub id, the commit the run folder records (`revision`: a push
    between the fingerprint and the download is not loaded under the old commit's name), read from the cache only
    when the hub is out of reach (no retries)."""
    if not is_hub_id(name):
        return {"trust_remote_code": False}
    sha = revision(name)
    return {"trust_remote_code": False, **({"revision": sha} if sha else {}),
            **({} if reachable() else {"local_files_only": True})}


def recipe_models(recipe, stages) -> list[tuple[str, str]]:
    """``(field, name)`` of every pretrained model the given stages load from a name: the teacher's base model
    (teacher stage), students' init checkpoints and tokenizers (distill stage). Later stages read run folders."""
    out = []
    if "teacher" in stages and recipe.teacher is not None:
        out.append(("teacher.model", recipe.teacher.model))
    if "distill" in stages and recipe.students:
        for i, s in enumerate(recipe.students):
            if s.init != "random":
                out.append((f"students[{i}].init", s.init))
            if s.tokenizer is not None:
                out.append((f"students[{i}].tokenizer", s.tokenizer))
    return out


def needs_weights(field: str) -> bool:
    """Whether the recipe field (`recipe_models`) names a model to load, not only a tokenizer."""
    return not field.endswith(".tokenizer")


def needs_tokenizer(recipe, field: str) -> bool:
    """Whether the tokenizer of the model a recipe field names is loaded: the teacher's, a student's ``tokenizer``, a
    student's ``init`` without a tokenizer of its own."""
    init = re.fullmatch(r"students\[(\d+)\]\.init", field)
    return recipe.students[int(init.group(1))].tokenizer is None if init else True


def check_field(recipe, field: str, name: str) -> None:
    """`check` of a model a recipe field names (`recipe_models`), for what the run loads of it."""
    check(name, f"{recipe.path}: {field}", weights=needs_weights(field), tokenizer=needs_tokenizer(recipe, field))


def check_recipe(recipe, stages) -> None:
    for field, name in recipe_models(recipe, stages):
        check_field(recipe, field, name)
