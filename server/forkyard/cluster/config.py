"""`[cluster]`: where agents placed on a cluster run. Kept apart from Ray so that the
settings never import it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Placement = Literal["local", "cluster"]


class ClusterSettings(BaseModel):
    """`address` as `ray.init` takes it: "auto" (a cluster started on this machine with
    `ray start`), "HOST:PORT", "ray://HOST:PORT" (Ray Client), or "local" (a private
    single-node Ray the daemon starts). None: no cluster; a dispatch that asks for one
    fails at once saying so."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = None
    #: Cluster agents running at once; the rest wait `queued`, as local ones do for
    #: `max_parallel_agents`.
    max_agents: int = Field(default=16, ge=1, le=10_000)
    #: Seconds to join the cluster before a cluster agent fails (an address nobody
    #: answers fails its dispatch at once).
    connect_timeout_seconds: float = Field(default=60.0, gt=0)
