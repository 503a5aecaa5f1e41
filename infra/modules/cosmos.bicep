// Cosmos DB for NoSQL: the monitored container and the trigger's lease
// container. With an identity-based connection the Cosmos DB trigger refuses
// createLeaseContainerIfNotExists, so the lease container (partition key /id)
// is created here, up front. Keys are disabled: data-plane access is Entra only,
// through the built-in Data Contributor SQL role.

@description('Cosmos DB account name (globally unique, lowercase).')
param accountName string

@description('Azure region.')
param location string

@description('Database name (the app setting COSMOS_DATABASE).')
param databaseName string

@allowed([
  ''
  'Continuous7Days'
  'Continuous30Days'
])
@description('Continuous backup tier (needed by the all-versions-and-deletes change feed mode); empty: no backupPolicy is sent.')
param continuousBackupTier string = ''

@description('Principal (object) id of the function app identity.')
param principalId string

@description('Resource id of the function app identity (deploy-time value used in role assignment names).')
param identityId string

var dataContributorRoleId = '00000000-0000-0000-0000-000000000002'

// backupPolicy only when a continuous tier is asked for: absent otherwise, so a deployment
// never resets the account's policy (and cannot try to go back from continuous to periodic,
// which Cosmos DB does not allow).
var backupPolicy = empty(continuousBackupTier) ? {} : {
  backupPolicy: {
    type: 'Continuous'
    continuousModeProperties: {
      tier: continuousBackupTier
    }
  }
}

resource account 'Microsoft.DocumentDB/databaseAccounts@2024-11-15' = {
  // checkov:skip=CKV_AZURE_99: no virtual network in this template; access is Entra-only (disableLocalAuth) and the Flex Consumption app has no fixed egress IPs to allow-list.
  // checkov:skip=CKV_AZURE_101: public network access stays on for the same reason; add private endpoints and set publicNetworkAccess Disabled when the app is VNet-integrated.
  name: accountName
  location: location
  kind: 'GlobalDocumentDB'
  // checkov:skip=CKV_AZURE_132: checkov does not evaluate union(), which adds backupPolicy only for a continuous tier; tests/infra/test_templates.py runs this check on the resolved account (key-based metadata writes off).
  // checkov:skip=CKV_AZURE_140: checkov does not evaluate union(), which adds backupPolicy only for a continuous tier; tests/infra/test_templates.py runs this check on the resolved account (local auth off).
  properties: union({
    databaseAccountOfferType: 'Standard'
    locations: [
      {
        locationName: location
        failoverPriority: 0
        isZoneRedundant: false
      }
    ]
    consistencyPolicy: {
      defaultConsistencyLevel: 'Session'
    }
    capabilities: [
      {
        name: 'EnableServerless'
      }
    ]
    disableLocalAuth: true
    disableKeyBasedMetadataWriteAccess: true
    minimalTlsVersion: 'Tls12'
    publicNetworkAccess: 'Enabled'
  }, backupPolicy)
}

resource database 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases@2024-11-15' = {
  parent: account
  name: databaseName
  properties: {
    resource: {
      id: databaseName
    }
  }
}

// Monitored container. defaultTtl -1 turns TTL on without expiring anything, so
// soft-deleted orders can carry their own ttl (latest-version change feeds carry no deletes).
resource ordersContainer 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-11-15' = {
  parent: database
  name: 'orders'
  properties: {
    resource: {
      id: 'orders'
      partitionKey: {
        paths: [
          '/customerId'
        ]
        kind: 'Hash'
        version: 2
      }
      defaultTtl: -1
    }
  }
}

// Lease container for the change feed processor: partition key must be /id.
resource leasesContainer 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-11-15' = {
  parent: database
  name: 'leases'
  properties: {
    resource: {
      id: 'leases'
      partitionKey: {
        paths: [
          '/id'
        ]
        kind: 'Hash'
        version: 2
      }
    }
  }
}

// Cosmos DB Built-in Data Contributor (data plane), scoped to the account: the
// trigger reads the monitored container and reads/writes the lease container.
resource dataContributor 'Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments@2024-11-15' = {
  parent: account
  name: guid(account.id, identityId, dataContributorRoleId)
  properties: {
    roleDefinitionId: '${account.id}/sqlRoleDefinitions/${dataContributorRoleId}'
    principalId: principalId
    scope: account.id
  }
}

output accountName string = account.name
output endpoint string = account.properties.documentEndpoint
output databaseName string = databaseName
