"""Running one command: its flags parsed into a fresh FlagValues (so a command can run in-process
several times), `--help` answered before anything is required, `--config.KEY=VALUE` overrides taken
out for the config loader, and every failure one short message on stderr: exit status 2 for what
the user typed (a UsageError or a flag absl refused), 1 for a failed run, 130 when interrupted.
Tracebacks and library logs only with --verbosity 1 or more.
"""
import contextlib
import gc
import logging
import re
import sys
import textwrap
import traceback
import warnings

from absl import flags
from absl import logging as absl_logging

from lfvit_jax.core.errors import UsageError

HELP = ("-h", "--help", "-help", "--helpshort", "--helpfull")
OVERRIDE = re.compile(r"--config\.([\w.]+)(?:=(.*))?$", re.S)


def run(command, argv):
    """Runs `command` (a module of lfvit_jax.cli: `define_flags`, `main`, and optionally
    `REQUIRED`, `ARGS`, `CONFIG`) on `argv` (argv[0]: how it was called); the exit status."""
    argv = [str(a) for a in argv]
    verbose = _verbosity(argv) >= 1
    with _quiet(verbose):
        try:
            fv = new_flags(command)
            if any(a in HELP for a in argv[1:]):
                print(help_text(command, fv, argv[0]))
                return 0
            fv, overrides, args = parse(command, fv, argv)
            command.main(fv, overrides, args)
            return 0
        except SystemExit as e:
            if isinstance(e.code, str):
                print(f"Error: {e.code}", file=sys.stderr)
                return 1
            return e.code or 0
        except KeyboardInterrupt:
            print("Interrupted.", file=sys.stderr)
            return 130
        except Exception as e:  # noqa: BLE001  (the point: one clear message, not a traceback)
            if verbose:
                traceback.print_exc()
            usage = isinstance(e, (UsageError, flags.Error))
            print(f"Error: {shorten(str(e) or type(e).__name__)}", file=sys.stderr)
            if usage:
                print(f"({argv[0]} --help lists the flags)", file=sys.stderr)
            elif not verbose:
                print("(--verbosity=1 shows the traceback)", file=sys.stderr)
            return 2 if usage else 1


def new_flags(command):
    fv = flags.FlagValues()
    command.define_flags(fv)
    flags.DEFINE_integer("verbosity", 0, "1 or more: library logs, and a traceback with any "
                         "error.", short_name="v", flag_values=fv)
    return fv


def parse(command, fv, argv):
    """(flags, [(config key, text)], positional arguments), or a UsageError."""
    overrides, rest, items = [], [], iter(argv[1:])
    for arg in items:
        m = OVERRIDE.match(arg)
        if not m:
            rest.append(arg)
            continue
        value = m.group(2) if m.group(2) is not None else next(items, None)
        if value is None:
            raise UsageError(f"--config.{m.group(1)} needs a value: --config.{m.group(1)}=VALUE.")
        overrides.append((m.group(1), value))
    if overrides and not getattr(command, "CONFIG", False):
        raise UsageError(f"{argv[0]} takes no config, so no --config.{overrides[0][0]}.")
    try:
        args = fv([argv[0]] + rest)[1:]
    except flags.UnrecognizedFlagError as e:
        raise UsageError(f"Unknown flag --{e.flagname}. Check the spelling.") from None
    except flags.Error as e:
        raise UsageError(str(e)) from None
    if args and not getattr(command, "ARGS", None):
        raise UsageError(f"Unexpected argument {args[0]!r}: every input goes in a flag.")
    for name in getattr(command, "REQUIRED", ()):
        if fv[name].value is None:
            raise UsageError(f"--{name} is required: {fv[name].help.splitlines()[0].rstrip(';')}")
    return fv, overrides, args


def help_text(command, fv, prog):
    """Usage, the command's description and every flag with its default, one per entry."""
    required = " ".join(f"--{n}=..." for n in getattr(command, "REQUIRED", ()))
    usage = " ".join(filter(None, [f"usage: {prog}", getattr(command, "ARGS", None), required,
                                   "[flags]"]))
    lines = [usage, "", (command.__doc__ or "").strip(), "", "flags:"]
    seen = set()
    entries = []
    for name in fv:
        flag = fv[name]
        if id(flag) in seen:
            continue
        seen.add(id(flag))
        names = f"--{flag.name}" + (f", -{flag.short_name}" if flag.short_name else "")
        default = flag.default
        if isinstance(default, bool):
            default = str(default).lower()
        default = "" if default in (None, []) else f" (default: {default})"
        entries.append((names, flag.help + default))
    if getattr(command, "CONFIG", False):
        entries.insert(1 if entries and entries[0][0] == "--config" else 0, (
            "--config.KEY=VALUE", "change one value of the config (repeatable), typed after the "
            "value it replaces: --config.batch_size=64, --config.model.region_size=4"))
    entries.append(("--help, -h", "show this help and exit"))
    for names, text in entries:
        lines.append(f"  {names}")
        lines += textwrap.wrap(text, 96, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def shorten(message, max_lines=12, max_chars=2000):
    lines = message.strip().splitlines()
    short = "\n".join(lines[:max_lines])[:max_chars]
    if len(short) < len("\n".join(lines)):
        short += " ... (--verbosity=1 shows all of it)"
    return short


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
