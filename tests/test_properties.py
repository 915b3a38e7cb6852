"""Property tests (hypothesis): whatever values and types a YAML file or a caller gives, the sweep
configuration loader and SamplingParams either accept them (and the result holds its invariants)
or raise their own clean error, never anything else."""

import math

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baco import SamplingParams
from baco.errors import InvalidSamplingParams
from baco.sweep import SweepConfigError, load_config, parse_config

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

WORDS = ["p", "base", "p-punc:0.5", "open-ended", "distinct-2", "{prompt}"]  # values the loader knows
scalars = (st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats() | st.text(max_size=12)
           | st.sampled_from(WORDS))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8) | st.integers(0, 3), inner, max_size=4), max_leaves=16)

VALID = {"name": "prop", "tasks": ["open-ended"], "n": 2, "seeds": [0],
         "sampling": {"max_new_tokens": 4}, "methods": {"p": {"router": "p", "values": [0.5]}}}
TOP_KEYS = ["name", "models", "tasks", "n", "seeds", "sampling", "methods", "metrics", "batch_size", "other"]
METHOD_KEYS = ["router", "values", "sweep", "system_prompt", "base_template", "batch_size", "other"]
SAMPLING_KEYS = ["temperature", "top_p", "top_k", "min_p", "max_new_tokens", "stop", "seed", "other"]


def check_accepted(config) -> None:
    keys = [cell.key for cell in config.cells]
    assert len(keys) == len(set(keys)) == len(config.configurations) * len(config.tasks) * len(config.seeds)
    assert config.n >= 2 and config.batch_size >= 1
    assert len(set(config.seeds)) == len(config.seeds) and all(s >= 0 for s in config.seeds)
    assert len({c.settings for c in config.configurations}) == len(config.configurations)


def parse_cleanly(raw) -> None:
    try:
        config = parse_config(raw)
    except SweepConfigError as error:
        assert str(error)
        return
    check_accepted(config)


@SETTINGS
@given(st.dictionaries(st.sampled_from(TOP_KEYS), values, max_size=6))
def test_any_top_level_values_give_a_config_or_a_clean_error(changes):
    parse_cleanly({**VALID, **changes})


@SETTINGS
@given(st.dictionaries(st.sampled_from(METHOD_KEYS), values, max_size=4), st.text(max_size=6) | st.integers())
def test_any_method_values_give_a_config_or_a_clean_error(method, name):
    parse_cleanly({**VALID, "methods": {name: {"router": "p-punc", **method}}})


@SETTINGS
@given(st.dictionaries(st.sampled_from(SAMPLING_KEYS), values, max_size=4),
       st.lists(values, max_size=3), values)
def test_any_sampling_tasks_and_metrics_give_a_config_or_a_clean_error(sampling, tasks, metrics):
    parse_cleanly({**VALID, "sampling": sampling, "tasks": tasks, "metrics": metrics})


@SETTINGS
@given(st.text(max_size=80) | values.map(lambda v: yaml.safe_dump(v)))
def test_any_yaml_file_gives_a_config_or_a_clean_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("yaml") / "sweep.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        check_accepted(load_config(path))
    except SweepConfigError as error:
        assert str(error)


@SETTINGS
@given(st.sampled_from(["p", "h", "p-punc", "nudge", "eft", "rand", "negative", "verbalized"]),
       st.lists(st.floats(0, 1, allow_nan=False) | st.integers(1, 5), min_size=1, max_size=4, unique=True),
       st.lists(st.integers(0, 2**31), min_size=1, max_size=3, unique=True))
def test_valid_grids_are_accepted_with_one_cell_per_value_and_seed(router, knob_values, seeds):
    raw = {**VALID, "seeds": seeds, "methods": {"m": {"router": router, "values": knob_values}}}
    try:
        config = parse_config(raw)
    except SweepConfigError as error:  # only a knob outside its range, or two values naming one configuration
        assert "must be" in str(error) or "share the name" in str(error), error
        return
    check_accepted(config)
    assert len(config.cells) == len(knob_values) * len(seeds)


@SETTINGS
@given(st.dictionaries(st.sampled_from(SAMPLING_KEYS[:-1]), values, max_size=5))
def test_sampling_params_accept_or_refuse_cleanly(kwargs):
    try:
        params = SamplingParams(**kwargs)
    except InvalidSamplingParams as error:
        assert str(error)
        return
    assert math.isfinite(params.temperature) and params.temperature >= 0
    assert 0 < params.top_p <= 1 and 0 <= params.min_p <= 1
    assert isinstance(params.top_k, int) and params.top_k >= -1
    assert isinstance(params.max_new_tokens, int) and params.max_new_tokens >= 1
    assert params.seed is None or (isinstance(params.seed, int) and params.seed >= 0)
    assert isinstance(params.stop, tuple) and all(isinstance(s, str) and s for s in params.stop)
    assert SamplingParams(**{**params.to_dict(), "stop": params.stop}) == params
