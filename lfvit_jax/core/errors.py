"""The library's one usage-error type: what the user asked for (a flag, a config key or value)
is wrong. The command line prints it as `Error: ...` with exit status 2; every other failure exits 1.
"""


class UsageError(ValueError):
    """A wrong command line, config key or config value."""
