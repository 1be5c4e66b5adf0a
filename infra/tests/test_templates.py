"""Checks on the Azure templates that need no Azure: they read the Bicep
with the parser checkov bundles (pycep) and compare it with the compose
file, azure.yaml, the Service Bus entity list and docs/deploy.md.
Run by scripts/test: `pytest infra/tests`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from pycep import BicepParser

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def bicep(path: Path) -> dict:
    return BicepParser().parse(file_path=path)


def all_bicep() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*.bicep") if "fixtures" not in p.parts)


def deploy_doc() -> str:
    return (ROOT / "docs" / "deploy.md").read_text()


def doc_table(heading: str) -> list[list[str]]:
    """The rows of the first table under `## heading`, cells stripped."""
    section = deploy_doc().split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def services_var() -> list[dict]:
    return bicep(INFRA / "resources.bicep")["variables"]["services"]["value"]


def compose_services() -> dict[str, int]:
    """legato's compose services (`legato run <service>`; not the broker, the
    emulator or the example agent) and the port each listens on."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    ports = {}
    for name, service in compose["services"].items():
        if service.get("command", [None])[0] != "run":
            continue
        ports[name] = int(service["environment"]["LEGATO__HTTP__PORT"])
    return ports


def test_every_compose_service_has_an_app_and_an_azd_service_with_its_port():
    apps = {s["name"]: s["port"] for s in services_var()}
    assert apps == compose_services()
    azd = yaml.safe_load((ROOT / "azure.yaml").read_text())["services"]
    assert set(azd) == set(apps)
    for name, service in azd.items():
        assert service["host"] == "containerapp", name
        assert service["language"] == "docker", name
        assert service["docker"]["path"] == "./Dockerfile", name
        assert service["docker"]["remoteBuild"] is True, name


def test_agents_scale_on_subscriptions_the_entity_list_has():
    entities = json.loads((INFRA / "servicebus-entities.json").read_text())
    subscriptions = {(s["topic"], s["name"]) for s in entities["subscriptions"]}
    agents = [s for s in services_var() if s["agent"]]
    assert agents, "no agent apps"
    for agent in agents:
        assert ("agent-tasks", agent["name"]) in subscriptions, agent["name"]
    app = (INFRA / "modules" / "app.bicep").read_text()
    assert "topicName: 'agent-tasks'" in app
    assert "loadJsonContent('../servicebus-entities.json')" in (
        INFRA / "modules" / "servicebus.bicep"
    ).read_text()


def accessor(value) -> str:
    """`a.b` as pycep reads a property access."""
    operands = value["operator"]["operands"]
    return f"{operands['operand_1']}.{operands['operand_2']}"


def test_every_listed_entity_is_declared_with_the_lists_names_and_filters():
    module = bicep(INFRA / "modules" / "servicebus.bicep")
    assert module["variables"]["entities"]["value"]["function"]["type"] == "load_json_content"
    resources = module["resources"]
    expected = {
        "topics": ("topic", "entities.topics"),
        "subscriptions": ("sub", "entities.subscriptions"),
        "rules": ("rule", "entities.rules"),
    }
    for name, (item, array) in expected.items():
        loop = resources[name]["config"]["loop_type"]["detail"]
        assert (loop["item_name"], accessor(loop["array_name"])) == (item, array), name
    assert accessor(resources["topics"]["config"]["config"]["name"]) == "topic.name"
    assert resources["subscriptions"]["config"]["config"]["name"] == "${namespace.name}/${sub.topic}/${sub.name}"
    assert (
        resources["rules"]["config"]["config"]["name"]
        == "${namespace.name}/${rule.topic}/${rule.subscription}/${rule.name}"
    )
    text = (INFRA / "modules" / "servicebus.bicep").read_text()
    for field in ("rule.correlationFilter", "rule.sqlFilter", "sub.lockDuration", "sub.maxDeliveryCount",
                  "topic.requiresDuplicateDetection", "topic.duplicateDetectionHistoryTimeWindow"):
        assert field in text, field


def test_role_definition_ids_are_the_documented_built_in_ones():
    documented = {row[1]: row[0] for row in doc_table("Roles")}
    assert all(GUID.match(i) for i in documented), documented
    used = set()
    for path in all_bicep():
        for name, variable in bicep(path).get("variables", {}).items():
            value = variable.get("value")
            if isinstance(value, str) and GUID.match(value):
                assert value in documented, f"{path.name}: {name} = {value} is not in docs/deploy.md"
                used.add(value)
    assert used == set(documented), f"documented but unused: {set(documented) - used}"


def documented_api_versions() -> list[tuple[str, str]]:
    pairs = []
    for row in doc_table("API versions"):
        version = row[1].split()[0]
        for resource_type in re.findall(r"`([A-Za-z.]+/[A-Za-z/]+)`", row[0]):
            pairs.append((resource_type, version))
    return pairs


def test_api_versions_are_the_ones_docs_deploy_names():
    documented = documented_api_versions()
    seen = 0
    for path in all_bicep():
        for name, resource in bicep(path).get("resources", {}).items():
            resource_type, version = resource["type"], resource["api_version"]
            # A child type (topics, tables) follows its documented parent.
            matches = [v for t, v in documented if resource_type == t or resource_type.startswith(t + "/")]
            assert matches, f"{path.name}: {name} ({resource_type}) is not in docs/deploy.md"
            assert version == matches[0], f"{path.name}: {name} uses {resource_type}@{version}"
            seen += 1
    assert seen >= 15


def test_the_parameters_file_feeds_what_azd_must_set():
    main = bicep(INFRA / "main.bicep")["parameters"]
    given = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    required = {name for name, p in main.items() if p.get("default") is None}
    assert required <= set(given), required - set(given)
    assert set(given) <= set(main), set(given) - set(main)
    azd = yaml.safe_load((ROOT / "azure.yaml").read_text())["services"]
    for service in azd:
        variable = "SERVICE_" + service.upper().replace("-", "_") + "_RESOURCE_EXISTS"
        param = re.sub(r"-(\w)", lambda m: m.group(1).upper(), service) + "Exists"
        assert param in given, param
        assert variable in given[param]["value"], (param, given[param])


def test_outputs_users_need_are_there():
    outputs = bicep(INFRA / "main.bicep")["outputs"]
    for name in ("GATEWAY_URL", "NOTIFIER_URL", "AZURE_CONTAINER_REGISTRY_ENDPOINT"):
        assert name in outputs, name


@pytest.mark.parametrize("path", all_bicep(), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_template_parses(path: Path):
    assert bicep(path)
