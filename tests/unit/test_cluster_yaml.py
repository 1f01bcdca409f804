"""cluster.yaml validates against the Ray cluster launcher's own JSON schema and turns on Ray token
authentication explicitly on every node."""

import json
from pathlib import Path

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[2]


def test_cluster_yaml_matches_ray_launcher_schema():
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    jsonschema.validate(cluster, schema)
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] in types
    head = types[cluster["head_node_type"]]
    assert "GPU" not in head["resources"]
    gpu = [t for t in types.values() if t["resources"].get("GPU")]
    assert gpu and all(t["min_workers"] <= t["max_workers"] for t in gpu)
    assert any(".[gpu]" in c for c in cluster["setup_commands"])


def test_cluster_yaml_turns_on_token_auth_on_every_node():
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    starts = [
        c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in cluster[key] if "ray start" in c
    ]
    assert len(starts) == 2 and all(c.startswith("RAY_AUTH_MODE=token ray start") for c in starts), starts
    # the same token on every node: the one generated on the operator's machine before `ray up`
    assert cluster["file_mounts"].get("/home/ubuntu/.ray/auth_token") == "~/.ray/auth_token"
