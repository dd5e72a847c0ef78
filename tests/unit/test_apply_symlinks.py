"""Apply never writes through a symbolic link or outside the checkout (issue 12, property
4), on real repositories with real links: a committed link the agent turned into a
folder or a file, dangling or not, in the middle of a path or at its end, links the agent
made, and links swapped in between the plan and the write. Each case runs both ways an
apply reaches the disk: an editor with resource operations (which follows links, as
editors do) and the server writing files itself."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from lsprotocol import types
from pygls.uris import to_fs_path

from forkyard.lsp.edits import build_workspace_edit, checked_uri
from forkyard.lsp.review import _read_disk_texts
from forkyard.workspace import confined
from forkyard.workspace.apply import FilePlan, confine_plans, paths_to_read, plan_change_apply
from forkyard.workspace.confined import UnsafePathError
from forkyard.workspace.diff import parse_zero_context_diff
from forkyard_protocol.models import Conflict, FileChange
from tests.e2e.editor import apply_text_edits
from tests.helpers import git

pytestmark = pytest.mark.timeout(60)

MODES = ["editor-writes", "server-writes"]


@dataclass
class Setup:
    outside: Path
    root: Path
    worktree: Path
    base: str

    def agent(self, script: str) -> None:
        """The agent's work, done in its worktree with a real shell."""
        subprocess.run(["sh", "-c", script], cwd=self.worktree, check=True)

    def outside_files(self) -> list[str]:
        return sorted(str(p.relative_to(self.outside)) for p in self.outside.rglob("*"))


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    """A checkout with committed links pointing out of it, next to an `outside` folder
    that must stay as it is, and an agent worktree made from that commit."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("the user's secret\n")
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "app.txt").write_text("one\ntwo\n")
    (root / "other.txt").write_text("other\n")
    (root / "a").mkdir()
    (root / "a" / "keep.txt").write_text("keep\n")
    (root / "link").symlink_to("../outside")
    (root / "conf.txt").symlink_to("../outside/conf.txt")  # dangling
    (root / "secret.txt").symlink_to("../outside/secret.txt")
    (root / "a" / "b").symlink_to("../../outside")
    (root / "docs").symlink_to("app.txt")  # a link inside the checkout
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    base = git(root, "rev-parse", "HEAD").strip()
    worktree = tmp_path / "worktree"
    git(root, "worktree", "add", "-q", "--detach", str(worktree), base)
    return Setup(outside, root, worktree, base)


@dataclass
class Outcome:
    conflicts: list[Conflict]
    plans: list[FilePlan]
    edit: types.WorkspaceEdit
    failed: dict[str, str] = field(default_factory=dict)

    def reasons(self) -> dict[str, str]:
        return {c.path: c.reason for c in self.conflicts}


def agent_changes(setup: Setup) -> list[FileChange]:
    git(setup.worktree, "add", "-A")
    patch = git(setup.worktree, "diff", "--cached", "-U0", "-M", "--full-index", setup.base)
    return parse_zero_context_diff(patch, setup.root)


def agent_text(worktree: Path, path: str) -> str | None:
    target = worktree / path
    if target.is_symlink():
        return os.readlink(target)
    return target.read_text() if target.is_file() else None


def base_text(setup: Setup, path: str) -> str | None:
    listed = git(setup.root, "ls-tree", setup.base, "--", path)
    return git(setup.root, "show", f"{setup.base}:{path}") if listed else None


def plan(setup: Setup, changes: list[FileChange]) -> tuple[list[FilePlan], list[Conflict]]:
    """What `Review.apply` plans: the three-way plans from the user's texts (read without
    following links), then everything touching a link or leaving the root refused."""
    by_path = {change.path: change for change in changes}  # as the review keeps them
    plans: list[FilePlan] = []
    conflicts: list[Conflict] = []
    for change in by_path.values():
        current = _read_disk_texts(setup.root, paths_to_read(change))
        base = (
            None if change.status == "added" else base_text(setup, change.old_path or change.path)
        )
        agent = None if change.status == "deleted" else agent_text(setup.worktree, change.path)
        for file_plan in plan_change_apply(change, base, agent, current):
            plans.append(file_plan)
            conflicts += file_plan.conflicts
    problems = confined.apply_problems(
        setup.root,
        setup.worktree,
        [p.path for p in plans],
        [c.path for c in by_path.values() if c.status != "deleted"],
    )
    plans, refused, dropped = confine_plans(plans, list(by_path.values()), problems)
    return plans, [c for c in conflicts if c.path not in dropped] + refused


def naive_editor(edit: types.WorkspaceEdit) -> None:
    """An editor applying the edit the way editors do: following links."""
    for change in edit.document_changes or []:
        if isinstance(change, types.CreateFile):
            path = Path(to_fs_path(change.uri) or change.uri)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        elif isinstance(change, types.DeleteFile):
            Path(to_fs_path(change.uri) or change.uri).unlink(missing_ok=True)
        elif isinstance(change, types.TextDocumentEdit):
            path = Path(to_fs_path(change.text_document.uri) or "")
            text = path.read_text() if path.exists() else ""
            path.write_text(apply_text_edits(text, list(change.edits)))  # type: ignore[arg-type]
    for uri, edits in (edit.changes or {}).items():
        path = Path(to_fs_path(uri) or uri)
        path.write_text(apply_text_edits(path.read_text(), list(edits)))


def assert_inside(root: Path, edit: types.WorkspaceEdit) -> None:
    """Every URI of the edit names a path in the checkout with no link on the way."""
    uris = list((edit.changes or {}).keys())
    for change in edit.document_changes or []:
        uris.append(
            change.text_document.uri if isinstance(change, types.TextDocumentEdit) else change.uri  # type: ignore[union-attr]
        )
    for uri in uris:
        assert uri.startswith("file://"), uri
        relative = Path(to_fs_path(uri) or "").relative_to(root).as_posix()
        assert confined.checkout_problem(root, relative) is None, uri


def apply(setup: Setup, mode: str) -> Outcome:
    plans, conflicts = plan(setup, agent_changes(setup))
    texts = _read_disk_texts(setup.root, [p.path for p in plans])
    editor = mode == "editor-writes"
    build = build_workspace_edit(
        plans,
        setup.root,
        texts,
        {},
        encoding="utf-16",
        document_changes=True,
        resource_operations={"create", "delete", "rename"} if editor else set(),
    )
    assert_inside(setup.root, build.edit)
    naive_editor(build.edit)
    failed = confined.write_files(setup.root, build.server_writes)
    return Outcome(conflicts, plans, build.edit, failed)


def link_reason(path: str) -> str:
    return f"{path}: is a symbolic link in your checkout; Forkyard does not write through links"


@pytest.mark.parametrize("mode", MODES)
def test_a_link_the_agent_turned_into_a_folder_is_a_conflict(setup: Setup, mode: str) -> None:
    setup.agent(
        "rm link && mkdir link && echo pwned > link/pwned.txt"
        " && echo three >> app.txt && echo new > new.txt"
    )
    outcome = apply(setup, mode)
    assert setup.outside_files() == ["secret.txt"], "nothing written outside"
    assert outcome.reasons()["link/pwned.txt"] == link_reason("link")
    assert outcome.reasons()["link"] == link_reason("link"), "nor is the link itself removed"
    assert os.readlink(setup.root / "link") == "../outside"
    assert (setup.root / "app.txt").read_text() == "one\ntwo\nthree\n", "the rest landed"
    assert (setup.root / "new.txt").read_text() == "new\n"
    assert outcome.failed == {}


@pytest.mark.parametrize("mode", MODES)
def test_a_dangling_link_turned_into_a_file_is_a_conflict(setup: Setup, mode: str) -> None:
    setup.agent("rm conf.txt && echo 'owned = true' > conf.txt && echo three >> app.txt")
    outcome = apply(setup, mode)
    assert not (setup.outside / "conf.txt").exists()
    assert setup.outside_files() == ["secret.txt"]
    assert outcome.reasons() == {"conf.txt": link_reason("conf.txt")}
    assert os.readlink(setup.root / "conf.txt") == "../outside/conf.txt"
    assert (setup.root / "app.txt").read_text() == "one\ntwo\nthree\n"


@pytest.mark.parametrize("mode", MODES)
def test_a_link_to_a_file_outside_is_neither_written_nor_read(setup: Setup, mode: str) -> None:
    setup.agent("rm secret.txt && echo 'replaced' > secret.txt && echo x > other.txt")
    assert _read_disk_texts(setup.root, ["secret.txt"]) == {"secret.txt": None}
    outcome = apply(setup, mode)
    assert (setup.outside / "secret.txt").read_text() == "the user's secret\n"
    assert outcome.reasons() == {"secret.txt": link_reason("secret.txt")}
    assert (setup.root / "other.txt").read_text() == "x\n"


@pytest.mark.parametrize("mode", MODES)
def test_a_folder_link_in_the_middle_of_the_path(setup: Setup, mode: str) -> None:
    setup.agent("rm a/b && mkdir -p a/b/c && echo deep > a/b/c/deep.txt && echo k2 > a/k2.txt")
    outcome = apply(setup, mode)
    assert setup.outside_files() == ["secret.txt"]
    assert outcome.reasons()["a/b/c/deep.txt"] == link_reason("a/b")
    assert (setup.root / "a" / "k2.txt").read_text() == "k2\n"


@pytest.mark.parametrize("mode", MODES)
def test_links_the_agent_made_are_not_applied(setup: Setup, mode: str) -> None:
    setup.agent(
        "ln -s ../outside newlink && ln -s /etc/passwd pass.txt"
        " && rm other.txt && ln -s ../outside/secret.txt other.txt && echo three >> app.txt"
    )
    outcome = apply(setup, mode)
    agent_link = "is a symbolic link in the agent's worktree; Forkyard does not write links"
    assert outcome.reasons() == {
        "newlink": f"newlink: {agent_link}",
        "pass.txt": f"pass.txt: {agent_link}",
        "other.txt": f"other.txt: {agent_link}",
    }
    assert not (setup.root / "newlink").exists()
    assert not (setup.root / "pass.txt").exists()
    assert (setup.root / "other.txt").read_text() == "other\n", "the user's file unchanged"
    assert (setup.root / "app.txt").read_text() == "one\ntwo\nthree\n"
    assert setup.outside_files() == ["secret.txt"]


@pytest.mark.parametrize("mode", MODES)
def test_a_link_of_the_checkout_the_agent_changes_is_kept(setup: Setup, mode: str) -> None:
    setup.agent("ln -sfn other.txt docs")
    outcome = apply(setup, mode)
    assert outcome.reasons() == {"docs": link_reason("docs")}
    assert os.readlink(setup.root / "docs") == "app.txt"


@pytest.mark.parametrize("mode", MODES)
def test_a_folder_the_user_replaced_by_a_link_since_the_agent_started(
    setup: Setup, mode: str
) -> None:
    (setup.outside / "keep.txt").write_text("outside's keep\n")
    setup.agent("rm a/keep.txt && echo more >> app.txt")
    os.rename(setup.root / "a", setup.root / "a-old")
    (setup.root / "a").symlink_to("../outside")
    outcome = apply(setup, mode)
    assert outcome.reasons() == {"a/keep.txt": link_reason("a")}
    assert (setup.outside / "keep.txt").read_text() == "outside's keep\n", "not deleted"


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("../outside/x.txt", "'..'"),
        ("a/../../outside/x.txt", "'..'"),
        ("/tmp/x.txt", "absolute"),
        ("a/./x.txt", "'.'"),
        ("a//x.txt", "empty"),
        ("a/\0x.txt", "NUL"),
        (".git/hooks/post-checkout", ".git"),
        ("sub/.GIT/config", ".git"),
        ("", "empty"),
    ],
)
def test_paths_that_could_leave_the_root_are_refused_everywhere(
    setup: Setup, path: str, words: str
) -> None:
    problem = confined.checkout_problem(setup.root, path)
    assert problem is not None
    assert words in problem
    with pytest.raises(UnsafePathError, match=words.replace(".", r"\.")):
        checked_uri(setup.root, path)
    with pytest.raises(UnsafePathError):
        build_workspace_edit(
            [FilePlan(path, "create", "x\n")],
            setup.root,
            {},
            {},
            encoding="utf-16",
            document_changes=True,
            resource_operations={"create"},
        )
    assert path in confined.write_files(setup.root, {path: "x\n"})
    assert confined.read_text(setup.root, path) is None
    assert setup.outside_files() == ["secret.txt"]
    assert not (setup.root / ".git" / "hooks" / "post-checkout").exists()


def test_the_refused_change_replaces_conflicts_made_from_texts_behind_a_link() -> None:
    rename = FileChange(path="new.txt", uri="file:///r/new.txt", old_path="link", status="renamed")
    plans = [
        FilePlan("link", "delete", None),
        FilePlan("new.txt", "create", "x\n", conflicts=[Conflict(path="new.txt", reason="old")]),
        FilePlan("ok.txt", "create", "ok\n"),
    ]
    ok = FileChange(path="ok.txt", uri="file:///r/ok.txt", status="added")
    confined_plans, conflicts, dropped = confine_plans(
        plans, [rename, ok], {"link": link_reason("link")}
    )
    assert [p.kind for p in confined_plans] == ["noop", "noop", "create"], "the rename is whole"
    assert conflicts == [Conflict(path="link", reason=link_reason("link"))], "reported once"
    assert dropped == {"link", "new.txt"}


def test_a_folder_swapped_for_a_link_between_plan_and_write_is_not_followed(
    setup: Setup,
) -> None:
    (setup.root / "sub").mkdir()
    setup.agent("mkdir -p sub/deeper && echo new > sub/deeper/new.txt && echo x > sub/x.txt")
    plans, conflicts = plan(setup, agent_changes(setup))
    assert conflicts == []
    build = build_workspace_edit(
        plans, setup.root, {}, {}, encoding="utf-16", document_changes=True,
        resource_operations=set(),
    )  # fmt: skip
    assert set(build.server_writes) == {"sub/deeper/new.txt", "sub/x.txt"}
    os.rename(setup.root / "sub", setup.root / "sub-moved")
    (setup.root / "sub").symlink_to("../outside")
    failed = confined.write_files(setup.root, build.server_writes)
    assert failed == {"sub/deeper/new.txt": link_reason("sub"), "sub/x.txt": link_reason("sub")}
    assert setup.outside_files() == ["secret.txt"]


def test_a_link_swapped_in_after_the_folders_were_opened_is_not_followed(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worst moment: the folders on the way are already open when the attacker moves
    the folder away and puts a link there, and a link appears where the file goes."""
    (setup.root / "sub").mkdir()

    def swap(path: str) -> None:
        if path == "sub/x.txt":
            os.rename(setup.root / "sub", setup.root / "sub-moved")
            (setup.root / "sub").symlink_to("../outside")
        if path == "y.txt":
            (setup.root / "y.txt").symlink_to("../outside/y.txt")
        if path == "other.txt":
            os.remove(setup.root / "other.txt")
            (setup.root / "other.txt").symlink_to("../outside/secret.txt")

    monkeypatch.setattr(confined, "before_final_open", swap)
    failed = confined.write_files(
        setup.root, {"sub/x.txt": "x\n", "y.txt": "y\n", "other.txt": None}
    )
    assert set(failed) == {"y.txt", "other.txt"}
    assert failed["y.txt"] == link_reason("y.txt")
    assert failed["other.txt"] == link_reason("other.txt")
    assert setup.outside_files() == ["secret.txt"]
    assert (setup.outside / "secret.txt").read_text() == "the user's secret\n"
    assert (setup.root / "sub-moved" / "x.txt").read_text() == "x\n", "the folder it opened"
    assert os.readlink(setup.root / "other.txt") == "../outside/secret.txt", "link not removed"


def test_the_server_never_replaces_a_file_that_appeared_since_the_plan(setup: Setup) -> None:
    (setup.root / "late.txt").write_text("the user's\n")
    failed = confined.write_files(setup.root, {"late.txt": "agent's\n", "fresh/f.txt": "f\n"})
    assert failed == {
        "late.txt": "late.txt: a file appeared there since the apply was planned; it was kept"
    }
    assert (setup.root / "late.txt").read_text() == "the user's\n"
    assert (setup.root / "fresh" / "f.txt").read_text() == "f\n"


def test_reads_stop_at_links_and_at_what_is_not_a_file(setup: Setup) -> None:
    (setup.outside / "pwned.txt").write_text("outside\n")
    os.mkfifo(setup.root / "fifo")
    texts = _read_disk_texts(
        setup.root, ["link/pwned.txt", "secret.txt", "docs", "a", "fifo", "app.txt", "none"]
    )
    assert texts == {
        "link/pwned.txt": None,
        "secret.txt": None,
        "docs": None,
        "a": None,
        "fifo": None,
        "app.txt": "one\ntwo\n",
        "none": None,
    }
