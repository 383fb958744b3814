"""Issue 24 item 20: a token file other users can read gets a warning like ssh's; `MEDRET_TOKEN` set but empty is
refused (as an empty --token-file is) instead of silently turning authentication off."""
from __future__ import annotations

import logging
import os

import pytest

from medret.cli import main
from medret.config import RetrieverConfig
from medret.errors import ConfigError
from medret.serve.app import create_app

# a flag value refused after the token is read: the command stops there, before any server starts
STOP = ["--topk", "999999"]


def token_file(tmp_path, mode: int):
    f = tmp_path / f"token-{mode:o}"
    f.write_text("s3cret-token\n")
    os.chmod(f, mode)
    return f


@pytest.mark.parametrize("mode,warned", [(0o600, False), (0o400, False), (0o640, True), (0o644, True),
                                         (0o604, True), (0o620, True)])
def test_a_token_file_others_can_access_is_warned_about(mode, warned, tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.delenv("MEDRET_TOKEN", raising=False)
    f = token_file(tmp_path, mode)
    with caplog.at_level(logging.WARNING, logger="medret.serve.cli"):
        assert main(["serve", "--token-file", str(f), *STOP]) == 1
    assert "--topk=999999" in capsys.readouterr().err  # it got past the token to the next check
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if not warned:
        assert warnings == []
        return
    (w,) = warnings
    assert str(f) in w and oct(mode) in w and f"chmod 600 {f}" in w and "other users" in w
    assert "s3cret-token" not in w


@pytest.mark.parametrize("value", ["", "   ", "\n"])
def test_an_empty_medret_token_is_refused(value, capsys, monkeypatch):
    monkeypatch.setenv("MEDRET_TOKEN", value)
    assert main(["serve", *STOP]) == 1
    err = capsys.readouterr().err
    assert err.startswith("medret: error: $MEDRET_TOKEN is set but empty") and err.count("\n") == 1, err
    assert "unset MEDRET_TOKEN" in err
    with pytest.raises(ConfigError, match=r"\$MEDRET_TOKEN is set but empty"):
        create_app(RetrieverConfig(corpus_name="sample"))  # the library path reads it too


def test_an_unset_medret_token_still_means_no_authentication(monkeypatch):
    monkeypatch.delenv("MEDRET_TOKEN", raising=False)
    assert create_app(RetrieverConfig(corpus_name="sample")).state.service.settings.token is None
    monkeypatch.setenv("MEDRET_TOKEN", "tok")
    assert create_app(RetrieverConfig(corpus_name="sample")).state.service.settings.token == "tok"
