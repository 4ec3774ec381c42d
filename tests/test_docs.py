"""The documentation tells the truth: the FAQ's errors are what the commands print, every config key
the docs name exists, and README's commands run (the long ones in their runlocal form)."""
import contextlib
import io
import pathlib
import re
import shlex

import ml_collections
import numpy as np
import pytest
from PIL import Image

from conftest import copy_run
from lfvit_jax import tasks
from lfvit_jax.cli import main as cli
from lfvit_jax.core import config_args

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def lfvit(argv, cwd):
    """`lfvit ARGV` in this process, in folder `cwd`: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.run(["lfvit", *argv])
    return status, out.getvalue(), err.getvalue()


def faq_cases():
    """(message pattern, exit status, command) of each FAQ row with a command to try."""
    rows = []
    for line in (ROOT / "docs" / "faq.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[3].startswith("`lfvit "):
            rows.append((cells[0].strip("`"), int(cells[1]), cells[3].strip("`")))
    return rows


def test_the_faq_has_commands_for_both_exit_statuses():
    assert {status for _, status, _ in faq_cases()} == {1, 2} and len(faq_cases()) >= 20


@pytest.mark.parametrize("message,status,command", faq_cases(), ids=lambda x: str(x)[:40])
def test_faq_cases(tmp_path, monkeypatch, message, status, command):
    for name in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "GCE_METADATA_HOST"):
        monkeypatch.delenv(name, raising=False)  # gs:// cases: a machine without credentials
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    code, _, err = lfvit(shlex.split(command)[1:], tmp_path)
    assert code == status, err
    first = err.splitlines()[0]
    # `...` stands for what varies; the rest is the start of the message, in order.
    pattern = "Error: " + ".*".join(map(re.escape, message.split("...")))
    assert re.match(pattern, first), (pattern, first)
    if status == 2:
        assert not (tmp_path / "W").exists()  # a usage error writes nothing


def packaged_configs():
    return [config_args.load_config(name) for name in ("demo", "lfvit_deit_s", "deit_s")]


def keys(config, prefix="config"):
    out = set()
    for key, value in config.items():
        out.add(f"{prefix}.{key}")
        if isinstance(value, ml_collections.ConfigDict):
            out |= keys(value, f"{prefix}.{key}")
    return out


def test_every_config_key_the_docs_name_exists():
    known = set().union(*map(keys, packaged_configs()))
    named = set()
    for doc in DOCS:
        if doc.name != "faq.md":  # its examples are wrong on purpose
            named |= set(re.findall(r"(?<![\w./])config(?:\.[a-z_0-9]+)+", doc.read_text()))
    named -= {"config.json"}
    assert named and named <= known, sorted(named - known)


def test_every_model_setting_the_docs_list_is_one():
    text = (ROOT / "docs" / "model.md").read_text()
    table = text.split("## Settings")[1].split("\n\n")[1]
    listed = {name for row in table.splitlines()[2:] for name in re.findall(r"`(\w+)`",
                                                                           row.split("|")[1])}
    assert {"img_size", "num_heads", "region_size", "dense_init"} <= listed
    for task in tasks.TASKS.values():
        accepted = set(task.model_class.__dataclass_fields__) - {"parent", "name", "matmul_dtype"}
        listed -= accepted
    assert not listed, listed


# README's commands: each runs, or is named here with the reason it cannot run in a test.
NOT_RUN = {
    "pip install": "installs packages",
    "python -m pytest": "the tests themselves",
    "lfvit predict --config lfvit_deit_s:res=224,m=5 --config.init_from=lfvit_deit_s_224.pth":
        "needs the official weights file",
    "lfvit convert --src lfvit_deit_s_224.pth": "needs the official weights file",
    "lfvit prepare imagenet2012": "needs ImageNet's tars",
    "lfvit train --config lfvit_deit_s:res=224,m=5": "trains on ImageNet",
}


def readme_commands():
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [line.split("  #")[0].strip() for line in lines if line.strip()]


@pytest.mark.slow
def test_readme_commands_run(tmp_path, runlocal_runs):
    commands = readme_commands()
    # The main job's run, finished: its command then resumes at the end and evaluates.
    copy_run(runlocal_runs["lfvit"], tmp_path / "workdirs").rename(tmp_path / "workdirs" / "demo")
    assert commands[:3] == ["pip install -r requirements.txt",
                            "lfvit train --config demo --workdir workdirs/demo",
                            "python -m pytest -q -n 2 tests"]
    canvases = tmp_path / "canvases"
    canvases.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 64), np.uint8)).save(
            canvases / f"{i}.png")
    ran = 0
    for command in commands:
        if any(command.startswith(prefix) for prefix in NOT_RUN):
            continue
        assert command.startswith("lfvit "), f"README command neither run nor excused: {command}"
        argv = shlex.split(command.replace("--config demo ", "--config demo:runlocal ")
                           .replace("/tmp/smoke", "smoke"))[1:]
        if "gs://" in command:
            pytest.fail(f"README runs {command!r}: give it a NOT_RUN reason or a local form")
        code, _, err = lfvit(argv, tmp_path)
        assert code == 0, (command, err)
        ran += 1
    assert ran >= 3
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 3
