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
