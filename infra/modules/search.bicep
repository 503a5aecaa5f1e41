// Azure AI Search (basic). API keys stay enabled (disableLocalAuth false) for
// operators, but authOptions aadOrApiKey makes the service accept Entra tokens
// too, answering 401 with a bearer challenge. The identity gets Search Index
// Data Contributor (write documents) and Search Service Contributor (create the
// `orders` index).

@description('Search service name (lowercase, globally unique).')
param searchServiceName string

@description('Azure region.')
param location string

@description('Principal (object) id of the function app identity.')
param principalId string

@description('Resource id of the function app identity (deploy-time value used in role assignment names).')
param identityId string

var indexDataContributorRoleId = '8ebe5a00-799e-43f5-93ac-243d3dce84a7'
var serviceContributorRoleId = '7ca78c08-252a-4471-8644-bb5ff32d4ba0'

resource search 'Microsoft.Search/searchServices@2023-11-01' = {
  // checkov:skip=CKV_AZURE_208: the index-update SLA needs 3+ replicas; one basic replica is a cost choice for this deployment. Raise replicaCount for production.
  // checkov:skip=CKV_AZURE_209: the query SLA needs 2+ replicas; same cost choice as CKV_AZURE_208.
  name: searchServiceName
  location: location
  sku: {
    name: 'basic'
  }
  properties: {
    replicaCount: 1
    partitionCount: 1
    hostingMode: 'default'
    publicNetworkAccess: 'enabled'
    disableLocalAuth: false
    authOptions: {
      aadOrApiKey: {
        aadAuthFailureMode: 'http401WithBearerChallenge'
      }
    }
    semanticSearch: 'disabled'
  }
}

resource indexDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(search.id, identityId, indexDataContributorRoleId)
  scope: search
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', indexDataContributorRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource serviceContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(search.id, identityId, serviceContributorRoleId)
  scope: search
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceContributorRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

output name string = search.name
