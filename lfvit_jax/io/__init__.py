"""Files: local and gs:// paths, checkpoints and their checksums, foreign state_dicts, the run
folder."""
