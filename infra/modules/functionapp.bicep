// Linux Function App for the `fanout` custom handler.
//   planKind 'flex'           -> Flex Consumption (FC1). Runtime `custom` is set in
//                                functionAppConfig.runtime (Flex rejects the
//                                FUNCTIONS_WORKER_RUNTIME / FUNCTIONS_EXTENSION_VERSION
//                                app settings); the package lives in a blob container
//                                of the runtime storage account, read with the identity.
//   planKind 'elasticPremium' -> Elastic Premium EP1 on Linux. The runtime account has
//                                no shared keys, so there is no Azure Files content
//                                share: the app runs from a package URL in the same
//                                container (WEBSITE_RUN_FROM_PACKAGE), read with the identity.
// Every connection uses the one user-assigned identity.
//
// Flex Consumption refuses a list of site properties and app settings that the other plans
// take ("Flex Consumption plan deprecations" in Microsoft's app settings reference; ARM answers
// 51021 "The following site configuration property (Site.SiteConfig.FtpsState) for Flex
// Consumption sites is invalid", also when the value is null). So the properties below are
// built with union(): a part every plan takes and a part only the other plans get, and on Flex
// the refused keys are absent, not null. tests/infra/test_templates.py checks the resolved
// site against that list.

@description('App Service plan name.')
param planName string

@description('Function app name (globally unique).')
param functionAppName string

@description('Azure region.')
param location string

@allowed([
  'flex'
  'elasticPremium'
])
@description('Hosting plan: Flex Consumption (FC1) or Elastic Premium (EP1).')
param planKind string

@description('Resource id of the user-assigned identity.')
param identityId string

@description('Client id of the user-assigned identity.')
param identityClientId string

@description('Principal (object) id of the user-assigned identity: the Redis user name with Entra auth.')
param identityPrincipalId string

@description('Runtime storage account name (AzureWebJobsStorage).')
param runtimeStorageName string

@description('Blob container on the runtime storage account for the deployment package.')
param deploymentContainerName string

@description('Cosmos DB account endpoint, https://<account>.documents.azure.com:443/.')
param cosmosEndpoint string

@description('Cosmos DB database name.')
param databaseName string

@description('abfss:// URL of the dead-letter folder.')
param deadLetterUrl string

@description('abfss:// URL of the orders changelog Delta table.')
param changelogTableUrl string

@description('Event Hubs namespace host name, <namespace>.servicebus.windows.net.')
param eventHubsNamespaceHost string

@description('Event hub name.')
param eventHubName string

@description('Azure AI Search endpoint, https://<service>.search.windows.net.')
param searchEndpoint string

@description('Redis URL, rediss://<host>:10000.')
param redisUrl string

@description('Application Insights connection string.')
param appInsightsConnectionString string

@description('Flex Consumption: maximum instance count.')
param flexMaximumInstanceCount int

@description('Flex Consumption: instance memory in MB (2048 or 4096).')
param flexInstanceMemoryMB int

@description('Flex Consumption: version of the custom runtime.')
param flexRuntimeVersion string

var isFlex = planKind == 'flex'
var storageSuffix = environment().suffixes.storage
var deploymentContainerUrl = 'https://${runtimeStorageName}.blob.${storageSuffix}/${deploymentContainerName}'
var packageUrl = '${deploymentContainerUrl}/fanout.zip'
var appInsightsAuthString = 'ClientId=${identityClientId};Authorization=AAD'

var flexSku = {
  name: 'FC1'
  tier: 'FlexConsumption'
}
var premiumSku = {
  name: 'EP1'
  tier: 'ElasticPremium'
  family: 'EP'
}

var flexAppConfig = {
  deployment: {
    storage: {
      type: 'blobContainer'
      value: deploymentContainerUrl
      authentication: {
        type: 'UserAssignedIdentity'
        userAssignedIdentityResourceId: identityId
      }
    }
  }
  scaleAndConcurrency: {
    maximumInstanceCount: flexMaximumInstanceCount
    instanceMemoryMB: flexInstanceMemoryMB
  }
  runtime: {
    name: 'custom'
    version: flexRuntimeVersion
  }
}

// The names the handler and the Functions host read. Keep in step with
// azuredeploy.json (tests/infra/test_templates.py compares the two).
var commonAppSettings = [
  {
    name: 'AzureWebJobsStorage__accountName'
    value: runtimeStorageName
  }
  {
    name: 'AzureWebJobsStorage__credential'
    value: 'managedidentity'
  }
  {
    name: 'AzureWebJobsStorage__clientId'
    value: identityClientId
  }
  {
    name: 'CosmosDBConnection__accountEndpoint'
    value: cosmosEndpoint
  }
  {
    name: 'CosmosDBConnection__credential'
    value: 'managedidentity'
  }
  {
    name: 'CosmosDBConnection__clientId'
    value: identityClientId
  }
  {
    name: 'COSMOS_DATABASE'
    value: databaseName
  }
  {
    name: 'AZURE_CLIENT_ID'
    value: identityClientId
  }
  {
    name: 'FANOUT_DEAD_LETTER_URL'
    value: deadLetterUrl
  }
  {
    name: 'ORDERS_CHANGELOG_TABLE'
    value: changelogTableUrl
  }
  {
    name: 'EVENTHUBS_NAMESPACE'
    value: eventHubsNamespaceHost
  }
  {
    name: 'EVENTHUB_NAME'
    value: eventHubName
  }
  {
    // For the host's Event Hubs output binding (`"connection": "EventHubConnection"` in
    // function.json, the event_hubs_binding sink): identity-based, the namespace allows no keys.
    name: 'EventHubConnection__fullyQualifiedNamespace'
    value: eventHubsNamespaceHost
  }
  {
    name: 'EventHubConnection__credential'
    value: 'managedidentity'
  }
  {
    name: 'EventHubConnection__clientId'
    value: identityClientId
  }
  {
    name: 'SEARCH_ENDPOINT'
    value: searchEndpoint
  }
  {
    name: 'SEARCH_INDEX'
    value: 'orders'
  }
  {
    name: 'REDIS_URL'
    value: redisUrl
  }
  {
    name: 'REDIS_AUTH'
    value: 'entra'
  }
  {
    // With Entra auth the Redis user name is the identity's object id (`username = "${REDIS_USERNAME}"`).
    name: 'REDIS_USERNAME'
    value: identityPrincipalId
  }
  {
    name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
    value: appInsightsConnectionString
  }
  {
    name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
    value: appInsightsAuthString
  }
  {
    name: 'FANOUT_LOG_FORMAT'
    value: 'json'
  }
  {
    // The routing config with every sink wired to the settings above (fanout.toml is the
    // local, Delta-only quickstart config).
    name: 'FANOUT_CONFIG'
    value: 'fanout.azure.toml'
  }
]

// Site configuration every plan takes.
var siteConfigCommon = {
  minTlsVersion: '1.2'
  http20Enabled: true
}

// Site configuration Flex Consumption refuses (no FTP(S) there): Elastic Premium only.
var premiumSiteConfig = {
  ftpsState: 'Disabled'
}

// Site properties Flex Consumption refuses (`reserved`, "isReserved" in Microsoft's list) or
// has no use for: Elastic Premium only. Flex takes its runtime and package from functionAppConfig.
var premiumSiteProperties = {
  reserved: true
}

// Elastic Premium only (Flex refuses these settings).
var premiumAppSettings = [
  {
    name: 'FUNCTIONS_WORKER_RUNTIME'
    value: 'custom'
  }
  {
    name: 'FUNCTIONS_EXTENSION_VERSION'
    value: '~4'
  }
  {
    name: 'WEBSITE_RUN_FROM_PACKAGE'
    value: packageUrl
  }
  {
    name: 'WEBSITE_RUN_FROM_PACKAGE_BLOB_MI_RESOURCE_ID'
    value: identityId
  }
]

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: zone redundancy needs a zone-enabled region (Flex: zoneRedundant) or 3+ always-on instances (EP): a region and cost choice left to the operator.
  name: planName
  location: location
  kind: isFlex ? 'functionapp' : 'elastic'
  sku: isFlex ? flexSku : premiumSku
  // maximumElasticWorkerCount only on Elastic Premium: absent (not null) on Flex.
  properties: union({
    reserved: true
  }, isFlex ? {} : { maximumElasticWorkerCount: 20 })
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: public network access stays on so that `func azure functionapp publish` can reach the deployment (scm) endpoint. The app serves no HTTP functions (its only trigger is cosmosDBTrigger; enableForwardingHttpRequest is false) and the host admin API needs keys.
  // checkov:skip=CKV_AZURE_17: the app has no HTTP functions, so incoming client certificates would protect nothing; the setting is also not documented for Flex Consumption.
  // checkov:skip=CKV_AZURE_212: scale to zero is the point of Flex Consumption; the Cosmos DB trigger (its leases) survives an instance loss, so a standing second instance only adds cost.
  // checkov:skip=CKV_AZURE_213: health check pings an HTTP path the custom handler does not serve (no HTTP functions); on Flex Consumption the platform handles instance health.
  // checkov:skip=CKV_AZURE_14: checkov does not evaluate union(), which builds these site properties so that Flex Consumption gets no key it refuses; tests/infra/test_templates.py runs this check on the resolved site of each plan (HTTPS only).
  // checkov:skip=CKV_AZURE_70: checkov does not evaluate union(), which builds these site properties so that Flex Consumption gets no key it refuses; tests/infra/test_templates.py runs this check on the resolved site of each plan (HTTPS only).
  // checkov:skip=CKV_AZURE_153: checkov does not evaluate union(), which builds these site properties so that Flex Consumption gets no key it refuses; tests/infra/test_templates.py runs this check on the resolved site of each plan (HTTPS only).
  name: functionAppName
  location: location
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  // checkov:skip=CKV_AZURE_15: checkov does not evaluate union(), which builds these site properties so that Flex Consumption gets no key it refuses; tests/infra/test_templates.py runs this check on the resolved site of each plan (TLS 1.2).
  // checkov:skip=CKV_AZURE_18: checkov does not evaluate union(), which builds these site properties so that Flex Consumption gets no key it refuses; tests/infra/test_templates.py runs this check on the resolved site of each plan (HTTP/2).
  // checkov:skip=CKV_AZURE_67: checkov does not evaluate union(), which builds these site properties so that Flex Consumption gets no key it refuses; tests/infra/test_templates.py runs this check on the resolved site of each plan (HTTP/2).
  // checkov:skip=CKV_AZURE_78: checkov does not evaluate union(), which builds these site properties so that Flex Consumption gets no key it refuses; tests/infra/test_templates.py runs this check on the resolved site of each plan (FTP disabled).
  properties: union({
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: union({
      appSettings: concat(commonAppSettings, isFlex ? [] : premiumAppSettings)
    }, siteConfigCommon, isFlex ? {} : premiumSiteConfig)
  }, isFlex ? { functionAppConfig: flexAppConfig } : premiumSiteProperties)
}

output name string = site.name
output defaultHostName string = site.properties.defaultHostName
