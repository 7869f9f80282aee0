"""Tests for kgrec.encoders.tuning: TextTuningConfig and TunedTextEncoder in every mode.

All but the ``minilm`` test use the session-scoped tiny random BERT (hidden 32,
2 layers, intermediate 37) from conftest.py.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from kgrec.encoders.text import EmbeddingCache, TextEncoder, TextEncoderConfig
from kgrec.encoders.tuning import TUNING_MODES, TextTuningConfig, TunedTextEncoder

QUERIES = ["red drill", "nitrile gloves", "steel ladder", "paint brush", "led lamp", "garden hose"]
TITLES = [
    "red cordless drill kit",
    "black nitrile gloves box",
    "large steel ladder",
    "small paint brush set",
    "white led lamp light",
    "green garden hose pack",
]
TEXTS = ["red cordless drill", "", "a large steel hammer and a small wood saw kit", "gloves", "red cordless drill"]
TRAINABLE = [m for m in TUNING_MODES if m != "frozen"]
PEFT_MODES = ("lora", "ia3", "prompt")


@pytest.fixture(scope="module")
def enc(tiny_bert_dir) -> TextEncoder:
    return TextEncoder(TextEncoderConfig(model_path=tiny_bert_dir, batch_size=2))


def contrastive_step(tuned: TunedTextEncoder, lr: float = 1e-2) -> float:
    """One Adam step of in-batch softmax contrastive loss between QUERIES and TITLES."""
    tuned.train()
    opt = torch.optim.Adam(tuned.trainable_parameters(), lr=lr)
    q = F.normalize(tuned(QUERIES), dim=-1)
    t = F.normalize(tuned(TITLES), dim=-1)
    loss = F.cross_entropy(q @ t.T / 0.05, torch.arange(len(QUERIES)))
    opt.zero_grad()
    loss.backward()
    opt.step()
    tuned.eval()
    return float(loss.detach())


def base_weights(tuned: TunedTextEncoder) -> dict[str, torch.Tensor]:
    """Every parameter of the tuned model that is not trainable (the base BERT for peft modes)."""
    return {k: p.detach().clone() for k, p in tuned.model.named_parameters() if not p.requires_grad}


# --------------------------------------------------------------------------- config


def test_config_defaults_and_round_trip():
    cfg = TextTuningConfig()
    assert cfg.mode == "frozen" and cfg.lora_r == 8 and cfg.lora_alpha == 16 and cfg.num_virtual_tokens == 8
    assert [TextTuningConfig(mode=m).default_lr() for m in TUNING_MODES] == [0.0, 3e-5, 5e-4, 3e-3, 3e-3]
    assert TextTuningConfig(mode="lora", lr=1e-4).learning_rate() == 1e-4
    assert TextTuningConfig(mode="lora").learning_rate() == 5e-4
    custom = TextTuningConfig(
        mode="ia3", target_modules=("key", "layer.0.output.dense"), feedforward_modules=("layer.0.output.dense",)
    )
    for c in (cfg, custom, TextTuningConfig(mode="prompt", num_virtual_tokens=3, lr=0.01, seed=4)):
        text = json.dumps(c.to_dict())
        assert TextTuningConfig.from_dict(json.loads(text)) == c


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "adapter"}, "mode must be one of"),
        ({"mode": "lora", "lora_r": 0}, "lora_r"),
        ({"mode": "lora", "lora_alpha": -1}, "lora_alpha"),
        ({"mode": "lora", "lora_dropout": 1.0}, "lora_dropout"),
        ({"mode": "lora", "target_modules": ()}, "must not be empty"),
        ({"mode": "lora", "target_modules": "query"}, "tuple of module-name strings"),
        ({"mode": "prompt", "target_modules": ("query",)}, "only applies to modes 'lora' and 'ia3'"),
        ({"mode": "lora", "target_modules": ("query",), "feedforward_modules": ("query",)}, "only applies to mode 'ia3'"),
        ({"mode": "ia3", "target_modules": ("key",), "feedforward_modules": ("value",)}, "not in target_modules"),
        ({"mode": "prompt", "num_virtual_tokens": 0}, "num_virtual_tokens"),
        ({"mode": "full", "lr": 0.0}, "lr must be"),
        ({"mode": "full", "lr": float("nan")}, "lr must be"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TextTuningConfig(**kwargs)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown keys \['rank'\]"):
        TextTuningConfig.from_dict({"mode": "lora", "rank": 4})


# --------------------------------------------------------------------------- modes


def test_frozen_matches_text_encoder_and_has_nothing_to_train(enc):
    tuned = TunedTextEncoder(enc, TextTuningConfig(mode="frozen"))
    assert tuned.parameter_counts()["trainable"] == 0 and not tuned.trainable
    assert tuned.tuned_state_dict() == {}
    tuned.train()  # frozen BERT stays in eval mode: no dropout
    assert not tuned.model.training
    out = tuned(TEXTS)
    assert not out.requires_grad and out.dtype == torch.float32 and out.shape == (len(TEXTS), 32)
    torch.testing.assert_close(out, enc.encode(TEXTS), atol=1e-6, rtol=0)
    torch.testing.assert_close(tuned.encode(TEXTS), enc.encode(TEXTS), atol=1e-6, rtol=0)
    assert tuned.fingerprint == enc.fingerprint


def test_frozen_encode_shares_the_base_cache(enc, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    enc.encode(TEXTS, cache=cache)
    tuned = TunedTextEncoder(enc, TextTuningConfig(mode="frozen"))
    hits = {"n": 0}
    h = tuned.model.register_forward_hook(lambda *a: hits.__setitem__("n", hits["n"] + 1))
    got = tuned.encode(TEXTS, cache=cache)
    h.remove()
    assert hits["n"] == 0  # everything came from the cache
    torch.testing.assert_close(got, enc.encode(TEXTS), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="only supported in mode 'frozen'"):
        TunedTextEncoder(enc, TextTuningConfig(mode="lora")).encode(TEXTS, cache=cache)


def test_parameter_counts_are_ordered_and_exact(enc):
    counts = {m: TunedTextEncoder(enc, TextTuningConfig(mode=m)).parameter_counts() for m in TUNING_MODES}
    bert_total = sum(p.numel() for p in enc.model.parameters())
    pooler = sum(p.numel() for n, p in enc.model.named_parameters() if n.startswith("pooler."))
    h, layers, inter = 32, 2, 37
    assert counts["frozen"] == {"trainable": 0, "total": bert_total}
    assert counts["full"] == {"trainable": bert_total - pooler, "total": bert_total}
    assert counts["lora"]["trainable"] == layers * 4 * (8 * h + h * 8)  # A [8, h] + B [h, 8] on q, k, v, attn-out
    assert counts["ia3"]["trainable"] == layers * (h + h + inter)  # key, value, feed-forward activation
    assert counts["prompt"]["trainable"] == 8 * h
    for m in TUNING_MODES:
        assert counts[m]["total"] == bert_total + (counts[m]["trainable"] if m in PEFT_MODES else 0)
    t = {m: c["trainable"] for m, c in counts.items()}
    assert t["frozen"] < min(t["prompt"], t["ia3"]) and max(t["prompt"], t["ia3"]) < t["lora"] < t["full"]


@pytest.mark.parametrize("mode", ["lora", "ia3"])
def test_untrained_adapters_equal_frozen(enc, mode):
    """LoRA's B and IA3's vectors start at 0 and 1: the untrained model is the frozen one."""
    tuned = TunedTextEncoder(enc, TextTuningConfig(mode=mode))
    torch.testing.assert_close(tuned.encode(TEXTS), enc.encode(TEXTS), atol=1e-6, rtol=0)


def test_forward_has_grad_and_encode_dedups_in_input_order(enc):
    tuned = TunedTextEncoder(enc, TextTuningConfig(mode="lora"))
    tuned.train()
    out = tuned(TEXTS[:2])
    assert out.requires_grad and out.shape == (2, 32)
    got = tuned.encode(TEXTS, batch_size=2)
    assert tuned.training  # restored
    tuned.eval()
    with torch.no_grad():
        one_by_one = torch.cat([tuned([t]) for t in TEXTS])
    torch.testing.assert_close(got, one_by_one, atol=1e-5, rtol=0)
    assert torch.equal(got[0], got[4])
    assert tuned.encode([]).shape == (0, 32)
    with pytest.raises(TypeError, match="single string"):
        tuned.encode("drill")


def test_copy_model_false_modifies_encoder_in_place_and_refuses_rewrap(tiny_bert_dir):
    own = TextEncoder(TextEncoderConfig(model_path=tiny_bert_dir))
    tuned = TunedTextEncoder(own, TextTuningConfig(mode="lora"), copy_model=False)
    assert tuned.bert is own.model
    with pytest.raises(ValueError, match="already holds peft layers"):
        TunedTextEncoder(own, TextTuningConfig(mode="ia3"))


@pytest.mark.parametrize("mode", TRAINABLE)
def test_training_step_changes_outputs_not_base(enc, mode):
    tuned = TunedTextEncoder(enc, TextTuningConfig(mode=mode))
    before = tuned.encode(QUERIES)
    fp_before = tuned.fingerprint
    frozen_before = base_weights(tuned)
    tuned_before = {k: v.clone() for k, v in tuned.tuned_state_dict().items()}
    contrastive_step(tuned)
    after = tuned.encode(QUERIES)
    assert (after - before).abs().max() > 1e-4
    assert tuned.fingerprint != fp_before
    assert any(not torch.equal(tuned_before[k], v) for k, v in tuned.tuned_state_dict().items())
    for k, v in base_weights(tuned).items():  # base BERT (peft) or pooler (full) untouched
        assert torch.equal(v, frozen_before[k]), k
    if mode in PEFT_MODES:
        assert len(frozen_before) == len(list(enc.model.parameters()))
    # the base encoder (copy_model=True) is untouched
    torch.testing.assert_close(TunedTextEncoder(enc).encode(QUERIES), enc.encode(QUERIES), atol=0, rtol=0)


@pytest.mark.parametrize("mode", TUNING_MODES)
def test_save_load_round_trip(enc, mode, tmp_path):
    tuned = TunedTextEncoder(enc, TextTuningConfig(mode=mode, lora_r=4, num_virtual_tokens=3))
    if tuned.trainable:
        contrastive_step(tuned)
    tuned.save(tmp_path / "t")
    meta = json.loads((tmp_path / "t" / "tuning.json").read_text())
    assert meta["mode"] == mode and meta["base_fingerprint"] == enc.fingerprint
    assert meta["config"]["lora_r"] == 4 and meta["parameter_counts"] == tuned.parameter_counts()
    assert (tmp_path / "t" / "tuned.safetensors").is_file()
    assert not list((tmp_path / "t").glob("*.bin")) and not list((tmp_path / "t").glob("*.pt"))
    fresh = TextEncoder(TextEncoderConfig(model_path=enc.config.model_path, batch_size=2))
    loaded = TunedTextEncoder.load(tmp_path / "t", fresh)
    assert loaded.mode == mode and loaded.fingerprint == tuned.fingerprint
    torch.testing.assert_close(loaded.encode(TEXTS), tuned.encode(TEXTS), atol=1e-6, rtol=0)


def test_load_rejects_another_base_model(enc, tiny_bert_dir, tmp_path):
    TunedTextEncoder(enc, TextTuningConfig(mode="lora")).save(tmp_path / "t")
    other = TextEncoder(TextEncoderConfig(model_path=tiny_bert_dir, max_length=16))
    with pytest.raises(ValueError, match=f"{enc.fingerprint}.*{other.fingerprint}"):
        TunedTextEncoder.load(tmp_path / "t", other)
    with pytest.raises(FileNotFoundError, match="tuning.json"):
        TunedTextEncoder.load(tmp_path / "missing", enc)


def test_load_tuned_state_is_strict(enc):
    tuned = TunedTextEncoder(enc, TextTuningConfig(mode="lora"))
    state = dict(tuned.tuned_state_dict())
    key = sorted(state)[0]
    missing = {k: v for k, v in state.items() if k != key}
    with pytest.raises(KeyError, match="missing keys"):
        tuned.load_tuned_state(missing)
    with pytest.raises(KeyError, match=r"unexpected keys \['bogus.weight'\]"):
        tuned.load_tuned_state({**state, "bogus.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        tuned.load_tuned_state({**state, key: torch.zeros(3)})
    with pytest.raises(KeyError, match="mode 'ia3'"):
        TunedTextEncoder(enc, TextTuningConfig(mode="ia3")).load_tuned_state(state)


def test_prompt_pooling_excludes_virtual_tokens(enc):
    """Value test against peft's own forward: mean over the text's tokens only."""
    v = 4
    tuned = TunedTextEncoder(enc, TextTuningConfig(mode="prompt", num_virtual_tokens=v)).eval()
    batch = enc.tokenize(TEXTS)
    with torch.no_grad():
        hidden = tuned.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert hidden.shape[1] == batch["input_ids"].shape[1] + v
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = (hidden[:, v:] * mask).sum(1) / mask.sum(1)
    with torch.no_grad():
        got = tuned(TEXTS)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    full_mask = torch.cat([torch.ones(len(TEXTS), v, 1), mask], dim=1)
    including = (hidden * full_mask).sum(1) / full_mask.sum(1)
    assert (got - including).abs().max() > 1e-3  # the choice matters
    # the prompts do change the vectors (unlike untrained LoRA / IA3)
    assert (got - enc.encode(TEXTS)).abs().max() > 1e-3


def test_prompt_rejects_sequences_past_the_position_table(tiny_bert_dir):
    long = TextEncoder(TextEncoderConfig(model_path=tiny_bert_dir, max_length=125))
    with pytest.raises(ValueError, match="max_position_embeddings 128"):
        TunedTextEncoder(long, TextTuningConfig(mode="prompt", num_virtual_tokens=8))


def test_seed_makes_init_deterministic(enc):
    a = TunedTextEncoder(enc, TextTuningConfig(mode="prompt", seed=3)).tuned_state_dict()
    b = TunedTextEncoder(enc, TextTuningConfig(mode="prompt", seed=3)).tuned_state_dict()
    c = TunedTextEncoder(enc, TextTuningConfig(mode="prompt", seed=4)).tuned_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.minilm
def test_minilm_lora_untrained_equals_frozen():
    base = TextEncoder(TextEncoderConfig(batch_size=4))
    lora = TunedTextEncoder(base, TextTuningConfig(mode="lora"))
    texts = ["cordless drill with two batteries", "nitrile examination gloves, size M", "steel tape measure"]
    got = lora.encode(texts)
    assert got.shape == (3, 384) and lora.dim == 384
    torch.testing.assert_close(got, base.encode(texts), atol=1e-5, rtol=0)
    counts = lora.parameter_counts()
    assert counts["trainable"] == 6 * 4 * (8 * 384 * 2)  # 6 layers x (q, k, v, attn-out) x (A + B)
