"""`forkyard cluster check [--json] [--address A]`: whether the configured cluster can
run agents now, and if not, why: the same bridge, probe and join a dispatch uses, then
Ray's version, the live nodes, the CPUs free, and the Forkyard a node runs (an agent
needs the same one there)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

import forkyard
from forkyard.cluster.config import ClusterSettings
from forkyard.cluster.link import BridgeLink, ClusterUnavailable, NodeLost


async def cluster_report(config: ClusterSettings) -> dict[str, Any]:
    """`usable`, and `reason` when not; with the cluster's figures when it is."""
    report: dict[str, Any] = {"address": config.address, "forkyard": forkyard.__version__}
    if not config.address:
        return {
            **report,
            "usable": False,
            "reason": "no cluster is configured: set [cluster] address",
        }
    scratch = Path(await anyio.to_thread.run_sync(tempfile.mkdtemp))
    link = await BridgeLink.start(scratch, config.address, quiet=True)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(link.read_forever)
            try:
                with anyio.fail_after(config.connect_timeout_seconds + 30):
                    await link.call(
                        "connect", address=config.address, timeout=config.connect_timeout_seconds
                    )
                    found = await link.call("check")
                report.update(found, usable=True, reason=None)
                if found["nodeForkyard"] != forkyard.__version__:
                    report.update(
                        usable=False,
                        reason=f"the nodes run Forkyard {found['nodeForkyard']}, this is "
                        f"{forkyard.__version__}",
                    )
            except (ClusterUnavailable, NodeLost, RuntimeError) as exc:
                report.update(usable=False, reason=str(exc).removeprefix("placement: "))
            except TimeoutError:
                report.update(usable=False, reason="the cluster did not answer")
            finally:
                await link.close()
                group.cancel_scope.cancel()
    finally:
        await anyio.to_thread.run_sync(_remove_empty, scratch)
    return report


def _remove_empty(path: Path) -> None:
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def render(report: dict[str, Any]) -> str:
    address = report["address"] or "(none)"
    if not report["usable"]:
        return f"cluster {address}: not usable: {report['reason']}"
    nodes = report["nodes"]
    return "\n".join(
        [
            f"cluster {address}: usable",
            f"  Ray {report['rayVersion']}, {len(nodes)} node(s): {', '.join(nodes)}",
            f"  CPUs: {report['cpus']:g}, {report['freeCpus']:g} free",
            f"  Forkyard on the nodes: {report['nodeForkyard']}",
        ]
    )


async def run_check(config: ClusterSettings, *, as_json: bool) -> int:
    report = await cluster_report(config)
    print(json.dumps(report) if as_json else render(report))
    return 0 if report["usable"] else 1
