// ADLS Gen2 account (hierarchical namespace) for the data the app writes: the
// Delta tables (container `lake`) and the dead letters (container `deadletter`).
// Shared keys are off; the identity gets Storage Blob Data Contributor on each
// of the two containers only, not on the account.

@description('ADLS Gen2 account name (3-24 lowercase letters and digits).')
param accountName string

@description('Azure region.')
param location string

@description('Principal (object) id of the function app identity.')
param principalId string

@description('Resource id of the function app identity (deploy-time value used in role assignment names).')
param identityId string

var blobDataContributorRoleId = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

resource adls 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: the storage firewall stays open (defaultAction Allow): this template has no virtual network, and the Functions host is not a trusted Microsoft service, so a Deny rule would lock the app out. Shared keys are disabled, so access is Entra RBAC only. Put the app in a VNet with private endpoints to close it.
  // checkov:skip=CKV_AZURE_59: public network access stays Enabled for the same reason as CKV_AZURE_35 (no VNet or private endpoints in this template); shared keys are off and blob public access is off.
  // checkov:skip=CKV_AZURE_43: the name is a module parameter, built in main.bicep as take(lowercase prefix without hyphens + uniqueString, 24), so it is valid by construction; checkov cannot evaluate a parameter here.
  name: accountName
  location: location
  kind: 'StorageV2'
  // Geo-redundant: the Delta tables and the dead letters are the durable output.
  sku: {
    name: 'Standard_GRS'
  }
  properties: {
    accessTier: 'Hot'
    isHnsEnabled: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: adls
  name: 'default'
  properties: {
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

// Delta tables: abfss://lake@<account>.dfs.core.windows.net/<table>
resource lakeContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: 'lake'
  properties: {
    publicAccess: 'None'
  }
}

// Dead letters: abfss://deadletter@<account>.dfs.core.windows.net/fanout
resource deadletterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: 'deadletter'
  properties: {
    publicAccess: 'None'
  }
}

resource lakeDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(lakeContainer.id, identityId, blobDataContributorRoleId)
  scope: lakeContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataContributorRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource deadletterDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(deadletterContainer.id, identityId, blobDataContributorRoleId)
  scope: deadletterContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataContributorRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

output name string = adls.name
