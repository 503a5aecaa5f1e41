"""Checks on the infrastructure templates in infra/.

No Bicep compiler or Azure CLI runs here, so main.bicep (+ modules/*.bicep) and
azuredeploy.json are kept in step by hand. These tests hold them together:

* every .bicep file parses with pycep (the parser checkov uses for Bicep);
* the (resource type, API version) sets and per-type counts are equal;
* both templates are *evaluated* with the same parameter values by two small
  interpreters below (one for pycep's Bicep tree, one for ARM expressions) and
  the results must be identical: every resource's full name, scope, kind, sku,
  identity and properties, every app setting, every output, for both plan
  kinds. Values only known at deploy time (principalId, clientId, endpoints)
  become symbolic `ref(<resource id>).<path>` strings on both sides;
* the platform facts the app relies on (lease container /id, no local auth,
  identity-based connections, least-privilege roles) are pinned;
* checkov passes on infra/ (plain CLI), and also with its "unrendered resource
  name" filter switched off: checkov otherwise silently drops every failed ARM
  check on a resource whose name contains toLower(), i.e. all of ours.

Run:  python3 -m pip install -r tests/infra/requirements.txt
      python3 -m pytest tests/infra -q
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest
from pycep import BicepParser

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
MAIN_BICEP = INFRA / "main.bicep"
ARM_FILE = INFRA / "azuredeploy.json"
PARAMS_FILE = INFRA / "main.parameters.json"

SUBSCRIPTION_ID = "00000000-1111-2222-3333-444444444444"
RESOURCE_GROUP = "rg-fanout-test"
RG_LOCATION = "westeurope"
RG_ID = f"/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/{RESOURCE_GROUP}"
STORAGE_SUFFIX = "core.windows.net"

PLAN_KINDS = ["flex", "elasticPremium"]

# App settings the handler and the Functions host read (names are exact).
REQUIRED_APP_SETTINGS = [
    "FUNCTIONS_WORKER_RUNTIME",
    "AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "CosmosDBConnection__accountEndpoint",
    "CosmosDBConnection__credential",
    "CosmosDBConnection__clientId",
    "COSMOS_DATABASE",
    "AZURE_CLIENT_ID",
    "FANOUT_DEAD_LETTER_URL",
    "ORDERS_CHANGELOG_TABLE",
    "EVENTHUBS_NAMESPACE",
    "EVENTHUB_NAME",
    "EventHubConnection__fullyQualifiedNamespace",
    "EventHubConnection__credential",
    "EventHubConnection__clientId",
    "SEARCH_ENDPOINT",
    "SEARCH_INDEX",
    "REDIS_URL",
    "REDIS_AUTH",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    "FANOUT_LOG_FORMAT",
    "FANOUT_CONFIG",
]

REQUIRED_OUTPUTS = [
    "functionAppName",
    "resourceGroupName",
    "cosmosEndpoint",
    "cosmosDatabase",
    "searchEndpoint",
    "eventHubsNamespace",
    "redisHost",
    "adlsAccountName",
    "changelogTableUrl",
    "deadLetterUrl",
    "identityClientId",
    "identityPrincipalId",
]

ROLE = {
    "storageBlobDataOwner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "storageQueueDataContributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "storageTableDataContributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "storageBlobDataContributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "eventHubsDataSender": "2b629674-e913-4c01-ae53-ef4638d8f975",
    "searchIndexDataContributor": "8ebe5a00-799e-43f5-93ac-243d3dce84a7",
    "searchServiceContributor": "7ca78c08-252a-4471-8644-bb5ff32d4ba0",
    "monitoringMetricsPublisher": "3913510d-42f4-4e42-8a64-420c390055eb",
}
COSMOS_DATA_CONTRIBUTOR = "00000000-0000-0000-0000-000000000002"


# --------------------------------------------------------------------------
# Shared value model
# --------------------------------------------------------------------------


class Ref:
    """A value only known at deploy time: reference(<id>).<path>."""

    def __init__(self, resource_id: str, path: tuple[str, ...] = ()):
        self.resource_id = resource_id
        self.path = path

    def child(self, name: str) -> "Ref":
        return Ref(self.resource_id, self.path + (name,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ref) and (self.resource_id, self.path) == (other.resource_id, other.path)

    def __hash__(self) -> int:
        return hash((self.resource_id, self.path))

    def __str__(self) -> str:
        return f"ref({self.resource_id}).{'.'.join(self.path)}"

    __repr__ = __str__


def to_str(value: Any) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def unique_string(*args: Any) -> str:
    digest = hashlib.sha256("|".join(to_str(a) for a in args).encode()).digest()
    return base64.b32encode(digest).decode().lower()[:13]


def fake_guid(*args: Any) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "|".join(to_str(a) for a in args)))


def resource_id(rtype: str, names: list[Any], base: str = RG_ID) -> str:
    parts = rtype.split("/")
    assert len(parts) - 1 == len(names), f"{rtype} needs {len(parts) - 1} name segments, got {names}"
    path = parts[0]
    for segment, name in zip(parts[1:], names):
        path += f"/{segment}/{to_str(name)}"
    return f"{base}/providers/{path}"


def subscription_resource_id(rtype: str, *names: Any) -> str:
    return resource_id(rtype, list(names), base=f"/subscriptions/{SUBSCRIPTION_ID}")


def extension_resource_id(scope_id: str, rtype: str, *names: Any) -> str:
    return resource_id(rtype, list(names), base=scope_id)


def normalize_scope(scope: Any) -> Any:
    """ARM's flat-template scope 'Microsoft.X/y/name' -> a full resource id."""
    if isinstance(scope, str) and not scope.startswith("/"):
        return f"{RG_ID}/providers/{scope}"
    return scope


def concat(*args: Any) -> Any:
    if args and all(isinstance(a, list) for a in args):
        return [item for a in args for item in a]
    return "".join(to_str(a) for a in args)


def take(value: Any, count: int) -> Any:
    return value[: int(count)]


def union(*args: Any) -> Any:
    """ARM/Bicep union(). Objects: keys of later arguments win and nested objects merge
    recursively (Microsoft's documented semantics); arrays: ordered, duplicates dropped."""
    if all(isinstance(a, list) for a in args):
        out: list = []
        for a in args:
            out.extend(item for item in a if item not in out)
        return out
    assert all(isinstance(a, dict) for a in args), f"union() of mixed types: {args!r}"
    merged: dict = {}
    for a in args:
        for key, value in a.items():
            if isinstance(merged.get(key), dict) and isinstance(value, dict):
                merged[key] = union(merged[key], value)
            else:
                merged[key] = value
    return merged


RESOURCE_GROUP_OBJ = {"id": RG_ID, "name": RESOURCE_GROUP, "location": RG_LOCATION}
ENVIRONMENT_OBJ = {"name": "AzureCloud", "suffixes": {"storage": STORAGE_SUFFIX}}


def get_member(value: Any, name: str) -> Any:
    if isinstance(value, Ref):
        return value.child(name)
    if isinstance(value, dict):
        assert name in value, f"no member {name!r} in {value!r}"
        return value[name]
    raise AssertionError(f"cannot read .{name} of {value!r}")


# --------------------------------------------------------------------------
# Bicep: evaluate pycep's tree
# --------------------------------------------------------------------------

_PARSER = BicepParser()
_PARSED: dict[Path, dict] = {}


def parse_bicep(path: Path) -> dict:
    path = path.resolve()
    if path not in _PARSED:
        _PARSED[path] = _PARSER.parse(file_path=path)
    return _PARSED[path]


INTERPOLATION = re.compile(r"\$\{([^}]*)\}")


class BicepModule:
    """One instance of a Bicep file, with its parameter values."""

    def __init__(self, path: Path, args: dict[str, Callable[[], Any]]):
        self.path = path.resolve()
        self.tree = parse_bicep(self.path)
        self.args = args
        self._memo: dict[str, Any] = {}
        self.resources = {name: BicepResource(self, name, spec) for name, spec in self.tree.get("resources", {}).items()}
        self.modules = {name: BicepModuleRef(self, name, spec) for name, spec in self.tree.get("modules", {}).items()}
        unknown = set(args) - set(self.tree.get("parameters", {}))
        assert not unknown, f"{self.path.name}: no such parameter(s) {sorted(unknown)}"

    # symbols ------------------------------------------------------------
    def is_symbol(self, name: str) -> bool:
        return (
            name in self.tree.get("parameters", {})
            or name in self.tree.get("variables", {})
            or name in self.resources
            or name in self.modules
        )

    def symbol(self, name: str) -> Any:
        if name in self.resources:
            return self.resources[name]
        if name in self.modules:
            return self.modules[name]
        key = "sym:" + name
        if key not in self._memo:
            self._memo[key] = self._symbol_value(name)
        return self._memo[key]

    def _symbol_value(self, name: str) -> Any:
        params = self.tree.get("parameters", {})
        if name in params:
            if name in self.args:
                return self.args[name]()
            assert "default" in params[name], f"{self.path.name}: parameter {name} has no value and no default"
            return self.eval(params[name]["default"])
        return self.eval(self.tree["variables"][name]["value"])

    def output(self, name: str) -> Any:
        outputs = self.tree.get("outputs", {})
        assert name in outputs, f"{self.path.name}: no output {name}"
        return self.eval(outputs[name]["value"])

    # expressions --------------------------------------------------------
    def eval(self, node: Any) -> Any:
        if node is None or isinstance(node, (bool, int, float)):
            return node
        if isinstance(node, str):
            if self.is_symbol(node):
                return self.symbol(node)
            return self.interpolate(node)
        if isinstance(node, list):
            return [self.eval(item) for item in node]
        if isinstance(node, dict):
            if set(node) == {"function"}:
                return self.eval_function(node["function"])
            if set(node) == {"operator"}:
                return self.eval_operator(node["operator"])
            return {self.eval_key(k): self.eval(v) for k, v in node.items()}
        raise AssertionError(f"unexpected node {node!r}")

    def eval_key(self, key: str) -> str:
        if len(key) >= 2 and key[0] == key[-1] == "'":
            key = key[1:-1]
        return self.interpolate(key)

    def interpolate(self, text: str) -> Any:
        matches = list(INTERPOLATION.finditer(text))
        if not matches:
            return text
        if len(matches) == 1 and matches[0].span() == (0, len(text)):
            return self.eval_path(matches[0].group(1))
        return INTERPOLATION.sub(lambda m: to_str(self.eval_path(m.group(1))), text)

    def eval_path(self, expression: str) -> Any:
        parts = expression.strip().split(".")
        assert all(re.fullmatch(r"[A-Za-z_]\w*", p) for p in parts), (
            f"{self.path.name}: interpolation '${{{expression}}}' is too complex for this test: use a variable"
        )
        assert self.is_symbol(parts[0]), f"{self.path.name}: unknown symbol {parts[0]!r} in '${{{expression}}}'"
        return self.access(self.symbol(parts[0]), parts[1:])

    def access(self, value: Any, names: list[str]) -> Any:
        for name in names:
            if isinstance(value, BicepResource):
                value = value.member(name)
            elif isinstance(value, BicepModuleRef):
                assert name == "outputs", f"module {value.name}: only .outputs is supported"
                value = ModuleOutputs(value)
            elif isinstance(value, ModuleOutputs):
                value = value.ref.instance().output(name)
            else:
                value = get_member(value, name)
        return value

    def eval_operator(self, op: dict) -> Any:
        kind, operands = op["type"], op["operands"]
        if kind == "property_accessor":
            chain = []
            node: Any = {"operator": op}
            while isinstance(node, dict) and node.get("operator", {}).get("type") == "property_accessor":
                chain.append(node["operator"]["operands"]["operand_1"])
                node = node["operator"]["operands"]["operand_2"]
            chain.append(node)
            base = self.eval(chain[0])
            names = []
            for item in chain[1:]:
                assert isinstance(item, str), f"unsupported accessor {item!r}"
                names.append(item)
            return self.access(base, names)
        if kind == "equals":
            return self.eval(operands["operand_1"]) == self.eval(operands["operand_2"])
        if kind == "not_equals":
            return self.eval(operands["operand_1"]) != self.eval(operands["operand_2"])
        if kind == "conditional":
            condition = self.eval(operands["condition"])
            assert isinstance(condition, bool), f"condition is not a bool: {operands['condition']!r}"
            return self.eval(operands["true_value"] if condition else operands["false_value"])
        if kind == "not":
            return not self.eval(operands["bool_value"])
        if kind == "minus":
            return -self.eval(operands["integer_value"])
        raise AssertionError(f"{self.path.name}: operator {kind} not supported by this test")

    def eval_function(self, fn: dict) -> Any:
        kind = fn["type"]
        params = fn.get("parameters") or {}
        args = [self.eval(v) for v in params.values() if v is not None]
        if kind == "resource_group":
            assert not args, "resourceGroup() with arguments is not supported"
            result: Any = RESOURCE_GROUP_OBJ
        elif kind == "environment":
            result = ENVIRONMENT_OBJ
        elif kind == "unique_string":
            result = unique_string(*args)
        elif kind == "guid":
            result = fake_guid(*args)
        elif kind == "to_lower":
            result = to_str(args[0]).lower()
        elif kind == "take":
            result = take(*args)
        elif kind == "replace":
            result = to_str(args[0]).replace(args[1], args[2])
        elif kind == "concat":
            result = concat(*args)
        elif kind == "union":
            result = union(*args)
        elif kind == "empty":
            result = len(args[0]) == 0
        elif kind == "subscription_resource_id":
            result = subscription_resource_id(*args)
        else:
            raise AssertionError(f"{self.path.name}: function {kind} not supported by this test")
        if fn.get("property_name"):
            result = get_member(result, fn["property_name"])
        return result

    # resources ----------------------------------------------------------
    def all_resources(self) -> list["BicepResource"]:
        found = [r for r in self.resources.values() if not r.spec.get("existing")]
        for module in self.modules.values():
            found.extend(module.instance().all_resources())
        return found


class BicepResource:
    def __init__(self, module: BicepModule, name: str, spec: dict):
        self.module, self.name, self.spec = module, name, spec
        self.type = spec["type"]
        self.api_version = spec["api_version"]
        self.config = spec["config"]

    def parent(self) -> "BicepResource | None":
        parent = self.config.get("parent")
        if parent is None:
            return None
        target = self.module.symbol(parent)
        assert isinstance(target, BicepResource), f"parent of {self.name} is not a resource"
        return target

    def name_segments(self) -> list[Any]:
        own = self.module.eval(self.config["name"])
        parent = self.parent()
        if parent is None:
            return [own]
        assert self.type.startswith(parent.type + "/"), f"{self.name}: type {self.type} is not a child of {parent.type}"
        return parent.name_segments() + [own]

    def full_name(self) -> str:
        return "/".join(to_str(s) for s in self.name_segments())

    def id(self) -> str:
        scope = self.scope()
        base = scope if scope else RG_ID
        return resource_id(self.type, self.name_segments(), base=base)

    def scope(self) -> Any:
        if "scope" not in self.config:
            return None
        target = self.module.eval(self.config["scope"])
        if isinstance(target, BicepResource):
            return target.id()
        return target

    def member(self, name: str) -> Any:
        if name == "id":
            return self.id()
        if name == "name":
            return self.full_name()
        if name == "properties":
            return Ref(self.id())
        raise AssertionError(f"{self.name}.{name} is not supported by this test")

    def evaluated(self) -> dict:
        return {
            "type": self.type,
            "apiVersion": self.api_version,
            "name": self.full_name(),
            "scope": self.scope(),
            "body": {
                key: self.module.eval(self.config[key])
                for key in ("location", "kind", "sku", "identity", "properties")
                if key in self.config
            },
        }


class BicepModuleRef:
    def __init__(self, module: BicepModule, name: str, spec: dict):
        self.owner, self.name, self.spec = module, name, spec
        self._instance: BicepModule | None = None

    def path(self) -> Path:
        return (self.owner.path.parent / self.spec["detail"]["path"]).resolve()

    def instance(self) -> BicepModule:
        if self._instance is None:
            params = self.spec["config"].get("params", {})
            args = {key: (lambda node=node: self.owner.eval(node)) for key, node in params.items()}
            self._instance = BicepModule(self.path(), args)
        return self._instance


class ModuleOutputs:
    def __init__(self, ref: BicepModuleRef):
        self.ref = ref


def bicep_deployment(parameters: dict[str, Any]) -> BicepModule:
    return BicepModule(MAIN_BICEP, {k: (lambda v=v: v) for k, v in parameters.items()})


# --------------------------------------------------------------------------
# ARM: evaluate template expressions
# --------------------------------------------------------------------------

TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+)|(?P<ident>[A-Za-z_][\w]*)|(?P<sym>[().,\[\]]))")


class ArmExpression:
    def __init__(self, text: str, template: "ArmTemplate"):
        self.tokens = self.tokenize(text)
        self.pos = 0
        self.template = template

    @staticmethod
    def tokenize(text: str) -> list[tuple[str, str]]:
        tokens, pos = [], 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            match = TOKEN.match(text, pos)
            assert match, f"cannot tokenize ARM expression at {text[pos:pos + 30]!r}"
            kind = match.lastgroup
            tokens.append((kind, match.group(kind)))
            pos = match.end()
        return tokens

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.tokens[self.pos]
        if value is not None:
            assert token[1] == value, f"expected {value!r}, got {token[1]!r}"
        self.pos += 1
        return token

    def evaluate(self) -> Any:
        value = self.expression()
        assert self.peek() is None, f"trailing tokens {self.tokens[self.pos:]}"
        return value

    def expression(self) -> Any:
        value = self.primary()
        while self.peek() and self.peek()[1] in (".", "["):
            if self.take()[1] == ".":
                value = get_member(value, self.take()[1])
            else:
                index = self.expression()
                self.take("]")
                value = get_member(value, index) if isinstance(index, str) else value[index]
        return value

    def primary(self) -> Any:
        kind, text = self.take()
        if kind == "str":
            return text[1:-1].replace("''", "'")
        if kind == "num":
            return int(text)
        if kind == "ident":
            if text in ("true", "false") and (self.peek() is None or self.peek()[1] != "("):
                return text == "true"
            self.take("(")
            args = []
            if self.peek()[1] != ")":
                args.append(self.expression())
                while self.peek()[1] == ",":
                    self.take(",")
                    args.append(self.expression())
            self.take(")")
            return self.call(text, args)
        raise AssertionError(f"unexpected token {text!r}")

    def call(self, name: str, args: list[Any]) -> Any:
        t = self.template
        fn = name.lower()
        if fn == "parameters":
            return t.parameter(args[0])
        if fn == "variables":
            return t.variable(args[0])
        if fn == "resourcegroup":
            return RESOURCE_GROUP_OBJ
        if fn == "environment":
            return ENVIRONMENT_OBJ
        if fn == "format":
            fmt, values = args[0], args[1:]
            return re.sub(r"\{(\d+)\}", lambda m: to_str(values[int(m.group(1))]), fmt)
        if fn == "concat":
            return concat(*args)
        if fn == "union":
            return union(*args)
        if fn == "empty":
            return len(args[0]) == 0
        if fn in ("true", "false"):
            assert not args
            return fn == "true"
        if fn == "tolower":
            return to_str(args[0]).lower()
        if fn == "take":
            return take(*args)
        if fn == "replace":
            return to_str(args[0]).replace(args[1], args[2])
        if fn == "uniquestring":
            return unique_string(*args)
        if fn == "guid":
            return fake_guid(*args)
        if fn == "resourceid":
            return resource_id(args[0], args[1:])
        if fn == "subscriptionresourceid":
            return subscription_resource_id(*args)
        if fn == "extensionresourceid":
            return extension_resource_id(*args)
        if fn == "reference":
            assert len(args) == 2, "use reference(id, apiVersion) (not 'full') so both templates compare"
            return Ref(args[0])
        if fn == "if":
            assert isinstance(args[0], bool)
            return args[1] if args[0] else args[2]
        if fn == "equals":
            return args[0] == args[1]
        if fn == "not":
            return not args[0]
        if fn == "createarray":
            return list(args)
        if fn == "createobject":
            return {args[i]: args[i + 1] for i in range(0, len(args), 2)}
        if fn == "null":
            return None
        raise AssertionError(f"ARM function {name} not supported by this test")


class ArmTemplate:
    def __init__(self, template: dict, parameters: dict[str, Any]):
        self.template = template
        self.values = parameters
        self._memo: dict[str, Any] = {}
        unknown = set(parameters) - set(template.get("parameters", {}))
        assert not unknown, f"azuredeploy.json: no such parameter(s) {sorted(unknown)}"

    def parameter(self, name: str) -> Any:
        spec = self.template["parameters"][name]
        if name in self.values:
            return self.values[name]
        assert "defaultValue" in spec, f"parameter {name} has no value and no default"
        return self.eval(spec["defaultValue"])

    def variable(self, name: str) -> Any:
        if name not in self._memo:
            self._memo[name] = self.eval(self.template["variables"][name])
        return self._memo[name]

    def eval(self, node: Any) -> Any:
        if isinstance(node, str):
            if node.startswith("[") and node.endswith("]") and not node.startswith("[["):
                return ArmExpression(node[1:-1], self).evaluate()
            if node.startswith("[["):
                return node[1:]
            return node
        if isinstance(node, list):
            return [self.eval(item) for item in node]
        if isinstance(node, dict):
            return {to_str(self.eval(k)): self.eval(v) for k, v in node.items()}
        return node

    def resources(self) -> list[dict]:
        found = []
        for res in self.template["resources"]:
            assert "copy" not in res and "condition" not in res, "conditions/copy loops are not compared by this test"
            found.append(
                {
                    "type": res["type"],
                    "apiVersion": res["apiVersion"],
                    "name": self.eval(res["name"]),
                    "scope": normalize_scope(self.eval(res["scope"])) if "scope" in res else None,
                    "body": {
                        key: self.eval(res[key])
                        for key in ("location", "kind", "sku", "identity", "properties")
                        if key in res
                    },
                }
            )
        return found

    def outputs(self) -> dict[str, Any]:
        return {name: self.eval(spec["value"]) for name, spec in self.template.get("outputs", {}).items()}


def arm_deployment(parameters: dict[str, Any]) -> ArmTemplate:
    return ArmTemplate(json.loads(ARM_FILE.read_text()), parameters)


# --------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def arm() -> dict:
    return json.loads(ARM_FILE.read_text())


@pytest.fixture(scope="module")
def bicep_files() -> dict[Path, dict]:
    files = sorted(INFRA.rglob("*.bicep"))
    assert MAIN_BICEP in files
    return {path: parse_bicep(path) for path in files}


def evaluated(kind: str, plan_kind: str, prefix: str | None = None) -> list[dict]:
    params: dict[str, Any] = {"planKind": plan_kind}
    if prefix is not None:
        params["namePrefix"] = prefix
    if kind == "bicep":
        return [r.evaluated() for r in bicep_deployment(params).all_resources()]
    return arm_deployment(params).resources()


def by_type(resources: list[dict], rtype: str) -> list[dict]:
    return [r for r in resources if r["type"] == rtype]


def one(resources: list[dict], rtype: str, name_suffix: str = "") -> dict:
    found = [r for r in by_type(resources, rtype) if r["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {rtype} named *{name_suffix}, found {[r['name'] for r in found]}"
    return found[0]


def app_settings(resources: list[dict]) -> list[tuple[str, Any]]:
    site = one(resources, "Microsoft.Web/sites")
    return [(s["name"], s["value"]) for s in site["body"]["properties"]["siteConfig"]["appSettings"]]


def normalized(node: Any) -> Any:
    """Order-insensitive app settings: sort lists of {name, value} pairs by name."""
    if isinstance(node, dict):
        return {k: normalized(v) for k, v in node.items()}
    if isinstance(node, list):
        items = [normalized(v) for v in node]
        if items and all(isinstance(i, dict) and set(i) == {"name", "value"} for i in items):
            items.sort(key=lambda i: i["name"])
        return items
    return node


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                out.append(f"{path}.{key}: only in {'ARM' if key in b else 'Bicep'}")
            else:
                out += differences(a[key], b[key], f"{path}.{key}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: Bicep {a!r} != ARM {b!r}"]


def key_of(resource: dict) -> tuple:
    return (resource["type"].lower(), resource["name"], resource["scope"])


def name_values(node: Any) -> set[str]:
    """Every `name` string of a {name, value} pair anywhere in a parsed template."""
    found: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("name"), str) and "value" in node:
            found.add(node["name"])
        for value in node.values():
            found |= name_values(value)
    elif isinstance(node, list):
        for item in node:
            found |= name_values(item)
    return found


# --------------------------------------------------------------------------
# (a) parsing, resource types, API versions, counts, names
# --------------------------------------------------------------------------


def test_every_bicep_file_parses(bicep_files):
    assert len(bicep_files) >= 2, "expected main.bicep and modules/*.bicep"
    modules = [p for p in bicep_files if p.parent.name == "modules"]
    assert len(modules) >= 5, f"expected the resources in modules/*.bicep, found {modules}"
    for path, tree in bicep_files.items():
        assert tree.get("resources") or tree.get("modules"), f"{path.name} declares nothing"


def test_main_uses_every_module_exactly_once(bicep_files):
    used = collections.Counter(ref.path() for ref in bicep_deployment({}).modules.values())
    modules = {p.resolve() for p in bicep_files if p.parent.name == "modules"}
    assert set(used) == modules, f"unused or missing modules: {sorted(str(p) for p in modules ^ set(used))}"
    assert all(n == 1 for n in used.values()), f"a module is used twice: {used}"


def static_bicep_types(bicep_files: dict[Path, dict]) -> collections.Counter:
    counter: collections.Counter = collections.Counter()
    for tree in bicep_files.values():
        for spec in tree.get("resources", {}).values():
            if not spec.get("existing"):
                counter[(spec["type"], spec["api_version"])] += 1
    return counter


def test_resource_types_and_api_versions_match(bicep_files, arm):
    bicep = static_bicep_types(bicep_files)
    arm_types = collections.Counter((r["type"], r["apiVersion"]) for r in arm["resources"])
    assert len(bicep) > 10 and sum(bicep.values()) > 10, f"too few Bicep resources: {bicep}"
    assert len(arm_types) > 10 and sum(arm_types.values()) > 10, f"too few ARM resources: {arm_types}"
    assert set(bicep) == set(arm_types), (
        f"only in Bicep: {sorted(set(bicep) - set(arm_types))}; only in ARM: {sorted(set(arm_types) - set(bicep))}"
    )
    assert bicep == arm_types, f"per-type counts differ: Bicep {dict(bicep)} vs ARM {dict(arm_types)}"


def test_one_api_version_per_resource_type(arm):
    versions: dict[str, set] = collections.defaultdict(set)
    for r in arm["resources"]:
        versions[r["type"]].add(r["apiVersion"])
    assert {t: v for t, v in versions.items() if len(v) > 1} == {}


def test_expected_resource_types_present(arm):
    types = {r["type"] for r in arm["resources"]}
    for expected in [
        "Microsoft.DocumentDB/databaseAccounts",
        "Microsoft.DocumentDB/databaseAccounts/sqlDatabases",
        "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers",
        "Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments",
        "Microsoft.ManagedIdentity/userAssignedIdentities",
        "Microsoft.Storage/storageAccounts",
        "Microsoft.Storage/storageAccounts/blobServices/containers",
        "Microsoft.Web/serverfarms",
        "Microsoft.Web/sites",
        "Microsoft.EventHub/namespaces",
        "Microsoft.EventHub/namespaces/eventhubs",
        "Microsoft.Search/searchServices",
        "Microsoft.Cache/redisEnterprise",
        "Microsoft.Cache/redisEnterprise/databases",
        "Microsoft.Cache/redisEnterprise/databases/accessPolicyAssignments",
        "Microsoft.OperationalInsights/workspaces",
        "Microsoft.Insights/components",
        "Microsoft.Authorization/roleAssignments",
    ]:
        assert expected in types, f"missing {expected}"


@pytest.mark.parametrize("plan_kind", PLAN_KINDS)
@pytest.mark.parametrize("prefix", [None, "My-App"])
def test_evaluated_resources_are_identical(plan_kind, prefix):
    bicep = evaluated("bicep", plan_kind, prefix)
    arm = evaluated("arm", plan_kind, prefix)
    assert len(bicep) == len(arm) > 10
    bicep_keys = collections.Counter(key_of(r) for r in bicep)
    arm_keys = collections.Counter(key_of(r) for r in arm)
    assert max(bicep_keys.values()) == 1 and max(arm_keys.values()) == 1, "duplicate resource names"
    assert set(bicep_keys) == set(arm_keys), (
        f"names only in Bicep: {sorted(set(bicep_keys) - set(arm_keys))}\n"
        f"names only in ARM: {sorted(set(arm_keys) - set(bicep_keys))}"
    )
    arm_by_key = {key_of(r): r for r in arm}
    for r in bicep:
        other = arm_by_key[key_of(r)]
        assert r["apiVersion"] == other["apiVersion"], r["name"]
        diff = differences(normalized(r["body"]), normalized(other["body"]))
        assert not diff, f"{r['type']} {r['name']}: Bicep and ARM differ:\n" + "\n".join(diff)


@pytest.mark.parametrize("prefix", [None, "My-App", "abcdefghij"])
def test_names_are_valid_for_azure(prefix):
    resources = evaluated("arm", "flex", prefix)
    rules = {
        "Microsoft.Storage/storageAccounts": r"[a-z0-9]{3,24}",
        "Microsoft.DocumentDB/databaseAccounts": r"[a-z0-9][a-z0-9-]{1,42}[a-z0-9]",
        "Microsoft.Search/searchServices": r"[a-z0-9][a-z0-9-]{0,58}[a-z0-9]",
        "Microsoft.EventHub/namespaces": r"[A-Za-z][A-Za-z0-9-]{4,48}[A-Za-z0-9]",
        "Microsoft.Web/sites": r"[A-Za-z0-9][A-Za-z0-9-]{0,58}[A-Za-z0-9]",
        "Microsoft.Cache/redisEnterprise": r"[A-Za-z0-9][A-Za-z0-9-]{0,58}[A-Za-z0-9]",
        "Microsoft.Cache/redisEnterprise/databases/accessPolicyAssignments": r"[^/]+/default/[A-Za-z0-9]{1,60}",
    }
    for rtype, pattern in rules.items():
        for r in by_type(resources, rtype):
            assert re.fullmatch(pattern, r["name"]), f"{rtype} name {r['name']!r} is not valid"
    storage = [r["name"] for r in by_type(resources, "Microsoft.Storage/storageAccounts")]
    assert len(set(storage)) == 2


# --------------------------------------------------------------------------
# (b) parameters
# --------------------------------------------------------------------------


def test_parameters_file_matches_main_bicep(bicep_files, arm):
    params_file = json.loads(PARAMS_FILE.read_text())
    assert "deploymentParameters.json" in params_file["$schema"]
    given = params_file["parameters"]
    assert given, "main.parameters.json sets no parameter"
    bicep_params = bicep_files[MAIN_BICEP]["parameters"]
    for name, spec in given.items():
        assert name in bicep_params, f"main.parameters.json sets {name}, which main.bicep does not declare"
        assert name in arm["parameters"], f"main.parameters.json sets {name}, which azuredeploy.json does not declare"
        assert "value" in spec
    # the file's values deploy (both templates accept them)
    values = {k: v["value"] for k, v in given.items()}
    assert len(bicep_deployment(values).all_resources()) == len(arm_deployment(values).resources())


def test_bicep_and_arm_declare_the_same_parameters_and_defaults(bicep_files, arm):
    bicep_params = bicep_files[MAIN_BICEP]["parameters"]
    assert set(bicep_params) == set(arm["parameters"])
    main = bicep_deployment({})
    template = arm_deployment({})
    for name, spec in bicep_params.items():
        assert main.symbol(name) == template.parameter(name), f"default of {name} differs"
        allowed = [d["argument"] for d in spec["decorators"] if d["type"] == "allowed"]
        assert (allowed[0] if allowed else None) == arm["parameters"][name].get("allowedValues"), name
    assert template.parameter("location") == RG_LOCATION
    assert template.parameter("planKind") == "flex"
    assert template.parameter("databaseName") == "shop"
    assert template.parameter("eventHubPartitionCount") == 4


# --------------------------------------------------------------------------
# (c) app settings
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", REQUIRED_APP_SETTINGS)
def test_app_setting_name_in_both_templates(name, bicep_files, arm):
    in_bicep = set().union(*(name_values(tree) for tree in bicep_files.values()))
    arm_text = ARM_FILE.read_text()
    assert name in in_bicep, f"{name} is not an app setting in the Bicep files"
    assert name in name_values(arm) or f"'{name}'" in arm_text, f"{name} is not an app setting in azuredeploy.json"


@pytest.mark.parametrize("plan_kind", PLAN_KINDS)
def test_app_settings_identical_and_correct(plan_kind):
    bicep = app_settings(evaluated("bicep", plan_kind))
    arm = app_settings(evaluated("arm", plan_kind))
    assert len(bicep) == len(dict(bicep)), "duplicate app setting in Bicep"
    assert len(arm) == len(dict(arm)), "duplicate app setting in ARM"
    assert dict(bicep) == dict(arm)
    settings = dict(arm)

    for name in REQUIRED_APP_SETTINGS:
        if name == "FUNCTIONS_WORKER_RUNTIME" and plan_kind == "flex":
            continue
        assert name in settings, f"{plan_kind}: app setting {name} missing"

    resources = evaluated("arm", plan_kind)
    identity = one(resources, "Microsoft.ManagedIdentity/userAssignedIdentities")
    identity_id = resource_id(identity["type"], [identity["name"]])
    client_id = Ref(identity_id, ("clientId",))
    adls = [r["name"] for r in by_type(resources, "Microsoft.Storage/storageAccounts") if r["body"]["properties"].get("isHnsEnabled")]
    runtime = [r["name"] for r in by_type(resources, "Microsoft.Storage/storageAccounts") if not r["body"]["properties"].get("isHnsEnabled")]
    assert len(adls) == 1 and len(runtime) == 1
    evh = one(resources, "Microsoft.EventHub/namespaces")["name"]
    search = one(resources, "Microsoft.Search/searchServices")["name"]
    redis = one(resources, "Microsoft.Cache/redisEnterprise")
    cosmos = one(resources, "Microsoft.DocumentDB/databaseAccounts")
    appi = one(resources, "Microsoft.Insights/components")

    assert settings["AzureWebJobsStorage__accountName"] == runtime[0]
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["AzureWebJobsStorage__clientId"] == client_id
    assert settings["CosmosDBConnection__accountEndpoint"] == Ref(resource_id(cosmos["type"], [cosmos["name"]]), ("documentEndpoint",))
    assert settings["CosmosDBConnection__credential"] == "managedidentity"
    assert settings["CosmosDBConnection__clientId"] == client_id
    assert settings["EventHubConnection__credential"] == "managedidentity"
    assert settings["EventHubConnection__clientId"] == client_id
    assert settings["EventHubConnection__fullyQualifiedNamespace"] == settings["EVENTHUBS_NAMESPACE"]
    assert settings["COSMOS_DATABASE"] == "shop"
    assert settings["AZURE_CLIENT_ID"] == client_id
    assert settings["FANOUT_DEAD_LETTER_URL"] == f"abfss://deadletter@{adls[0]}.dfs.core.windows.net/fanout"
    assert settings["ORDERS_CHANGELOG_TABLE"] == f"abfss://lake@{adls[0]}.dfs.core.windows.net/orders_changelog"
    assert settings["EVENTHUBS_NAMESPACE"] == f"{evh}.servicebus.windows.net"
    assert settings["EVENTHUB_NAME"] == "orders-changes"
    assert settings["SEARCH_ENDPOINT"] == f"https://{search}.search.windows.net"
    assert settings["SEARCH_INDEX"] == "orders"
    redis_host = Ref(resource_id(redis["type"], [redis["name"]]), ("hostName",))
    assert settings["REDIS_URL"] == f"rediss://{redis_host}:10000"
    assert settings["REDIS_AUTH"] == "entra"
    # the redis sink's `auth = "entra"` needs `username`: the identity's object id
    assert settings["REDIS_USERNAME"] == Ref(identity_id, ("principalId",))
    assert settings["APPLICATIONINSIGHTS_CONNECTION_STRING"] == Ref(resource_id(appi["type"], [appi["name"]]), ("ConnectionString",))
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == f"ClientId={client_id};Authorization=AAD"
    assert settings["FANOUT_LOG_FORMAT"] == "json"
    assert settings["FANOUT_CONFIG"] == "fanout.azure.toml"
    # no secrets: nothing looks like a key or a connection string with a key
    for name, value in settings.items():
        assert "AccountKey=" not in to_str(value) and "SharedAccessKey" not in to_str(value), name

    site = one(resources, "Microsoft.Web/sites")["body"]
    plan = one(resources, "Microsoft.Web/serverfarms")["body"]
    assert site["kind"] == "functionapp,linux"
    assert site["identity"] == {"type": "UserAssigned", "userAssignedIdentities": {identity_id: {}}}
    assert plan["properties"]["reserved"] is True
    if plan_kind == "flex":
        assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
        assert "FUNCTIONS_WORKER_RUNTIME" not in settings and "FUNCTIONS_EXTENSION_VERSION" not in settings
        config = site["properties"]["functionAppConfig"]
        assert config["runtime"]["name"] == "custom"
        storage = config["deployment"]["storage"]
        assert storage["type"] == "blobContainer"
        assert storage["value"].startswith(f"https://{runtime[0]}.blob.core.windows.net/")
        assert storage["authentication"] == {"type": "UserAssignedIdentity", "userAssignedIdentityResourceId": identity_id}
        container = storage["value"].rsplit("/", 1)[1]
        one(resources, "Microsoft.Storage/storageAccounts/blobServices/containers", f"{runtime[0]}/default/{container}")
    else:
        assert plan["sku"]["name"] == "EP1" and plan["sku"]["tier"] == "ElasticPremium"
        assert plan["kind"] == "elastic"
        assert "functionAppConfig" not in site["properties"]
        assert settings["FUNCTIONS_WORKER_RUNTIME"] == "custom"
        assert settings["FUNCTIONS_EXTENSION_VERSION"] == "~4"
        # no Azure Files share (the runtime account has no shared keys): run from the package URL
        assert "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING" not in settings
        assert settings["WEBSITE_RUN_FROM_PACKAGE"].startswith(f"https://{runtime[0]}.blob.core.windows.net/")
        assert settings["WEBSITE_RUN_FROM_PACKAGE_BLOB_MI_RESOURCE_ID"] == identity_id


# Microsoft, "App settings reference for Azure Functions", section "Flex Consumption plan
# deprecations" (learn.microsoft.com/azure/azure-functions/functions-app-settings
# #flex-consumption-plan-deprecations): site properties and app settings that "are deprecated
# and shouldn't be used" on Flex Consumption. ARM rejects the siteConfig ones with error 51021
# ("The following site configuration property (Site.SiteConfig.FtpsState) for Flex Consumption
# sites is invalid"), null values included (microsoft/azure-pipelines-tasks, "AzureFunctionApp@2
# fails when deploying a flex app": FtpsState, Use32BitWorkerProcess, NetFrameworkVersion and
# FunctionsRuntimeScaleMonitoringEnabled; Azure/terraform-azurerm-avm-res-web-site: LinuxFxVersion).
# Names compare case-insensitively;
# the page's `properties.isReserved` / `properties.IsXenon` are the REST names `reserved` /
# `isXenon`.
FLEX_REFUSED_SITE_PROPERTIES = [
    "alwaysOn",
    "containerSize",
    "ftpsState",
    "reserved",
    "isReserved",
    "isXenon",
    "javaVersion",
    "linuxFxVersion",
    "netFrameworkVersion",
    "powerShellVersion",
    "functionAppScaleLimit",
    "preWarmedInstanceCount",
    "use32BitWorkerProcess",
    "vnetBackupRestoreEnabled",
    "vnetContentShareEnabled",
    "vnetImagePullEnabled",
    "vnetRouteAllEnabled",
    "windowsFxVersion",
    "functionsRuntimeScaleMonitoringEnabled",
]
FLEX_REFUSED_APP_SETTINGS = [
    "ENABLE_ORYX_BUILD",
    "FUNCTIONS_EXTENSION_VERSION",
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_WORKER_RUNTIME_VERSION",
    "FUNCTIONS_MAX_HTTP_CONCURRENCY",
    "FUNCTIONS_WORKER_PROCESS_COUNT",
    "FUNCTIONS_WORKER_DYNAMIC_CONCURRENCY_ENABLED",
    "SCM_DO_BUILD_DURING_DEPLOYMENT",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTOVERVNET",
    "WEBSITE_CONTENTSHARE",
    "WEBSITE_DNS_SERVER",
    "WEBSITE_MAX_DYNAMIC_APPLICATION_SCALE_OUT",
    "WEBSITE_NODE_DEFAULT_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_SKIP_CONTENTSHARE_VALIDATION",
    "WEBSITE_VNET_ROUTE_ALL",
    # Not on the page, but meaningless without WEBSITE_RUN_FROM_PACKAGE (and Core Tools refuses
    # WEBSITE_RUN_FROM_PACKAGE on Flex: PublishFunctionAppAction.cs).
    "WEBSITE_RUN_FROM_PACKAGE_BLOB_MI_RESOURCE_ID",
]


def null_paths(node: Any, path: str = "") -> list[str]:
    """Every key whose value is null: ARM sends such a key (a ternary yielding null still names it)."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if value is None:
                found.append(f"{path}.{key}")
            else:
                found += null_paths(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found += null_paths(item, f"{path}[{i}]")
    return found


@pytest.mark.parametrize("kind", ["bicep", "arm"])
def test_flex_site_sends_nothing_flex_consumption_refuses(kind):
    resources = evaluated(kind, "flex")
    site = one(resources, "Microsoft.Web/sites")["body"]
    plan = one(resources, "Microsoft.Web/serverfarms")["body"]
    properties = site["properties"]
    site_config = properties["siteConfig"]
    refused = {name.lower() for name in FLEX_REFUSED_SITE_PROPERTIES}
    present = [f"properties.{k}" for k in properties if k.lower() in refused]
    present += [f"properties.siteConfig.{k}" for k in site_config if k.lower() in refused]
    assert present == [], f"Flex Consumption refuses {present}"
    settings = {name.upper() for name, _ in app_settings(resources)}
    assert settings & set(FLEX_REFUSED_APP_SETTINGS) == set()
    # Nothing sent as null either: the key itself is what Flex refuses.
    assert null_paths(site) == [] and null_paths(plan) == []
    # ... and what Flex needs is there.
    assert properties["functionAppConfig"]["runtime"] == {"name": "custom", "version": "1.0"}
    assert properties["httpsOnly"] is True
    assert site_config["minTlsVersion"] == "1.2" and site_config["http20Enabled"] is True
    assert plan["properties"] == {"reserved": True}


@pytest.mark.parametrize("kind", ["bicep", "arm"])
def test_elastic_premium_site_keeps_what_it_needs(kind):
    resources = evaluated(kind, "elasticPremium")
    site = one(resources, "Microsoft.Web/sites")["body"]
    plan = one(resources, "Microsoft.Web/serverfarms")["body"]
    properties = site["properties"]
    assert null_paths(site) == [] and null_paths(plan) == []
    assert properties["reserved"] is True and properties["httpsOnly"] is True
    assert "functionAppConfig" not in properties
    site_config = properties["siteConfig"]
    assert site_config["ftpsState"] == "Disabled"
    assert site_config["minTlsVersion"] == "1.2" and site_config["http20Enabled"] is True
    assert plan["properties"] == {"reserved": True, "maximumElasticWorkerCount": 20}
    settings = dict(app_settings(resources))
    assert settings["FUNCTIONS_WORKER_RUNTIME"] == "custom"
    assert settings["FUNCTIONS_EXTENSION_VERSION"] == "~4"
    assert settings["WEBSITE_RUN_FROM_PACKAGE"].endswith("/app-package/fanout.zip")


def test_app_settings_match_function_json_and_host_json():
    function_json = json.loads((ROOT / "orders" / "function.json").read_text())
    trigger = function_json["bindings"][0]
    assert trigger["type"] == "cosmosDBTrigger"
    settings = dict(app_settings(evaluated("arm", "flex")))
    assert f"{trigger['connection']}__accountEndpoint" in settings
    assert trigger["databaseName"] == "%COSMOS_DATABASE%"
    assert trigger.get("createLeaseContainerIfNotExists") is False
    resources = evaluated("arm", "flex")
    one(resources, "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers", f"/shop/{trigger['containerName']}")
    one(resources, "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers", f"/shop/{trigger['leaseContainerName']}")
    host = json.loads((ROOT / "host.json").read_text())
    assert "customHandler" in host


# --------------------------------------------------------------------------
# (d) Cosmos DB and the other identity-only settings
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bicep", "arm"])
def test_cosmos_containers_and_local_auth(kind):
    resources = evaluated(kind, "flex")
    account = one(resources, "Microsoft.DocumentDB/databaseAccounts")["body"]["properties"]
    assert account["disableLocalAuth"] is True
    assert account["disableKeyBasedMetadataWriteAccess"] is True
    containers = {
        r["name"].rsplit("/", 1)[1]: r["body"]["properties"]["resource"]
        for r in by_type(resources, "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers")
    }
    assert set(containers) == {"orders", "leases"}
    assert containers["leases"]["partitionKey"]["paths"] == ["/id"]
    assert containers["leases"]["id"] == "leases"
    assert containers["orders"]["partitionKey"]["paths"] == ["/customerId"]
    assert containers["orders"]["id"] == "orders"
    one(resources, "Microsoft.DocumentDB/databaseAccounts/sqlDatabases", "/shop")


def test_cosmos_partition_key_matches_fanout_toml():
    toml = (ROOT / "fanout.toml").read_text()
    match = re.search(r'^partition_key\s*=\s*"([^"]+)"', toml, re.M)
    assert match, "fanout.toml has no partition_key"
    resources = evaluated("arm", "flex")
    orders = one(resources, "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers", "/orders")
    assert orders["body"]["properties"]["resource"]["partitionKey"]["paths"] == [match.group(1)]


BACKUP_TIERS = ["", "Continuous7Days", "Continuous30Days"]


def cosmos_account(kind: str, tier: str | None) -> dict:
    params: dict[str, Any] = {"planKind": "flex"}
    if tier is not None:
        params["cosmosContinuousBackupTier"] = tier
    if kind == "bicep":
        resources = [r.evaluated() for r in bicep_deployment(params).all_resources()]
    else:
        resources = arm_deployment(params).resources()
    return one(resources, "Microsoft.DocumentDB/databaseAccounts")["body"]["properties"]


@pytest.mark.parametrize("kind", ["bicep", "arm"])
def test_cosmos_backup_policy_default_keeps_todays_policy(kind):
    # No tier (the default, or ''): no backupPolicy key at all, so Azure keeps what the account
    # has (periodic for a new one) and a redeploy never tries continuous -> periodic.
    for tier in (None, ""):
        account = cosmos_account(kind, tier)
        assert "backupPolicy" not in account
        assert null_paths(account) == []
        assert account["disableLocalAuth"] is True and account["disableKeyBasedMetadataWriteAccess"] is True


@pytest.mark.parametrize("kind", ["bicep", "arm"])
@pytest.mark.parametrize("tier", ["Continuous7Days", "Continuous30Days"])
def test_cosmos_continuous_backup_tier(kind, tier):
    # Microsoft.DocumentDB/databaseAccounts BackupPolicy, type Continuous (the all-versions-and-
    # deletes change feed needs continuous backup on the account).
    account = cosmos_account(kind, tier)
    assert account["backupPolicy"] == {"type": "Continuous", "continuousModeProperties": {"tier": tier}}
    without = dict(account)
    del without["backupPolicy"]
    assert without == cosmos_account(kind, "")


def test_cosmos_backup_tier_parameter_is_the_same_in_both_templates(bicep_files, arm):
    bicep_param = bicep_files[MAIN_BICEP]["parameters"]["cosmosContinuousBackupTier"]
    allowed = [d["argument"] for d in bicep_param["decorators"] if d["type"] == "allowed"]
    assert allowed == [BACKUP_TIERS]
    assert arm["parameters"]["cosmosContinuousBackupTier"]["allowedValues"] == BACKUP_TIERS
    assert arm["parameters"]["cosmosContinuousBackupTier"]["defaultValue"] == ""
    assert bicep_deployment({}).symbol("cosmosContinuousBackupTier") == ""
    module = bicep_files[INFRA / "modules" / "cosmos.bicep"]["parameters"]["continuousBackupTier"]
    assert [d["argument"] for d in module["decorators"] if d["type"] == "allowed"] == [BACKUP_TIERS]
    for tier in BACKUP_TIERS:
        bicep = [r.evaluated() for r in bicep_deployment({"cosmosContinuousBackupTier": tier}).all_resources()]
        arm_resources = arm_deployment({"cosmosContinuousBackupTier": tier}).resources()
        assert sorted(map(key_of, bicep)) == sorted(map(key_of, arm_resources))
        by_key = {key_of(r): r for r in arm_resources}
        for r in bicep:
            assert not differences(normalized(r["body"]), normalized(by_key[key_of(r)]["body"])), (tier, r["name"])


@pytest.mark.parametrize("kind", ["bicep", "arm"])
def test_no_keys_anywhere(kind):
    resources = evaluated(kind, "flex")
    for storage in by_type(resources, "Microsoft.Storage/storageAccounts"):
        props = storage["body"]["properties"]
        assert props["allowSharedKeyAccess"] is False, storage["name"]
        assert props["allowBlobPublicAccess"] is False, storage["name"]
        assert props["minimumTlsVersion"] == "TLS1_2"
    hns = [s for s in by_type(resources, "Microsoft.Storage/storageAccounts") if s["body"]["properties"].get("isHnsEnabled") is True]
    assert len(hns) == 1, "exactly one ADLS Gen2 account"
    lake_containers = {
        r["name"].rsplit("/", 1)[1]
        for r in by_type(resources, "Microsoft.Storage/storageAccounts/blobServices/containers")
        if r["name"].startswith(hns[0]["name"] + "/")
    }
    assert lake_containers == {"lake", "deadletter"}

    evh = one(resources, "Microsoft.EventHub/namespaces")["body"]
    assert evh["sku"]["name"] == "Standard" and evh["properties"]["disableLocalAuth"] is True
    hub = one(resources, "Microsoft.EventHub/namespaces/eventhubs", "/orders-changes")["body"]
    assert hub["properties"]["partitionCount"] == 4

    search = one(resources, "Microsoft.Search/searchServices")["body"]
    assert search["sku"]["name"] == "basic"
    assert search["properties"]["disableLocalAuth"] is False
    assert search["properties"]["authOptions"] == {"aadOrApiKey": {"aadAuthFailureMode": "http401WithBearerChallenge"}}
    assert search["properties"]["semanticSearch"] == "disabled"

    database = one(resources, "Microsoft.Cache/redisEnterprise/databases", "/default")["body"]["properties"]
    assert database["accessKeysAuthentication"] == "Disabled"
    assert database["clusteringPolicy"] == "EnterpriseCluster"
    assert database["port"] == 10000
    assert database["clientProtocol"] == "Encrypted"
    policy = one(resources, "Microsoft.Cache/redisEnterprise/databases/accessPolicyAssignments")["body"]["properties"]
    identity = one(resources, "Microsoft.ManagedIdentity/userAssignedIdentities")
    assert policy == {
        "accessPolicyName": "default",
        "user": {"objectId": Ref(resource_id(identity["type"], [identity["name"]]), ("principalId",))},
    }

    appi = one(resources, "Microsoft.Insights/components")["body"]["properties"]
    assert appi["DisableLocalAuth"] is True
    workspace = one(resources, "Microsoft.OperationalInsights/workspaces")
    assert appi["WorkspaceResourceId"] == resource_id(workspace["type"], [workspace["name"]])


# --------------------------------------------------------------------------
# Role assignments: least privilege, same in both templates
# --------------------------------------------------------------------------


def role_assignments(resources: list[dict]) -> set[tuple]:
    found = set()
    for r in by_type(resources, "Microsoft.Authorization/roleAssignments"):
        props = r["body"]["properties"]
        found.add((r["scope"], props["roleDefinitionId"], props["principalId"], props["principalType"], r["name"]))
    return found


def test_role_assignments_identical():
    bicep = role_assignments(evaluated("bicep", "flex"))
    arm = role_assignments(evaluated("arm", "flex"))
    assert bicep == arm
    assert len(arm) == 9


@pytest.mark.parametrize("kind", ["bicep", "arm"])
def test_role_assignments_are_least_privilege(kind):
    resources = evaluated(kind, "flex")
    identity = one(resources, "Microsoft.ManagedIdentity/userAssignedIdentities")
    identity_id = resource_id(identity["type"], [identity["name"]])
    principal = Ref(identity_id, ("principalId",))

    def rid(rtype: str, suffix: str) -> str:
        r = one(resources, rtype, suffix)
        return resource_id(rtype, r["name"].split("/"))

    storages = by_type(resources, "Microsoft.Storage/storageAccounts")
    runtime = next(s for s in storages if not s["body"]["properties"].get("isHnsEnabled"))
    adls = next(s for s in storages if s["body"]["properties"].get("isHnsEnabled"))
    containers = "Microsoft.Storage/storageAccounts/blobServices/containers"
    expected = {
        (resource_id(runtime["type"], [runtime["name"]]), "storageBlobDataOwner"),
        (resource_id(runtime["type"], [runtime["name"]]), "storageQueueDataContributor"),
        (resource_id(runtime["type"], [runtime["name"]]), "storageTableDataContributor"),
        (rid(containers, f"{adls['name']}/default/lake"), "storageBlobDataContributor"),
        (rid(containers, f"{adls['name']}/default/deadletter"), "storageBlobDataContributor"),
        (rid("Microsoft.EventHub/namespaces/eventhubs", "/orders-changes"), "eventHubsDataSender"),
        (rid("Microsoft.Search/searchServices", ""), "searchIndexDataContributor"),
        (rid("Microsoft.Search/searchServices", ""), "searchServiceContributor"),
        (rid("Microsoft.Insights/components", ""), "monitoringMetricsPublisher"),
    }
    expected_full = {
        (scope, subscription_resource_id("Microsoft.Authorization/roleDefinitions", ROLE[role]))
        for scope, role in expected
    }
    actual = role_assignments(resources)
    assert {(scope, role_def) for scope, role_def, *_ in actual} == expected_full
    for scope, role_def, principal_id, principal_type, name in actual:
        assert principal_id == principal and principal_type == "ServicePrincipal"
        assert name == fake_guid(scope, identity_id, role_def.rsplit("/", 1)[1]), f"name of {role_def} on {scope}"

    sql = one(resources, "Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments")
    account = one(resources, "Microsoft.DocumentDB/databaseAccounts")
    account_id = resource_id(account["type"], [account["name"]])
    assert sql["body"]["properties"] == {
        "roleDefinitionId": f"{account_id}/sqlRoleDefinitions/{COSMOS_DATA_CONTRIBUTOR}",
        "principalId": principal,
        "scope": account_id,
    }
    assert sql["name"] == f"{account['name']}/{fake_guid(account_id, identity_id, COSMOS_DATA_CONTRIBUTOR)}"


# --------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------


@pytest.mark.parametrize("plan_kind", PLAN_KINDS)
def test_outputs_identical(plan_kind):
    main = bicep_deployment({"planKind": plan_kind})
    bicep = {name: main.output(name) for name in main.tree["outputs"]}
    arm = arm_deployment({"planKind": plan_kind}).outputs()
    for name in REQUIRED_OUTPUTS:
        assert name in bicep, f"main.bicep lacks output {name}"
    assert bicep == arm
    settings = dict(app_settings(evaluated("arm", plan_kind)))
    assert arm["changelogTableUrl"] == settings["ORDERS_CHANGELOG_TABLE"]
    assert arm["deadLetterUrl"] == settings["FANOUT_DEAD_LETTER_URL"]
    assert arm["identityClientId"] == settings["AZURE_CLIENT_ID"]
    assert arm["cosmosEndpoint"] == settings["CosmosDBConnection__accountEndpoint"]
    assert arm["searchEndpoint"] == settings["SEARCH_ENDPOINT"]
    assert arm["eventHubsNamespace"] == settings["EVENTHUBS_NAMESPACE"]
    assert arm["resourceGroupName"] == RESOURCE_GROUP
    assert arm["cosmosDatabase"] == "shop"


# --------------------------------------------------------------------------
# (e) checkov
# --------------------------------------------------------------------------

CHECKOV_STRICT = """
import sys
import checkov.arm.runner as arm_runner
# checkov drops every failed ARM check on a resource whose rendered name contains
# toLower()/trim()/join()/split()/substring(): that is every resource here. Keep them.
arm_runner.filter_failed_checks_with_unrendered_resources = lambda report: report
from checkov.main import Checkov
sys.exit(Checkov(argv=sys.argv[1:]).run())
"""

CHECKOV_PLAIN = "import sys\nfrom checkov.main import Checkov\nsys.exit(Checkov(argv=sys.argv[1:]).run())\n"


def run_checkov(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script, "-d", str(INFRA), "--compact", "--skip-download", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def test_checkov_cli_passes():
    result = run_checkov(CHECKOV_PLAIN, "--quiet")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert "arm scan results" in result.stdout and "bicep scan results" in result.stdout, result.stdout[-3000:]
    assert "Failed checks: 0" in result.stdout


@pytest.fixture(scope="module")
def checkov_strict() -> dict[str, dict]:
    result = run_checkov(CHECKOV_STRICT, "--framework", "arm", "bicep", "-o", "json")
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    by_type_ = {r["check_type"]: r for r in reports}
    assert set(by_type_) == {"arm", "bicep"}, result.stdout[-2000:] + result.stderr[-2000:]
    return by_type_


@pytest.mark.parametrize("framework", ["arm", "bicep"])
def test_checkov_strict_no_failed_checks(checkov_strict, framework):
    report = checkov_strict[framework]
    summary = report["summary"]
    assert summary["parsing_errors"] == 0, report["results"].get("parsing_errors")
    assert summary["resource_count"] > 10
    assert summary["passed"] > 10
    failed = [(c["check_id"], c["resource"], c["file_path"]) for c in report["results"]["failed_checks"]]
    assert failed == [], f"{framework}: failed checks {failed}"


@pytest.mark.parametrize("framework", ["arm", "bicep"])
def test_checkov_skips_have_reasons(checkov_strict, framework):
    skipped = checkov_strict[framework]["results"]["skipped_checks"]
    assert skipped, "expected the documented skips"
    for check in skipped:
        reason = check["check_result"].get("suppress_comment", "").strip()
        assert len(reason) > 30 and reason != "No comment provided", f"{check['check_id']} on {check['resource']}: no reason"


def test_checkov_skips_are_the_same_in_bicep_and_arm(checkov_strict, arm):
    types = sorted({r["type"] for r in arm["resources"]}, key=len, reverse=True)

    def skips(framework: str) -> collections.Counter:
        counter: collections.Counter = collections.Counter()
        for check in checkov_strict[framework]["results"]["skipped_checks"]:
            rtype = next(t for t in types if check["resource"].lower().startswith(t.lower() + "."))
            counter[(rtype, check["check_id"])] += 1
        return counter

    assert skips("bicep") == skips("arm")


# --------------------------------------------------------------------------
# checkov on the resolved App Service resources of each plan
# --------------------------------------------------------------------------

# The site's properties are built with union() (Flex Consumption must not get the keys it
# refuses), which checkov cannot evaluate: the templates skip these checks for that reason, and
# this test runs them on the site and plan as the interpreter above resolves them, per plan.
RESOLVED_SITE_CHECKS = ["CKV_AZURE_14", "CKV_AZURE_15", "CKV_AZURE_18", "CKV_AZURE_67", "CKV_AZURE_70", "CKV_AZURE_78", "CKV_AZURE_153"]
# Likewise the Cosmos DB account, whose backupPolicy is added by union() only for a continuous tier.
RESOLVED_COSMOS_CHECKS = ["CKV_AZURE_132", "CKV_AZURE_140"]
RESOLVED_TYPES = ("Microsoft.Web/sites", "Microsoft.Web/serverfarms", "Microsoft.DocumentDB/databaseAccounts")
FLEX_NO_FTP = "CKV_AZURE_78: Flex Consumption has no FTP(S) and refuses siteConfig.ftpsState (ARM error 51021), so the key is absent there; Elastic Premium sets ftpsState Disabled."


def resolved_app_service_template(plan_kind: str, backup_tier: str = "") -> dict:
    template = json.loads(ARM_FILE.read_text())
    resolved = arm_deployment({"planKind": plan_kind, "cosmosContinuousBackupTier": backup_tier}).resources()
    out = []
    for original, res in zip(template["resources"], resolved):
        if res["type"] not in RESOLVED_TYPES:
            continue
        skips = [s for s in original.get("metadata", {}).get("checkov", []) if "union()" not in s]
        if res["type"] == "Microsoft.Web/sites" and plan_kind == "flex":
            skips.append(FLEX_NO_FTP)
        body = json.loads(json.dumps(res["body"], default=str))
        out.append({"type": res["type"], "apiVersion": res["apiVersion"], "name": res["name"], "metadata": {"checkov": skips}, **body})
    return {"$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#", "contentVersion": "1.0.0.0", "resources": out}


@pytest.mark.parametrize("plan_kind,backup_tier", [("flex", ""), ("elasticPremium", ""), ("flex", "Continuous7Days")])
def test_checkov_on_the_resolved_site(plan_kind, backup_tier, tmp_path):
    skipped_in_templates = {s.split(":", 1)[0] for r in json.loads(ARM_FILE.read_text())["resources"] for s in r.get("metadata", {}).get("checkov", []) if "union()" in s}
    assert skipped_in_templates == set(RESOLVED_SITE_CHECKS) | set(RESOLVED_COSMOS_CHECKS)
    (tmp_path / "resolved.json").write_text(json.dumps(resolved_app_service_template(plan_kind, backup_tier)))
    result = subprocess.run(
        [sys.executable, "-c", CHECKOV_PLAIN, "-d", str(tmp_path), "--framework", "arm", "--compact", "--skip-download", "-o", "json"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    report = json.loads(result.stdout)
    assert report["summary"]["parsing_errors"] == 0, result.stdout[-2000:]
    failed = [c["check_id"] for c in report["results"]["failed_checks"]]
    assert failed == [], f"{plan_kind}: failed checks {failed}"
    passed = {c["check_id"] for c in report["results"]["passed_checks"]}
    expected = set(RESOLVED_SITE_CHECKS) - ({"CKV_AZURE_78"} if plan_kind == "flex" else set())
    expected |= set(RESOLVED_COSMOS_CHECKS)
    assert expected <= passed, f"{plan_kind}: not passed: {sorted(expected - passed)}"


# --------------------------------------------------------------------------
# Deploy recipes in the docs
# --------------------------------------------------------------------------

DOC_FILES = [ROOT / "README.md", INFRA / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
PUBLISH = "func azure functionapp publish"


def shell_blocks(path: Path) -> list[str]:
    """The fenced code blocks of a Markdown file, with backslash continuations joined."""
    return [m.group(1).replace("\\\n", " ") for m in FENCE.finditer(path.read_text())]


def publish_commands() -> list[tuple[str, str, str]]:
    """(file, working directory, command) of every `func azure functionapp publish` in a code
    block, following `cd` (incl. `cd -` and `( ... )` subshells) from the block's start (the repo root)."""
    found = []
    for path in DOC_FILES:
        for block in shell_blocks(path):
            cwd, previous = ".", "."
            for line in block.splitlines():
                line = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
                saved = cwd
                for part in re.split(r"&&|;|\|\|", line):
                    part = part.strip().strip("() ")
                    if part.startswith("cd "):
                        target = part[3:].strip()
                        previous, cwd = cwd, (previous if target == "-" else target)
                    elif part.startswith(PUBLISH):
                        found.append((path.relative_to(ROOT).as_posix(), cwd, part))
                if line.strip().startswith("(") and line.rstrip().endswith(")"):
                    cwd = saved  # a subshell's cd does not outlive its line
    return found


def test_every_documented_publish_passes_custom_and_runs_from_the_package():
    commands = publish_commands()
    files = {f for f, _, _ in commands}
    assert {"README.md", "infra/README.md"} <= files, commands
    for file, cwd, command in commands:
        # Core Tools learns the worker runtime from --custom, FUNCTIONS_WORKER_RUNTIME or
        # local.settings.json (GlobalCoreToolsSettings.Init, WorkerRuntimeLanguageHelper); the
        # package folder has neither file nor setting, so without the flag publishing stops with
        # "Can't determine project language from files".
        assert "--custom" in command.split(), f"{file}: `{command}` lacks --custom"
        assert cwd == "dist/app", f"{file}: `{command}` runs from {cwd!r}, not the package folder dist/app"
    # dist/app is the package layout: scripts/package.sh builds it with host.json at its root and
    # tests/check_package.sh checks exactly that folder.
    package = (ROOT / "scripts" / "package.sh").read_text()
    assert re.search(r"^OUT=dist/app$", package, re.M)
    assert 'cp host.json fanout.toml fanout.azure.toml "$OUT/"' in package
    assert re.search(r"^APP=dist/app$", (ROOT / "tests" / "check_package.sh").read_text(), re.M)
    # Prose that spells a publish command with an app name says --custom too.
    for path in DOC_FILES:
        for span in re.findall(r"`([^`\n]*functionapp publish [^`\n]+)`", path.read_text()):
            assert "--custom" in span.split(), f"{path.name}: `{span}` lacks --custom"


# --------------------------------------------------------------------------
# local.settings.json.example: works on a laptop
# --------------------------------------------------------------------------


def test_local_settings_example_validates_and_uses_the_developer_login():
    import jsonschema

    schema = json.loads((ROOT / "tests" / "fixtures" / "schemas" / "local.settings.schema.json").read_text())
    example = json.loads((ROOT / "local.settings.json.example").read_text())
    jsonschema.Draft4Validator.check_schema(schema)
    validator = jsonschema.Draft4Validator(schema)
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(example)]
    assert errors == [], errors
    # The validator must reject a broken file, or the check above proves nothing.
    assert not validator.is_valid({"IsEncrypted": "no", "Values": {"FUNCTIONS_WORKER_RUNTIME": "rust"}})
    values = example["Values"]
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "custom"
    # Locally there is no managed identity: an identity-based connection must use the
    # developer's login (DefaultAzureCredential: az login), so no `__credential` =
    # managedidentity and no `__clientId` (Microsoft, "Local development with identity-based
    # connections": you don't need to set credential or clientId during local development).
    for name, value in values.items():
        assert not name.endswith("__clientId"), f"{name}: a user-assigned identity exists only in Azure"
        assert not (name.endswith("__credential") and value.lower() == "managedidentity"), name
    # The handler's own Entra sinks pick a managed identity as soon as AZURE_CLIENT_ID is set
    # (handlers/sinks/entra.rs), so the example must not set it either.
    assert "AZURE_CLIENT_ID" not in values
    # Host storage on the local emulator (Azurite).
    assert values["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"
    # Every Cosmos DB connection the function folders name has its endpoint, and nothing else.
    for folder in sorted(p.parent for p in ROOT.glob("*/function.json")):
        for binding in json.loads((folder / "function.json").read_text())["bindings"]:
            if binding["type"] == "cosmosDBTrigger":
                prefix = binding["connection"] + "__"
                assert values[prefix + "accountEndpoint"].startswith("https://")
                assert sorted(k for k in values if k.startswith(prefix)) == [prefix + "accountEndpoint"]
    # object_store (Delta changelog, dead-letter store) falls back to the instance metadata
    # service (a managed identity) unless told to use the Azure CLI login; locally both are
    # folders by default, and the flag makes an abfss:// URL work with `az login` too.
    assert values["AZURE_USE_AZURE_CLI"] == "true"
    assert not values["FANOUT_DEAD_LETTER_URL"].startswith(("abfss://", "az://"))
    assert not values["ORDERS_CHANGELOG_TABLE"].startswith(("abfss://", "az://"))


# --------------------------------------------------------------------------
# .funcignore: publishing from the repo root ships exactly the package
# --------------------------------------------------------------------------


class CoreToolsIgnore:
    """How Core Tools reads .funcignore (azure-functions-core-tools, src/Cli/func/Common/
    GitIgnoreParser.cs, itself a port of codemix/gitignore-parser), re-derived here: lines are
    trimmed, `#` lines and blank lines dropped, a leading `!` makes a line negative and a leading
    `/` is dropped. Each side becomes one regex `^((p1)|(p2)...)\\b` (ECMAScript, so `\\b` is
    ASCII) where a pattern has `-[]/{}()+?.\\^$|` escaped, `**` -> `(.+)` and `*` -> `([^/]+)`.
    A path is published when any negative pattern matches it or no positive one does; so `!`
    works, in any order (not git's last-match-wins), and a pattern matches a path *prefix* that
    ends at a word boundary (`fanout` also matches `fanout.toml`, not `fanoutx`)."""

    def __init__(self, text: str):
        positive, negative = [], []
        for line in text.split("\n"):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            is_negative = line.startswith("!")
            if is_negative:
                line = line[1:]
            if line.startswith("/"):
                line = line[1:]
            (negative if is_negative else positive).append(line)
        self.positive, self.negative = self._compile(positive), self._compile(negative)

    @staticmethod
    def _prepare(pattern: str) -> str:
        escaped = re.sub(r"[\-\[\]/{}()+?.\\^$|]", lambda m: "\\" + m.group(0), pattern)
        return escaped.replace("**", "(.+)").replace("*", "([^\\/]+)")

    @classmethod
    def _compile(cls, patterns: list[str]) -> re.Pattern:
        if not patterns:
            return re.compile(r"$^")
        return re.compile("^((" + ")|(".join(cls._prepare(p) for p in sorted(patterns)) + "))\\b", re.ASCII)

    def accepts(self, path: str) -> bool:
        return bool(self.negative.search(path)) or not self.positive.search(path)


# FileSystemHelpers.GetLocalFiles: never descends into these folders and never ships these files,
# whatever .funcignore says (names compared case-insensitively, at any depth).
CORE_TOOLS_SKIPPED_DIRS = {".git", ".vscode"}
CORE_TOOLS_SKIPPED_FILES = {".funcignore", ".gitignore", "local.settings.json", "project.lock.json"}
PACKAGE_EXCLUDED_DIRS = {"target", "tests", "infra", "docs", "handlers", "dist", "scripts", "benches", "examples"}


def published_from_root(paths: list[str], funcignore: str) -> set[str]:
    parser = CoreToolsIgnore(funcignore)
    out = set()
    for path in paths:
        parts = path.split("/")
        if any(p.lower() in CORE_TOOLS_SKIPPED_DIRS for p in parts[:-1]) or parts[-1].lower() in CORE_TOOLS_SKIPPED_FILES:
            continue
        if parser.accepts(path):
            out.add(path)
    return out


def package_set(paths: list[str]) -> set[str]:
    """What scripts/package.sh puts in dist/app (and tests/check_package.sh requires)."""
    expected = {"fanout", "fanout.toml", "fanout.azure.toml", "host.json"}
    for path in paths:
        parts = path.split("/")
        if len(parts) == 2 and parts[1] == "function.json" and parts[0] not in PACKAGE_EXCLUDED_DIRS:
            expected.add(path)
        if len(parts) == 3 and parts[:2] == ["infra", "search"] and parts[2].endswith(".json"):
            expected.add(path)
    return expected


def test_core_tools_ignore_port_behaves_like_core_tools():
    # Own vectors for the behaviours the port must reproduce (see the class docstring).
    ignore = CoreToolsIgnore("# c\n*\n!/keep.json\n!*/function.json\n!docs/**/x\n !bin \n")
    assert not ignore.accepts("README.md") and not ignore.accepts(".ci/run") and not ignore.accepts("a/b/c")
    assert ignore.accepts("keep.json") and ignore.accepts("keep.json.bak")   # prefix + word boundary
    assert not ignore.accepts("keep.jsonx")
    assert ignore.accepts("orders/function.json") and not ignore.accepts("a/b/function.json")
    assert ignore.accepts("docs/a/b/x") and not ignore.accepts("docs/x")
    assert ignore.accepts("bin") and ignore.accepts("bin/tool") and not ignore.accepts("binary")
    only_positive = CoreToolsIgnore("target\n/dist\n*.log\n")
    assert not only_positive.accepts("target/release/fanout") and only_positive.accepts("src/target")
    assert not only_positive.accepts("dist/app/host.json") and not only_positive.accepts("x.log")
    assert only_positive.accepts("targets.md") and only_positive.accepts("host.json")
    assert CoreToolsIgnore("").accepts("anything")


def test_funcignore_publishes_exactly_the_package_from_the_repo_root():
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    tracked = [p for p in tracked if p]
    # What a working copy has besides: the binary at the root (a stand-in here) and the usual
    # build and run artefacts, which must stay out too.
    local = ["fanout", "local.settings.json", "target/release/fanout", "target/dist/fanout", "dist/app/host.json",
             "dist/app/orders/function.json", "dist/fanout-app.zip", ".fanout/dead-letter/pending/x.json",
             ".fanout/tables/orders_changelog/_delta_log/00000000000000000000.json", "tests/.tools/venv/bin/python",
             "fuzz/target/debug/x", ".azurite/__blobstorage__/x", ".git/HEAD", ".vscode/settings.json"]
    paths = tracked + local
    published = published_from_root(paths, (ROOT / ".funcignore").read_text())
    expected = package_set(paths)
    assert published == expected, (
        f"published but not in the package: {sorted(published - expected)}\n"
        f"in the package but not published: {sorted(expected - published)}"
    )
    assert "orders/function.json" in expected and "infra/search/orders.json" in expected
    # package.sh and check_package.sh skip the same folders when they collect */function.json.
    for script in (ROOT / "scripts" / "package.sh", ROOT / "tests" / "check_package.sh"):
        lists = re.findall(r'case "\$\(?d(?:irname "\$f"\))?"? in ([a-z|]+)\)', script.read_text())
        assert lists and all(set(l.split("|")) == PACKAGE_EXCLUDED_DIRS for l in lists), (script.name, lists)


def test_run_from_package_recipe_restarts_and_syncs_triggers():
    # Elastic Premium runs from a package URL: after the blob is replaced in place the app must be
    # restarted and its triggers synced (Microsoft, "Deployment technologies in Azure Functions",
    # Trigger syncing: "When you update the deployment package in-place using the same external
    # package URL", with `az rest --method post --url .../syncfunctiontriggers?api-version=...`).
    recipes = [
        (path, block)
        for path in DOC_FILES
        for block in shell_blocks(path)
        if "az storage blob upload" in block and "app-package" in block
    ]
    assert recipes, "no run-from-package recipe in the docs"
    for path, block in recipes:
        name = path.relative_to(ROOT).as_posix()
        assert "-f dist/fanout-app.zip" in block, f"{name}: upload the package scripts/package.sh built"
        upload = block.index("az storage blob upload")
        restart = block.find("az functionapp restart", upload)
        sync = re.search(r"az rest --method post --url \S*/providers/Microsoft\.Web/sites/\S*/syncfunctiontriggers\?api-version=\d{4}-\d{2}-\d{2}", block)
        assert restart > upload, f"{name}: restart the app after the upload"
        assert sync and sync.start() > restart, f"{name}: sync the triggers after the restart"


# --------------------------------------------------------------------------
# The all-versions-and-deletes example (examples/, never the app root)
# --------------------------------------------------------------------------

AVAD_EXAMPLE = ROOT / "examples" / "all-versions-and-deletes"


def function_schema_validator():
    import jsonschema

    schema = json.loads((ROOT / "tests" / "fixtures" / "schemas" / "function.schema.json").read_text())
    # Same draft as tests/app_files.rs: the schema says draft-04 but its sqlBinding uses `const`
    # (draft-06); under draft-04 every cosmosDBTrigger binding would match two oneOf branches.
    return jsonschema.Draft6Validator(schema)


def cosmos_trigger(path: Path) -> dict:
    bindings = json.loads(path.read_text())["bindings"]
    (trigger,) = [b for b in bindings if b["type"] == "cosmosDBTrigger"]
    return trigger


def test_all_versions_and_deletes_example_function():
    validator = function_schema_validator()
    avad_file = AVAD_EXAMPLE / "orders" / "function.json"
    baseline_file = AVAD_EXAMPLE / "orders_baseline" / "function.json"
    for path in (avad_file, baseline_file):
        doc = json.loads(path.read_text())
        errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(doc)]
        assert errors == [], (path, errors)
    # The SchemaStore schema has no cosmosDBTrigger definition at all: such a binding validates
    # as a `dynamicBinding` (any type outside its list, any further keys), so the schema neither
    # knows nor rejects changeFeedMode. The keys the trigger needs are checked here instead.
    assert validator.is_valid({"bindings": [{"type": "cosmosDBTrigger", "name": "d", "direction": "in", "changeFeedMode": "x"}]})
    avad, baseline, live = cosmos_trigger(avad_file), cosmos_trigger(baseline_file), cosmos_trigger(ROOT / "orders" / "function.json")
    assert avad["changeFeedMode"] == "AllVersionsAndDeletes"
    # All versions and deletes reads from "now" (or a lease) only: no start from the beginning
    # or from a time (Microsoft, "Change feed modes in Azure Cosmos DB", limitations).
    assert avad["startFromBeginning"] is False and "startFromTime" not in avad and "startFrom" not in avad
    # The temporary baseline function: latest version (the default mode), from the beginning.
    assert baseline.get("changeFeedMode", "LatestVersion") == "LatestVersion" and baseline["startFromBeginning"] is True
    # Same container, connection and lease container as the app's function, each with its own
    # lease prefix, so the three never share leases.
    for trigger in (avad, baseline):
        for key in ("connection", "databaseName", "containerName", "leaseContainerName", "maxItemsPerInvocation"):
            assert trigger[key] == live[key], key
        assert trigger["createLeaseContainerIfNotExists"] is False
    prefixes = [t["leaseContainerPrefix"] for t in (live, avad, baseline)]
    assert len(set(prefixes)) == 3, prefixes
    assert json.loads(avad_file.read_text())["retry"] == json.loads((ROOT / "orders" / "function.json").read_text())["retry"]
    # Not deployed by accident: package.sh packs */function.json at the root only, and neither it,
    # check_package.sh nor .funcignore lets examples/ in (the .funcignore test above covers it).
    assert avad_file.relative_to(ROOT).parts[0] == "examples"
    assert "examples" in PACKAGE_EXCLUDED_DIRS


def test_change_feed_modes_doc_is_linked_and_names_what_it_relies_on():
    doc = (ROOT / "docs" / "change-feed-modes.md").read_text()
    assert "(docs/change-feed-modes.md)" in (ROOT / "README.md").read_text()
    host = json.loads((ROOT / "host.json").read_text())
    assert host["extensionBundle"]["version"] in doc
    for needle in ("cosmosContinuousBackupTier", "examples/all-versions-and-deletes/orders/function.json",
                   "examples/all-versions-and-deletes/orders_baseline/function.json", "orders-avad-",
                   "orders-baseline-", "startFromBeginning", "soft_delete", "check-config"):
        assert needle in doc, needle
    links = re.findall(r"\]\((\.\./[^)#]+)\)", doc)
    assert len(links) >= 2
    for path in links:
        assert (ROOT / "docs" / path).resolve().exists(), path
