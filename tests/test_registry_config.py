from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import yaml

from clipadapt.config import apply_overrides, from_dict, load_config, option, save_config
from clipadapt.errors import ConfigError, UnknownNameError
from clipadapt.registry import Registry


def test_registry_register_get_names_and_errors():
    reg: Registry = Registry("widget")

    @reg.register("b")
    def make_b():
        """Makes b."""

    reg.register("a", 1, help="one")
    assert reg.get("a") == 1 and reg.get("b") is make_b
    assert reg.names() == ["a", "b"] and reg.names("a*") == ["a"]
    assert reg.help("b") == "Makes b." and "a" in reg and len(reg) == 2
    with pytest.raises(UnknownNameError, match=r"unknown widget 'c'; valid choices: a, b"):
        reg.get("c")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 2)


@dataclass
class Inner:
    rate: float = option(0.1, help="a rate")
    names: list[str] = option(["x"], help="names")
    flag: bool = option(False)
    count: int | None = option(None)

    def __post_init__(self):
        if self.rate <= 0:
            raise ConfigError(f"inner.rate must be positive, got {self.rate}")


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    title: str = option("t")


def test_overrides_parse_types_and_validate():
    cfg = apply_overrides(Outer(), ["inner.rate=1e-3", "inner.names=a,b", "inner.flag=true", "inner.count=3",
                                    "title=hello world"])
    assert cfg.inner.rate == pytest.approx(1e-3) and cfg.inner.names == ["a", "b"]
    assert cfg.inner.flag is True and cfg.inner.count == 3 and cfg.title == "hello world"
    assert apply_overrides(Outer(), ["inner.rate=2"]).inner.rate == 2.0  # ints widen to float
    with pytest.raises(ConfigError, match="inner.rate must be positive"):
        apply_overrides(Outer(), ["inner.rate=-1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.nope' \(inner has: rate, names, flag, count\)"):
        apply_overrides(Outer(), ["inner.nope=1"])
    with pytest.raises(ConfigError, match="must be an integer"):
        apply_overrides(Outer(), ["inner.count=abc"])
    with pytest.raises(ConfigError, match="must be true or false"):
        apply_overrides(Outer(), ["inner.flag=maybe"])
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides(Outer(), ["inner.rate"])


def test_yaml_round_trip_and_unknown_keys(tmp_path):
    cfg = apply_overrides(Outer(), ["inner.rate=0.5", "inner.names=[p, q]"])
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    assert yaml.safe_load(path.read_text())["inner"]["names"] == ["p", "q"]
    assert load_config(Outer, path) == cfg
    assert load_config(Outer, path, ["title=z"]).title == "z"
    with pytest.raises(ConfigError, match="unknown config key 'bogus'; valid keys: inner, title"):
        from_dict(Outer, {"bogus": 1})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "missing.yaml")
