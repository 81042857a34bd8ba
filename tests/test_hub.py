"""Hub ids when the hub is out of reach: a cached one loads from the cache at once, an uncached one stops the run
before any stage works, naming the recipe field."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub.utils import reset_sessions

from compress import hub
from compress.config import load_recipe
from compress.errors import CompressError
from compress.pipeline import run_pipeline
from test_teacher import _recipe  # tiny.yaml: the tiny teacher recipe, model and extra sections given

ROOT = Path(__file__).resolve().parent.parent


def test_recipe_models_lists_what_the_remaining_stages_load(tmp_path, tiny_bert_dir):
    extra = ("students:\n  - {name: a, kind: layer_drop, layers: 1}\n"
             "  - {name: b, kind: narrow, init: org/small, tokenizer: org/tok}\n")
    recipe = load_recipe(_recipe(tmp_path, tiny_bert_dir, extra=extra))
    assert hub.recipe_models(recipe, ["teacher", "distill"]) == [
        ("teacher.model", str(tiny_bert_dir)), ("students[1].init", "org/small"), ("students[1].tokenizer", "org/tok")]
    assert hub.recipe_models(recipe, ["distill", "quantize"])[0] == ("students[1].init", "org/small")
    assert not hub.is_hub_id(str(tiny_bert_dir)) and not hub.is_hub_id("minilm-l6") and hub.is_hub_id("org/small")
    # a name that can only be a path (./x, /x/y, a/b/c) and does not exist: refused whatever the hub's state
    for path in (str(tmp_path / "gone"), "./gone", "a/b/c"):
        assert not hub.is_hub_id(path)
        with pytest.raises(CompressError, match=rf"^x\.yaml: teacher\.model: '{path}': no such folder"):
            hub.check(path, "x.yaml: teacher.model")


def test_an_unloadable_student_init_stops_the_run_before_the_teacher_trains(tmp_path, tiny_bert_dir, monkeypatch,
                                                                          refusing_endpoint):
    monkeypatch.setattr(hub, "reachable", lambda: False)
    _stops_before_the_teacher(tmp_path, tiny_bert_dir, "org/not-cached-anywhere", "it is not in the Hugging Face cache")
    # reachable but no answer about the repo (here: no network at all): the check stands aside, the download reports
    monkeypatch.setattr(hub, "reachable", lambda: True)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", refusing_endpoint)
    hub.check("org/not-cached-anywhere", "x")
    assert hub.load_kwargs("org/not-cached-anywhere") == {"trust_remote_code": False}


def test_a_reachable_hub_that_has_no_such_model_stops_the_run_before_the_teacher_trains(tmp_path, tiny_bert_dir,
                                                                                         monkeypatch):
    """A misspelt hub id in a student's init, hub online: it failed only when the distill stage loaded it, after the
    teacher had trained. The hub is now asked first (a local stand-in answering as the hub does)."""
    import http.server
    import json
    import threading

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            known = self.path.split("?")[0] == "/api/models/org/real"
            body = json.dumps({"id": "org/real", "sha": "0" * 40} if known else {"error": "Repository not found"})
            self.send_response(200 if known else 404)
            self.send_header("Content-Type", "application/json")
            if not known:
                self.send_header("X-Error-Code", "RepoNotFound")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setattr(hub, "reachable", lambda: True)
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # (where HF_HUB_OFFLINE=1 is set)
        reset_sessions()  # a session made earlier in this process under HF_HUB_OFFLINE=1 refuses every request
        hub._not_on_hub.cache_clear()
        hub.check("org/real", "x")  # exists: nothing to say
        assert hub._not_on_hub("org/reall") and not hub._not_on_hub("org/real")  # the stand-in was asked
        recipe = load_recipe(_recipe(tmp_path, tiny_bert_dir,
                                     extra="students:\n  - {name: s, kind: narrow, init: org/reall}\n"))
        with pytest.raises(CompressError, match=r"^.*tiny\.yaml: students\[0\]\.init: 'org/reall': the hub has no "
                                                r"such model \(misspelt\?"):
            run_pipeline(recipe)
        assert not (recipe.run_dir / "teacher").exists()
    finally:
        server.shutdown()
        hub._not_on_hub.cache_clear()
        monkeypatch.undo()
        reset_sessions()  # the next test's session follows the environment again


def _fake_hub_cache(cache: Path, repo: str, model_dir: Path) -> None:
    """The Hugging Face cache layout of one download of ``repo`` (refs/main -> a snapshot holding the files)."""
    commit = "0" * 40
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    shutil.copytree(model_dir, folder / "snapshots" / commit)


def _without_progress(stderr: str) -> str:
    """A subprocess's stderr less its progress-bar frames: what to show when an assertion on it fails."""
    return "\n".join(line for line in stderr.replace("\r", "\n").splitlines()
                     if line.strip() and not re.search(r"(it|step|examples|ba)/s\]|s/(it|step)\]", line))[-4000:]


@pytest.fixture
def refusing_endpoint():
    """An endpoint whose connections are refused: a port this test binds and does not listen on (not a fixed port
    such as 9, which a host may serve)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{held.getsockname()[1]}"


def test_a_cached_hub_model_trains_offline_and_an_uncached_one_fails_in_one_line(tmp_path, tiny_bert_dir,
                                                                                refusing_endpoint):
    """In fresh processes, with the hub endpoint refusing connections (as offline): the cached id is read from the
    cache without retries; an uncached one fails with one line naming teacher.model, and `validate` warns."""
    cache = tmp_path / "hf-cache"
    _fake_hub_cache(cache, "org/tiny-bert", tiny_bert_dir)
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("HF_")}
    env.update(HF_HUB_CACHE=str(cache), HF_ENDPOINT=refusing_endpoint,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))

    def compress(*args):
        return subprocess.run([sys.executable, "-m", "compress", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=600)

    ok = compress("run", str(_recipe(tmp_path, "org/tiny-bert")))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "Retrying" not in ok.stderr and "[teacher] done" in ok.stdout, _without_progress(ok.stderr)
    assert (tmp_path / "runs" / "tiny" / "teacher" / "model" / "model.safetensors").is_file()

    missing = _recipe(tmp_path, "org/not-cached")
    failed = compress("run", str(missing))
    assert failed.returncode == 2 and "Retrying" not in failed.stderr
    line = failed.stderr.strip()
    assert line.count("\n") == 0 and line.startswith(f"error: {missing}: teacher.model: 'org/not-cached' is a hub id")
    checked = compress("validate", str(missing))
    assert checked.returncode == 0 and "ok; stages: teacher" in checked.stdout
    assert checked.stderr.startswith(f"warning: {missing}: teacher.model: 'org/not-cached'")


def test_a_hub_model_cached_without_its_weights_stops_the_run_before_the_teacher_trains(tmp_path, tiny_bert_dir,
                                                                                       monkeypatch, capsys):
    """Offline, a hub id whose cache holds config.json but no weights (a download that stopped there) counted as
    cached: the student's init then failed in the distill stage, after the teacher had trained, with transformers'
    AttributeError. A tokenizer id needs no weights."""
    cache = tmp_path / "hf-cache"
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_bert_dir, no_weights, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    _fake_hub_cache(cache, "org/partial", no_weights)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "reachable", lambda: False)
    hub.check("org/partial", "x.yaml: students[0].tokenizer", weights=False)  # a tokenizer: config and vocab do
    # so through the recipe (`check_recipe`): the same id as a student's tokenizer is taken, as its init refused
    (tmp_path / "r").mkdir()
    assert not hub.needs_weights("students[0].tokenizer") and hub.needs_weights("students[0].init")
    extra = ("students:\n  - {name: s, kind: narrow, init: random, layers: 1, hidden: 32, heads: 2,\n"
             "      tokenizer: org/partial}\n")
    hub.check_recipe(load_recipe(_recipe(tmp_path / "r", tiny_bert_dir, extra=extra)), ["distill"])
    extra = "students:\n  - {name: s, kind: narrow, init: org/partial}\n"
    with pytest.raises(CompressError, match="without its weights"):
        hub.check_recipe(load_recipe(_recipe(tmp_path / "r", tiny_bert_dir, extra=extra)), ["distill"])
    _stops_before_the_teacher(tmp_path, tiny_bert_dir, "org/partial", "the Hugging Face cache holds it without its "
                              "weights")
    # weights without a tokenizer: validated, then "cannot load its tokenizer (TypeError: stat: path should be
    # string...)" when the run loaded it; refused by name now, where the tokenizer is loaded (a student with a
    # tokenizer of its own loads none from its init)
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_bert_dir, no_tokenizer, ignore=shutil.ignore_patterns("tokenizer*", "vocab.txt",
                                                                             "special_tokens_map.json"))
    _fake_hub_cache(cache, "org/weights-only", no_tokenizer)
    hub.check("org/weights-only", "x.yaml: students[0].init")
    _stops_before_the_teacher(tmp_path, tiny_bert_dir, "org/weights-only", r"the Hugging Face cache holds it without "
                              r"its tokenizer \(none of tokenizer\.json")
    from compress.cli import main

    path = _recipe(tmp_path, tiny_bert_dir, extra="students:\n  - {name: s, kind: narrow, init: org/partial}\n")
    assert main(["validate", "--strict", str(path)]) == 2  # said once: not again as the student it cannot build
    assert "1 warning below" in capsys.readouterr().out


def _stops_before_the_teacher(tmp_path, tiny_bert_dir, init: str, why: str) -> None:
    """A run whose student init is the hub id ``init`` stops at once, saying ``why``, before the teacher trains."""
    student = f"students:\n  - {{name: s, kind: narrow, init: {init}}}\n"
    recipe = load_recipe(_recipe(tmp_path, tiny_bert_dir, extra=student))
    with pytest.raises(CompressError, match=rf"tiny\.yaml: students\[0\]\.init: '{init}' is a hub id.*cannot be "
                                            rf"reached and {why}"):
        run_pipeline(recipe)
    assert not (recipe.run_dir / "teacher").exists() and not list(recipe.run_dir.glob(".teacher*"))


def test_a_new_commit_of_a_hub_model_redoes_the_stage(tmp_path, tiny_bert_dir, monkeypatch):
    """A hub id added nothing to a stage's inputs (its files are not in the recipe's folders), so a new push to the
    repository (refs/main moved in the cache) left the teacher "up to date" while from_pretrained loaded other
    weights. The commit it loads is an input; a stage recorded before (no commit among its inputs) is still reused."""
    import json

    from compress import pipeline

    cache = tmp_path / "hf-cache"
    _fake_hub_cache(cache, "org/tiny-bert", tiny_bert_dir)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "reachable", lambda: False)
    hub.revision.cache_clear()
    recipe = load_recipe(_recipe(tmp_path, "org/tiny-bert"))
    teacher = pipeline.STAGES[0]
    fp, inputs = pipeline._fingerprint(recipe, teacher, {})
    assert inputs["hub:org/tiny-bert"] == "0" * 40

    folder = tmp_path / "made-before"
    folder.mkdir()
    earlier = pipeline._earlier_inputs(recipe, teacher, {}, inputs)
    assert not any(k.startswith("hub:") for k in earlier)
    old = pipeline._stage_fingerprint(recipe, teacher, earlier, pipeline._result_config(pipeline._config(recipe,
                                                                                                      teacher)))
    (folder / "manifest.json").write_text(json.dumps({"fingerprint": old, "inputs": earlier, "outputs": {}}))
    assert pipeline._reuse(recipe, teacher, folder, fp, inputs, {})[1] is None
    (folder / "manifest.json").write_text(json.dumps({"fingerprint": fp, "inputs": inputs, "outputs": {},
                                                      "config": pipeline._config(recipe, teacher), "seed": recipe.seed}))

    (cache / "models--org--tiny-bert" / "refs" / "main").write_text("1" * 40)  # a new commit was fetched
    hub.revision.cache_clear()
    fp2, inputs2 = pipeline._fingerprint(recipe, teacher, {})
    assert inputs2["hub:org/tiny-bert"] == "1" * 40 and fp2 != fp
    # and from_pretrained is asked for that commit, the one recorded (it loaded main, whatever that was by then)
    assert hub.load_kwargs("org/tiny-bert") == {"trust_remote_code": False, "revision": "1" * 40,
                                                "local_files_only": True}
    assert hub.load_kwargs(str(tiny_bert_dir)) == {"trust_remote_code": False}
    assert pipeline._reuse(recipe, teacher, folder, fp2, inputs2, {})[1] == "changed: input hub:org/tiny-bert changed"
    hub.revision.cache_clear()


def test_a_hub_dataset_is_a_stage_input_by_its_files_or_its_commit(tmp_path, tiny_bert_dir, monkeypatch):
    """``task.hub_dataset`` added nothing to a stage's inputs: every label of a local dataset folder flipped, or a new
    commit of a hub dataset fetched, and the teacher stayed "up to date" with its old dev score. A local folder's
    files are inputs; a hub id's commit (the datasets cache's refs/main offline) is; a stage recorded before either
    was (neither among its inputs) is still reused."""
    import json

    from compress import pipeline

    folder = tmp_path / "hd"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\ngood,1\nbad,0\n")
    (folder / "validation.csv").write_text("text,label\nok,1\nawful,0\n")
    task = f"task: {{name: mine, hub_dataset: {folder}, labels: ['0', '1'], max_length: 32}}\n"
    path = tmp_path / "r.yaml"
    path.write_text(f"name: r\nruns_dir: {tmp_path / 'runs'}\n{task}teacher: {{model: {tiny_bert_dir}}}\n")
    recipe = load_recipe(path)
    teacher = pipeline.STAGES[0]
    fp, inputs = pipeline._fingerprint(recipe, teacher, {})
    assert {str(folder / "train.csv"), str(folder / "validation.csv")} <= set(inputs)
    stage = tmp_path / "stage"
    stage.mkdir()
    earlier = pipeline._earlier_inputs(recipe, teacher, {}, inputs)
    assert not any(k.startswith(str(folder)) for k in earlier)
    old = pipeline._stage_fingerprint(recipe, teacher, earlier, pipeline._result_config(pipeline._config(recipe,
                                                                                                      teacher)))
    (stage / "manifest.json").write_text(json.dumps({"fingerprint": old, "inputs": earlier, "outputs": {}}))
    assert pipeline._reuse(recipe, teacher, stage, fp, inputs, {})[1] is None  # recorded before: reused
    (stage / "manifest.json").write_text(json.dumps({"fingerprint": fp, "inputs": inputs, "outputs": {},
                                                     "config": pipeline._config(recipe, teacher), "seed": 42}))
    (folder / "validation.csv").write_text("text,label\nok,0\nawful,1\n")
    fp2, inputs2 = pipeline._fingerprint(recipe, teacher, {})
    assert fp2 != fp and pipeline._reuse(recipe, teacher, stage, fp2, inputs2, {})[1] == \
        f"changed: input {folder / 'validation.csv'} changed"

    cache = tmp_path / "hf-cache"  # a hub dataset id: its commit, as the cache has it offline
    (cache / "datasets--org--ds" / "refs").mkdir(parents=True)
    (cache / "datasets--org--ds" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "reachable", lambda: False)
    hub.revision.cache_clear()
    hub_recipe = load_recipe(path, {"task.hub_dataset": "org/ds"})
    assert pipeline._fingerprint(hub_recipe, teacher, {})[1]["hub:datasets/org/ds"] == "a" * 40
    (cache / "datasets--org--ds" / "refs" / "main").write_text("b" * 40)
    hub.revision.cache_clear()
    assert pipeline._fingerprint(hub_recipe, teacher, {})[1]["hub:datasets/org/ds"] == "b" * 40
    hub.revision.cache_clear()


def test_validate_strict_fails_on_a_hub_dataset_out_of_reach_and_not_cached(tmp_path, tiny_bert_dir, monkeypatch,
                                                                             capsys):
    """`validate --strict` said ok of a hub dataset the hub could not serve and no cache held; the run then failed at
    once. It is a warning now (an error with --strict), gone once either cache holds it."""
    import datasets.config

    from compress.cli import main

    path = tmp_path / "r.yaml"
    path.write_text(f"name: r\nruns_dir: {tmp_path / 'runs'}\ntask: {{name: mine, hub_dataset: 'org/ds:plain', "
                    f"labels: ['0', '1']}}\nteacher: {{model: {tiny_bert_dir}}}\n")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "prepared"))
    monkeypatch.setattr(hub, "reachable", lambda: False)
    assert main(["validate", "--strict", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"warning: {path}: task.hub_dataset: 'org/ds' is a hub dataset, the hub (") and \
        f"the datasets cache ({tmp_path / 'prepared'}) does not hold it;" in err
    # the hub cache's files of the repository: load_dataset does not read them offline (validated, then the run
    # failed at once: "Couldn't reach 'org/ds' on the Hub (OfflineModeIsEnabled)")
    (tmp_path / "hub" / "datasets--org--ds" / "refs").mkdir(parents=True)
    assert main(["validate", "--strict", str(path)]) == 2
    assert "(the hub cache holds its files, which load_dataset does not read offline)" in capsys.readouterr().err
    (tmp_path / "prepared" / "org___ds").mkdir(parents=True)  # prepared by the datasets library once online
    assert main(["validate", "--strict", str(path)]) == 0
    path.write_text(path.read_text().replace("org/ds", "SetFit/SentEval-CR"))  # its folder: snake case
    assert main(["validate", "--strict", str(path)]) == 2
    (tmp_path / "prepared" / "SetFit___sent_eval-cr").mkdir()
    assert main(["validate", "--strict", str(path)]) == 0


def test_a_name_that_is_no_folder_here_says_where_it_looked(tmp_path, monkeypatch):
    """A recipe naming its model folder relatively (``teacher.model: tiny-bert``) run from another folder read as an
    unreachable hub id, with no word of the folder looked for: the message names it and where relative paths go from."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(hub, "reachable", lambda: False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CompressError) as e:
        hub.check("tiny-bert", "x.yaml: teacher.model")
    assert f"; no folder {tmp_path / 'tiny-bert'} either (relative paths are read from the folder compress runs in);" \
        in str(e.value) and str(e.value).startswith("x.yaml: teacher.model: 'tiny-bert' is a hub id")


def test_a_relative_name_the_hub_does_not_have_says_where_it_looked_too(tmp_path, monkeypatch):
    """Online, `teacher.model: tiny-bert` run from another folder said only "the hub has no such model"."""
    monkeypatch.setattr(hub, "reachable", lambda: True)
    monkeypatch.setattr(hub, "_not_on_hub", lambda name: True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CompressError) as e:
        hub.check("tiny-bert", "x.yaml: teacher.model")
    assert str(e.value).endswith(f"; no folder {tmp_path / 'tiny-bert'} either (relative paths are read from the "
                                 f"folder compress runs in)")


@pytest.mark.parametrize("config, why", [({"model_type": "custom_enc"}, "does not recognize this architecture"),
                                         ({"model_type": "custom_enc", "auto_map": {"AutoConfig": "c.CustomConfig"}},
                                          "its repository's own code (trust_remote_code), which compress never runs")])
def test_a_cached_hub_model_transformers_cannot_build_is_one_line(tmp_path, tiny_bert_dir, refusing_endpoint, config,
                                                                  why):
    """A hub model of a type this transformers does not know, or one that needs its repository's own code (asked
    about on a terminal, "[y/N]", before): recipe validation cannot see its config, the run stopped in a traceback."""
    import json

    folder = tmp_path / "custom"
    shutil.copytree(tiny_bert_dir, folder)
    (folder / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()), **config}))
    _fake_hub_cache(tmp_path / "hf-cache", "org/custom", folder)
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("HF_")}
    env.update(HF_HUB_CACHE=str(tmp_path / "hf-cache"), HF_ENDPOINT=refusing_endpoint,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    recipe = _recipe(tmp_path, "org/custom")
    proc = subprocess.run([sys.executable, "-m", "compress", "run", str(recipe)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=600, stdin=subprocess.DEVNULL)
    line = proc.stderr.strip().splitlines()[-1]  # after the data's progress bars
    assert proc.returncode == 2, _without_progress(proc.stderr)
    assert line.startswith(f"error: {recipe}: teacher.model: model 'org/custom': cannot load its config.json ("), line
    assert why in line and not (tmp_path / "runs" / "tiny" / "teacher").exists()
    assert "[y/N]" not in proc.stdout + proc.stderr, proc.stdout  # not asked on a terminal


def test_a_hub_dataset_is_left_to_the_download_when_the_hub_is_reachable(tmp_path, monkeypatch):
    """Reachable hub: a hub dataset no cache holds is not refused up front (load_dataset downloads it)."""
    import datasets.config

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "prepared"))
    monkeypatch.setattr(hub, "reachable", lambda: True)
    hub.check_dataset("org/never-cached", "x.yaml: task.hub_dataset")
    monkeypatch.setattr(hub, "reachable", lambda: False)
    with pytest.raises(CompressError, match=r"x\.yaml: task\.hub_dataset: 'org/never-cached' is a hub dataset"):
        hub.check_dataset("org/never-cached", "x.yaml: task.hub_dataset")

