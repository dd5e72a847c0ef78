"""Forkyard: background coding agents in git worktrees, driven from your editor's chat."""

__version__ = "0.1.0"
