from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from procos_worker.settings import Settings, env_var_names


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in env_var_names():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_point_at_the_local_stack() -> None:
    s = Settings()
    assert s.camunda.base_url == "http://127.0.0.1:8080/engine-rest"
    assert s.ollama.base_url == "http://127.0.0.1:11434" and s.ollama.model == "smollm2:135m"
    assert s.worker.topics == ["ai-query"]
    assert s.task.input_error_code == "AI_INPUT_INVALID"


def test_environment_names_are_section_underscore_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMUNDA_BASE_URL", "http://camunda:8080/engine-rest/")
    monkeypatch.setenv("WORKER_TOPICS", "ai-query, summarise ,")
    monkeypatch.setenv("WORKER_LOCK_DURATION_MS", "5000")
    monkeypatch.setenv("OLLAMA_OPTIONS", '{"temperature": 0.1, "num_predict": 64}')
    monkeypatch.setenv("LOG_LEVEL", "debug")
    s = Settings()
    assert s.camunda.base_url == "http://camunda:8080/engine-rest"
    assert s.worker.topics == ["ai-query", "summarise"]
    assert s.worker.lock_duration_ms == 5000
    assert s.ollama.options == {"temperature": 0.1, "num_predict": 64}
    assert s.log.level == "DEBUG"


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("OLLAMA_MODEL=llama3.2:1b\nWORKER_MAX_TASKS_IN_FLIGHT=9\n")
    s = Settings()
    assert s.ollama.model == "llama3.2:1b" and s.worker.max_tasks_in_flight == 9


def test_secrets_never_print(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://procos:s3cr3t-db@db/procos")
    monkeypatch.setenv("CAMUNDA_USERNAME", "demo")
    monkeypatch.setenv("CAMUNDA_PASSWORD", "s3cr3t-cam")
    s = Settings()
    text = repr(s) + str(s) + s.model_dump_json()
    assert "s3cr3t-db" not in text and "s3cr3t-cam" not in text
    assert s.database.url.get_secret_value().endswith("@db/procos")


def test_worker_ids_are_unique_per_settings_object() -> None:
    assert Settings().worker.id != Settings().worker.id


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("WORKER_ASYNC_RESPONSE_TIMEOUT_MS", "1800001", "less than or equal to 1800000"),
        ("WORKER_MAX_TASKS_IN_FLIGHT", "0", "greater than or equal to 1"),
        ("WORKER_LOCK_DURATION_MS", "10", "greater than or equal to 1000"),
        ("LOG_FORMAT", "xml", "'auto', 'json' or 'console'"),
        ("OLLAMA_OPTIONS", "not json", "JSON"),
        ("OLLAMA_OPTIONS", '{"temprature": 0.1}',
         "OLLAMA_OPTIONS: unknown Ollama option 'temprature' (did you mean 'temperature'?)"),
        ("OLLAMA_OPTIONS", '{"num_predict": "abc"}',
         "OLLAMA_OPTIONS: has an option of the wrong type: num_predict: Input should be a valid integer"),
        ("OLLAMA_OPTIONS", '{"min_p": "low"}', "OLLAMA_OPTIONS: has an option of the wrong type: min_p:"),
        ("CAMUNDA_USERNAME", "demo", "must be set together"),
    ],
)
def test_invalid_settings_fail_clearly(monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises((ValidationError, ValueError)) as info:
        Settings()
    assert message in str(info.value)


def test_extra_option_names_admit_a_newer_ollamas_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_OPTIONS", '{"temperature": 0.1, "new_knob": 3}')
    monkeypatch.setenv("OLLAMA_EXTRA_OPTION_NAMES", "new_knob, other_knob")
    s = Settings()
    assert s.ollama.options == {"temperature": 0.1, "new_knob": 3}
    assert {"new_knob", "other_knob", "temperature", "min_p"} <= s.ollama.option_names


def test_env_var_names_cover_every_field() -> None:
    names = env_var_names()
    assert {"CAMUNDA_BASE_URL", "OLLAMA_BASE_URL", "DATABASE_URL", "WORKER_TOPICS", "LOG_FORMAT"} <= names
    fields = sum(len(type(getattr(Settings(), sec)).model_fields) for sec in Settings.model_fields)
    # Plus the other names a field answers to: OLLAMA_HOST (Ollama's own name) for OLLAMA_BASE_URL.
    assert len(names) == fields + 1 and "OLLAMA_HOST" in names


def test_empty_variables_mean_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_ID", "")
    monkeypatch.setenv("OLLAMA_MODEL", "")
    s = Settings()
    assert s.worker.id.startswith("procos-") and s.ollama.model == "smollm2:135m"
