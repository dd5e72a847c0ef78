"""Agents placed on a Ray cluster (`[cluster]`, `placement = "cluster"`).

Nothing in this package imports Ray at module level: a daemon with no cluster configured
never loads it (held by a test). `driver.py` is the daemon's side (one Ray connection per
process), `node.py` runs inside Ray's worker processes on the nodes, `run.py` is one
agent's run on the cluster as the orchestrator's runner sees it, `bundles.py` moves work
as git bundles, `check.py` is `forkyard cluster check`.
"""
