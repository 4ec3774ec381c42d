"""Executes notebooks headless (kernel python3) and prints each one's wall time; how the README's
notebook times were measured. Executed copies, outputs included, go to --out.

  python colabs/run_notebooks.py                                   # all, full setting
  LFVIT_NOTEBOOK_FAST=1 python colabs/run_notebooks.py quickstart  # the tests' fast setting
"""
import argparse
import glob
import os
import time

import nbformat
from nbclient import NotebookClient

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help="notebook names without .ipynb (default: all)")
    p.add_argument("--out", default=os.path.join(HERE, "executed"),
                   help="folder for the executed copies")
    args = p.parse_args()
    paths = ([os.path.join(HERE, f"{n}.ipynb") for n in args.names] if args.names
             else sorted(glob.glob(os.path.join(HERE, "*.ipynb"))))
    os.makedirs(args.out, exist_ok=True)
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        NotebookClient(nb, timeout=1200, kernel_name="python3",
                       resources={"metadata": {"path": HERE}}).execute()
        seconds = time.perf_counter() - start
        nbformat.write(nb, os.path.join(args.out, os.path.basename(path)))
        print(f"{os.path.basename(path)}: {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
