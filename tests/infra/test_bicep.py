"""The Bicep under infra/ parses, wires together, and provisions what issue 6 asks for.

There is no Bicep compiler here, so these tests do part of its job (every module parameter
exists, every `x.outputs.y` is declared) and then pin the security properties that matter:
no account keys, no secret in a template, least-privilege roles, Flex Consumption on Python 3.13.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from devhost.services import REPO_ROOT
from tests.infra.bicep import (
    INFRA,
    MAIN,
    bicep_files,
    body,
    dotted,
    has_default,
    is_secure,
    module_tree,
    output_references,
    parse,
    resources_of_type,
    variable,
)

# Built-in role definition ids (Microsoft's "Azure built-in roles" list).
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
STORAGE_QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
STORAGE_TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
KEY_VAULT_SECRETS_OFFICER = "b86a8fe4-44ce-4948-aee5-eccb2c155cd7"
MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"

KEY_VAULT_REFERENCE = re.compile(
    r"^@Microsoft\.KeyVault\(SecretUri=\$\{keyVault\.outputs\.uri\}secrets/\$\{(\w+)\}/\)$"
)


@pytest.fixture(scope="module")
def main() -> dict[str, Any]:
    return parse(MAIN)


def _unquote(key: str) -> str:
    return key.strip("'")


# --- it parses and wires together -------------------------------------------------------------
@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_bicep_file_parses(path: Path) -> None:
    tree = parse(path)
    assert tree.get("resources") or tree.get("modules"), f"{path} declares nothing"


def test_main_assembles_only_local_modules(main: dict[str, Any]) -> None:
    """Registry modules (br/public:…) can't be parsed or scanned offline, so none are used."""
    assert main["modules"], "main.bicep uses no modules"
    for name, module in main["modules"].items():
        assert module["type"] == "local", f"module {name} is not a local file"
        assert (INFRA / module["detail"]["path"]).is_file(), f"module {name}: {module['detail']['path']} missing"


def test_every_module_gets_exactly_the_parameters_it_declares(main: dict[str, Any]) -> None:
    for name, module in main["modules"].items():
        declared = module_tree(main, name)["parameters"]
        passed = set(body(module)["params"])
        unknown = passed - set(declared)
        required = {p for p, spec in declared.items() if not has_default(spec)}
        assert not unknown, f"module {name} is passed parameters it does not declare: {unknown}"
        assert required <= passed, f"module {name} misses required parameters: {required - passed}"


def test_every_module_output_main_uses_is_declared(main: dict[str, Any]) -> None:
    for module_name, output in output_references(MAIN):
        outputs = module_tree(main, module_name).get("outputs", {})
        assert output in outputs, f"main.bicep uses {module_name}.outputs.{output}, which is not declared"


def test_parameter_file_fills_the_azd_parameters(main: dict[str, Any]) -> None:
    values = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert {k: v["value"] for k, v in values.items()} == {
        "environmentName": "${AZURE_ENV_NAME}",
        "location": "${AZURE_LOCATION}",
        "principalId": "${AZURE_PRINCIPAL_ID}",
    }
    required = {name for name, spec in main["parameters"].items() if not has_default(spec)}
    assert required <= set(values), f"required parameters azd would have to prompt for: {required - set(values)}"
    assert set(values) <= set(main["parameters"])


# --- azd --------------------------------------------------------------------------------------
def test_azure_yaml_deploys_this_repo_to_the_tagged_function_app(main: dict[str, Any]) -> None:
    project = yaml.safe_load((REPO_ROOT / "azure.yaml").read_text())
    services = project["services"]
    assert len(services) == 1
    ((service_name, service),) = services.items()
    assert service["host"] == "function" and service["language"] == "python"
    project_dir = (REPO_ROOT / service["project"]).resolve()
    assert (project_dir / "function_app.py").is_file() and (project_dir / "host.json").is_file()
    assert variable(main, "serviceName") == service_name
    site = resources_of_type(module_tree(main, "api"), "Microsoft.Web/sites")["site"]
    tags = body(site)["tags"]["function"]["parameters"]["arg_2"]
    assert {_unquote(k): v for k, v in tags.items()} == {"azd-service-name": "serviceName"}
    assert body(main["modules"]["api"])["params"]["serviceName"] == "serviceName"


def test_funcignore_keeps_tooling_and_local_state_out_of_the_package() -> None:
    ignored = {line.strip() for line in (REPO_ROOT / ".funcignore").read_text().splitlines()}
    for entry in (".venv", ".venv-tools", ".azure", "tests", "infra", "bench", "devhost", "local.settings*.json"):
        assert entry in ignored, f".funcignore must exclude {entry}"


# --- what gets provisioned --------------------------------------------------------------------
def test_function_app_runs_python_311_on_flex_consumption_as_the_user_assigned_identity(main: dict[str, Any]) -> None:
    tree = module_tree(main, "api")
    (plan,) = resources_of_type(tree, "Microsoft.Web/serverfarms").values()
    assert body(plan)["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    site = body(resources_of_type(tree, "Microsoft.Web/sites")["site"])
    props = site["properties"]
    assert props["functionAppConfig"]["runtime"] == {"name": "python", "version": "3.13"}
    assert props["httpsOnly"] is True
    assert site["identity"]["type"] == "UserAssigned"
    assert props["functionAppConfig"]["deployment"]["storage"]["authentication"] == {
        "type": "UserAssignedIdentity",
        "userAssignedIdentityResourceId": "identityId",
    }
    assert props["keyVaultReferenceIdentity"] == "identityId", "Key Vault references must use the app's identity"
    # The app settings are exactly main.bicep's `appSettings`, name for name.
    loop = props["siteConfig"]["appSettings"]
    assert loop["loop_type"]["detail"]["array_name"] == {
        "function": {"type": "items", "parameters": {"arg_1": "appSettings"}}
    }
    assert body(main["modules"]["api"])["params"]["appSettings"] == "appSettings"
    # Publishing with user name and password is off (azd deploys with an Entra ID token).
    policies = resources_of_type(tree, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    assert {body(p)["name"]: body(p)["properties"]["allow"] for p in policies.values()} == {"ftp": False, "scm": False}


def test_storage_account_takes_no_shared_keys(main: dict[str, Any]) -> None:
    (account,) = resources_of_type(module_tree(main, "storage"), "Microsoft.Storage/storageAccounts").values()
    props = body(account)["properties"]
    assert props["allowSharedKeyAccess"] is False
    assert props["allowBlobPublicAccess"] is False
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert props["supportsHttpsTrafficOnly"] is True
    settings = variable(main, "appSettings")
    assert "AzureWebJobsStorage" not in settings, "a storage connection string would carry an account key"
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert dotted(settings["AzureWebJobsStorage__accountName"]) == "storage.outputs.name"
    assert dotted(settings["AzureWebJobsStorage__clientId"]) == "identity.outputs.clientId"
    for path in bicep_files():
        text = path.read_text()
        assert "listKeys(" not in text and "AccountKey=" not in text, f"{path} reads an account key"


def test_key_vault_uses_azure_rbac_and_holds_every_secret_setting(main: dict[str, Any]) -> None:
    (vault,) = resources_of_type(module_tree(main, "keyVault"), "Microsoft.KeyVault/vaults").values()
    props = body(vault)["properties"]
    assert props["enableRbacAuthorization"] is True
    assert "accessPolicies" not in props
    assert props["enableSoftDelete"] is True and props["enablePurgeProtection"] is True
    settings = variable(main, "appSettings")
    referenced = {
        name: match.group(1)
        for name, value in settings.items()
        if isinstance(value, str) and (match := KEY_VAULT_REFERENCE.match(value))
    }
    assert "STRIPE_SECRET_KEY" in referenced
    # Every setting whose value is a credential comes from the vault.
    for name in settings:
        if re.search(r"SECRET|_KEY$", name):
            assert name in referenced, f"{name} must be a Key Vault reference"
    for name, secret_var in referenced.items():
        secret_name = variable(main, secret_var)
        assert re.fullmatch(r"[0-9a-zA-Z-]{1,127}", secret_name), f"{name}: bad secret name {secret_name!r}"


def test_no_secret_value_passes_through_a_template() -> None:
    """Bicep creates the vault but never a secret; no parameter default or output holds one."""
    for path in bicep_files():
        tree = parse(path)
        assert not resources_of_type(tree, "Microsoft.KeyVault/vaults/secrets"), f"{path} writes a secret"
        for name, param in tree.get("parameters", {}).items():
            if is_secure(param):
                assert not has_default(param), f"{path}: @secure() parameter {name} has a default"
        for name, output in tree.get("outputs", {}).items():
            assert "listSecrets" not in json.dumps(output) and "listKeys" not in json.dumps(output), f"{path}: {name}"
    stripe_key = re.compile(r"\b[sr]k_(live|test)_\w+")
    for path in [*bicep_files(), INFRA / "main.parameters.json", REPO_ROOT / "azure.yaml"]:
        assert not stripe_key.search(path.read_text()), f"{path} contains a Stripe key"


def _role_assignments(tree: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(principal, role id, scope symbol) for each role assignment in a file."""
    assignments = set()
    for res in resources_of_type(tree, "Microsoft.Authorization/roleAssignments").values():
        config = body(res)
        role = config["properties"]["roleDefinitionId"]["function"]
        assert role["type"] == "subscription_resource_id"
        assert role["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions"
        role_id = variable(tree, role["parameters"]["resource_name_1"])
        assignments.add((config["properties"]["principalId"], role_id, config["scope"]))
    return assignments


def test_app_identity_has_only_the_data_roles_it_needs(main: dict[str, Any]) -> None:
    rbac = module_tree(main, "rbac")
    app = {(role, scope) for principal, role, scope in _role_assignments(rbac) if principal == "appPrincipalId"}
    assert app == {
        (STORAGE_BLOB_DATA_OWNER, "storage"),
        (STORAGE_QUEUE_DATA_CONTRIBUTOR, "storage"),
        (STORAGE_TABLE_DATA_CONTRIBUTOR, "storage"),
        (KEY_VAULT_SECRETS_USER, "vault"),
        (MONITORING_METRICS_PUBLISHER, "applicationInsights"),
    }
    others = {
        (principal, role, scope) for principal, role, scope in _role_assignments(rbac) if principal != "appPrincipalId"
    }
    assert others == {("operatorPrincipalId", KEY_VAULT_SECRETS_OFFICER, "vault")}
    # The scopes are this deployment's own resources, not the resource group or subscription.
    existing = rbac["resources"]
    assert body(existing["storage"])["name"] == "storageAccountName" and existing["storage"]["existing"]
    assert body(existing["vault"])["name"] == "keyVaultName" and existing["vault"]["existing"]
    assert dotted(body(main["modules"]["rbac"])["params"]["appPrincipalId"]) == "identity.outputs.principalId"
    # Settings that need those roles are applied only after the roles exist.
    assert "rbac" in body(main["modules"]["api"]).get("dependsOn", [])


def test_telemetry_goes_to_application_insights_on_log_analytics_with_entra_auth(main: dict[str, Any]) -> None:
    tree = module_tree(main, "monitoring")
    (workspace_name,) = resources_of_type(tree, "Microsoft.OperationalInsights/workspaces")
    (component,) = resources_of_type(tree, "Microsoft.Insights/components").values()
    props = body(component)["properties"]
    assert dotted(props["WorkspaceResourceId"]) == f"{workspace_name}.id"
    assert props["DisableLocalAuth"] is True
    settings = variable(main, "appSettings")
    assert (
        settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]
        == "ClientId=${identity.outputs.clientId};Authorization=AAD"
    )


def test_outputs_give_the_app_and_proxy_urls(main: dict[str, Any]) -> None:
    outputs = main["outputs"]
    assert outputs["SPENDGATE_APP_URL"]["value"] == "https://${api.outputs.defaultHostName}"
    assert outputs["SPENDGATE_PROXY_BASE_URL"]["value"] == "https://${api.outputs.defaultHostName}/api/stripe"
    assert dotted(outputs["AZURE_KEY_VAULT_NAME"]["value"]) == "keyVault.outputs.name"
