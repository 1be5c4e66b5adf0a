"""checkov checks for what its built-in Bicep set lacks (it has none for
Container Apps, Service Bus or SignalR): keyless scale rules, local auth
off, HTTPS-only ingress, environment logs without the workspace key. Run with
`checkov -d infra --framework bicep --skip-download --external-checks-dir infra/checks`.

checkov hands a check the resource's properties as the Bicep parser reads
them: a `cond ? a : b` is {"operator": {"type": "conditional", "operands":
{...}}}, so every check looks at both branches."""

from __future__ import annotations

from typing import Any, Iterator

from checkov.bicep.checks.resource.base_resource_check import BaseResourceCheck
from checkov.common.models.enums import CheckCategories, CheckResult


def branches(value: Any) -> Iterator[Any]:
    """Every value an expression may take: both sides of a conditional."""
    if isinstance(value, dict) and "operator" in value:
        operator = value["operator"]
        if isinstance(operator, dict) and operator.get("type") == "conditional":
            operands = operator.get("operands", {})
            yield from branches(operands.get("true_value"))
            yield from branches(operands.get("false_value"))
            return
    yield value


def path(conf: Any, *keys: str) -> Iterator[Any]:
    """The values at `keys` under `conf`, through conditionals."""
    if not keys:
        yield from branches(conf)
        return
    for value in branches(conf):
        if isinstance(value, dict) and keys[0] in value:
            yield from path(value[keys[0]], *keys[1:])


class ScaleRulesUseTheIdentity(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Container Apps scale rules authenticate with a managed identity, never a secret",
            id="CKV_LEGATO_1",
            categories=[CheckCategories.IAM],
            supported_resources=["Microsoft.App/containerApps"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        if any(s for s in path(conf, "properties", "configuration", "secrets") if s):
            return CheckResult.FAILED
        for rules in path(conf, "properties", "template", "scale", "rules"):
            for rule in rules if isinstance(rules, list) else []:
                for kind in ("custom", "azureQueue", "http", "tcp"):
                    for body in path(rule, kind):
                        if not isinstance(body, dict) or body.get("auth"):
                            return CheckResult.FAILED
                        if kind in ("custom", "azureQueue") and not body.get("identity"):
                            return CheckResult.FAILED
        return CheckResult.PASSED


class IngressIsHttpsOnly(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Container Apps ingress refuses plain HTTP",
            id="CKV_LEGATO_2",
            categories=[CheckCategories.NETWORKING],
            supported_resources=["Microsoft.App/containerApps"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        for ingress in path(conf, "properties", "configuration", "ingress"):
            if ingress is None:
                continue
            if not isinstance(ingress, dict) or ingress.get("allowInsecure") is not False:
                return CheckResult.FAILED
            if ingress.get("transport") == "tcp":
                return CheckResult.FAILED
        return CheckResult.PASSED


class LocalAuthIsOff(BaseResourceCheck):
    """Service Bus and SignalR: `disableLocalAuth: true` (Entra ID only)."""

    def __init__(self) -> None:
        super().__init__(
            name="Service Bus and SignalR refuse shared keys (disableLocalAuth)",
            id="CKV_LEGATO_3",
            categories=[CheckCategories.IAM],
            supported_resources=[
                "Microsoft.ServiceBus/namespaces",
                "Microsoft.SignalRService/signalR",
            ],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        values = list(path(conf, "properties", "disableLocalAuth"))
        return CheckResult.PASSED if values and all(v is True for v in values) else CheckResult.FAILED


class StorageRefusesSharedKeys(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Storage accounts refuse shared keys (allowSharedKeyAccess: false)",
            id="CKV_LEGATO_4",
            categories=[CheckCategories.IAM],
            supported_resources=["Microsoft.Storage/storageAccounts"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        values = list(path(conf, "properties", "allowSharedKeyAccess"))
        return CheckResult.PASSED if values and all(v is False for v in values) else CheckResult.FAILED


class EnvironmentLogsWithoutKeys(BaseResourceCheck):
    """Container Apps environments log through Azure Monitor (a diagnostic
    setting), never with the Log Analytics workspace's shared key."""

    def __init__(self) -> None:
        super().__init__(
            name="Container Apps environments log without the workspace key (azure-monitor)",
            id="CKV_LEGATO_5",
            categories=[CheckCategories.IAM],
            supported_resources=["Microsoft.App/managedEnvironments"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        logs = ("properties", "appLogsConfiguration")
        destinations = list(path(conf, *logs, "destination"))
        keys = list(path(conf, *logs, "logAnalyticsConfiguration", "sharedKey"))
        keyless = destinations and all(d in ("azure-monitor", "none") for d in destinations)
        return CheckResult.PASSED if keyless and not keys else CheckResult.FAILED


scale_rules = ScaleRulesUseTheIdentity()
ingress = IngressIsHttpsOnly()
local_auth = LocalAuthIsOff()
shared_keys = StorageRefusesSharedKeys()
environment_logs = EnvironmentLogsWithoutKeys()
