"""cluster.yaml is checked as `ray up` checks it (Ray's ray-schema.json, then its config
preparation and validation), offline, and its commands parse with the tools they call."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray.autoscaler
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cluster() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    return config


def ray_schema() -> dict[str, Any]:
    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema: dict[str, Any] = json.loads(path.read_text())
    return schema


def test_cluster_yaml_passes_rays_schema(cluster: dict[str, Any]) -> None:
    jsonschema.validate(cluster, ray_schema())


def test_a_top_level_min_workers_is_what_rays_schema_refuses(cluster: dict[str, Any]) -> None:
    """The check above can fail: the field cluster.yaml used to carry is refused."""
    with pytest.raises(jsonschema.ValidationError, match="min_workers"):
        jsonschema.validate({**cluster, "min_workers": 2}, ray_schema())


def test_cluster_yaml_passes_ray_ups_preparation_and_validation(cluster: dict[str, Any]) -> None:
    """`ray up` reads the YAML, then `_bootstrap_config`: prepare_config (the local provider's
    single node type, defaults, merged setup commands), the provider's resource fill-out,
    validate_config (the schema again, on the prepared config) and the provider's bootstrap."""
    from ray.autoscaler._private.commands import _bootstrap_config
    from ray.autoscaler._private.util import validate_config

    prepared = _bootstrap_config(copy.deepcopy(cluster), no_config_cache=True)
    validate_config(prepared)
    (node_type,) = prepared["available_node_types"].values()
    # Both listed workers are kept, head and workers run the same setup.
    assert node_type["min_workers"] == node_type["max_workers"] == 2
    assert prepared["head_setup_commands"] == prepared["worker_setup_commands"]
    assert "cd ~/chatdf && ./scripts/install.sh" in prepared["worker_setup_commands"]


def ray_start_commands(cluster: dict[str, Any]) -> list[list[str]]:
    commands = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
    return [shlex.split(c) for c in commands if "/bin/ray start " in c]


def test_every_ray_start_has_the_slots_the_token_and_warm_workers(cluster: dict[str, Any]) -> None:
    """The meaning cluster.yaml must keep (docs/sql.md "Slots", docs/security.md), and its
    `ray start` flags parse with Ray's own command line."""
    from ray.scripts.scripts import start

    starts = ray_start_commands(cluster)
    assert len(starts) == 2  # the head and the workers
    for words in starts:
        env = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
        assert env["RAY_AUTH_MODE"] == "token"
        assert int(env["RAY_num_workers_soft_limit"]) > 0
        args = words[words.index("start") + 1 :]
        context = start.make_context("ray start", args)
        resources = json.loads(context.params["resources"])
        assert min(resources[k] for k in ("chatdf_query", "chatdf_load", "chatdf_session")) > 0
        assert context.params["include_dashboard"] in (None, False)


def test_the_edge_command_parses_with_chatdf(cluster: dict[str, Any]) -> None:
    from api.cli import build_parser

    (edge,) = [c for c in cluster["head_start_ray_commands"] if "chatdf serve" in c]
    words = shlex.split(edge)
    assert "RAY_AUTH_MODE=token" in words and "DEV_LOGIN=false" in words
    serve = words[words.index(".venv/bin/chatdf") + 1 : words.index(">")]
    args = build_parser().parse_args(serve)
    assert (args.command, args.host, args.port) == ("serve", "0.0.0.0", 8000)
