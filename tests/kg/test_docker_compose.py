"""docker-compose.yml: the Neo4j service users start (no Docker engine here, so its structure is checked)."""
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_neo4j_service():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    neo4j = compose["services"]["neo4j"]
    assert re.fullmatch(r"neo4j:5\.\d+\.\d+-community", neo4j["image"])
    assert set(neo4j["ports"]) == {"127.0.0.1:7474:7474", "127.0.0.1:7687:7687"}
    # auth only from the env file, never a literal password
    assert neo4j["environment"]["NEO4J_AUTH"].startswith("${KGREC_NEO4J_USER:?")
    assert "${KGREC_NEO4J_PASSWORD:?" in neo4j["environment"]["NEO4J_AUTH"]
    volume = neo4j["volumes"][0].split(":")
    assert volume[1] == "/data" and volume[0] in compose["volumes"]
    assert "cypher-shell" in " ".join(neo4j["healthcheck"]["test"])


def test_env_example_names_every_variable_and_no_real_secret():
    env = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
               if line.strip() and not line.startswith("#"))
    assert {"KGREC_NEO4J_URI", "KGREC_NEO4J_USER", "KGREC_NEO4J_PASSWORD"} <= set(env)
    assert ".env" in (ROOT / ".gitignore").read_text().split()
