from __future__ import annotations

import io
import logging
from collections import namedtuple

import pytest

from distrib.secrets import REDACTED, RedactingFilter, is_secret_key, redact, secret_values

ENV_SECRET = "hf_abcdefghijklmnopqrstuvwxyz012345"


def test_keys_that_look_secret():
    for key in (
        "api_key",
        "WANDB_API_KEY",
        "apiKey",
        "hf_token",
        "Password",
        "db_passwd",
        "client_secret",
        "credentials",
        "access_token_v2",
    ):
        assert is_secret_key(key), key
    for key in ("max_tokens", "tokenizer", "num_tokens", "project", "lr", "keyword"):
        assert not is_secret_key(key), key


def test_redact_nested_keys_and_env_values_without_touching_the_original():
    Pair = namedtuple("Pair", "a b")
    cfg = {
        "wandb": {"api_key": "abc", "project": "demo", "token": None},
        "db": [{"password": "hunter2", "host": "db.local"}, "plain"],
        "Secret_Key": 5,
        "credentials": {"user": "u", "pass": "p"},
        "max_tokens": 512,
        "tokenizer": "gpt2",
        "hub_url": f"https://user:{ENV_SECRET}@hub.example",
        "args": (ENV_SECRET, "ok"),
        "pair": Pair(ENV_SECRET, 1),
    }
    env = {"HF_TOKEN": ENV_SECRET, "SHORT_TOKEN": "gpt2", "HOME": "/root/some/long/path"}
    out = redact(cfg, environ=env)
    assert out == {
        "wandb": {"api_key": REDACTED, "project": "demo", "token": None},
        "db": [{"password": REDACTED, "host": "db.local"}, "plain"],
        "Secret_Key": REDACTED,
        "credentials": REDACTED,
        "max_tokens": 512,
        "tokenizer": "gpt2",  # SHORT_TOKEN's value is under 8 characters: not scrubbed
        "hub_url": f"https://user:{REDACTED}@hub.example",
        "args": (REDACTED, "ok"),
        "pair": Pair(REDACTED, 1),
    }
    assert cfg["wandb"]["api_key"] == "abc" and cfg["args"][0] == ENV_SECRET


def test_redact_reads_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", ENV_SECRET)
    assert redact({"note": f"key={ENV_SECRET}"}) == {"note": f"key={REDACTED}"}


def test_secret_values_only_from_secret_names_and_long_values():
    env = {"WANDB_API_KEY": ENV_SECRET, "GITHUB_TOKEN": "short", "PATH": "/usr/bin:/bin:/x"}
    assert secret_values(env) == {ENV_SECRET}


def test_logging_filter_scrubs_messages_args_and_tracebacks():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter({"WANDB_API_KEY": ENV_SECRET}))
    logger = logging.getLogger("test_secrets.filter")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("logging in with %s", ENV_SECRET)
        logger.warning(f"inline {ENV_SECRET} too")
        try:
            raise RuntimeError(f"bad key {ENV_SECRET}")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert ENV_SECRET not in text
    assert f"logging in with {REDACTED}" in text and f"inline {REDACTED} too" in text
    assert f"RuntimeError: bad key {REDACTED}" in text


def test_a_secret_on_the_command_line_reaches_no_file_of_the_run(tmp_path):
    # Seen before: redacted in the checkpoint, verbatim in .hydra/config.yaml, hydra.yaml,
    # overrides.yaml and the wandb run file (which stores the command line).
    import sys
    from pathlib import Path

    from helpers import run_cli

    secret = "hf_Zq8sEcReTvAlUe42"
    env_secret = "envS3cretV4lue987"  # and one in the environment
    run_dir = tmp_path / "run"
    res = run_cli(
        sys.executable, "-m", "distrib.train", "model=mlp", "model.in_features=16",
        "data.train._target_=fixtures.token_dataset", f"+data.train.hf_token={secret}",
        "data.eval._target_=fixtures.token_dataset", "trainer.epochs=1", "trainer.max_steps=3",
        "trainer.global_batch_size=32", "logger=[console,jsonl,wandb]",
        f"hydra.run.dir={run_dir}", cwd=tmp_path,
        env={"WANDB_MODE": "offline", "MY_SERVICE_API_TOKEN": env_secret},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    files = [p for p in Path(run_dir).rglob("*") if p.is_file()]
    assert any(p.name == "overrides.yaml" for p in files)
    assert any(p.suffix == ".wandb" for p in files)
    assert any(p.parent.name == "logs" for p in files)  # the per-rank log files are searched
    for value in (secret, env_secret):
        leaked = [str(p.relative_to(run_dir)) for p in files if value.encode() in p.read_bytes()]
        assert leaked == [], value
        assert value not in res.stdout + res.stderr


def test_of_two_secrets_where_one_holds_the_other_no_tail_of_the_longer_survives():
    from distrib.secrets import REDACTED, scrub

    short, long = "abc123secretXYZ", "abc123secretXYZ-and-more-of-it"
    for order in ([short, long], [long, short]):
        text = scrub(f"token={long} other={short} end", set(order))
        assert text == f"token={REDACTED} other={REDACTED} end", text
        assert "-and-more-of-it" not in text


@pytest.mark.slow
@pytest.mark.parametrize("where", ["environment", "config"])
@pytest.mark.parametrize("nproc", [1, 2])
def test_a_secret_in_a_workers_error_never_reaches_the_console(tmp_path, where, nproc):
    from helpers import train_cli

    secret = "hf_" + "SeCrEt" * 5
    env = {"HF_TOKEN": secret} if where == "environment" else {}
    res = train_cli(tmp_path / "run", "data.train._target_=fixtures.leaky_dataset",
                    f"+data.train.hf_token={secret}", nproc=nproc, env=env)  # fmt: skip
    assert res.returncode == 1
    assert secret not in res.stdout + res.stderr  # the console, hence a SLURM log too
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("distrib: error: ")
    assert "403 for https://hub.example/data?token=<redacted>" in last
