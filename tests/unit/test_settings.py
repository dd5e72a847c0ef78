from __future__ import annotations

from pathlib import Path

from forkyard.settings import SettingsSource, load_settings, merge_sources, normalise_keys
from forkyard.trust import set_trust


def environ_for(tmp_path: Path) -> dict[str, str]:
    return {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "config")}


def trusted_repo(tmp_path: Path) -> Path:
    """A repository folder the user trusts, so its whole `.forkyard.toml` applies."""
    repo = tmp_path / "repo"
    repo.mkdir()
    set_trust(repo, environ_for(tmp_path), trusted=True)
    return repo


def test_sources_apply_in_order_later_wins(tmp_path: Path) -> None:
    env = environ_for(tmp_path)
    user_file = tmp_path / "config" / "forkyard" / "config.toml"
    user_file.parent.mkdir(parents=True)
    user_file.write_text(
        "max_parallel_agents = 3\ncommand_timeout_seconds = 10\n"
        '[models.default]\nmodel = "user-model"\nbase_url = "http://127.0.0.1:1/v1"\n'
    )
    repo = trusted_repo(tmp_path)
    (repo / ".forkyard.toml").write_text(
        'max_parallel_agents = 4\n[models.default]\nmodel = "repo-model"\n'
    )
    loaded = load_settings(
        repo,
        env,
        initialization_options={"maxParallelAgents": 5},
        client_settings={"commandTimeoutSeconds": 20},
    )
    assert loaded.problems == []
    settings = loaded.settings
    assert settings.max_parallel_agents == 5
    assert settings.command_timeout_seconds == 20
    assert settings.models["default"].model == "repo-model"
    assert settings.models["default"].base_url == "http://127.0.0.1:1/v1", "tables merge deeply"


def test_bad_keys_are_reported_by_name_and_source_and_the_rest_applies(tmp_path: Path) -> None:
    repo = trusted_repo(tmp_path)
    (repo / ".forkyard.toml").write_text(
        'max_parallel_agents = "many"\nfrobnicate = true\ncommand_timeout_seconds = 7\n'
        '[models.default]\nmodel = "m"\nprovider = "carrier-pigeon"\n'
    )
    loaded = load_settings(repo, environ_for(tmp_path), {"stateDir": 42, "maxParallelAgents": 2})
    messages = [str(p) for p in loaded.problems]
    assert any("'frobnicate'" in m and ".forkyard.toml" in m and "unknown" in m for m in messages)
    assert any("'models.default.provider'" in m for m in messages)
    assert any("'state_dir'" in m and "initializationOptions" in m for m in messages)
    settings = loaded.settings
    assert settings.command_timeout_seconds == 7
    assert settings.max_parallel_agents == 2, "the later, valid value still applies"
    assert settings.models["default"].model == "m"
    assert settings.models["default"].provider == "openai"


def test_a_broken_toml_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".forkyard.toml").write_text("max_parallel_agents = = 3\n")
    loaded = load_settings(repo, environ_for(tmp_path))
    assert loaded.settings.max_parallel_agents == 6
    [problem] = loaded.problems
    assert ".forkyard.toml" in str(problem)
    assert "cannot be read" in str(problem)


def test_camel_case_keys_but_not_user_chosen_names() -> None:
    values = normalise_keys(
        {"maxParallelAgents": 1, "models": {"myModel": {"apiKeyEnv": "K", "model": "x"}}}
    )
    assert values == {
        "max_parallel_agents": 1,
        "models": {"myModel": {"api_key_env": "K", "model": "x"}},
    }


def test_configured_roles_join_the_builtin_ones() -> None:
    loaded = merge_sources(
        [
            SettingsSource(
                "test", {"roles": {"reviewer": {"tools": ["read_file"], "worktree": False}}}
            )
        ]
    )
    settings = loaded.settings
    assert settings.role_names() == ["default", "explorer", "reviewer", "worker"]
    reviewer = settings.role("reviewer")
    assert reviewer is not None
    assert not reviewer.worktree
    explorer = settings.role("explorer")
    assert explorer is not None
    assert "write_file" not in explorer.tools


def test_state_dir_from_the_environment(tmp_path: Path) -> None:
    settings = merge_sources([]).settings
    assert settings.resolved_state_dir({"FORKYARD_STATE_DIR": str(tmp_path)}) == tmp_path


def test_a_source_with_many_bad_keys_loses_only_those() -> None:
    """Every bad key is named, however many there are, and the good ones still apply."""
    values: dict[str, object] = {f"no_such_key_{n}": n for n in range(150)}
    values.update({"max_parallel_agents": 5, "command_timeout_seconds": "soon"})
    loaded = merge_sources([SettingsSource("editor", values)])
    assert loaded.settings.max_parallel_agents == 5
    named = {problem.key for problem in loaded.problems}
    assert named == {*(f"no_such_key_{n}" for n in range(150)), "command_timeout_seconds"}


def test_daemon_idle_and_approval_timeout_defaults() -> None:
    settings = merge_sources([]).settings
    assert settings.daemon_idle_seconds == 900
    assert settings.approval_timeout_seconds == 600


def test_daemon_idle_and_approval_timeout_from_the_user_file_and_the_editor(
    tmp_path: Path,
) -> None:
    env = environ_for(tmp_path)
    user_file = tmp_path / "config" / "forkyard" / "config.toml"
    user_file.parent.mkdir(parents=True)
    user_file.write_text("daemon_idle_seconds = 0\napproval_timeout_seconds = 30\n")
    loaded = load_settings(None, env)
    assert loaded.problems == []
    assert loaded.settings.daemon_idle_seconds == 0, "0 is allowed: exit when idle"
    assert loaded.settings.approval_timeout_seconds == 30
    loaded = load_settings(None, env, initialization_options={"daemonIdleSeconds": 120})
    assert loaded.settings.daemon_idle_seconds == 120, "camelCase from the editor"
    assert loaded.settings.approval_timeout_seconds == 30


def test_an_untrusted_repository_may_set_the_two_limits(tmp_path: Path) -> None:
    """Both are harmless timings (trust.py's allow-list): an unanswered approval is a Deny
    whenever it times out, and the idle time only keeps the daemon alive or not."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".forkyard.toml").write_text(
        "daemon_idle_seconds = 60\napproval_timeout_seconds = 45\n"
    )
    loaded = load_settings(repo, environ_for(tmp_path))
    assert not loaded.trusted
    assert loaded.ignored_keys == []
    assert loaded.settings.daemon_idle_seconds == 60
    assert loaded.settings.approval_timeout_seconds == 45


def test_bad_daemon_idle_and_approval_timeout_are_named_and_defaults_hold(
    tmp_path: Path,
) -> None:
    env = environ_for(tmp_path)
    user_file = tmp_path / "config" / "forkyard" / "config.toml"
    user_file.parent.mkdir(parents=True)
    user_file.write_text("daemon_idle_seconds = -1\napproval_timeout_seconds = 0\n")
    loaded = load_settings(None, env, initialization_options={"approvalTimeoutSeconds": "a while"})
    messages = [str(problem) for problem in loaded.problems]
    assert any("'daemon_idle_seconds'" in m and "config.toml" in m for m in messages), messages
    assert any("'approval_timeout_seconds'" in m and "config.toml" in m for m in messages)
    assert any("'approval_timeout_seconds'" in m and "initializationOptions" in m for m in messages)
    assert loaded.settings.daemon_idle_seconds == 900
    assert loaded.settings.approval_timeout_seconds == 600


def test_an_untrusted_repository_may_set_role_budgets_and_nothing_else_of_a_role(
    tmp_path: Path,
) -> None:
    """Budgets only limit spending (trust.py's allow-list); the rest of a role's table
    waits for trust, and the explorer stays read-only although its table is named."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".forkyard.toml").write_text(
        "[roles.explorer]\nbudget_usd = 0.5\n"
        "[roles.worker]\nmax_tokens = 5000\npolicy = { run_command = 'allow' }\n"
        "[roles.evil]\ntools = ['run_command']\n"
    )
    loaded = load_settings(repo, environ_for(tmp_path))
    assert not loaded.trusted
    assert sorted(loaded.ignored_keys) == ["roles.evil.tools", "roles.worker.policy.run_command"]
    settings = loaded.settings
    assert settings.role_names() == ["default", "explorer", "worker"]
    explorer, worker = settings.role("explorer"), settings.role("worker")
    assert explorer is not None and worker is not None
    assert (explorer.budget_usd, explorer.max_tokens) == (0.5, None)
    assert not explorer.worktree and "write_file" not in explorer.tools
    assert (worker.budget_usd, worker.max_tokens) == (None, 5000)
    assert worker.policy == {}


def test_role_budgets_default_to_no_limit_and_refuse_negative_values() -> None:
    loaded = merge_sources(
        [SettingsSource("test", {"roles": {"reviewer": {"budget_usd": -1, "max_tokens": 0}}})]
    )
    assert {problem.key for problem in loaded.problems} >= {
        "roles.reviewer.budget_usd",
        "roles.reviewer.max_tokens",
    }
    worker = loaded.settings.role("worker")
    assert worker is not None and (worker.budget_usd, worker.max_tokens) == (None, None)
