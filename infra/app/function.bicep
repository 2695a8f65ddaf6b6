// The Flex Consumption plan and the function app (Python 3.13 on Linux). The app runs as the
// user-assigned identity for everything: pulling its deployment package, AzureWebJobsStorage,
// Key Vault references and telemetry. Its app settings come whole from main.bicep; this module
// adds none, so main.bicep stays the one list of names (tests/infra checks both).

@description('Name of the function app.')
param name string

@description('Name of the Flex Consumption plan.')
param planName string

@description('Region of the plan and the app (must offer Flex Consumption).')
param location string

@description('Tags applied to the plan and the app.')
param tags object

@description('Service name in azure.yaml; azd finds the app by this tag.')
param serviceName string

@description('Resource id of the user-assigned identity the app runs as.')
param identityId string

@description('Blob endpoint of the storage account holding the deployment container.')
param storageBlobEndpoint string

@description('Blob container that holds the deployment package.')
param deploymentContainerName string

@description('Every app setting of the function app, name to value (assembled in main.bicep).')
param appSettings object

@description('Spread instances over availability zones. Needs a region that supports it, and keeps at least two always-ready instances (billed) running.')
param zoneRedundant bool = false

@description('Largest number of instances Flex Consumption may scale out to.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Memory of each instance.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

// Flex Consumption runs ONE HTTP request at a time per Python instance unless told otherwise
// (scaleAndConcurrency.triggers.http.perInstanceConcurrency). Proxied charges wait on Stripe and
// storage, not the CPU, and the ledger's group commit only batches requests that share an instance,
// so spendgate lets 32 run at once: with PYTHON_THREADPOOL_THREAD_COUNT = 64 that leaves 32 pool
// threads for the 32 concurrent activities (host.json). devhost honours the same number
// (DEVHOST_HTTP_PER_INSTANCE_CONCURRENCY in the sample settings and tests).
@description('HTTP requests one instance runs at once.')
@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int = 32

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
    // checkov:skip=CKV_AZURE_225: zone redundancy is a parameter (zoneRedundant), off by default because on Flex Consumption it bills two always-ready instances around the clock and only some regions offer it.
    zoneRedundant: zoneRedundant
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': serviceName })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  // checkov:skip=CKV_AZURE_222: the app is a public API for agents and billing jobs; every route but GET /api/health needs a function key or a vault key, and the Stripe secret never leaves the app.
  // checkov:skip=CKV_AZURE_17: callers authenticate with function keys (admin routes) and vault keys (the proxy); stripe-python and agent SDKs send no client certificate.
  // checkov:skip=CKV_AZURE_212: numberOfWorkers does not apply to Flex Consumption, which adds instances per demand (maximumInstanceCount) and replaces unhealthy ones itself.
  // checkov:skip=CKV_AZURE_213: Flex Consumption does not support the App Service health check (healthCheckPath); GET /api/health serves external probes and scripts/smoke.sh instead.
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    keyVaultReferenceIdentity: identityId
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [for setting in items(appSettings): {
        name: setting.key
        value: setting.value
      }]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storageBlobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
        triggers: {
          http: {
            perInstanceConcurrency: httpPerInstanceConcurrency
          }
        }
      }
      runtime: {
        name: 'python'
        version: '3.13'
      }
    }
  }
}

// Publishing with a user name and password is off; azd deploys with an Entra ID token.
resource ftpCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

output name string = site.name
output defaultHostName string = site.properties.defaultHostName
