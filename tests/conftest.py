"""Shared fixtures: the tiny random Llama (unit tests) and the embedded SmolLM2 (integration tests)."""

from __future__ import annotations

import os
import socket

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model():
    from fasb_tl.models import load_model

    return load_model("tiny-random-llama")


@pytest.fixture(scope="session")
def smollm2():
    from fasb_tl.models import load_model

    return load_model("smollm2-135m-instruct")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails loudly."""

    def refuse(*args, **kwargs):
        raise OSError("network access attempted during an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def data_dir():
    """The repository's data/ folder (the tests run from a checkout, which ships every dataset)."""
    from fasb_tl.data.paths import repository_data_dir

    folder = repository_data_dir()
    assert folder is not None, "the tests must run from a checkout of the repository, which has data/"
    return folder


@pytest.fixture(scope="session")
def steerer(tiny_model):
    """A 4-head Steerer fitted on the tiny model with the built-in dataset (fold 0), shared by unit tests."""
    from fasb_tl.data import dataset_splits, load_builtin
    from fasb_tl.fitting import fit_steerer

    records = load_builtin()
    fitted = fit_steerer(tiny_model, records, dataset_splits("builtin", len(records))[0], k=4, progress=False)
    return fitted


@pytest.fixture(scope="session")
def smollm2_steerer(smollm2):
    """A Steerer fitted on SmolLM2 with the built-in dataset (fold 0), shared by integration tests."""
    from fasb_tl.data import dataset_splits, load_builtin
    from fasb_tl.fitting import fit_steerer

    records = load_builtin()
    split = dataset_splits("builtin", len(records))[0]
    steerer = fit_steerer(smollm2, records, split, k=24, dataset="builtin", batch_size=32, progress=False)
    return steerer
