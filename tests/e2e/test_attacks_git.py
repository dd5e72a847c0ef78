"""The server's own git on what a sandboxed agent left, end to end: `forkyard serve` over
stdio runs real command agents in the real sandbox on a real repository whose config
defines filter, textconv and diff drivers that would write a marker file (and the
server's environment holds secrets). The agent picks those drivers with an in-tree
`.gitattributes`, or tries to redirect its `.git`; when it ends, the server diffs and
commits its work. Nothing may run, no secret may reach a file, the user's branch, HEAD
and index stay as they were, and the server keeps answering."""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

import pytest

from forkyard.client import ForkyardClient
from tests.e2e.conftest import StartServer
from tests.helpers import git

pytestmark = pytest.mark.timeout(90)

SECRETS = {
    "OPENAI_API_KEY": "sk-forkyard-e2e-openai-0123456789",
    "AWS_SECRET_ACCESS_KEY": "forkyard-e2e-aws-secret-9876543210",
}


def user_state(repo: Path) -> dict[str, object]:
    return {
        "main": git(repo, "rev-parse", "refs/heads/main"),
        "head": (repo / ".git" / "HEAD").read_bytes(),
        "index": hashlib.sha256((repo / ".git" / "index").read_bytes()).hexdigest(),
        "config": (repo / ".git" / "config").read_bytes(),
    }


def arm_drivers(repo: Path, markers: Path) -> None:
    """The user's own config defines drivers; only an attribute can pick them."""
    markers.mkdir()
    for key in (
        "filter.x.clean",
        "filter.x.smudge",
        "filter.x.process",
        "diff.x.textconv",
        "diff.x.command",
        "merge.x.driver",
    ):
        target = shlex.quote(str(markers / key))
        git(repo, "config", key, f"env > {target}; cat")


def assert_nothing_leaked(markers: Path, *roots: Path) -> None:
    assert sorted(p.name for p in markers.iterdir()) == []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                assert not any(v.encode() in data for v in SECRETS.values()), path


async def still_answers(client: ForkyardClient) -> None:
    stats = await client.request("forkyard/server/stats", {})
    assert stats["agentsRunning"] == 0


async def test_in_tree_attributes_picking_the_users_drivers_run_nothing(
    start_server: StartServer, repo: Path, server_env: dict[str, str], tmp_path: Path
) -> None:
    markers = tmp_path / "markers"
    arm_drivers(repo, markers)
    server_env.update(SECRETS)
    before = user_state(repo)
    client = await start_server(repo)

    agent = await client.dispatch(
        "printf '* filter=x diff=x merge=x\\n' > .gitattributes"
        " && sed -i 's/a + b/b + a/' src/app.py && printf 'new\\n' > notes.txt",
        backend="command",
    )
    done = await client.wait_for_agent(agent["id"])

    assert done["state"] == "done", done
    assert done["changes"] == {"files": 3, "additions": 3, "deletions": 1}
    diff = await client.request("forkyard/agent/diff", {"agentId": agent["id"]})
    files = {f["path"]: f for f in diff["files"]}
    assert set(files) == {".gitattributes", "src/app.py", "notes.txt"}
    assert [h["text"] for h in files["src/app.py"]["hunks"]] == [
        "-    return a + b\n+    return b + a\n"
    ]
    branch = git(repo, "show", f"{done['branch']}:src/app.py")
    assert "return b + a" in branch, "the work is committed on the agent's branch"
    assert_nothing_leaked(markers, tmp_path)
    assert user_state(repo) == before
    await still_answers(client)


async def test_an_agent_redirecting_its_git_file_moves_nothing_of_the_users(
    start_server: StartServer, repo: Path, server_env: dict[str, str], tmp_path: Path
) -> None:
    """The issue's second attack: `gitdir: <user's repo>/.git` in the agent's `.git`.
    Whether the sandbox refuses the write (a read-only `.git`) or not, the server's
    commit lands on the agent's branch, never on the user's `main`."""
    markers = tmp_path / "markers"
    arm_drivers(repo, markers)
    server_env.update(SECRETS)
    before = user_state(repo)
    client = await start_server(repo)
    user_git = shlex.quote(f"gitdir: {repo / '.git'}")

    agent = await client.dispatch(
        f"printf 'agent work\\n' > work.txt; printf '* filter=x\\n' > .gitattributes;"
        f" (printf '%s\\n' {user_git} > .git) 2>/dev/null; true",
        backend="command",
    )
    done = await client.wait_for_agent(agent["id"])

    assert done["state"] in ("done", "failed"), done
    if done["state"] == "failed":
        assert "its .git was changed" in (done.get("error") or ""), done
    assert git(repo, "show", f"{done['branch']}:work.txt") == "agent work\n"
    assert (Path(done["worktree"]) / "work.txt").read_text() == "agent work\n"
    assert_nothing_leaked(markers, tmp_path)
    assert user_state(repo) == before
    assert git(repo, "status", "--porcelain") == ""
    await still_answers(client)
