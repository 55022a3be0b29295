"""m3w_builder/settings.py: the one way BuildConfig and TrainConfig are filled from YAML, `--set` and
flags — an unknown key or a wrong type is refused naming the key, for both trees (issue 16)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

from m3w_builder.config import BuildConfig
from m3w_builder.errors import ConfigError
from pipelines.build import job
from pipelines.train import loop
from pipelines.train.config import TrainConfig, apply_override


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("images:\n  min_sid: 100\n", "images.min_sid: unknown field (did you mean 'min_side'?)"),
        ("imagez:\n  min_side: 100\n", "imagez: unknown field (did you mean 'images'?)"),
        ("images:\n  min_side: big\n", "images.min_side: expected int, got 'big'"),
        ("dedup:\n  near_dedup: 1\n", "dedup.near_dedup: expected bool, got 1"),
        ("text:\n  languages: en\n", "text.languages: expected list or null, got 'en'"),
        ("images: 3\n", "images: expected ImageConfig, got 3"),
    ],
)
def test_build_yaml_refuses_unknown_keys_and_wrong_types(tmp_path, text, named) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        BuildConfig.from_yaml(path)
    assert str(err.value) == f"{path}: {named}"


def test_build_yaml_accepts_ints_for_floats_and_reads_renamed_keys(tmp_path, caplog) -> None:
    text = "attach:\n  p_next: 1\ndom:\n  max_images_per_doc: 7\ndedup:\n  para_max_repeats_per_domain: 5\n"
    with caplog.at_level(logging.WARNING):
        config = BuildConfig.from_yaml(write(tmp_path, text))
    assert config.attach.p_next == 1.0 and isinstance(config.attach.p_next, float)
    assert config.images.max_images_per_doc == 7
    assert config.dedup.para_boilerplate_min_repeats == 5
    assert "dom.max_images_per_doc is now images.max_images_per_doc" in caplog.text


def test_build_set_overrides_after_flags_and_yaml(tmp_path) -> None:
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    job.register(subparsers)
    yaml_path = write(tmp_path, "shards:\n  docs_per_shard: 10\nimages:\n  min_side: 50\n")
    argv = ["build", "in", "--out", "o", "--config", str(yaml_path), "--docs-per-shard", "20"]
    argv += [
        "--near-dedup",
        "off",
        "--set",
        "images.min_side=99",
        "--set",
        "text.languages=[en, fr]",
    ]
    config = job.config_from_args(parser.parse_args(argv))
    assert config.shards.docs_per_shard == 20  # the flag beats the YAML
    assert config.images.min_side == 99 and config.text.languages == ["en", "fr"]
    assert config.dedup.near_dedup is False
    with pytest.raises(ConfigError, match=r"--set: images\.min_side: expected int"):
        job.config_from_args(
            parser.parse_args(["build", "in", "--out", "o", "--set", "images.min_side=x"])
        )


def test_build_flags_are_typed_by_their_field() -> None:
    parser = argparse.ArgumentParser()
    job.register(parser.add_subparsers())
    args = parser.parse_args(["build", "in", "--out", "o", "--p-next", "0.25", "--seed", "3"])
    config = job.config_from_args(args)
    assert config.attach.p_next == 0.25 and config.seed == 3
    with pytest.raises(SystemExit):  # argparse's own one-line error, from the field's type
        parser.parse_args(["build", "in", "--out", "o", "--seed", "three"])


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"optim": {"lrr": 1e-3}}, "unknown field optim.lrr (did you mean 'lr'?)"),
        ({"optim": {"lr": "fast"}}, "optim.lr: expected float, got 'fast'"),
        ({"run": {"steps": 1.5}}, "run.steps: expected int, got 1.5"),
        ({"data": [{"shards": "a", "batch_size": "8"}]}, "data.batch_size: expected int, got '8'"),
    ],
)
def test_train_yaml_refuses_unknown_keys_and_wrong_types(tmp_path, raw, named) -> None:
    import yaml

    path = write(tmp_path, yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_yaml(path)
    assert str(err.value) == f"--config {path}: {named}"


def test_train_set_is_checked_like_yaml() -> None:
    cfg = TrainConfig.from_dict({"data": [{"shards": "a"}]})
    apply_override(cfg, "optim.lr=3")
    assert cfg.optim.lr == 3.0
    with pytest.raises(ConfigError, match=r"--set run\.steps: expected int"):
        apply_override(cfg, "run.steps=many")


def test_every_train_flag_reaches_its_field() -> None:
    """Each flag is declared once (TRAIN_FLAGS): parsing a value for it lands in the field it names,
    for every dataset where it is a data.* field."""
    parser = argparse.ArgumentParser()
    loop.add_arguments(parser)
    samples = {int: "9", float: "0.5", str: None}
    for flag in loop.TRAIN_FLAGS:
        section, _, name = flag.dest.partition(".")
        argv = ["--shards", "a", "b", flag.name]
        if flag.choices:
            argv.append(flag.choices[-1])
        elif flag.optional_value or isinstance(defaults_of(section, name), bool):
            pass
        else:
            current = defaults_of(section, name)
            kind = type(current) if current is not None else int
            argv.append(samples.get(kind) or {"--report-to": "none"}.get(flag.name, "x"))
        cfg = loop.config_from_args(parser.parse_args(argv))
        targets = cfg.data if section == "data" else [getattr(cfg, section)]
        for target in targets:
            assert getattr(target, name) != defaults_of(section, name), flag


def defaults_of(section: str, name: str) -> object:
    return getattr(loop.SECTION_TYPES[section](), name)
