"""Running a command-line entry point: flags parsed into a fresh FlagValues (so a command can run
in-process several times), every failure one short message (exit status 2 for a wrong command
line, 1 for a failed run); tracebacks and library logs only with --verbosity 1 or more.
"""
import contextlib
import gc
import logging
import re
import sys
import traceback
import warnings

from absl import app, flags
from absl import logging as absl_logging

from lfvit_jax.core.config_args import load_config
from lfvit_jax.core.errors import UsageError


def run(define, main, argv=None):
    """Defines the flags (`define(fv, argv)`), parses `argv`, runs `main(fv)`; the exit status."""
    argv = list(sys.argv if argv is None else argv)
    fv = flags.FlagValues()
    flags.DEFINE_integer("verbosity", 0, "1 or more: library logs, and a traceback with any "
                         "error.", short_name="v", flag_values=fv)
    flags.DEFINE_bool("help", False, "Show the flags and exit.", flag_values=fv)
    define(fv, argv)

    def parse_and_run():
        try:
            fv(argv)
        except Exception as e:  # noqa: BLE001  (absl and config_flags raise many kinds)
            raise UsageError(describe_flag_error(e, fv, argv)) from e
        _check_config_files(fv)
        if fv.help:
            print(fv.get_help())
        else:
            main(fv)

    return guarded(parse_and_run, argv)


def guarded(fn, argv=None):
    """Runs `fn()` quietly (unless argv has --verbosity >= 1): exit status 0, 2 (usage) or 1."""
    argv = list(sys.argv if argv is None else argv)
    verbose = _verbosity(argv) >= 1
    with _quiet(verbose):
        try:
            fn()
            return 0
        except SystemExit as e:
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
                return 1
            return e.code or 0
        except KeyboardInterrupt:
            print("Interrupted.", file=sys.stderr)
            return 130
        except Exception as e:  # noqa: BLE001  (the point: one clear message, not a traceback)
            if verbose:
                traceback.print_exc()
            usage = any(isinstance(x, (UsageError, app.UsageError, flags.Error)) for x in _chain(e))
            print(f"Error: {shorten(str(e) or type(e).__name__)}", file=sys.stderr)
            if usage:
                print(f"(see {argv[0]} --help for the flags)", file=sys.stderr)
            elif not verbose:
                print("(--verbosity=1 shows the traceback)", file=sys.stderr)
            return 2 if usage else 1


def shorten(message, max_lines=12, max_chars=2000):
    lines = message.strip().splitlines()
    short = "\n".join(lines[:max_lines])[:max_chars]
    if len(short) < len("\n".join(lines)):
        short += " ... (--verbosity=1 shows all of it)"
    return short


def _chain(e):
    while e is not None:
        yield e
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)


def _verbosity(argv):
    for i, arg in enumerate(argv):
        if m := re.fullmatch(r"--?(?:verbosity|v)(?:=(-?\d+))?", arg):
            value = m.group(1) or (argv[i + 1] if i + 1 < len(argv) else "0")
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


@contextlib.contextmanager
def _quiet(verbose):
    """INFO logs when verbose; else only library errors and no warnings (ours always show)."""
    hook, before = sys.unraisablehook, absl_logging.get_verbosity()
    aio = logging.getLogger("asyncio")
    aio_level = aio.level
    absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.ERROR)
    ours, handler = logging.getLogger("lfvit_jax"), _Stderr()
    ours.setLevel(logging.INFO if verbose else logging.WARNING)
    ours.addHandler(handler)
    ours.propagate = False
    with warnings.catch_warnings():
        if not verbose:
            sys.unraisablehook = _unraisable_dropped
            aio.setLevel(logging.CRITICAL)
            warnings.simplefilter("ignore")
        try:
            yield
        finally:
            absl_logging.set_verbosity(before)
            aio.setLevel(aio_level)
            ours.removeHandler(handler)
            ours.propagate = True
            if not verbose:
                gc.collect()  # abandoned coroutines report now, while they are dropped
                sys.unraisablehook = hook


def _unraisable_dropped(unraisable):
    """Exceptions Python cannot raise (finalizers, abandoned coroutines): a failed orbax restore
    leaves thousands after the error that matters was raised; --verbosity=1 shows them."""
    del unraisable


class _Stderr(logging.Handler):
    """Writes to whatever sys.stderr is at the time (a handler made earlier keeps a stale one)."""

    def emit(self, record):
        print(f"{record.levelname}: {record.getMessage()}", file=sys.stderr, flush=True)


def _config_flags(fv):
    return [name for name, flag in fv._flags().items()
            if type(flag).__name__.endswith("ConfigFlag")]


def _spec(name, argv):
    """The value given to --name in argv (`--name=X` or `--name X`), or None."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _loaded_config(fv, name, argv):
    """The config flag's ConfigDict, loaded again from argv when parsing stopped before it."""
    value = fv[name].value
    if value is not None and type(value).__name__ != "_ErrorConfig":
        return value
    try:
        return load_config(_spec(name, argv) or "")
    except Exception:  # noqa: BLE001  (then the file's own error is reported instead)
        return None


def _check_config_files(fv):
    """config_flags defers a config file's load error to its first use: raise it now."""
    for name in _config_flags(fv):
        value = fv[name].value
        if type(value).__name__ == "_ErrorConfig":
            try:
                value.keys()
            except Exception as e:  # noqa: BLE001
                raise UsageError(_config_file_error(name, fv[name].config_filename, e)) from e


def _config_file_error(name, filename, error):
    inner = list(_chain(error))[-1]
    if isinstance(inner, (FileNotFoundError, OSError)) and "No such file" in str(inner):
        return (f"--{name}={filename}: no such config file. Give a path such as "
                "configs/demo.py, with an optional :argument (configs/demo.py:runlocal).")
    return f"--{name}: {shorten(str(inner), 3)}"


def _keys_at(config, path):
    """(the first missing key of a dotted path, where, the keys accepted there), or None."""
    node, done = config, []
    for key in path.split("."):
        if not hasattr(node, "keys") or key not in node:
            accepted = sorted(node.keys()) if hasattr(node, "keys") else []
            return ".".join(done + [key]), ".".join(done) or "the config", accepted
        node, done = node[key], done + [key]
    return None


def describe_flag_error(error, fv, argv):
    """One readable line for a failure while parsing the command line."""
    inner = list(_chain(error))[-1]
    named = re.match(r"flag --([\w.]+)=", str(error))
    flag = getattr(error, "flagname", None) or (named.group(1) if named else None)
    for name in _config_flags(fv):
        overrides = [a.split("=", 1)[0].lstrip("-")[len(name) + 1:] for a in argv
                     if re.match(rf"--?{re.escape(name)}\.", a)]
        config = _loaded_config(fv, name, argv) if overrides else None
        for path in overrides if config is not None else ():
            missing = _keys_at(config, path)
            if missing:
                key, where, accepted = missing
                return (f"Unknown config key --{name}.{key}: {where} has the keys {accepted}. "
                        "Fix the spelling.")
        if overrides and _spec(name, argv) is None:
            return (f"--{name}.{overrides[0]} changes a config file's value, so it needs "
                    f"--{name} (the run's own: --{name}=WORKDIR/config.json is not a config "
                    "file; give the file it was made from).")
        if flag and flag.startswith(f"{name}."):
            return f"Bad value for --{flag}: {inner}."
        if flag == name:
            return _config_file_error(name, (_spec(name, argv) or "").partition(":")[0], error)
    if isinstance(error, flags.UnrecognizedFlagError):
        return f"{error}. Check the spelling; --help lists the flags."
    return shorten(str(error), 3)
