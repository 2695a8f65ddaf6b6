// spendgate on Azure, for `azd up` (docs/deploy.md): a Flex Consumption function app (Python 3.13)
// that runs as one user-assigned identity; a storage account with shared keys disabled; the Stripe
// secret in Key Vault behind a Key Vault reference; Application Insights on Log Analytics.
//
// `appSettings` below is the one list of the app's settings: the names are the ones
// core/settings.py reads (tests/infra keeps the two equal), plus the few the Functions host reads.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; names the resource group and seeds the resource names.')
param environmentName string

@minLength(1)
@description('Region of every resource; it must offer the Flex Consumption plan.')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Object id of the person running azd; may set secrets in the vault. Empty: no assignment.')
param principalId string = ''

@description('Kind of principal principalId is (ServicePrincipal when a pipeline runs azd).')
@allowed([
  'User'
  'ServicePrincipal'
])
param principalType string = 'User'

@description('Stripe API base URL the proxy forwards to.')
param stripeApiBase string = 'https://api.stripe.com'

@description('Total deadline in seconds of one call to Stripe (connect + write + read).')
param stripeTimeoutSeconds string = '30'

@description('The Stripe-Version the proxy forwards; requests naming another version are refused (docs/proxy.md).')
param stripeVersion string = '2026-10-28.endive'

@description('Prefix of every table spendgate creates (letters and digits, starting with a letter).')
param tablePrefix string = 'spendgate'

@description('Days an idempotency record is kept (longer than Stripe\'s 24 hours, on purpose).')
param idempotencyRetentionDays string = '30'

@description('Billing runs with a budget at or above this many USD wait for a person (docs/approvals.md). Empty: only runs that ask.')
param approvalThresholdUsd string = ''

@description('How long a billing run or an agent charge waits for approval (90s, 30m, 24h, 7d).')
param approvalTimeout string = '24h'

@description('Where spend alerts are POSTed, signed with HMAC-SHA256 (docs/approvals.md). Empty: queue only.')
param alertWebhookUrl string = ''

@description('Largest number of instances the app may scale out to.')
param maximumInstanceCount int = 100

@description('Memory of each instance, in MB.')
param instanceMemoryMB int = 2048

@description('Spread instances over availability zones (region must support it; bills two always-ready instances).')
param zoneRedundant bool = false

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
  app: 'spendgate'
}
var serviceName = 'api'
var functionAppName = 'func-spendgate-${resourceToken}'
var deploymentContainerName = 'app-package-${resourceToken}'
// Key Vault secrets the app reads through Key Vault references. Bicep never writes them: the
// operator sets them after `azd up` (docs/deploy.md). Until then a reference stays unresolved.
var stripeSecretName = 'stripe-secret-key'
var billingKeySecretName = 'spendgate-billing-key'
var auditKeySecretName = 'spendgate-audit-key'
var alertWebhookSecretName = 'spendgate-alert-webhook-secret'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module identity 'app/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-spendgate-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
  }
}

module keyVault 'app/keyvault.bicep' = {
  name: 'keyVault'
  scope: rg
  params: {
    name: 'kv-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-${resourceToken}'
    applicationInsightsName: 'appi-${resourceToken}'
    location: location
    tags: tags
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    appPrincipalId: identity.outputs.principalId
    operatorPrincipalId: principalId
    operatorPrincipalType: principalType
  }
}

var appSettings = {
  // Read by the Functions host: identity-based AzureWebJobsStorage (no connection string, no key).
  // The app's own tables use the same identity (core/storage.py).
  AzureWebJobsStorage__accountName: storage.outputs.name
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identity.outputs.clientId
  // Read by the Functions host: telemetry, sent with Entra ID because local auth is disabled.
  APPLICATIONINSIGHTS_CONNECTION_STRING: monitoring.outputs.applicationInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identity.outputs.clientId};Authorization=AAD'
  // Read by the Python worker: sync functions share one pool of this many threads, by default min of 32
  // and CPUs + 4, about 6 on Flex. Charge activities wait on the proxy, the proxy on Stripe and storage.
  // A charge activity holds a pool thread while its proxy call, maybe served by this instance, needs another:
  // so 64 = maxConcurrentActivityFunctions in host.json, 32, + 32 HTTP requests, see function.bicep.
  PYTHON_THREADPOOL_THREAD_COUNT: '64'
  // Read by spendgate (core/settings.py).
  STRIPE_API_BASE: stripeApiBase
  STRIPE_SECRET_KEY: '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.uri}secrets/${stripeSecretName}/)'
  SPENDGATE_STRIPE_TIMEOUT_SECONDS: stripeTimeoutSeconds
  SPENDGATE_STRIPE_VERSION: stripeVersion
  SPENDGATE_TABLE_PREFIX: tablePrefix
  SPENDGATE_IDEMPOTENCY_RETENTION_DAYS: idempotencyRetentionDays
  // Approvals and alerts (docs/approvals.md); the webhook's signing secret is set in Key Vault after deployment.
  SPENDGATE_APPROVAL_THRESHOLD_USD: approvalThresholdUsd
  SPENDGATE_APPROVAL_TIMEOUT: approvalTimeout
  SPENDGATE_ALERT_WEBHOOK_URL: alertWebhookUrl
  SPENDGATE_ALERT_WEBHOOK_SECRET: '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.uri}secrets/${alertWebhookSecretName}/)'
  // Vault keys (vk_…) the agent tools spend and look up with; issued after deployment.
  SPENDGATE_BILLING_KEY: '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.uri}secrets/${billingKeySecretName}/)'
  SPENDGATE_AUDIT_KEY: '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.uri}secrets/${auditKeySecretName}/)'
  // Stem of the agent tools' queue names; the queue triggers read it as %SPENDGATE_TOOL_QUEUE_PREFIX%.
  SPENDGATE_TOOL_QUEUE_PREFIX: 'spendgate-tool'
  // SPENDGATE_PROXY_URL is left unset on purpose: core/settings.py then builds the proxy URL from
  // WEBSITE_HOSTNAME, which the platform sets to the app's real host name. Set it only behind a
  // custom domain or a gateway.
}

module api 'app/function.bicep' = {
  name: 'api'
  scope: rg
  params: {
    name: functionAppName
    planName: 'plan-${resourceToken}'
    location: location
    tags: tags
    serviceName: serviceName
    identityId: identity.outputs.id
    storageBlobEndpoint: storage.outputs.blobEndpoint
    deploymentContainerName: deploymentContainerName
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    zoneRedundant: zoneRedundant
    appSettings: appSettings
  }
  // Key Vault references resolve only once the identity may read secrets.
  dependsOn: [
    rbac
  ]
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = api.outputs.name
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output STRIPE_SECRET_NAME string = stripeSecretName
output BILLING_KEY_SECRET_NAME string = billingKeySecretName
output AUDIT_KEY_SECRET_NAME string = auditKeySecretName
output SPENDGATE_APP_URL string = 'https://${api.outputs.defaultHostName}'
output SPENDGATE_PROXY_BASE_URL string = 'https://${api.outputs.defaultHostName}/api/stripe'
