// Azure Managed Redis (Microsoft.Cache/redisEnterprise): one database on port
// 10000, TLS only, EnterpriseCluster policy (a single endpoint, so a
// non-cluster-aware client works), access keys disabled. The identity is given
// the built-in `default` access policy (Entra auth: REDIS_AUTH=entra).

@description('Azure Managed Redis cluster name.')
param redisName string

@description('Azure region.')
param location string

@description('Azure Managed Redis SKU, e.g. Balanced_B0, Balanced_B1, MemoryOptimized_M10.')
param skuName string

@description('Principal (object) id of the function app identity.')
param principalId string

@description('Resource id of the function app identity (deploy-time value used in role assignment names).')
param identityId string

resource redis 'Microsoft.Cache/redisEnterprise@2025-07-01' = {
  name: redisName
  location: location
  sku: {
    name: skuName
  }
  properties: {
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

resource database 'Microsoft.Cache/redisEnterprise/databases@2025-07-01' = {
  parent: redis
  name: 'default'
  properties: {
    clientProtocol: 'Encrypted'
    port: 10000
    clusteringPolicy: 'EnterpriseCluster'
    evictionPolicy: 'NoEviction'
    accessKeysAuthentication: 'Disabled'
  }
}

resource accessPolicyAssignment 'Microsoft.Cache/redisEnterprise/databases/accessPolicyAssignments@2025-07-01' = {
  parent: database
  // Assignment names are letters and digits only: a guid without its hyphens.
  name: replace(guid(database.id, identityId, 'default'), '-', '')
  properties: {
    accessPolicyName: 'default'
    user: {
      objectId: principalId
    }
  }
}

output name string = redis.name
output hostName string = redis.properties.hostName
