"""What `pip install` gives: requirements.txt and pyproject.toml agree, the `lfvit` command and its
subcommands answer --help, and (slow) a fresh virtual environment gets a working `lfvit`."""
import contextlib
import io
import os
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement

from lfvit_jax.cli import main as cli

ROOT = pathlib.Path(__file__).resolve().parents[1]


def pins():
    """{name: version} of requirements.txt's `name==version` lines."""
    out = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            req = Requirement(line)
            out[req.name.lower().replace("_", "-")] = next(iter(req.specifier)).version
    return out


def declared():
    """(runtime requirements, extras' requirements) of pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = [Requirement(r) for r in project["dependencies"]]
    extras = [Requirement(r) for group in project["optional-dependencies"].values() for r in group]
    return runtime, extras


def test_requirements_pin_what_pyproject_declares():
    pinned = pins()
    runtime, extras = declared()
    for req in runtime + extras:
        name = req.name.lower().replace("_", "-")
        assert name in pinned, f"{name} is in pyproject.toml but not pinned in requirements.txt"
        assert req.specifier.contains(pinned[name]), f"{name}=={pinned[name]} vs {req}"
    names = ({r.name.lower().replace("_", "-") for r in runtime + extras}
             | {"jaxlib", "ml-dtypes"})  # jax's own, pinned for speed
    assert set(pinned) <= names, f"pinned but not declared: {set(pinned) - names}"
    assert "-e ." in (ROOT / "requirements.txt").read_text().splitlines()


def lfvit(*argv):
    """`lfvit ARGV` in this process: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.run(["lfvit", *argv])
    return status, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_command_answers_help(command, flag):
    status, out, err = lfvit(command, flag)
    assert status == 0 and not err
    assert out.startswith(f"usage: lfvit {command}")
    listed = set(re.findall(r"^  --(\w+)", out, re.M))
    fv = cli.app.new_flags(cli.command(command))
    assert {fv[name].name for name in fv} <= listed  # every flag, with its line of help


def test_the_command_list():
    status, out, _ = lfvit("--help")
    assert status == 0 and all(f"  {name} " in out for name in cli.COMMANDS)
    assert lfvit()[0] == 2
    status, _, err = lfvit("fly")
    assert status == 2 and "unknown command 'fly'" in err


@pytest.mark.slow
def test_a_fresh_environment_gets_the_lfvit_command(tmp_path):
    """`pip install .` into a new venv (the dependencies from this one), then `lfvit` from
    another folder finds the packaged configs."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                    str(ROOT)], check=True, env=env, cwd=tmp_path)
    run = subprocess.run([str(venv / "bin" / "lfvit"), "flops", "--config", "demo"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert '"stage1_gflops": 0.0026224' in run.stdout
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import lfvit_jax; print(lfvit_jax.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, check=True)
    assert str(venv) in where.stdout  # the installed copy, not the checkout
