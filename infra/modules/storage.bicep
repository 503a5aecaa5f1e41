// Storage account for the Functions runtime (AzureWebJobsStorage) and, on Flex
// Consumption, the deployment package container. Shared keys are off: the host
// connects with the user-assigned identity (AzureWebJobsStorage__accountName /
// __credential / __clientId), so the identity gets the three data roles the
// host needs: Blob Data Owner, Queue Data Contributor, Table Data Contributor.

@description('Storage account name (3-24 lowercase letters and digits).')
param storageAccountName string

@description('Azure region.')
param location string

@description('Blob container that holds the deployment package (Flex Consumption, or the run-from-package URL on Elastic Premium).')
param deploymentContainerName string

@description('Principal (object) id of the function app identity.')
param principalId string

@description('Resource id of the function app identity (deploy-time value used in role assignment names).')
param identityId string

var blobDataOwnerRoleId = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var queueDataContributorRoleId = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
var tableDataContributorRoleId = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: the storage firewall stays open (defaultAction Allow): this template has no virtual network, and the Functions host is not a trusted Microsoft service, so a Deny rule would lock the app out. Shared keys are disabled, so access is Entra RBAC only. Put the app in a VNet with private endpoints to close it.
  // checkov:skip=CKV_AZURE_59: public network access stays Enabled for the same reason as CKV_AZURE_35 (no VNet or private endpoints in this template); shared keys are off and blob public access is off.
  // checkov:skip=CKV_AZURE_43: the name is a module parameter, built in main.bicep as take(lowercase prefix without hyphens + uniqueString, 24), so it is valid by construction; checkov cannot evaluate a parameter here.
  // checkov:skip=CKV_AZURE_206: LRS on purpose for the runtime account: it holds host state (locks, timers, keys) and the deployment package, all re-creatable; the data that matters is in Cosmos DB and the GRS data lake.
  name: storageAccountName
  location: location
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
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
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource blobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identityId, blobDataOwnerRoleId)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataOwnerRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource queueDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identityId, queueDataContributorRoleId)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', queueDataContributorRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource tableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identityId, tableDataContributorRoleId)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', tableDataContributorRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

output name string = storage.name
