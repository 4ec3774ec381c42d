"""The command line: entry points, flag parsing and the one place errors are printed."""
