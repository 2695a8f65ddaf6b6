// The Key Vault that holds the Stripe secret key (and the agents' vault keys). Bicep creates the
// vault, never a secret: the operator sets them after `azd up` (docs/deploy.md), so no secret passes
// through a template, a parameter file or deployment history. Access is by Azure RBAC only.

@description('Name of the vault (3-24 letters, digits and hyphens).')
@minLength(3)
@maxLength(24)
param name string

@description('Region of the vault.')
param location string

@description('Tags applied to the vault.')
param tags object

@description('Days a deleted vault or secret stays recoverable (purge protection keeps it that long).')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 7

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    // checkov:skip=CKV_AZURE_189: the platform resolves Key Vault references over the vault's public endpoint unless the app is VNet-integrated; reads need an Entra ID token and Key Vault Secrets User, which only the app's identity has.
    publicNetworkAccess: 'Enabled'
    // checkov:skip=CKV_AZURE_109: App Service Key Vault references are not a trusted-service bypass, so a default-deny firewall would leave STRIPE_SECRET_KEY unresolved; access is governed by Azure RBAC instead.
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

output id string = vault.id
output name string = vault.name
output uri string = vault.properties.vaultUri
