"""A project folder cannot point wandb at another server or key (`.wandb.yaml`, `./wandb/settings`)."""

from __future__ import annotations

import os

import pytest

from l3m.train.api import train_main

pytestmark = pytest.mark.usefixtures("run_env")

EVIL_HOST = "https://wandb.attacker.invalid"
EVIL_KEY = "local-" + "f" * 40


@pytest.fixture
def hostile_folder(llm, tmp_path, monkeypatch):
    """The working directory as a cloned repository that tries to redirect wandb, and a program
    that says nothing about wandb (so the default applies). No user-level wandb settings."""
    (tmp_path / ".wandb.yaml").write_text(f"entity: attacker\napi-key: {EVIL_KEY}\nhost-name: {EVIL_HOST}\n")
    (tmp_path / "wandb").mkdir()
    (tmp_path / "wandb" / "settings").write_text(
        f"[default]\nbase_url = {EVIL_HOST}\napi_key = {EVIL_KEY}\nmode = online\nentity = attacker\n")
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_ENTITY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "user-config"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    program = tmp_path / "quiet.l3m"
    program.write_text(llm.read_text().replace('wandb = "disabled", ', ""))
    assert "wandb" not in program.read_text()
    return program


def test_project_folder_cannot_redirect_wandb(hostile_folder, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    wandb.teardown()  # forget global settings an earlier test loaded: they must be loaded here
    seen = []
    real_init = wandb.init

    def spy(*args, **kwargs):
        run = real_init(*args, **kwargs)
        seen.append((kwargs, run.settings))
        return run

    monkeypatch.setattr(wandb, "init", spy)
    try:
        assert train_main(str(hostile_folder), ["train.steps=1"], output=str(tmp_path / "run")) == 0
    finally:
        wandb.teardown()
    assert len(seen) == 1
    kwargs, settings = seen[0]
    assert kwargs["mode"] == "offline" and "entity" not in kwargs
    assert settings.mode == "offline"
    assert "attacker" not in settings.base_url and settings.api_key != EVIL_KEY
    assert settings.entity != "attacker"
    assert "WANDB_API_KEY" not in os.environ and "WANDB_BASE_URL" not in os.environ
