"""The small argument language of config files: `configs/x.py:runlocal,res=288,m=6`."""
import ml_collections


def parse_arg(arg, **defaults):
    """Parses `key=value,flag` into a ConfigDict, typed after `defaults`.

    A bare word is a boolean flag set to True. Keys not in `defaults` are an error, so a typo
    in a command line never passes silently.
    """
    out = ml_collections.ConfigDict(dict(defaults))
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(
                f"Unknown config argument {key!r}; this config accepts {sorted(defaults)}.")
        default = defaults[key]
        if not _:
            out[key] = True
        elif isinstance(default, bool):
            out[key] = value.lower() in ("1", "true", "yes", "on")
        elif default is None:
            out[key] = value
        else:
            out[key] = type(default)(value)
    return out


def load_config(spec):
    """`demo.py:runlocal` (or a path to any config file, with an optional `:arg`) -> its config.

    A bare file name is looked up in the configs shipped with an installed package
    (`lfvit_jax/configs/`), then in the `configs/` folder of a source checkout, so notebooks
    and scripts need no path to the repository.
    """
    import importlib.util
    import pathlib

    path, _, arg = spec.partition(":")
    here = pathlib.Path(__file__).resolve().parent
    candidates = [pathlib.Path(path), here / "configs" / path, here.parent / "configs" / path]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise ValueError(f"Config {path!r} not found; looked at {[str(c) for c in candidates]}.")
    module_spec = importlib.util.spec_from_file_location(f"lfvit_config_{found.stem}", found)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)
