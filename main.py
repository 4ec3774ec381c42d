"""Train, evaluate or predict from a checkout, as `lfvit train|eval|predict` does once installed:
`python main.py --mode eval ...` is `lfvit eval ...` (the mode defaults to train).

  python main.py --config demo --workdir workdirs/demo
  python main.py --mode predict --workdir workdirs/demo --input imgs/
"""
import re
import sys

from lfvit_jax.cli import main as cli

MODES = ("train", "eval", "predict")


def run(argv):
    """main.py's argv -> `lfvit MODE` argv; returns the exit status."""
    mode, rest, items = "train", [], iter(argv[1:])
    for arg in items:
        m = re.fullmatch(r"--mode(?:=(.*))?", arg)
        if m:
            mode = m.group(1) if m.group(1) is not None else next(items, "")
        else:
            rest.append(arg)
    if mode not in MODES:
        print(f"Error: --mode={mode} is not one of {', '.join(MODES)}.", file=sys.stderr)
        return 2
    return cli.run([argv[0], mode] + rest)


if __name__ == "__main__":
    sys.exit(run(sys.argv))
