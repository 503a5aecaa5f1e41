// The one user-assigned managed identity the Function App uses for everything:
// host storage, the Cosmos DB trigger, ADLS (Delta + dead letters), Event Hubs,
// AI Search, Azure Managed Redis and Application Insights.

@description('Name of the user-assigned managed identity.')
param identityName string

@description('Azure region.')
param location string

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: identityName
  location: location
}

output id string = identity.id
output name string = identity.name
output principalId string = identity.properties.principalId
output clientId string = identity.properties.clientId
