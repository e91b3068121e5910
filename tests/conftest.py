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
    from fasb_tl.data import data_root

    return data_root()
