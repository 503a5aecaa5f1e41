// Event Hubs namespace (Standard, SAS keys disabled) and the hub the app
// publishes order changes to. The identity may only send, and only to this hub.

@description('Event Hubs namespace name.')
param namespaceName string

@description('Azure region.')
param location string

@description('Event hub name (the app setting EVENTHUB_NAME).')
param eventHubName string

@description('Partition count of the hub (fixed after creation on Standard).')
param partitionCount int

@description('Principal (object) id of the function app identity.')
param principalId string

@description('Resource id of the function app identity (deploy-time value used in role assignment names).')
param identityId string

var dataSenderRoleId = '2b629674-e913-4c01-ae53-ef4638d8f975'

resource namespace 'Microsoft.EventHub/namespaces@2024-01-01' = {
  name: namespaceName
  location: location
  sku: {
    name: 'Standard'
    tier: 'Standard'
    capacity: 1
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
    isAutoInflateEnabled: false
  }
}

resource hub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' = {
  parent: namespace
  name: eventHubName
  properties: {
    partitionCount: partitionCount
    messageRetentionInDays: 1
  }
}

// Azure Event Hubs Data Sender, scoped to the hub (not the namespace).
resource dataSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hub.id, identityId, dataSenderRoleId)
  scope: hub
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', dataSenderRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

output namespaceName string = namespace.name
output hubName string = eventHubName
