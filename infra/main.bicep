// fanout: Cosmos DB change feed -> Delta Lake on ADLS, Event Hubs, Azure AI Search
// and Azure Managed Redis, run by a Linux Function App (custom handler) that
// reaches everything with one user-assigned managed identity. No keys, no
// connection strings with secrets.
//
//   az deployment group create -g <rg> -f infra/main.bicep -p infra/main.parameters.json
//
// infra/azuredeploy.json declares the same resources for ARM-only users: keep the
// two in step (tests/infra/test_templates.py compares them).

@description('Azure region for every resource.')
param location string = resourceGroup().location

@minLength(3)
@maxLength(10)
@description('Short prefix for resource names (letters, digits and hyphens, starting with a letter); a uniqueString suffix makes the names globally unique.')
param namePrefix string = 'fanout'

@description('Cosmos DB database that holds the `orders` and `leases` containers (app setting COSMOS_DATABASE).')
param databaseName string = 'shop'

@allowed([
  'flex'
  'elasticPremium'
])
@description('Hosting plan: Flex Consumption (FC1, default) or Elastic Premium (EP1, Linux).')
param planKind string = 'flex'

@minValue(1)
@maxValue(32)
@description('Partition count of the `orders-changes` event hub.')
param eventHubPartitionCount int = 4

@description('Azure Managed Redis SKU.')
param redisSkuName string = 'Balanced_B0'

@minValue(1)
@maxValue(1000)
@description('Flex Consumption: maximum number of instances.')
param flexMaximumInstanceCount int = 100

@allowed([
  512
  2048
  4096
])
@description('Flex Consumption: instance memory size in MB.')
param flexInstanceMemoryMB int = 2048

@description('Flex Consumption: version of the `custom` runtime stack.')
param flexRuntimeVersion string = '1.0'

@allowed([
  ''
  'Continuous7Days'
  'Continuous30Days'
])
@description('Cosmos DB continuous backup tier, which the trigger\'s all-versions-and-deletes change feed mode needs (docs/change-feed-modes.md). Empty (default): no backupPolicy is sent, the account keeps its current policy (periodic for a new account). Periodic to continuous is a one-way migration.')
param cosmosContinuousBackupTier string = ''

var prefix = toLower(namePrefix)
var suffix = uniqueString(resourceGroup().id, prefix)
// Storage account names allow lowercase letters and digits only.
var compactPrefix = replace(prefix, '-', '')
var storageSuffix = environment().suffixes.storage

var identityName = '${prefix}-id-${suffix}'
var logAnalyticsName = '${prefix}-log-${suffix}'
var appInsightsName = '${prefix}-appi-${suffix}'
var cosmosAccountName = '${prefix}-cosmos-${suffix}'
var runtimeStorageName = take('${compactPrefix}st${suffix}', 24)
var adlsName = take('${compactPrefix}dl${suffix}', 24)
var eventHubsNamespaceName = '${prefix}-evh-${suffix}'
var eventHubName = 'orders-changes'
var searchServiceName = '${prefix}-srch-${suffix}'
var redisName = '${prefix}-redis-${suffix}'
var planName = '${prefix}-plan-${suffix}'
var functionAppName = '${prefix}-func-${suffix}'
var deploymentContainerName = 'app-package'

var deadLetterUrl = 'abfss://deadletter@${adlsName}.dfs.${storageSuffix}/fanout'
var changelogTableUrl = 'abfss://lake@${adlsName}.dfs.${storageSuffix}/orders_changelog'
var eventHubsNamespaceHost = '${eventHubsNamespaceName}.servicebus.windows.net'
var searchEndpoint = 'https://${searchServiceName}.search.windows.net'
var redisUrl = 'rediss://${redis.outputs.hostName}:10000'

module identity 'modules/identity.bicep' = {
  name: 'identity'
  params: {
    identityName: identityName
    location: location
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    logAnalyticsName: logAnalyticsName
    appInsightsName: appInsightsName
    location: location
    principalId: identity.outputs.principalId
    identityId: identity.outputs.id
  }
}

module cosmos 'modules/cosmos.bicep' = {
  name: 'cosmos'
  params: {
    accountName: cosmosAccountName
    location: location
    databaseName: databaseName
    continuousBackupTier: cosmosContinuousBackupTier
    principalId: identity.outputs.principalId
    identityId: identity.outputs.id
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    storageAccountName: runtimeStorageName
    location: location
    deploymentContainerName: deploymentContainerName
    principalId: identity.outputs.principalId
    identityId: identity.outputs.id
  }
}

module datalake 'modules/datalake.bicep' = {
  name: 'datalake'
  params: {
    accountName: adlsName
    location: location
    principalId: identity.outputs.principalId
    identityId: identity.outputs.id
  }
}

module eventhubs 'modules/eventhubs.bicep' = {
  name: 'eventhubs'
  params: {
    namespaceName: eventHubsNamespaceName
    location: location
    eventHubName: eventHubName
    partitionCount: eventHubPartitionCount
    principalId: identity.outputs.principalId
    identityId: identity.outputs.id
  }
}

module search 'modules/search.bicep' = {
  name: 'search'
  params: {
    searchServiceName: searchServiceName
    location: location
    principalId: identity.outputs.principalId
    identityId: identity.outputs.id
  }
}

module redis 'modules/redis.bicep' = {
  name: 'redis'
  params: {
    redisName: redisName
    location: location
    skuName: redisSkuName
    principalId: identity.outputs.principalId
    identityId: identity.outputs.id
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  params: {
    planName: planName
    functionAppName: functionAppName
    location: location
    planKind: planKind
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    identityPrincipalId: identity.outputs.principalId
    runtimeStorageName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    cosmosEndpoint: cosmos.outputs.endpoint
    databaseName: cosmos.outputs.databaseName
    deadLetterUrl: deadLetterUrl
    changelogTableUrl: changelogTableUrl
    eventHubsNamespaceHost: eventHubsNamespaceHost
    eventHubName: eventhubs.outputs.hubName
    searchEndpoint: searchEndpoint
    redisUrl: redisUrl
    appInsightsConnectionString: monitoring.outputs.connectionString
    flexMaximumInstanceCount: flexMaximumInstanceCount
    flexInstanceMemoryMB: flexInstanceMemoryMB
    flexRuntimeVersion: flexRuntimeVersion
  }
  // The host must find its roles in place when it starts.
  dependsOn: [
    storage
    datalake
    cosmos
    eventhubs
    search
    redis
    monitoring
  ]
}

output functionAppName string = functionApp.outputs.name
output resourceGroupName string = resourceGroup().name
output cosmosEndpoint string = cosmos.outputs.endpoint
output cosmosDatabase string = cosmos.outputs.databaseName
output searchEndpoint string = searchEndpoint
output eventHubsNamespace string = eventHubsNamespaceHost
output eventHubName string = eventhubs.outputs.hubName
output redisHost string = redis.outputs.hostName
output redisUrl string = redisUrl
output adlsAccountName string = datalake.outputs.name
output runtimeStorageAccountName string = storage.outputs.name
output changelogTableUrl string = changelogTableUrl
output deadLetterUrl string = deadLetterUrl
output identityClientId string = identity.outputs.clientId
output identityPrincipalId string = identity.outputs.principalId
output appInsightsName string = monitoring.outputs.appInsightsName
