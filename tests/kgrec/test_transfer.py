"""``kgrec train --init-from``: a scorer trained on one catalogue starts another (kgrec.workflow.transfer).

The source is trained on the tiny catalogue (interactions + judgements, multi-task); the targets are
a RecBole catalogue with a knowledge graph (other products, users, relations) and the same catalogue
without interactions or judgements (zero-shot search).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from kgrec.cli import app
from kgrec.encoders.text import TextEncoder, TextEncoderConfig
from kgrec.encoders.tuning import TunedTextEncoder
from kgrec.fusion.registry import spec
from kgrec.ingest.tables import write_tables
from kgrec.kg.embedded import EmbeddedStore
from kgrec.serving.api import Scorer
from kgrec.serving.artifact import load_artifact, save_artifact
from kgrec.workflow.data import load_dataset
from kgrec.workflow.features import encode_text, load_text_encoder
from kgrec.workflow.models import ModelSettings, train_model
from kgrec.workflow.train import FALLBACK_LEXICAL_WEIGHT

#: What reads text, not ids: it must travel whenever the source has it.
TOWERS = ("text_adapter.weight", "query_adapter.weight", "gate.weight", "gate.bias", "recency", "user_ffn.0.weight",
          "user_ffn.2.weight", "search_user_weight", "graph_proj.weight")


def kgrec(*args, code: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    assert "Traceback" not in result.output
    return result


def weights(artifact: Path) -> dict[str, torch.Tensor]:
    return load_file(str(artifact / "model.safetensors"))


def init_from(artifact: Path) -> dict:
    return json.loads((artifact / "config.json").read_text())["extra"]["init_from"]


@pytest.fixture(scope="module")
def stores(tiny_tables, tiny_judgements, recbole_kg, tmp_path_factory):
    """Ingested stores: ``source`` (interactions + judgements), ``target`` (RecBole + KG), ``catalogue``
    (the target's products and KG only)."""
    root = tmp_path_factory.mktemp("transfer")
    data = root / "source-data"
    write_tables(tiny_tables, data)
    tiny_judgements.to_csv(data / "judgements.csv", index=False)
    recbole_kg(root / "target-data")
    shutil.copytree(root / "target-data", root / "catalogue-data")
    for name in ("toy.inter", "toy.user"):
        (root / "catalogue-data" / name).unlink()
    for name in ("source", "target", "catalogue"):
        kgrec("ingest", root / f"{name}-data", "--store", root / name, "--no-progress")
    return root


def train(stores: Path, store: str, out: str, *flags, code: int = 0, text_model=None, payload: bool = True):
    result = kgrec("train", "--store", stores / store, "--out", stores / out, "--text-model", text_model,
                   "--cache", stores / "cache", "--device", "cpu", "--no-progress", *(["--json"] if payload else []), *flags,
                   code=code)
    return json.loads(result.stdout) if payload and code == 0 else result


@pytest.fixture(scope="module")
def source(stores, tiny_bert_dir):
    """A multi-task fused artifact of the tiny catalogue (2 epochs)."""
    train(stores, "source", "source-artifact", "--epochs", 2, "--batch-size", 16, text_model=tiny_bert_dir)
    return stores / "source-artifact"


@pytest.fixture(scope="module")
def transferred(stores, source, tiny_bert_dir):
    """The target trained 0 epochs from the source, and from scratch with the same seed."""
    payload = train(stores, "target", "zero", "--epochs", 0, "--init-from", source, text_model=tiny_bert_dir)
    # the source's GNN (a transferred model keeps its source's config; auto would pick R-GCN for the target's KG)
    train(stores, "target", "scratch", "--epochs", 0, "--graph-encoder", "sage", text_model=tiny_bert_dir)
    return stores / "zero", stores / "scratch", payload


def test_towers_are_copied_and_equal_the_source(transferred, source):
    zero, _, payload = transferred
    copied = init_from(zero)["copied"]
    assert set(TOWERS) <= set(copied)
    old, new = weights(source), weights(zero)
    for key in copied:
        assert torch.equal(new[key], old[key]), key
    assert payload["init_from"]["path"] == str(source.resolve())


def test_parts_tied_to_the_old_catalogue_start_fresh(transferred, source):
    zero, scratch, _ = transferred
    record = init_from(zero)
    fresh, old, new, untouched = record["fresh"], weights(source), weights(zero), weights(scratch)
    embeddings = [k for k in new if k.startswith("graph.embedding.")]
    assert embeddings and set(embeddings) <= set(fresh)
    assert any("<entity___" in k for k in fresh)  # a relation the source graph does not have
    assert set(record["zeroed"]) == set(embeddings)  # id vectors start at zero: no noise through the copied GNN
    for key in embeddings:
        assert not new[key].any() and (untouched[key].any() or untouched[key].numel() == 0), key
    for key in set(fresh) - set(embeddings):  # the rest: what a model built from scratch with the same seed starts with
        assert torch.equal(new[key], untouched[key]), key
    assert not set(fresh) & set(record["copied"])
    assert record["rebuilt"] == ["text"]
    assert new["graph.embedding.product.weight"].shape[0] == 20 != old["graph.embedding.product.weight"].shape[0]
    # the source's search graph had judged query nodes; the target has none
    assert "graph.embedding.query.weight" in record["dropped"] and any("judged" in k for k in record["dropped"])
    # the copies are not what a fresh model starts with (the source trained them)
    assert not torch.equal(new["text_adapter.weight"], untouched["text_adapter.weight"])


def test_provenance_is_recorded(transferred, source):
    zero, _, _ = transferred
    record, config = init_from(zero), json.loads((source / "config.json").read_text())
    assert record["path"] == str(source.resolve())
    assert record["data_fingerprint"] == config["data"]["fingerprint"]
    assert record["model"] == "fused" and record["text_tuning"] == "frozen" and record["text_tower"] is None
    assert record["text_encoder"] == config["text_encoder"]["fingerprint"]
    assert load_artifact(zero).model.config == spec("fused").config_from_dict(config["model"]["config"])


def test_epochs_zero_serves_the_source_towers(transferred, source, tiny_bert_dir):
    zero, _, _ = transferred
    before, after = load_artifact(source), load_artifact(zero)
    encoder = TextEncoder(TextEncoderConfig(model_path=tiny_bert_dir))
    queries = encoder.encode(["cordless drill", "red paint brush", "movie number 3"])
    assert torch.allclose(after.model.serving_query(after.state, queries), before.model.serving_query(before.state, queries))
    # product text through the transferred adapter: the new catalogue's vectors, the source's adapter
    text = torch.nn.functional.normalize(encoder.encode(after.products["text"].tolist()), dim=-1)
    assert torch.allclose(after.state["product_text"], text + before.model.text_adapter(text), atol=1e-5)


def test_training_from_the_source_moves_the_towers(stores, source, tiny_bert_dir):
    payload = train(stores, "target", "tuned", "--epochs", 2, "--batch-size", 16, "--init-from", source,
                    text_model=tiny_bert_dir)
    assert payload["epochs"] == 2 and payload["tasks"] == ["rec"]
    # the best validated epoch is kept: trained weights when an epoch beat the transferred start,
    # the source's own weights when none did (the start competes, and it must stay exactly as it was)
    moved = not torch.equal(weights(stores / "tuned")["user_ffn.0.weight"], weights(source)["user_ffn.0.weight"])
    assert moved == (payload["best_epoch"] > 0)
    assert init_from(stores / "tuned")["data_fingerprint"] == init_from(stores / "zero")["data_fingerprint"]


def test_another_text_model_is_refused(stores, source, tiny_bert_dir, tmp_path):
    other = tmp_path / "other-bert"
    shutil.copytree(tiny_bert_dir, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-6}))
    result = train(stores, "target", "refused", "--init-from", source, "--epochs", 0, code=2, text_model=other, payload=False)
    flat = " ".join(result.output.split())
    assert "transfer needs the same text model" in flat and "differs from this run's" in flat
    assert json.loads((source / "config.json").read_text())["text_encoder"]["fingerprint"] in flat
    assert not (stores / "refused").exists()


@pytest.mark.parametrize("flags, message", [
    (("--model", "text-only"), "holds a 'fused' model"),
    (("--graph-dim", 4), "drop --graph-dim"),
])
def test_what_cannot_continue_the_source_is_refused(stores, source, tiny_bert_dir, flags, message):
    result = train(stores, "target", "refused", "--init-from", source, *flags, code=2, text_model=tiny_bert_dir, payload=False)
    assert message in result.output and not (stores / "refused").exists()


def test_a_folder_that_is_no_artifact_is_refused(stores, tiny_bert_dir):
    result = train(stores, "target", "refused", "--init-from", stores / "source-data", code=2, text_model=tiny_bert_dir,
                   payload=False)
    assert "--init-from" in result.output and "config.json: missing" in result.output


def test_zero_shot_search_on_a_store_without_judgements(stores, source, tiny_bert_dir):
    payload = train(stores, "catalogue", "search", "--tasks", "search", "--epochs", 0, "--init-from", source,
                    text_model=tiny_bert_dir)
    assert payload["tasks"] == [] and payload["epochs"] == 0
    assert payload["serving"] == {"tasks": ["search"], "lexical_weight": FALLBACK_LEXICAL_WEIGHT,
                                  "lexical_weight_source": "default (no judgements)"}
    scorer = Scorer.load(stores / "search")
    found = scorer.search("movie number 7", k=3)
    assert len(found) == 3 and all(p in scorer.artifact.id_maps["product"] for p, _ in found)
    # search asked of a store without judgements trains zero-shot only from an artifact or with 0 epochs
    refused = train(stores, "catalogue", "refused", "--tasks", "search", "--epochs", 1, code=2, text_model=tiny_bert_dir,
                    payload=False)
    assert "cannot train or evaluate search: the store holds no search judgements" in refused.output
    untrained = train(stores, "catalogue", "untrained", "--tasks", "search", "--epochs", 0, text_model=tiny_bert_dir)
    assert untrained["serving"]["tasks"] == ["search"] and "init_from" not in untrained


def test_rec_trains_while_search_is_served_zero_shot(stores, source, tiny_bert_dir):
    payload = train(stores, "target", "both", "--tasks", "rec,search", "--epochs", 1, "--batch-size", 16, "--init-from", source,
                    text_model=tiny_bert_dir)
    assert payload["tasks"] == ["rec"] and payload["serving"]["tasks"] == ["rec", "search"] and "rec" in payload
    assert payload["serving"]["lexical_weight"] == FALLBACK_LEXICAL_WEIGHT


@pytest.mark.parametrize("field, value", [("lr", 0.5), ("batch_size", 7), ("patience", 9)])
def test_trainer_overrides_apply_to_the_model_being_trained(field, value):
    for name in ("fused", "mf-bpr"):
        assert getattr(ModelSettings(**{field: value}).train_config(spec(name)), field) == value


def lora_source(store_dir: Path, bert: str, out: Path) -> Path:
    """A multi-task fused artifact with a LoRA tower whose adapter weights moved away from their
    start (LoRA's B matrices start at 0: an untrained tower encodes like the base BERT)."""
    store = EmbeddedStore(store_dir)
    dataset = load_dataset(store)
    features = encode_text(dataset, load_text_encoder(bert))
    model = train_model("fused", dataset, features, ("rec", "search"), ModelSettings(text_tuning="lora", epochs=0)).model
    with torch.no_grad():
        for p in model.text_tower.trainable_parameters():
            p.add_(0.5 * torch.randn_like(p))
    model.refresh_text()
    save_artifact(model, dataset.snapshot, out, text_encoder=features.encoder, products=store.nodes("Product"))
    return out


@pytest.mark.slow
def test_a_fine_tuned_tower_travels(stores, tiny_bert_dir):
    """A LoRA tower: loaded from ``text_tower/``, it re-encodes the new catalogue; 0 epochs keep it unchanged."""
    source = lora_source(stores / "source", tiny_bert_dir, stores / "lora-source")
    train(stores, "target", "lora-zero", "--epochs", 0, "--init-from", source, text_model=tiny_bert_dir)
    target = stores / "lora-zero"
    old, new = (load_file(str(a / "text_tower" / "tuned.safetensors")) for a in (source, target))
    assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)
    record = init_from(target)
    assert record["text_tuning"] == "lora" and record["text_tower"] == "text_tower/ (lora)"
    assert json.loads((target / "config.json").read_text())["text_tuning"]["mode"] == "lora"
    encoder = TextEncoder(TextEncoderConfig(model_path=tiny_bert_dir))
    tower = TunedTextEncoder.load(source / "text_tower", encoder)
    texts = load_artifact(target).products["text"].tolist()
    model = load_artifact(target).model
    assert torch.allclose(model.text, torch.nn.functional.normalize(tower.encode(texts), dim=-1), atol=1e-5)
    assert not torch.allclose(model.text, torch.nn.functional.normalize(encoder.encode(texts), dim=-1), atol=1e-3)
    refused = train(stores, "target", "refused", "--init-from", source, "--text-tuning", "full", code=2,
                    text_model=tiny_bert_dir, payload=False)
    assert "tuned with 'lora'" in refused.output
