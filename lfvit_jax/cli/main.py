"""`lfvit COMMAND [flags]`: the console script. `lfvit COMMAND --help` lists a command's flags."""
import sys

from lfvit_jax.cli import app, convert, evaluate, figures, flops, match, predict, prepare, train

COMMANDS = {"train": train, "eval": evaluate, "predict": predict, "flops": flops,
            "convert": convert, "figures": figures, "match": match, "prepare": prepare}


def usage():
    width = max(map(len, COMMANDS))
    lines = ["usage: lfvit COMMAND [flags]   (lfvit COMMAND --help: its flags)", "", "commands:"]
    for name, command in COMMANDS.items():
        lines.append(f"  {name:{width}}  {command.__doc__.strip().splitlines()[0]}")
    return "\n".join(lines)


def run(argv):
    """Runs `lfvit` on argv (argv[0]: the program); returns the exit status."""
    if len(argv) < 2 or argv[1] in app.HELP:
        print(usage(), file=sys.stdout if len(argv) >= 2 else sys.stderr)
        return 0 if len(argv) >= 2 else 2
    if argv[1] not in COMMANDS:
        print(f"Error: unknown command {argv[1]!r}; one of {', '.join(COMMANDS)}.\n\n{usage()}",
              file=sys.stderr)
        return 2
    return app.run(COMMANDS[argv[1]], [f"lfvit {argv[1]}"] + list(argv[2:]))


def main():
    sys.exit(run(sys.argv))


if __name__ == "__main__":
    main()
