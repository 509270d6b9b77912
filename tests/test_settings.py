from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adaptive_router import ConfigError, RouterError, Settings, load_settings
from adaptive_router._settings import Weights

BUILTIN_MODES = {
    "speed": (0.7, 0.2, 0.1),
    "cost": (0.2, 0.7, 0.1),
    "quality": (0.1, 0.2, 0.7),
    "balanced": (1 / 3, 1 / 3, 1 / 3),
}


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No .env, settings.yaml or ROUTER_* variable from the developer's shell may leak in.
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("ROUTER_"):
            monkeypatch.delenv(name)


def _yaml(tmp_path: Path, text: str, name: str = "settings.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _triple(w: Weights) -> tuple[float, float, float]:
    return (w.latency, w.cost, w.quality)


# --- defaults -------------------------------------------------------------------------------


def test_load_settings_defaults() -> None:
    settings = load_settings()
    assert isinstance(settings, Settings)
    assert _triple(settings.routing.default_weights) == (0.4, 0.3, 0.3)
    assert settings.server.port == 8000
    assert settings.catalogue.source == "bundled"
    assert settings.redis.url is None


def test_load_settings_default_modes() -> None:
    modes = load_settings().routing.modes
    assert set(modes) == set(BUILTIN_MODES)
    for name, expected in BUILTIN_MODES.items():
        assert _triple(modes[name]) == pytest.approx(expected), name
        assert sum(modes[name].normalised()) == pytest.approx(1.0)
    assert modes["balanced"].normalised() == pytest.approx((1 / 3, 1 / 3, 1 / 3))


def test_load_settings_yaml_values_are_read(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "server:\n  port: 9001\nrouting:\n  top_k: 2\n")
    settings = load_settings(path)
    assert settings.server.port == 9001
    assert settings.routing.top_k == 2
    assert settings.server.host == "127.0.0.1"  # untouched keys keep their defaults
    assert load_settings(str(path)).server.port == 9001


def test_load_settings_empty_yaml_gives_defaults(tmp_path: Path) -> None:
    assert load_settings(_yaml(tmp_path, "")).server.port == 8000


def test_load_settings_added_mode_keeps_builtin_modes(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "routing:\n  modes:\n    frugal: {latency: 0.1, cost: 0.9, quality: 0}\n")
    modes = load_settings(path).routing.modes
    assert set(modes) == {*BUILTIN_MODES, "frugal"}
    assert _triple(modes["frugal"]) == (0.1, 0.9, 0.0)
    assert _triple(modes["speed"]) == pytest.approx(BUILTIN_MODES["speed"])


def test_load_settings_file_may_redefine_a_builtin_mode(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "routing:\n  modes:\n    speed: {latency: 1, cost: 0, quality: 0}\n")
    modes = load_settings(path).routing.modes
    assert _triple(modes["speed"]) == (1.0, 0.0, 0.0)
    assert set(modes) == set(BUILTIN_MODES)


def test_load_settings_file_from_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _yaml(tmp_path, "server:\n  port: 9555\n", name="elsewhere.yaml")
    monkeypatch.setenv("ROUTER_SETTINGS_FILE", str(path))
    assert load_settings().server.port == 9555


# --- precedence: environment over file, keyword arguments over both ---------------------------


def test_load_settings_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _yaml(
        tmp_path,
        "server:\n  port: 9001\n  workers: 3\n"
        "routing:\n  default_weights: {latency: 0.1, cost: 0.2, quality: 0.7}\n",
    )
    monkeypatch.setenv("ROUTER_SERVER__PORT", "9100")
    monkeypatch.setenv("ROUTER_ROUTING__DEFAULT_WEIGHTS__LATENCY", "0.9")
    settings = load_settings(path)
    assert settings.server.port == 9100
    assert settings.server.workers == 3  # the file's sibling keys survive the override
    assert _triple(settings.routing.default_weights) == (0.9, 0.2, 0.7)


def test_load_settings_environment_without_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_SERVER__PORT", "9100")
    monkeypatch.setenv("ROUTER_CACHE__ENABLED", "false")
    settings = load_settings()
    assert settings.server.port == 9100
    assert settings.cache.enabled is False
    assert settings.server.host == "127.0.0.1"


def test_load_settings_nested_environment_override_keeps_other_default_weights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ROUTER_ROUTING__DEFAULT_WEIGHTS__LATENCY", "0.9")
    assert _triple(load_settings().routing.default_weights) == (0.9, 0.3, 0.3)


def test_load_settings_nested_environment_override_keeps_other_mode_weights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ROUTER_ROUTING__MODES__SPEED__LATENCY", "0.9")
    modes = load_settings().routing.modes
    assert _triple(modes["speed"]) == pytest.approx((0.9, 0.2, 0.1))
    assert set(modes) == set(BUILTIN_MODES)


def test_load_settings_dotenv_file_in_working_directory(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("ROUTER_SERVER__PORT=7777\n", encoding="utf-8")
    assert load_settings().server.port == 7777


def test_load_settings_keyword_overrides_beat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_SERVER__PORT", "9100")
    assert load_settings(server={"port": 1234}).server.port == 1234


def test_load_settings_bad_environment_value_names_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_SERVER__PORT", "eighty")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert err.value.key == "server.port"
    assert "server.port" in str(err.value)


# --- a wrong value names its dotted key ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (
            "routing:\n  default_weights: {latency: -0.1, cost: 0.5, quality: 0.5}\n",
            "routing.default_weights.latency",
        ),
        ("routing:\n  default_weights: {latency: 0, cost: 0, quality: 0}\n", "routing.default_weights"),
        ("routing:\n  modes:\n    speed: {latency: 1, cost: -1, quality: 0}\n", "routing.modes.speed.cost"),
        ("server:\n  port: 8000\n  bogus: 1\n", "server.bogus"),
        ("bogus_section:\n  x: 1\n", "bogus_section"),
        ("profile:\n  tasks:\n    code:\n      patterns: ['(unclosed']\n", "profile.tasks.code.patterns"),
        ("profile:\n  length_buckets: [2048, 256]\n", "profile.length_buckets"),
        ("profile:\n  length_buckets: [256, 256]\n", "profile.length_buckets"),
        ("routing:\n  latency_scale_s: [5.0, 1.0]\n", "routing.latency_scale_s"),
        ("routing:\n  latency_scale_s: [2.0, 2.0]\n", "routing.latency_scale_s"),
        ("routing:\n  cost_scale_usd: [0, 1.0]\n", "routing.cost_scale_usd"),
        ("routing:\n  cost_reference_usd: 0\n", "routing.cost_reference_usd"),
        ("routing:\n  cost_norm: sqrt\n", "routing.cost_norm"),
        ("exploration:\n  policy: epsilon\n", "exploration.policy"),
    ],
)
def test_load_settings_wrong_value_names_dotted_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(_yaml(tmp_path, text))
    assert err.value.key == key
    assert repr(key) in str(err.value)
    assert isinstance(err.value, RouterError)


def test_load_settings_missing_file_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert err.value.key == "settings file"
    assert str(path) in str(err.value)


@pytest.mark.parametrize("text", ["- server\n- routing\n", "just a string\n", "42\n"])
def test_load_settings_yaml_not_a_mapping_rejected(tmp_path: Path, text: str) -> None:
    path = _yaml(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert err.value.key == "settings file"
    assert "mapping" in str(err.value)


@pytest.mark.parametrize("text", ["server: [\n", "server:\n  port: 1\n port: 2\n", "a: b: c\n"])
def test_load_settings_invalid_yaml_rejected(tmp_path: Path, text: str) -> None:
    path = _yaml(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert err.value.key == "settings file"
    assert "YAML" in str(err.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (
            "routing:\n  default_weights: {latency: .inf, cost: 0.3, quality: 0.3}\n",
            "routing.default_weights.latency",
        ),
        (
            "routing:\n  modes:\n    speed: {latency: 1, cost: 0, quality: .nan}\n",
            "routing.modes.speed.quality",
        ),
    ],
)
def test_load_settings_non_finite_weight_rejected(tmp_path: Path, text: str, key: str) -> None:
    # An infinite weight would normalise to (nan, 0, 0) and make every score NaN.
    with pytest.raises(ConfigError) as err:
        load_settings(_yaml(tmp_path, text))
    assert err.value.key == key


# --- Weights ----------------------------------------------------------------------------------

weight = st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False)


@given(weight, weight, weight)
def test_weights_normalised_sums_to_one(latency: float, cost: float, quality: float) -> None:
    if latency + cost + quality <= 0:
        with pytest.raises(ValueError):
            Weights(latency=latency, cost=cost, quality=quality)
        return
    raw = (latency, cost, quality)
    normalised = Weights(latency=latency, cost=cost, quality=quality).normalised()
    assert math.isclose(sum(normalised), 1.0, rel_tol=1e-9)
    assert all(0.0 <= n <= 1.0 for n in normalised)
    for i in range(3):
        if raw[i] == 0.0:
            assert normalised[i] == 0.0
        for j in range(3):
            if raw[i] <= raw[j]:
                assert normalised[i] <= normalised[j]  # the order of the weights is kept


def test_weights_normalised_keeps_proportions() -> None:
    assert Weights(latency=2, cost=1, quality=1).normalised() == (0.5, 0.25, 0.25)
    assert Weights(latency=0, cost=0, quality=5).normalised() == (0.0, 0.0, 1.0)
