"""Resolving a task's settings: properties -> topic defaults -> the model's row -> global settings,
and every kind of bad property value as an incident naming the activity and the property."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from procos_worker.ai.registry import ModelRegistry
from procos_worker.ai.taskconfig import KNOWN_PROPERTIES, TaskConfig, TaskConfigs
from procos_worker.errors import ModelRefused, TaskConfigError
from procos_worker.models import ModelRow, Task
from procos_worker.settings import OllamaSettings, RegistrySettings, Settings, TaskSettings

SCHEMA = '{"type": "object", "properties": {"urgent": {"type": "boolean"}}, "required": ["urgent"]}'
ROWS = [
    ModelRow(name="smollm2:135m", provider="ollama", version="1", active=True,
             config_data={"options": {"num_ctx": 4096, "temperature": 0.7}}),
    ModelRow(name="off:1b", provider="ollama", version="1", active=False, config_data={}),
]


def _configs(topic_defaults: dict[str, Any] | None = None, options: dict[str, Any] | None = None) -> TaskConfigs:
    settings = Settings(
        task=TaskSettings(topic_defaults=topic_defaults or {}),
        ollama=OllamaSettings(model="smollm2:135m", options=options or {"num_predict": 100, "temperature": 1.0}),
    )
    return TaskConfigs(settings, ModelRegistry(RegistrySettings(), lambda: ROWS))


def _task(topic: str = "ai-query", activity: str = "ask-ai", **properties: str) -> Task:
    return Task(id="t", topic=topic, worker_id="w", process_instance_id="p", activity_id=activity,
                extension_properties=properties)


def _props(**named: str) -> dict[str, str]:
    """procos_model='x' -> {'procos.model': 'x'} (keyword arguments can't hold dots)."""
    return {name.replace("procos_", "procos."): value for name, value in named.items()}


def test_a_task_without_properties_behaves_as_before() -> None:
    config = _configs().resolve(_task())
    assert config == TaskConfig(activity="ask-ai", model="smollm2:135m",
                                options={"num_predict": 100, "temperature": 0.7, "num_ctx": 4096})
    assert (config.result_prefix, config.result_scope, config.prompt, config.system_prompt) == (
        "ai", "process", None, None)


def test_first_found_wins_and_options_merge_key_by_key() -> None:
    configs = _configs(topic_defaults={
        "ai-query": {"procos.model": "topic:1b", "procos.options": {"seed": 1, "temperature": 0.3},
                     "procos.resultPrefix": "topic"},
    })
    from_topic = configs.resolve(_task())
    assert from_topic.model == "topic:1b" and from_topic.result_prefix == "topic"
    # global {"num_predict": 100, "temperature": 1.0} < topic:1b has no row < topic {"seed", "temperature"}
    assert from_topic.options == {"num_predict": 100, "temperature": 0.3, "seed": 1}

    own = configs.resolve(_task(**_props(procos_model="smollm2:135m", procos_options='{"seed": 2, "top_k": 5}',
                                         procos_resultPrefix="mine")))
    assert own.model == "smollm2:135m" and own.result_prefix == "mine"
    # global < the model's row < topic < the task's own
    assert own.options == {"num_predict": 100, "temperature": 0.3, "num_ctx": 4096, "seed": 2, "top_k": 5}


def test_topic_defaults_apply_to_their_topic_only_and_accept_json_text() -> None:
    configs = _configs(topic_defaults={"summaries": {"procos.options": '{"num_predict": 7}',
                                                     "procos.resultScope": "local"}})
    assert configs.resolve(_task(topic="summaries")).options["num_predict"] == 7
    assert configs.resolve(_task(topic="summaries")).result_scope == "local"
    assert configs.resolve(_task(topic="ai-query")).options["num_predict"] == 100


def test_foreign_and_empty_properties_are_ignored() -> None:
    config = _configs().resolve(_task(**{"team": "finance", "camunda.x": "y", "procos.model": "",
                                         "procos.description": "what this step does"}))
    assert config.model == "smollm2:135m"


def test_templates_and_the_variables_a_task_needs() -> None:
    configs = _configs()
    plain = _task()
    templated = _task(**_props(procos_prompt="Summarise {{ document }} in {{ words }} words",
                               procos_systemPrompt="You are {{ persona }}."))
    prompt_only = _task(**_props(procos_prompt="{{ a }}"))
    assert configs.variables_needed(plain) == {"query", "context", "system_prompt"}
    assert configs.variables_needed(templated) == {"document", "words", "persona"}
    assert configs.variables_needed(prompt_only) == {"a", "system_prompt"}
    config = configs.resolve(templated)
    assert config.prompt is not None and config.prompt.source.startswith("Summarise")


def test_the_model_registry_can_refuse_the_tasks_model() -> None:
    with pytest.raises(ModelRefused) as info:
        _configs().resolve(_task(**_props(procos_model="off:1b")))
    assert info.value.message == ("model off:1b is disabled in procos_ai_models "
                                  "(this task's model comes from procos.model)")


def test_the_config_names_the_layer_that_set_its_model() -> None:
    configs = _configs(topic_defaults={"summaries": {"procos.model": "off:1b"}})
    assert configs.resolve(_task()).model_source == "OLLAMA_MODEL"
    assert configs.resolve(_task(**_props(procos_model="smollm2:135m"))).model_source == "procos.model"
    own_over_topic = configs.resolve(_task(topic="summaries", **_props(procos_model="smollm2:135m")))
    assert own_over_topic.model_source == "procos.model"
    with pytest.raises(ModelRefused) as info:
        configs.resolve(_task(topic="summaries"))
    assert info.value.message.endswith("(this task's model comes from TASK_TOPIC_DEFAULTS topic 'summaries')")


@pytest.mark.parametrize(
    ("properties", "problem"),
    [
        ({"procos.temprature": "0"}, "unknown property procos.temprature"),
        ({"procos.promt": "x"}, "unknown property procos.promt; did you mean procos.prompt?"),
        ({"procos.options": "{temperature: 0}"}, "property procos.options: is not valid JSON"),
        ({"procos.options": "[1, 2]"}, "property procos.options: must be a JSON object of Ollama options"),
        ({"procos.options": '{"num_ctx": "big"}'}, "property procos.options: has an option of the wrong type: num_ctx"),
        ({"procos.options": '{"min_p": "low"}'}, "property procos.options: has an option of the wrong type: min_p"),
        ({"procos.options": '{"temprature": 0}'},
         "property procos.options: unknown Ollama option 'temprature' (did you mean 'temperature'?): Ollama would "
         "ignore it and keep its default"),
        ({"procos.options": '{"top_k": 5, "zzz": 1, "num_predikt": 3}'},
         "property procos.options: unknown Ollama options 'num_predikt' (did you mean 'num_predict'?), 'zzz':"),
        ({"procos.resultScope": "global"}, "property procos.resultScope: must be 'process' or 'local', got 'global'"),
        ({"procos.resultPrefix": "9lives"}, "property procos.resultPrefix: '9lives' is not a variable name prefix"),
        ({"procos.resultPrefix": "a-b"}, "property procos.resultPrefix: 'a-b' is not a variable name prefix"),
        ({"procos.model": "my model"}, "property procos.model: 'my model' is not an Ollama model name"),
        ({"procos.prompt": "Hi {{ name "}, "property procos.prompt: template syntax error on line 1"),
        ({"procos.systemPrompt": "a\n{% if %}"}, "property procos.systemPrompt: template syntax error on line 2"),
        ({"procos.outputSchema": "{type: object}"}, "property procos.outputSchema: is not valid JSON"),
        ({"procos.outputSchema": '{"type": "array"}'}, "property procos.outputSchema: must describe a JSON object"),
        ({"procos.outputSchema": '{"type": "object", "properties": {"a": {"type": "text"}}}'},
         "property procos.outputSchema: is not a valid JSON Schema: at /properties/a/type"),
        ({"procos.outputVariables": "urgent"},
         "property procos.outputVariables: names answer properties, but there is no procos.outputSchema"),
        ({"procos.outputSchema": SCHEMA, "procos.outputVariables": "urgent, colour"},
         "property procos.outputVariables: 'colour' is not a property of procos.outputSchema (it declares: urgent)"),
    ],
)
def test_a_bad_property_is_an_incident_naming_activity_and_property(properties: dict[str, str], problem: str) -> None:
    configs = _configs()
    task = _task(activity="summarise-docs", **properties)
    for call in (configs.resolve, configs.variables_needed):
        with pytest.raises(TaskConfigError) as info:
            call(task)
        assert info.value.message.startswith("activity 'summarise-docs'"), info.value.message
        assert problem in info.value.message


def test_option_names_ollama_reads_are_accepted_and_extra_names_can_be_added() -> None:
    # min_p: read by Ollama 0.24, not declared by the ollama client's Options.
    assert _configs().resolve(_task(**{"procos.options": '{"min_p": 0.05, "mirostat": 0}'})).options["min_p"] == 0.05
    settings = Settings(ollama=OllamaSettings(extra_option_names="flash_window, other"))
    configs = TaskConfigs(settings, ModelRegistry(RegistrySettings(), lambda: []))
    assert configs.resolve(_task(**{"procos.options": '{"flash_window": 2}'})).options == {"flash_window": 2}
    with pytest.raises(TaskConfigError, match="unknown Ollama option 'flash_windows'"):
        configs.resolve(_task(**{"procos.options": '{"flash_windows": 2}'}))


def test_the_same_properties_on_two_activities_name_each_activity() -> None:
    configs = _configs()
    for activity in ("first", "second"):
        with pytest.raises(TaskConfigError, match=f"activity '{activity}'"):
            configs.resolve(_task(activity=activity, **{"procos.resultScope": "nowhere"}))
    assert configs.resolve(_task(activity="third")).activity == "third"


@pytest.mark.parametrize(
    ("defaults", "problem"),
    [
        ({"t": {"procos.modle": "x"}}, "TASK_TOPIC_DEFAULTS topic 't': unknown property procos.modle"),
        ({"t": {"procos.options": "{"}}, "TASK_TOPIC_DEFAULTS topic 't', property procos.options: is not valid JSON"),
        ({"t": {"procos.resultPrefix": 5}}, "property procos.resultPrefix: must be text, got int"),
        ({"t": {"procos.options": {"temperatur": 0.1}}},
         "TASK_TOPIC_DEFAULTS topic 't', property procos.options: unknown Ollama option 'temperatur'"),
        ({"t": {"procos.outputSchema": {"type": "object", "properties": {"model": {"type": "string"}}}}},
         "TASK_TOPIC_DEFAULTS topic 't', property procos.outputSchema: answer property 'model' would overwrite"),
    ],
)
def test_bad_topic_defaults_fail_when_the_worker_starts(defaults: dict[str, Any], problem: str) -> None:
    with pytest.raises(TaskConfigError) as info:
        _configs(topic_defaults=defaults)
    assert problem in info.value.message


def test_an_output_schema_from_the_task_or_its_topic_with_the_variables_it_exposes() -> None:
    schema = {"type": "object", "properties": {"category": {"enum": ["a", "b"]}, "urgent": {"type": "boolean"},
                                               "items": {"type": "array"}}}
    configs = _configs(topic_defaults={"triage": {"procos.outputSchema": schema}})
    from_topic = configs.resolve(_task(topic="triage"))
    assert from_topic.output is not None and from_topic.output.schema == schema
    assert from_topic.output.variables == ("category", "urgent")  # not the array
    limited = configs.resolve(_task(topic="triage", **_props(procos_outputVariables="urgent")))
    assert limited.output is not None and limited.output.variables == ("urgent",)
    own = configs.resolve(_task(**_props(procos_outputSchema=SCHEMA)))
    assert own.output is not None and own.output.variables == ("urgent",)
    assert configs.resolve(_task()).output is None
    # Names alone in a topic's defaults are for tasks that bring their schema: checked per task.
    names_only = _configs(topic_defaults={"t": {"procos.outputVariables": "urgent"}})
    assert names_only.resolve(_task(topic="t", **_props(procos_outputSchema=SCHEMA))).output is not None
    with pytest.raises(TaskConfigError, match=r"there is no procos\.outputSchema"):
        names_only.resolve(_task(topic="t"))


def test_parsed_properties_are_cached_per_text() -> None:
    configs = _configs()
    properties = _props(procos_prompt="Summarise {{ doc }}", procos_options=json.dumps({"seed": 1}))
    first = configs.resolve(_task(**properties))
    again = configs.resolve(_task(**dict(reversed(list(properties.items())))))
    assert first.prompt is again.prompt
    assert first == again


def test_the_known_properties_are_the_contracts_of_this_issue() -> None:
    assert {"procos.model", "procos.options", "procos.prompt", "procos.systemPrompt", "procos.resultPrefix",
            "procos.resultScope", "procos.outputSchema", "procos.outputVariables"} <= KNOWN_PROPERTIES


def test_the_worker_refuses_to_start_with_bad_topic_defaults(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "LOG_FORMAT": "json",
           "TASK_TOPIC_DEFAULTS": json.dumps({"ai-query": {"procos.resultScope": "everywhere"}})}
    result = subprocess.run([sys.executable, "-m", "procos_worker", "run"], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert ("invalid settings: TASK_TOPIC_DEFAULTS topic 'ai-query', property procos.resultScope: "
            "must be 'process' or 'local', got 'everywhere'") in result.stderr
