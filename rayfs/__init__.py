"""rayfs: mount a RAYTeams account as folders with FUSE."""

__version__ = "0.1.0"
