"""Artifacts: save/load round trip (scores equal), layout without pickle, clear errors."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch

from kgrec.fusion.data import evaluation_examples
from kgrec.fusion.models import FusedConfig
from kgrec.fusion.registry import MODEL_NAMES, ModelInputs, build_model
from kgrec.fusion.train import TrainConfig, fit
from kgrec.serving.api import Scorer
from kgrec.serving.artifact import (
    CONFIG,
    FORMAT_VERSION,
    ArtifactError,
    _config_checksum,
    _sha256,
    load_artifact,
    save_artifact,
)


@pytest.fixture(scope="module")
def encoder(tiny_bert_dir):
    from kgrec.encoders.text import TextEncoder, TextEncoderConfig

    return TextEncoder(TextEncoderConfig(model_path=tiny_bert_dir))


@pytest.fixture(scope="module")
def text_features(encoder, tiny_snapshot):
    return encoder.encode(tiny_snapshot.product_text)


def _trained(name, snapshot, text):
    model = build_model(name, ModelInputs.from_snapshot(snapshot, text), FusedConfig(graph_dim=8))
    fit(model, snapshot, TrainConfig(epochs=2, batch_size=32, lr=1e-2, device="cpu"), progress=False)
    return model


@pytest.fixture(scope="module")
def fused_artifact(tmp_path_factory, tiny_snapshot, tiny_store, text_features, encoder):
    model = _trained("fused", tiny_snapshot, text_features)
    path = tmp_path_factory.mktemp("artifacts") / "fused"
    save_artifact(model, tiny_snapshot, path, text_encoder=encoder, products=tiny_store.nodes("Product"),
                  metrics={"note": "test"})
    return model, path


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_round_trip_scores_are_equal(name, tiny_snapshot, tiny_store, text_features, encoder, tmp_path):
    model = _trained(name, tiny_snapshot, text_features)
    path = save_artifact(model, tiny_snapshot, tmp_path / name, text_encoder=encoder, products=tiny_store.nodes("Product"))

    model.set_graph(tiny_snapshot.message_passing("test"))
    model.eval()
    batch, _ = evaluation_examples(tiny_snapshot, "test")
    with torch.no_grad():
        expected = model.score_all(batch)

    loaded = load_artifact(path)
    with torch.no_grad():
        assert torch.allclose(loaded.model.score_all(batch), expected, atol=1e-5)  # the rebuilt graph model
        served = loaded.model.serving_users(loaded.state, batch) @ loaded.state["products"].T
    assert torch.allclose(served, expected, atol=1e-4)  # the precomputed serving state, no graph

    scorer = Scorer(loaded)
    users, products = tiny_snapshot.id_maps["user"], tiny_snapshot.id_maps["product"]
    pairs = [(users[int(u)], products[p]) for u in batch.users[:4] for p in (0, 5, 23)]
    want = [float(expected[i, p]) for i in range(4) for p in (0, 5, 23)]
    assert scorer.score(pairs) == pytest.approx(want, abs=1e-4)

    config = json.loads((path / CONFIG).read_text())
    assert config["format_version"] == FORMAT_VERSION
    assert config["model"]["name"] == name and config["model"]["class"] == type(model).__name__
    assert config["data"]["fingerprint"] == tiny_snapshot.fingerprint()
    if name in ("fused", "text-only", "text-zero-shot"):
        assert config["text_encoder"]["fingerprint"] == encoder.fingerprint
        assert config["text_encoder"]["path"] == str(encoder.model_path)


def test_layout_holds_everything_serving_needs_and_no_pickle(fused_artifact, tiny_snapshot):
    _, path = fused_artifact
    files = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "serving.safetensors", "products.parquet", "interactions.parquet",
            "structure.parquet", "categories.parquet", "metrics.json",
            "ids/product.parquet", "ids/user.parquet", "ids/category.parquet", "ids/brand.parquet"} == files
    for t in ("product", "user", "category", "brand"):
        assert pd.read_parquet(path / "ids" / f"{t}.parquet")["id"].tolist() == tiny_snapshot.id_maps[t]
    products = pd.read_parquet(path / "products.parquet")
    assert products["text"].tolist() == tiny_snapshot.product_text
    assert products.loc[products.product_id == "P01", ["title", "brand", "category"]].values.tolist() == [
        ["saw red kit", "Bolt", "Tools > Hand"]
    ]
    visible = tiny_snapshot.visible("test")
    stored = pd.read_parquet(path / "interactions.parquet")
    assert stored[["user", "product", "order"]].values.tolist() == visible[["user", "product", "order"]].values.tolist()
    assert "test" not in set(stored["split"])
    for f in files:  # safetensors, Parquet and JSON only
        assert f.endswith((".json", ".safetensors", ".parquet"))
    assert json.loads((path / "metrics.json").read_text()) == {"note": "test"}


def test_refuses_to_overwrite(fused_artifact, tiny_snapshot):
    model, path = fused_artifact
    with pytest.raises(FileExistsError):
        save_artifact(model, tiny_snapshot, path)


def _rewrite_config(path, edit):
    config = json.loads((path / CONFIG).read_text())
    edit(config)
    config["checksum"] = _config_checksum(config)
    (path / CONFIG).write_text(json.dumps(config))


def _swap_weights(path):
    from safetensors.torch import load_file, save_file

    weights = load_file(str(path / "model.safetensors"))
    weights["user_ffn.0.weight"] = torch.zeros(3, 3)
    save_file(weights, str(path / "model.safetensors"))
    _rewrite_config(path, lambda c: c["files"].__setitem__("model.safetensors", _sha256(path / "model.safetensors")))


CORRUPTIONS = {
    "missing weights": (lambda p: (p / "model.safetensors").unlink(), "model.safetensors", "missing"),
    "missing config": (lambda p: (p / CONFIG).unlink(), CONFIG, "missing"),
    "truncated parquet": (lambda p: (p / "ids" / "user.parquet").write_bytes(b"PAR1"), "user.parquet", "sha256"),
    "invalid json": (lambda p: (p / CONFIG).write_text("{not json"), CONFIG, "not valid JSON"),
    "hand-edited json": (
        lambda p: (p / CONFIG).write_text((p / CONFIG).read_text().replace('"max_history": 50', '"max_history": 7')),
        CONFIG, "checksum mismatch",
    ),
    "future format": (lambda p: _rewrite_config(p, lambda c: c.update(format_version=FORMAT_VERSION + 1)), CONFIG, "format version"),
    "shape mismatch": (_swap_weights, "model.safetensors", "shape"),
    "product count": (
        lambda p: _rewrite_config(p, lambda c: c["model"]["init"].update(num_products=25)), "product.parquet", "25",
    ),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_artifacts_raise_an_error_naming_the_file(case, fused_artifact, tmp_path):
    _, path = fused_artifact
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    damage, file, reason = CORRUPTIONS[case]
    damage(broken)
    with pytest.raises(ArtifactError) as info:
        load_artifact(broken)
    assert file in str(info.value) and reason in str(info.value)
    assert info.value.file.endswith(file)


def test_data_fingerprint_is_checked_on_request(fused_artifact, tiny_snapshot):
    _, path = fused_artifact
    assert load_artifact(path, expect_fingerprint=tiny_snapshot.fingerprint()).fingerprint == tiny_snapshot.fingerprint()
    with pytest.raises(ArtifactError, match="trained on data"):
        load_artifact(path, expect_fingerprint="0" * 16)
    with pytest.raises(ArtifactError, match="not found"):
        load_artifact(path.parent / "nowhere")


def test_round_trip_with_the_users_own_graph_vector(tiny_snapshot, text_features, tmp_path):
    """user_graph=True: the serving state carries the users' GNN vectors; a session user gets none."""
    from kgrec.fusion.models import FusedRecommender

    model = FusedRecommender(tiny_snapshot.num_users, tiny_snapshot.num_products, FusedConfig(graph_dim=8, user_graph=True),
                             text_features=text_features, num_nodes=tiny_snapshot.num_nodes,
                             edge_types=list(tiny_snapshot.message_passing("train").edge_types))
    torch.nn.init.normal_(model.user_graph_proj.weight, std=0.5)  # make the user term matter
    path = save_artifact(model, tiny_snapshot, tmp_path / "ug")
    batch, _ = evaluation_examples(tiny_snapshot, "test")
    with torch.no_grad():
        expected = model.score_all(batch)
    scorer = Scorer.load(path)
    assert scorer.state["user_graph"].shape[0] == tiny_snapshot.num_users
    users = tiny_snapshot.id_maps["user"]
    assert scorer.score([(users[int(batch.users[0])], "P03")]) == pytest.approx([float(expected[0, 3])], abs=1e-4)
    history = scorer.user_history(users[0])
    known, visitor = scorer.recommend([users[0], "visitor"], k=24, session={"visitor": history})
    assert visitor.source == "session" and {p for p, _ in known} == {p for p, _ in visitor}
    assert [s for _, s in known] != pytest.approx([s for _, s in visitor], abs=1e-4)  # the GNN user vector counts


def _rehash(path):
    """Re-hash every listed file into config.json, as someone editing an artifact would."""
    _rewrite_config(path, lambda c: c["files"].update({f: _sha256(path / f) for f in c["files"] if (path / f).is_file()}))


def _edit_tensor(file, key_prefix, value):
    from safetensors.torch import load_file, save_file

    def edit(path):
        tensors = load_file(str(path / file))
        key = next(k for k in sorted(tensors) if k.startswith(key_prefix) and tensors[k].is_floating_point())
        tensors[key].view(-1)[0] = value
        save_file(tensors, str(path / file))
        _rehash(path)
    return edit


def _outside_entry(name):
    def edit(path):
        target = path / name
        digest = _sha256(target) if target.is_file() else "0" * 64
        _rewrite_config(path, lambda c: c["files"].__setitem__(name, digest))
    return edit


def _link_out(path):
    outside = path.parent / "outside.json"
    outside.write_text('{"secret": 1}')
    (path / "metrics.json").unlink()
    (path / "metrics.json").symlink_to(outside)
    _rehash(path)


def _config(edit):
    return lambda path: _rewrite_config(path, edit)


#: Edits that keep every checksum valid (config.json re-hashed), each with the file the error must
#: name and a word of its reason. Each loaded before the loader checked paths, sizes and values.
HOSTILE = {
    "files entry climbing out": (_outside_entry("../../../etc/hostname"), CONFIG, "not a plain path"),
    "absolute files entry": (_outside_entry("/etc/hostname"), CONFIG, "not a plain path"),
    "files entry with a dot part": (_outside_entry("ids/./user.parquet"), CONFIG, "not a plain path"),
    "metrics linked outside": (_link_out, "metrics.json", "outside the artifact folder"),
    "negative graph dim": (_config(lambda c: c["model"]["config"].update(graph_dim=-8)), CONFIG, "graph_dim"),
    "absurd graph dim": (_config(lambda c: c["model"]["config"].update(graph_dim=10**9)), CONFIG, "graph_dim"),
    "absurd text dim": (_config(lambda c: c["model"]["init"].update(text_dim=10**12)), CONFIG, "text_dim"),
    "negative node count": (_config(lambda c: c["model"]["init"]["num_nodes"].update(brand=-1)), CONFIG, "num_nodes.brand"),
    "absurd node count": (_config(lambda c: c["model"]["init"]["num_nodes"].update(entity=10**12)), CONFIG, "num_nodes.entity"),
    "node count off the ids": (_config(lambda c: c["model"]["init"]["num_nodes"].update(brand=50)), "brand.parquet", "50"),
    "negative history": (_config(lambda c: c.update(max_history=-1)), CONFIG, "max_history"),
    "nan temperature": (_config(lambda c: c["model"]["config"].update(temperature=float("nan"))), CONFIG, "temperature"),
    "negative serving shape": (_config(lambda c: c["serving_keys"].update(products=[-24, 8])), CONFIG, "serving_keys"),
    "nan weight": (_edit_tensor("model.safetensors", "", float("nan")), "model.safetensors", "NaN"),
    "inf weight": (_edit_tensor("model.safetensors", "", float("inf")), "model.safetensors", "NaN or infinite"),
    "nan serving vector": (_edit_tensor("serving.safetensors", "products", float("nan")), "serving.safetensors", "NaN"),
}


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("case", list(HOSTILE))
def test_edited_and_rehashed_artifacts_are_refused(case, verify, fused_artifact, tmp_path):
    _, path = fused_artifact
    broken = tmp_path / "art" / "fused"
    shutil.copytree(path, broken)
    edit, file, reason = HOSTILE[case]
    edit(broken)
    with pytest.raises(ArtifactError) as info:
        load_artifact(broken, verify=verify)
    assert info.value.file.endswith(file) and reason in str(info.value), str(info.value)
    assert str(broken) in info.value.file
