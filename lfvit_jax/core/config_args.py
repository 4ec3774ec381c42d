"""The small argument language of config files: `configs/x.py:runlocal,res=288,m=6`."""
import ml_collections

from lfvit_jax.core.errors import UsageError

BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


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
        out[key] = _value(key, value if eq else None, defaults[key])
    return out


def given(arg):
    """The keys an argument string sets explicitly (`runlocal,m=3` -> {'runlocal', 'm'})."""
    return {item.partition("=")[0].strip() for item in filter(None, (arg or "").split(","))}


def _value(key, value, default):
    if isinstance(default, bool):
        if value is None:
            return True
        if value.lower() not in BOOLEANS:
            raise UsageError(f"Config argument {key}={value!r}: a boolean is one of "
                             f"{sorted(BOOLEANS)} (or the bare word {key!r} for true).")
        return BOOLEANS[value.lower()]
    if value is None:
        raise UsageError(f"Config argument {key!r} needs a value: {key}=<{type(default).__name__}>"
                         f" (default {default!r}).")
    if default is None:
        return value
    try:
        return type(default)(value)
    except ValueError:
        raise UsageError(f"Config argument {key}={value!r} is not a valid "
                         f"{type(default).__name__} (default {default!r}).") from None


def load_config(spec):
    """`demo.py:runlocal` (or any config file path, with an optional `:arg`) -> its config; a bare
    name is looked up in `lfvit_jax/configs/` (installed) and then the checkout's `configs/`."""
    import importlib.util
    import pathlib

    path, _, arg = spec.partition(":")
    package = pathlib.Path(__file__).resolve().parents[1]
    candidates = [pathlib.Path(path), package / "configs" / path, package.parent / "configs" / path]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise UsageError(f"Config {path!r} not found; looked at {[str(c) for c in candidates]}.")
    module_spec = importlib.util.spec_from_file_location(f"lfvit_config_{found.stem}", found)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)
