"""Configs from the command line: config files by name or path with their small argument language
(`demo:runlocal`, `configs/lfvit_deit_s.py:res=288,m=6`), and `--config.KEY=VALUE` overrides typed
after the value they replace. Pure Python: no JAX."""
import ast
import importlib.util
import pathlib

import ml_collections

from lfvit_jax.core.errors import UsageError

BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
PACKAGE = pathlib.Path(__file__).resolve().parents[1]
# Installed, the configs ship as lfvit_jax/configs; in a checkout they sit beside the package.
CONFIG_DIRS = (PACKAGE / "configs", PACKAGE.parent / "configs")


def parse_arg(arg, **defaults):
    """Parses `key=value,flag` into a ConfigDict, typed after `defaults` (a bare word sets a
    boolean); unknown keys, wrong types and repeats are UsageErrors: no typo passes silently."""
    out = ml_collections.ConfigDict(dict(defaults))
    seen = set()
    for item in filter(None, (arg or "").split(",")):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if key not in defaults:
            raise UsageError(f"Unknown config argument {key!r}; this config accepts "
                             f"{sorted(defaults)}.")
        if key in seen:
            raise UsageError(f"Config argument {key!r} is given twice.")
        seen.add(key)
        if value == "" and not eq and not isinstance(defaults[key], bool):
            raise UsageError(f"Config argument {key!r} needs a value: {key}=<"
                             f"{type(defaults[key]).__name__}> (default {defaults[key]!r}).")
        out[key] = typed(f"Config argument {key}", value if eq else "true", defaults[key])
    return out


def given(arg):
    """The keys an argument string sets explicitly (`runlocal,m=3` -> {'runlocal', 'm'})."""
    return {item.partition("=")[0].strip() for item in filter(None, (arg or "").split(","))}


def typed(what, text, like):
    """`text` as a value of the type of `like` (bool, int, float, str, tuple/list, or None: a
    Python literal, else the string); a UsageError names `what` and the type wanted."""
    try:
        if isinstance(like, bool):
            return BOOLEANS[text.lower()]
        if isinstance(like, (int, float)):
            return type(like)(text)
        if isinstance(like, (tuple, list)):
            value = ast.literal_eval(text if text.strip().startswith(("(", "[")) else f"({text},)")
            if not isinstance(value, (tuple, list)):
                raise ValueError(text)
            return type(like)(value)
        if like is None:
            try:
                return ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return text
        return text
    except (KeyError, ValueError, SyntaxError):
        kind = {bool: "a boolean (" + "/".join(BOOLEANS) + ")", int: "an integer",
                float: "a number", tuple: "a tuple", list: "a list"}.get(type(like), "valid")
        raise UsageError(f"{what}={text!r} is not {kind} (default {like!r}).") from None


def find_config(name):
    """The file of config `name`: a path, or a name in the configs folder (with or without .py)."""
    path = pathlib.Path(name)
    stem = name if name.endswith(".py") else f"{name}.py"
    candidates = [path] + [folder / stem for folder in CONFIG_DIRS]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        known = sorted({p.stem for d in CONFIG_DIRS if d.is_dir() for p in d.glob("[!_]*.py")})
        raise UsageError(f"Config {name!r} not found: give a path to a config file or one of the "
                         f"packaged configs {known}, with an optional :argument (demo:runlocal).")
    return found


def load_config(spec):
    """`demo:runlocal`, `demo.py`, `configs/lfvit_deit_s.py:res=288` -> the config it returns."""
    name, _, arg = spec.partition(":")
    found = find_config(name)
    module_spec = importlib.util.spec_from_file_location(f"lfvit_config_{found.stem}", found)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def override(config, key, text):
    """Sets dotted `key` of `config` to `text`, typed after the value it replaces."""
    node, parts = config, key.split(".")
    for depth, part in enumerate(parts):
        where = ".".join(["config"] + parts[:depth])
        if not isinstance(node, ml_collections.ConfigDict):
            raise UsageError(f"--config.{key}: {where} is a value, not a section.")
        if part not in node:
            raise UsageError(f"Unknown config key --config.{'.'.join(parts[:depth + 1])}: {where} "
                             f"has the keys {sorted(node.keys())}. Fix the spelling.")
        if depth < len(parts) - 1:
            node = node[part]
    old = node[parts[-1]]
    if isinstance(old, ml_collections.ConfigDict):
        raise UsageError(f"--config.{key} is a section; set one of its keys: {sorted(old.keys())}.")
    node[parts[-1]] = typed(f"--config.{key}", text, old)
