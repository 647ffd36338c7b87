"""Shared fixtures: the committed model fixtures (tests/fixtures/<name>/) and PyTorch's recorded outputs."""
import os
from pathlib import Path

import pytest
from safetensors.numpy import load_file

import minitransformer as mt

FIXTURES = Path(__file__).parent / "fixtures"
MODEL_FIXTURES = sorted(p.name for p in FIXTURES.iterdir() if (p / "encoder_model.onnx").exists())
MARIAN_FIXTURES = [name for name in MODEL_FIXTURES if name.startswith("marian")]
WORST = {}  # (fixture, what) -> worst figure seen (largest deviation, smallest margin), printed at the end of the run


def record_worst(fixture, what, value, worst=max):
    WORST[(fixture, what)] = worst(WORST.get((fixture, what), value), float(value))


def record_judgement(fixture, what, judgement):
    """The smallest margin of the verdict rule, and the largest rms deviations from float64 (theirs and ours)."""
    record_worst(fixture, f"{what}: least margin", judgement.margin, worst=min)
    record_worst(fixture, f"{what}: rms dev from float64", judgement.deviation)
    record_worst(fixture, f"{what}: ours from float64", judgement.yardstick)


def pytest_terminal_summary(terminalreporter):
    if WORST:
        terminalreporter.section("worst figures measured")
        for (fixture, what), value in sorted(WORST.items()):
            terminalreporter.write_line(f"{fixture:22} {what:48} {value:.3g}")


@pytest.fixture(scope="session")
def load_fixture():
    """name -> (Model, fixture dir, recorded PyTorch outputs); each model is loaded once per session."""
    cache = {}

    def load(name):
        if name not in cache:
            path = FIXTURES / name
            cache[name] = (mt.load(str(path)), path, load_file(str(path / "torch_outputs.safetensors")))
        return cache[name]

    return load


@pytest.fixture(scope="session")
def load_exact():
    """name -> the fixture's model evaluated in float64 (the arbiter of the verdict rule), once per session."""
    cache = {}

    def load(name):
        if name not in cache:
            cache[name] = mt.load(str(FIXTURES / name), dtype="float64")
        return cache[name]

    return load


@pytest.fixture
def fixture_copy(tmp_path):
    """name -> a writable copy of the fixture's export dir."""
    import shutil

    def copy(name):
        target = tmp_path / name
        shutil.copytree(FIXTURES / name, target, ignore=shutil.ignore_patterns("torch_*"))
        return target

    return copy


def pytest_configure(config):
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).parent.parent / ".numba_cache"))
